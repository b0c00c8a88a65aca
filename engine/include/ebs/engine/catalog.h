// The volume catalog: one RocksDB database in the data directory holding a
// record per volume. Writes are synced before they return.
// Thread-safe: RocksDB serialises concurrent use.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ebs/engine/key_service.h"
#include "ebs/engine/status.h"
#include "ebs/engine/volume_type.h"

namespace rocksdb {
class DB;
}

namespace ebs {

// One modification of a volume (Elastic Volumes), newest last in the record.
struct Modification {
  std::string state;  // modifying -> optimizing -> completed (or failed)
  int64_t started_at_ms = 0;
  int64_t optimizing_at_ms = 0;
  int64_t completed_at_ms = 0;
  int64_t optimize_until_ms = 0;  // when optimizing ends
  VolumeConfig from;
  VolumeConfig to;
};

inline constexpr char kVolumeAvailable[] = "available";
inline constexpr char kVolumeCreating[] = "creating";

struct VolumeRecord {
  std::string name;
  std::string id;  // "vol-" + 17 hex digits, names the data file
  VolumeConfig config;
  int64_t created_at_ms = 0;
  // kVolumeAvailable, or kVolumeCreating while an eager restore writes it.
  std::string state = "available";
  std::string source_snapshot;      // empty when not restored from one
  // Lazy restore from source_snapshot (hydration_layer.h): "" when the
  // volume was not restored lazily, else "loading" or "completed".
  std::string initialization_state;
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

class Catalog {
 public:
  // Opens or creates the database at `path`. A second opener gets EBUSY.
  static Result<std::unique_ptr<Catalog>> Open(const std::string& path);
  ~Catalog();

  Status Put(const VolumeRecord& record);
  // NotFound (ENOENT) when absent.
  Result<VolumeRecord> Get(const std::string& name);
  Result<std::vector<VolumeRecord>> List();
  Status Delete(const std::string& name);

 private:
  explicit Catalog(rocksdb::DB* db) : db_(db) {}
  rocksdb::DB* db_;
};

// ISO 8601 UTC with milliseconds, as AWS prints times.
std::string FormatTime(int64_t unix_ms);
int64_t NowMs();

}  // namespace ebs
