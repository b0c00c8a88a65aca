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

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "ebs/engine/control.h"
#include "ebs/engine/volume_manager.h"
#include "ebs/snapshot/chunk_crypto.h"
#include "ebs/snapshot/object_store.h"
#include "ebs/snapshot/snapshot_index.h"

namespace ebs::snapshot {

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

  uint32_t chunk_size() const { return chunk_size_; }

 private:
  SnapshotService() = default;
  struct Job;
  // Create's steps for each volume: record it pending and find its base;
  // take the cut (volumes frozen); read and store the chunks; write the
  // manifest and complete it in the index; or mark it failed.
  Result<std::unique_ptr<Job>> PrepareJob(const std::string& volume, const std::string& description);
  Status CutJob(Job& job);
  Status UploadJob(Job& job);
  Status CommitJob(Job& job);
  void FailJob(Job& job, const Status& why);
  // Writes every chunk of `map` (a whole snapshot, decoded with `crypto`
  // when it is encrypted) into `fd` and syncs; through `cipher` when the
  // file is an encrypted volume's.
  Status WriteImage(const SnapshotRecord& r, const std::vector<DeltaEntry>& map, int fd, const ChunkCrypto* crypto,
                    const SectorCipher* cipher = nullptr);
  // The keys of an encrypted snapshot (null for a plain one); a clear error
  // when its master key is missing or is not the one it was made with.
  Result<std::shared_ptr<const ChunkCrypto>> CryptoFor(const SnapshotRecord& r) const;
  // Reads and checks `r`'s manifest: intact, and for an encrypted snapshot
  // authenticated by its key.
  Status CheckManifest(const SnapshotRecord& r, const ChunkCrypto* crypto);
  // Encodes one chunk's content as of the cut and stores it if new.
  Status StoreChunk(Job& job, size_t position, const std::string& data);
  // Folds retired predecessors into `rec` (snapshot_index.h, deletion).
  Status AbsorbRetired(const SnapshotRecord& rec);
  // Rewrites `rec`'s manifest as a delta from `prev_seq` (0: from zeros),
  // and its record to match when `update_record` (a retired member has none).
  Status RewriteManifest(const SnapshotRecord& rec, uint64_t prev_seq, const std::string& prev_id,
                         bool update_record = true);
  // The manifests of deleted snapshots that the index no longer keeps as a
  // retired member (absorbed into the next member, or dropped), with their
  // tombstones: removed, after the member that absorbed each has its
  // manifest rewritten against its new predecessor (unless it is
  // `rewritten_seq`, done already by the caller). Also what a crash left
  // of such a removal. Only `lineage`'s, or every lineage's when empty.
  Status RemoveSupersededManifests(const std::string& lineage, uint64_t rewritten_seq = 0);
  // The ids of the volumes of this service's data directory.
  Result<std::set<std::string>> VolumeIds();
  // A lineage whose volume is gone never gets another snapshot, so what its
  // retired tip (and a fork's base with no snapshot left) kept for the next
  // one is freed: manifests first, then the index entries, then the objects
  // no longer referenced (returns how many), then tombstones. Nothing when
  // its newest member is live.
  Result<uint64_t> DropAbandonedTip(const std::string& lineage);
  // Names a volume's last cut (VolumeRecord::last_cut): snapshot `seq` of
  // `lineage` in this store, or ("restore", 0, id) a restore from `id`.
  std::string CutName(const std::string& lineage, uint64_t seq, const std::string& snapshot = "") const;
  // Snapshots left pending by a process that died are marked failed, and
  // the objects they uploaded are collected.
  Status RecoverInterrupted();
  // Removes the manifests a snapshot that never completed may have written
  // (its own, and its lineage's base when the lineage has no member).
  Status DropUncommittedManifests(const SnapshotRecord& r);
  // The snapshot's whole chunk map: non-zero chunks with their hashes.
  Result<std::vector<DeltaEntry>> FullMap(const SnapshotRecord& r);
  // What a new or surviving member `seq` of `lineage` is a delta against:
  // the newest live member or fork base below it, as (seq, snapshot id);
  // (0, "") when there is none (a delta from zeros).
  Result<std::pair<uint64_t, std::string>> Predecessor(const std::string& lineage, uint64_t seq);

  VolumeManager* volumes_ = nullptr;
  std::string root_;
  std::string store_id_;  // store.json "id": tells this store's cuts from another's
  std::shared_ptr<ObjectStore> store_;  // shared with lazily restored volumes' chunk sources
  std::unique_ptr<SnapshotIndex> index_;
  uint32_t chunk_size_ = kDefaultChunkSize;
  int workers_ = 2;
  std::mutex mu_;      // one operation at a time
  // Objects being stored right now. A worker storing content another one is
  // already storing waits for it (then finds it exists) instead of writing
  // it twice; different contents are written in parallel.
  std::mutex put_mu_;
  std::condition_variable put_cv_;
  std::unordered_set<ContentHash, ContentHashHasher> putting_;  // GUARDED_BY(put_mu_)
  // Objects a job in progress counts on (it stored them, found them stored,
  // or its fork base names them) before any committed snapshot references
  // them for it: one count per use. Nothing deletes a pinned object, so one
  // job's failure or fold can never remove what another is about to name.
  std::unordered_map<ContentHash, int, ContentHashHasher> pinned_;  // GUARDED_BY(put_mu_)
  void Unpin(Job& job);
  // Deletes chunk object `hash` unless a job pins it or, with
  // `check_refs`, a snapshot still references it (then gc finds it later).
  Status DeleteUnusedChunk(const ContentHash& hash, bool check_refs);
  bool serving_ = false;  // GUARDED_BY(mu_): lazily restored volumes load in the background
};

nlohmann::json SnapshotToJson(const SnapshotRecord& r);

// snapshot.create|list|describe|restore|diff|verify|delete and store.gc|check.
void RegisterSnapshotCommands(CommandRegistry* registry, SnapshotService* service);

}  // namespace ebs::snapshot
