// Snapshot operations over a volume manager and a store: create, list,
// describe, restore (eager), diff, verify, delete, and the store's gc and
// check. Operations are serialised (one at a time per store), so gc never
// races an upload. Thread-safe.
//
// Snapshots are point-in-time whether or not the volume is in use: writes are
// held only for the instant of the cut (copy_on_write_layer.h), chunks a
// write would change before the snapshot has read them are copied out first,
// and only the chunks the volume's change tracker marked since the previous
// cut are read (change_tracker.h).
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ebs/engine/control.h"
#include "ebs/engine/volume_manager.h"
#include "ebs/snapshot/object_store.h"
#include "ebs/snapshot/snapshot_index.h"

namespace ebs::snapshot {

struct StoreContext;
class Lineages;
class SnapshotCreator;
class Images;
class StoreAudit;
class ChangeQueries;

// A completed snapshot opened for reading in place (a snapshot export).
struct SnapshotImage {
  SnapshotRecord record;
  // Its chunks, decrypted with its key when it is encrypted; safe for
  // concurrent use, and usable after the service is gone.
  std::shared_ptr<ChunkSource> chunks;
};

class SnapshotService {
 public:
  // Opens (or creates, with `chunk_size`; 0 = the default) the store at
  // `root`: objects under it, the RocksDB index in root/index. A store keeps
  // the chunk size it was created with; naming another is refused.
  // `objects`: where the objects live instead of the directory store at
  // `root` (tests wrap a store to inject faults); the index stays in root.
  static Result<std::unique_ptr<SnapshotService>> Open(const std::string& root, VolumeManager* volumes,
                                                       uint32_t chunk_size = 0, int workers = 2,
                                                       std::shared_ptr<ObjectStore> objects = nullptr);

  // One snapshot per volume, all taken at one instant.
  Result<std::vector<SnapshotRecord>> Create(const std::vector<std::string>& volumes, const std::string& description);
  Result<std::vector<SnapshotRecord>> List();
  Result<SnapshotRecord> Describe(const std::string& id);
  // A new volume with the snapshot's content. Eager (no `lazy`): fully
  // copied before it returns. Lazy: created at once and loaded on demand and
  // in the background while a server runs (hydration_layer.h).
  //
  // Encryption, as EBS does it: a snapshot of an encrypted volume restores
  // to an encrypted volume, under its own key unless `encryption` names
  // another; `encryption` on a plain snapshot encrypts the new volume. Either
  // way the volume gets a fresh data key and its data is re-encrypted.
  Result<VolumeInfo> Restore(const std::string& id, const std::string& volume, VolumeParams params,
                             std::optional<double> lazy_rate_mibps = std::nullopt,
                             std::optional<EncryptionRequest> encryption = std::nullopt);
  // For the server: lazily restored volumes load in the background from now
  // on, including those left loading by an earlier run.
  Status ResumeLoading();
  ~SnapshotService();
  // Writes the snapshot as a raw image to `file` (refused if it exists,
  // unless `force`). The file appears whole or not at all.
  Result<nlohmann::json> Export(const std::string& id, const std::string& file, bool force);
  // A snapshot of a raw image: a new chain whose volume is named `name` (the
  // name a restore suggests; no volume is created).
  Result<SnapshotRecord> Import(const std::string& file, const std::string& name, const std::string& description);
  // Chunks that differ between two snapshots of one volume, or between a
  // snapshot and one of a volume restored from it (ListChangedBlocks):
  // {from, to, chunk_size, volume_size, changed_chunks: N, chunks: [index...]
  // ascending, zeroed_chunks: [the indexes that became zero]}; chunk i holds
  // bytes [i * chunk_size, min((i + 1) * chunk_size, volume_size)). With
  // `with_ranges`, also ranges: {offsets: [...], lengths: [...]}, the changed
  // bytes with adjacent chunks merged. Flat arrays of numbers: a diff of a
  // million chunks is built and printed in under a second.
  Result<nlohmann::json> Diff(const std::string& from, const std::string& to, bool with_ranges = false);
  // Reads every object of the snapshot and checks it; lists each bad chunk.
  Result<nlohmann::json> Verify(const std::string& id);
  // Frees only what no other snapshot needs. The newest snapshot of a
  // volume that still exists stays (retired) as the base of its next one;
  // of a volume that is gone, it goes with everything it kept.
  Result<nlohmann::json> Delete(const std::string& id);
  // Rebuilds the index from the manifests in the store alone (records,
  // chunk maps, reference counts), checking each chain against the map
  // digests its manifests recorded. Snapshots in `error` or `pending` are
  // not in the store and are dropped; stored sizes are not recorded there.
  // A manifest that cannot be read, a chain that does not reproduce its
  // digests, or a completed snapshot of the current index with no manifest
  // would leave snapshots (and the references that keep their objects)
  // out of the new index: then nothing is changed and the problems are
  // the error, unless `force` asks to rebuild without them.
  Result<nlohmann::json> Reindex(bool force = false);
  // Removes objects no snapshot references, after releasing what the kept
  // newest snapshots and fork bases of volumes that are gone held
  // (DropAbandonedTip) and finishing interrupted deletions; and the upload
  // temporaries a killed process left, when older than an hour.
  // {objects_examined, objects_removed, temporaries_removed}.
  Result<nlohmann::json> Gc();
  // Every referenced object exists, every object is referenced, reference
  // counts agree with the entries that name each object, every completed
  // snapshot has its manifest and every manifest belongs to the index.
  Result<nlohmann::json> Check();

