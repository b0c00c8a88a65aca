// What every part of the snapshot library shares for one open store: the
// objects, the RocksDB index, the volumes of the data directory, the store's
// fixed facts (chunk size, id), the pins that keep objects alive while an
// operation counts on them, and the rules each part applies the same way
// (the keys of an encrypted snapshot, a manifest's check, a whole map, a
// member's predecessor, the names of cuts).
//
// Thread-safety: SnapshotService runs one operation at a time (its lock), so
// the fields are used by one operation at a time; ObjectPins is safe for
// concurrent use by that operation's workers.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "ebs/engine/volume_manager.h"
#include "ebs/snapshot/chunk_crypto.h"
#include "ebs/snapshot/object_store.h"
#include "ebs/snapshot/snapshot_index.h"

namespace ebs::snapshot {

// Objects that an operation in progress counts on before any committed
// snapshot references them for it (a snapshot being created stored them,
// found them stored, or its fork base names them): one count per use.
// Nothing deletes a pinned object, so one job's failure or fold never
// removes what another job of the same create is about to name.
class ObjectPins {
 public:
  // A worker about to store content `hash`: waits while another worker
  // stores the same content (then it finds the object there), and pins it
  // before it looks, so the object it finds stays.
  void BeginPut(const ContentHash& hash);
  // Its put (or finding the object there) is done; the pin stays.
  void EndPut(const ContentHash& hash);
  void Pin(const ContentHash& hash);
  void Unpin(const ContentHash& hash);
  // Deletes chunk object `hash` from `store` unless it is pinned, being put,
  // or (when `index` is given) still referenced by a snapshot: then it stays
  // for gc to find later.
  Status DeleteUnused(ObjectStore& store, SnapshotIndex* index, const ContentHash& hash);

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_set<ContentHash, ContentHashHasher> putting_;  // under mu_
  std::unordered_map<ContentHash, int, ContentHashHasher> pinned_;  // under mu_
};

struct StoreContext {
  VolumeManager* volumes = nullptr;
  std::string root;      // the store's directory; the index lives in root/index
  std::string store_id;  // store.json "id": tells this store's cuts from another's
  std::shared_ptr<ObjectStore> store;  // shared with lazily restored volumes' chunk sources
  std::unique_ptr<SnapshotIndex> index;
  uint32_t chunk_size = kDefaultChunkSize;
  int workers = 2;
  ObjectPins pins;

  // The keys of an encrypted snapshot (null for a plain one); a clear error
  // when its master key is missing or is not the one it was made with.
  Result<std::shared_ptr<const ChunkCrypto>> CryptoFor(const SnapshotRecord& r) const;
  // Reads and checks `r`'s manifest: intact, its own, and for an encrypted
  // snapshot authenticated by its key.
  Status CheckManifest(const SnapshotRecord& r, const ChunkCrypto* crypto);
  // A completed snapshot's whole chunk map: non-zero chunks with their hashes.
  Result<std::vector<DeltaEntry>> FullMap(const SnapshotRecord& r);
  // What member `seq` of `lineage` is a delta against: the newest live
  // member or fork base below it, as (seq, snapshot id); (0, "") when there
  // is none (a delta from zeros).
  Result<std::pair<uint64_t, std::string>> Predecessor(const std::string& lineage, uint64_t seq);
  // Names a volume's last cut (VolumeRecord::last_cut): snapshot `seq` of
  // `lineage` in this store, or ("restore", 0, id) a restore from `id`.
  std::string CutName(const std::string& lineage, uint64_t seq, const std::string& snapshot = "") const;
  // The ids of the volumes of the data directory.
  Result<std::set<std::string>> VolumeIds();
  // Removes the manifests a snapshot that never completed may have written
  // (its own, and its lineage's base when the lineage has no member).
  Status DropUncommittedManifests(const SnapshotRecord& r);
};

}  // namespace ebs::snapshot
