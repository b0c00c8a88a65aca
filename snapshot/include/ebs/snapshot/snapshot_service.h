// Snapshot operations over a volume manager and a store: create, list,
// describe, restore (eager), diff, verify, delete, and the store's gc and
// check. Operations are serialised (one at a time per store), so gc never
// races an upload. Thread-safe.
//
// This first version snapshots volumes that have no open connection (the
// volume is kept from being attached while its snapshot is taken, which makes
// the snapshot point-in-time); snapshots of volumes in use, with writes held
// only for the instant of the cut and copy-before-write, come next.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ebs/engine/control.h"
#include "ebs/engine/volume_manager.h"
#include "ebs/snapshot/object_store.h"
#include "ebs/snapshot/snapshot_index.h"

namespace ebs::snapshot {

class SnapshotService {
 public:
  // Opens (or creates, with `chunk_size`) the store at `root`: objects under
  // it, the RocksDB index in root/index. A store keeps the chunk size it was
  // created with; opening it with another is refused.
  static Result<std::unique_ptr<SnapshotService>> Open(const std::string& root, VolumeManager* volumes,
                                                       uint32_t chunk_size = kDefaultChunkSize, int workers = 2);

  // One snapshot per volume, all taken at one instant.
  Result<std::vector<SnapshotRecord>> Create(const std::vector<std::string>& volumes, const std::string& description);
  Result<std::vector<SnapshotRecord>> List();
  Result<SnapshotRecord> Describe(const std::string& id);
  // A new volume with the snapshot's content, fully copied before it returns.
  Result<VolumeInfo> Restore(const std::string& id, const std::string& volume, VolumeParams params);
  // Chunks that differ between two snapshots of one volume (ListChangedBlocks).
  Result<nlohmann::json> Diff(const std::string& from, const std::string& to);
  // Reads every object of the snapshot and checks it; lists each bad chunk.
  Result<nlohmann::json> Verify(const std::string& id);
  // Frees only what no other snapshot needs.
  Result<nlohmann::json> Delete(const std::string& id);
  // Removes objects no snapshot references.
  Result<nlohmann::json> Gc();
  // Every referenced object exists, every object is referenced.
  Result<nlohmann::json> Check();

  uint32_t chunk_size() const { return chunk_size_; }

 private:
  SnapshotService() = default;
  Result<SnapshotRecord> CreateOne(const std::string& volume, const std::string& description);
  // The snapshot's whole chunk map: non-zero chunks with their hashes.
  Result<std::vector<DeltaEntry>> FullMap(const SnapshotRecord& r);

  VolumeManager* volumes_ = nullptr;
  std::unique_ptr<ObjectStore> store_;
  std::unique_ptr<SnapshotIndex> index_;
  uint32_t chunk_size_ = kDefaultChunkSize;
  int workers_ = 2;
  std::mutex mu_;  // one operation at a time
};

nlohmann::json SnapshotToJson(const SnapshotRecord& r);

// snapshot.create|list|describe|restore|diff|verify|delete and store.gc|check.
void RegisterSnapshotCommands(CommandRegistry* registry, SnapshotService* service);

}  // namespace ebs::snapshot
