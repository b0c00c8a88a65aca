// A snapshot as a whole image: restored into a new volume (eagerly, fully
// written before it is usable, or lazily, loaded on demand from the chunk
// source this unit gives the volume manager), or exported to a raw file.
//
// REQUIRES: external synchronization (SnapshotService's lock), except the
// chunk sources, which are safe for concurrent use and outlive the service.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ebs/engine/image_writer.h"
#include "ebs/snapshot/snapshot_service.h"
#include "store_context.h"

namespace ebs::snapshot {

class Images {
 public:
  explicit Images(StoreContext& ctx) : ctx_(ctx) {}

  // SnapshotService::Restore.
  Result<VolumeInfo> Restore(const std::string& id, const std::string& volume, VolumeParams params,
                             std::optional<double> lazy_rate_mibps, std::optional<EncryptionRequest> encryption);
  // SnapshotService::Export.
  Result<nlohmann::json> Export(const std::string& id, const std::string& file, bool force);
  // SnapshotService::OpenImage. Reads only the index, the store and the
  // keys, so it may run beside another operation.
  Result<SnapshotImage> OpenImage(const std::string& id);
  // The chunks of snapshot `v.source_snapshot`, for lazily restored volume `v`.
  Result<std::shared_ptr<ChunkSource>> ChunkSourceFor(const VolumeRecord& v);
  // A server runs: lazily restored volumes load in the background from now on.
  void set_serving(bool serving) { serving_ = serving; }

 private:
  // Snapshot `r` with everything a reader needs, checked as a restore
  // checks it: completed, its whole map, its keys (null when plain), its
  // manifest intact and its own.
  struct CheckedSnapshot {
    SnapshotRecord record;
    std::vector<DeltaEntry> map;
    std::shared_ptr<const ChunkCrypto> crypto;
  };
  Result<CheckedSnapshot> Checked(SnapshotRecord r);
  // Writes every chunk of `map` (snapshot `r`'s, decoded with `crypto` when
  // encrypted) through `out`, then syncs it.
  Status WriteImage(const SnapshotRecord& r, const std::vector<DeltaEntry>& map, const ChunkCrypto* crypto,
                    ImageWriter& out);

  StoreContext& ctx_;
  bool serving_ = false;
};

}  // namespace ebs::snapshot