  uint32_t chunk_size() const;

  // For a server's event loops, which must never wait for an operation in
  // progress (a snapshot being taken): these read the index at once, without
  // the service's lock, and fail with EAGAIN while a reindex replaces it.
  // The completed snapshots.
  Result<std::vector<SnapshotRecord>> ListCompleted();
  // A completed snapshot's record, or ENOENT.
  Result<SnapshotRecord> FindCompleted(const std::string& id);
  // Opens completed snapshot `id` for reading: its map, its keys (a clear
  // error when its master key is missing) and its manifest's check, as a
  // restore would.
  Result<SnapshotImage> OpenImage(const std::string& id);
  // Dirty bitmaps (change_queries.h), as lock-free as the three above. The
  // completed snapshots a bitmap of completed snapshot `id`, or of volume
  // `v`, can be against.
  Result<std::vector<std::string>> BitmapsOfSnapshot(const std::string& id);
  Result<std::vector<std::string>> BitmapsOfVolume(const VolumeRecord& v);
  // The chunks (of chunk_size()) that differ between completed snapshots,
  // as Diff lists them, ascending.
  Result<std::vector<uint64_t>> ChangedChunks(const std::string& from, const std::string& to);
  // The chunks of volume `v` changed from snapshot `from` up to its last
  // cut (its change tracker holds the rest); nullopt when unknown (every
  // chunk then counts as changed).
  Result<std::optional<std::vector<uint64_t>>> ChangedSinceLastCut(const VolumeRecord& v, const std::string& from);

  // `observer(id)` runs as Delete starts deleting a completed snapshot,
  // before any of its objects can go: whoever reads it in place stops.
  // Set it before serving; null: none.
  void SetDeleteObserver(std::function<void(const std::string& id)> observer);

 private:
  SnapshotService();
  // The parts (snapshot/src): what they share, and one unit per idea.
  std::unique_ptr<StoreContext> ctx_;
  std::unique_ptr<Lineages> lineages_;
  std::unique_ptr<SnapshotCreator> creator_;
  std::unique_ptr<Images> images_;
  std::unique_ptr<StoreAudit> audit_;
  std::unique_ptr<ChangeQueries> changes_;
  std::mutex mu_;  // one operation at a time
  // Shared by the lock-free readers above; Reindex, which replaces the
  // index, holds it exclusively.
  std::shared_mutex index_swap_;
  std::function<void(const std::string&)> delete_observer_;
};

nlohmann::json SnapshotToJson(const SnapshotRecord& r);

// snapshot.create|list|describe|restore|diff|verify|delete and store.gc|check.
void RegisterSnapshotCommands(CommandRegistry* registry, SnapshotService* service);

}  // namespace ebs::snapshot
