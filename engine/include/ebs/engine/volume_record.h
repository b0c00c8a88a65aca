// What the catalog records of a volume: its configuration, its state, how
// it came to be (a restore from a snapshot, lazily or not), its
// modifications and its sealed data key. Stored as JSON (ToJson/FromJson).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ebs/engine/key_service.h"
#include "ebs/engine/status.h"
#include "ebs/engine/volume_type.h"

namespace ebs {

// A volume's state as EBS names it ("in-use" is kAvailable with an
// attachment). kCreating: an eager restore is writing it; nobody may open it.
enum class VolumeState { kCreating, kAvailable };
// Elastic Volumes: modifying -> optimizing -> completed, or failed.
enum class ModificationState { kModifying, kOptimizing, kCompleted, kFailed };
// A lazy restore's initialization: none (not restored lazily), loading, completed.
enum class LoadState { kNone, kLoading, kCompleted };

std::string_view StateName(VolumeState s);         // "creating", "available"
std::string_view StateName(ModificationState s);   // "modifying", "optimizing", "completed", "failed"
std::string_view StateName(LoadState s);           // "", "loading", "completed"
Result<VolumeState> ParseVolumeState(std::string_view name);
Result<ModificationState> ParseModificationState(std::string_view name);
Result<LoadState> ParseLoadState(std::string_view name);

// One modification of a volume (Elastic Volumes), newest last in the record.
struct Modification {
  ModificationState state = ModificationState::kModifying;
  int64_t started_at_ms = 0;
  int64_t optimizing_at_ms = 0;
  int64_t completed_at_ms = 0;
  int64_t optimize_until_ms = 0;  // when optimizing ends
  VolumeConfig from;
  VolumeConfig to;
};

struct VolumeRecord {
  std::string name;
  std::string id;  // "vol-" + 17 hex digits, names the data file
  VolumeConfig config;
  int64_t created_at_ms = 0;
  VolumeState state = VolumeState::kAvailable;
  std::string source_snapshot;      // empty when not restored from one
  // Lazy restore from source_snapshot (engine/src/layers/hydration_layer.h).
  LoadState initialization_state = LoadState::kNone;
  // The snapshot cut the volume's change tracker counts from (set by the
  // snapshot store; its first snapshot anywhere else reads every chunk).
  std::string last_cut;
  double initialization_rate_mibps = 0;  // background loading; 0 = as fast as it goes
  uint32_t initialization_chunk_size = 0;
  int64_t initialization_completed_at_ms = 0;
  std::vector<Modification> modifications;
  // Set for an encrypted volume: its data key (AES-256-XTS, 64 bytes),
  // sealed under the named master key (key_service.h). Never changes.
  std::optional<WrappedKey> encryption;

  nlohmann::json ToJson() const;
  static Result<VolumeRecord> FromJson(const nlohmann::json& j);
};

}  // namespace ebs
