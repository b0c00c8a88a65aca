// SnapshotIndex: the RocksDB database that makes snapshots fast to query.
// It holds snapshot records, per-lineage chunk maps and chunk reference
// counts. It is derived data: the manifests in the object store describe the
// same thing, and the index can be rebuilt from them.
//
// Vocabulary. A lineage is one change history: the successive snapshots of
// a volume, numbered by `seq` (increasing, not necessarily contiguous). Each
// committed snapshot contributes a delta: the chunks it changed relative to
// the previous committed snapshot of its lineage, as (chunk, content hash),
// ContentHash::ZeroChunk() meaning "became zero". The first snapshot's delta
// is relative to an all-zero volume, so a lineage always starts with a full
// map of the non-zero chunks. A snapshot that starts from scratch (full)
// must therefore start a new lineage.
//
// Keys (be64 = 8-byte big-endian, so bytewise order is numeric order;
// lineage ids cannot contain '|', so prefixes never collide):
//
//   meta|format                        "1"
//   s|<snapshot id>                    JSON SnapshotRecord
//   l|<lineage>|be64(seq)              'l' live, 'r' retired (see deletion), or
//                                      'b' + snapshot id: a base (see forks)
//   m|<lineage>|be64(chunk)be64(~seq)  16-byte hash: the map family
//   d|<lineage>|be64(seq)be64(chunk)   16-byte hash: the delta family
//   r|<16-byte hash>                   u64 LE count, absent when zero
//
// Queries:
// - ChunkAt(L, i, S) is one Seek to m|L|i|~S: keys of chunk i sort newest
//   first, so the first key at or after the target with the same prefix is
//   the newest change at or before S.
// - ChangedChunks(L, S1, S2) scans d|L|(S1, S2]: proportional to the
//   changes in that range, never to the volume size.
//
// Reference counts count index entries (one per m/d pair) that name a
// non-zero hash: an object may be deleted by garbage collection only when
// its count is zero. Whoever writes entries must have made the objects
// durable first.
//
// Deleting snapshot k (the rule). Entries of delta k may be the newest
// at-or-before for later snapshots, so they cannot simply be dropped. Let n
// be the next committed seq after k in the lineage (live or retired):
// - if n exists, k is absorbed into n: for each chunk c in delta(k), if
//   delta(n) also has c the entry is dropped (no snapshot could see it:
//   snapshots before k never could, snapshots from n on see n's entry) and
//   its hash loses a reference; otherwise the entry moves to seq n, where it
//   answers exactly the queries it answered before for every seq >= n
//   (deleted seqs between k and n hold no entries, having been absorbed
//   themselves). Snapshots before k never saw seq-k entries. Reference
//   counts of moved entries are unchanged. Afterwards delta(n) is the union
//   of the two deltas, i.e. n's changes relative to k's predecessor, which
//   is what ChangedChunks must return for the surviving pair.
// - if k is the newest, its entries are the base of the lineage's NEXT
//   snapshot (whose delta will be relative to k), so they stay: k is marked
//   retired. It answers no queries by name (its record is gone) but its
//   entries keep serving later seqs. Once a later snapshot is committed,
//   AbsorbRetired() absorbs it as above; if the lineage will never grow
//   again (its volume was deleted), DropRetiredTip() frees it.
// The caller keeps the manifests in step: after k is absorbed into n, n's
// manifest should be rewritten with ChangedChunks(pred(k), n) and parent
// pred(k) before k's manifest is deleted, so that a reindex from the store
// reproduces the same maps at every point.
//
// Forks. A volume restored from snapshot S (of another lineage) starts a
// lineage of its own whose snapshots are incremental to S. Its first
// member is a base: a copy of S's whole map as a delta from zeros, with no
// record of its own (value 'b' + S's id); the volume's first snapshot is
// the next member, a delta against it. A copy, not a pointer into S's
// lineage, so deleting S (or anything else there) never changes what the
// fork's snapshots see; the copy costs index entries and references, never
// objects. A base is never absorbed or retired; its entries serve the
// lineage's later members like any other, and ChangedChunks(L, base, S2)
// is the diff between S and S2.
//
// Durability and atomicity: every method that changes state writes one
// WriteBatch with sync=true, so after a crash each change is either whole or
// absent (AbsorbRetired is a sequence of such steps).
//
// Thread-safety: safe for concurrent use. Mutations are serialised by an
// internal mutex (they read reference counts and neighbours before writing);
// reads run concurrently and see each mutation whole. One process at a time:
// a second Open of the same path is EBUSY.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ebs/engine/status.h"
#include "ebs/snapshot/chunk_map.h"
#include "ebs/snapshot/content_hash.h"

namespace rocksdb {
class DB;
class WriteBatch;
}  // namespace rocksdb

namespace ebs::snapshot {

enum class SnapshotState { kPending, kCompleted, kError };
std::string_view SnapshotStateName(SnapshotState state);  // "pending", "completed", "error"
Result<SnapshotState> ParseSnapshotState(std::string_view name);

struct SnapshotRecord {
  std::string id;
  SnapshotState state = SnapshotState::kPending;
  std::string volume_name;
  std::string volume_id;
  std::string lineage;
  uint64_t seq = 0;
  std::string parent_id;  // empty for the first snapshot of a lineage
  uint64_t volume_size = 0;
  uint32_t chunk_size = 0;
  uint64_t logical_bytes = 0;  // non-zero data in the snapshot's whole map
  uint64_t changed_bytes = 0;  // data in its delta
  uint64_t stored_bytes = 0;   // object bytes it newly wrote to the store
  uint64_t new_bytes = 0;      // the uncompressed size of those new objects
  int64_t created_at_ms = 0;
  std::string description;
  std::string error;  // why, when state is kError
  // An encrypted snapshot's master key (key_service.h); empty when plain.
  std::string key_name;
  std::string key_id;

  friend bool operator==(const SnapshotRecord&, const SnapshotRecord&) = default;
};

// A committed seq of a lineage. Retired: deleted, but kept as the base of
// the lineage's next snapshot (see the deletion rule above).
struct LineageMember {
  uint64_t seq = 0;
  bool retired = false;
  // Set for a base (see forks): the id of the snapshot whose map it copies.
  std::string base_of;
  bool base() const { return !base_of.empty(); }
  // A member with a snapshot record of its own.
  bool live() const { return !retired && !base(); }
  friend bool operator==(const LineageMember&, const LineageMember&) = default;
};

// The base a fork starts from (see forks): snapshot `source_id`'s whole
// map, committed as member `seq` of the fork's lineage.
struct ForkBase {
  uint64_t seq = 0;
  std::string source_id;
  std::span<const DeltaEntry> map;
};

// A disagreement AuditReferences found for one hash.
struct ReferenceProblem {
  ContentHash hash;
  uint64_t stored = 0;      // its reference count (0: none recorded)
  uint64_t in_deltas = 0;   // delta entries (d|) that name it
  uint64_t in_maps = 0;     // map entries (m|) that name it
  friend bool operator==(const ReferenceProblem&, const ReferenceProblem&) = default;
};

struct ReferenceAudit {
  uint64_t hashes = 0;   // distinct non-zero hashes named by entries
  uint64_t entries = 0;  // delta entries naming a non-zero hash
  std::vector<ReferenceProblem> problems;  // sorted by hash
};

struct DeleteOutcome {
  uint64_t seq = 0;
  std::optional<uint64_t> absorbed_into;  // the seq that took over what was still needed
  bool retired = false;                   // kept as the base of the next snapshot instead
  uint64_t moved = 0;                     // entries moved to absorbed_into
  uint64_t dropped = 0;                   // entries removed
  // Hashes whose reference count reached zero in this step: candidates for
  // garbage collection, which must still re-check them (ListUnreferenced)
  // under its own protocol, since a new snapshot may reference them again.
  std::vector<ContentHash> released;
};

class SnapshotIndex {
 public:
  // Opens or creates the index database in directory `path`. EBUSY when
  // another process has it open; EIO for a database of another format.
  static Result<std::unique_ptr<SnapshotIndex>> Open(const std::string& path);
  ~SnapshotIndex();
  SnapshotIndex(const SnapshotIndex&) = delete;
  SnapshotIndex& operator=(const SnapshotIndex&) = delete;

  // --- Snapshot records -----------------------------------------------------

  // Creates or replaces the record. EINVAL for an invalid id or lineage
  // (1-128 of [A-Za-z0-9._-]).
  Status PutSnapshot(const SnapshotRecord& record);
  // ENOENT ("InvalidSnapshot.NotFound: ...") when absent.
  Result<SnapshotRecord> GetSnapshot(std::string_view id);
  // All records, sorted by id.
  Result<std::vector<SnapshotRecord>> ListSnapshots();

  // --- Chunk maps -----------------------------------------------------------

  // Adds `delta` (sorted by chunk, unique) as snapshot `seq` of `lineage`:
  // both key families, the lineage member, and reference counts, in one
  // synced batch. `seq` must be >= 1 and above every committed seq of the
  // lineage (EINVAL otherwise: deltas are relative to the newest one).
  // With `base_of`, the member is a base copying that snapshot's map (see
  // forks; `delta` is then the whole map).
  Status CommitDelta(std::string_view lineage, uint64_t seq, std::span<const DeltaEntry> delta,
                     std::string_view base_of = {});
  // CommitDelta for record.lineage/record.seq plus PutSnapshot(record) in the
  // same batch, so a snapshot is never completed without its entries or the
  // reverse; with `base`, the fork's base is committed in that batch too
  // (base->seq below record.seq). REQUIRES record.state == kCompleted
  // (EINVAL otherwise).
  Status CompleteSnapshot(const SnapshotRecord& record, std::span<const DeltaEntry> delta,
                          const ForkBase* base = nullptr);

  // The content of chunk `chunk` as of snapshot `seq` of `lineage`: the hash
  // of the newest change at or before `seq`. nullopt when no snapshot up to
  // `seq` changed it (the chunk reads as zeros); ZeroChunk() when the newest
  // change made it zero. Both mean "zeros, no object".
  Result<std::optional<ContentHash>> ChunkAt(std::string_view lineage, uint64_t chunk, uint64_t seq);

  // The chunks that changed after `from_seq` up to and including `to_seq`,
  // sorted by chunk, each with its hash as of `to_seq`. from_seq 0 means
  // "since an all-zero volume" (every chunk ever written). Cost is
  // proportional to the entries in (from_seq, to_seq]. A chunk rewritten
  // with identical content is still reported: change tracking records
  // writes, not differences. EINVAL when from_seq > to_seq.
  Result<std::vector<DeltaEntry>> ChangedChunks(std::string_view lineage, uint64_t from_seq, uint64_t to_seq);

  // Every lineage with at least one member, sorted.
  Result<std::vector<std::string>> ListLineages();
  // The committed seqs of `lineage`, ascending.
  // (All lineage arguments are checked like ids: EINVAL when invalid.)
  Result<std::vector<LineageMember>> ListLineage(std::string_view lineage);

  // --- Deletion (see the rule above) ---------------------------------------

  // Deletes live member `seq` of `lineage` by absorbing or retiring it.
  // ENOENT when it is not a live member.
  Result<DeleteOutcome> DeleteSnapshotEntries(std::string_view lineage, uint64_t seq);
  // Deletes the record `id` and, when it was committed, its entries, in one
  // batch. Pending and error snapshots have only a record. ENOENT when absent.
  Result<DeleteOutcome> DeleteSnapshot(std::string_view id);
  // Absorbs every retired member that now has a later member. Call after
  // committing a snapshot to a lineage whose newest member was retired.
  Result<std::vector<DeleteOutcome>> AbsorbRetired(std::string_view lineage);
  // Drops the entries of retired members after the newest live one. Only for
  // when no snapshot will ever be committed on top of them again (the
  // volume is gone, or its next snapshot starts a new lineage). Returns the
  // hashes whose reference count reached zero.
  Result<std::vector<ContentHash>> DropRetiredTip(std::string_view lineage);

  // --- Reference counts -------------------------------------------------------

  Result<uint64_t> RefCount(const ContentHash& hash);
  // The subset of `hashes` whose reference count is zero, in input order.
  Result<std::vector<ContentHash>> ListUnreferenced(std::span<const ContentHash> hashes);
  // Every referenced hash with its count, sorted by hash (for `store check`).
  Result<std::vector<std::pair<ContentHash, uint64_t>>> ListRefCounts();
  // Recounts the references from the entries themselves and compares them
  // with the stored counts (for `store check`): every hash whose count
  // differs from the number of delta entries naming it, or whose delta and
  // map entries differ in number. Scans each key family once in key order;
  // memory is one counter pair per distinct hash, never per entry.
  Result<ReferenceAudit> AuditReferences();

 private:
  class Mutation;
  // One entry of a stored delta, with what a deletion decided for it.
  struct DeltaItem {
    uint64_t chunk;
    uint64_t seq;
    ContentHash hash;
    bool move;
  };
  explicit SnapshotIndex(rocksdb::DB* db) : db_(db) {}
  Result<std::vector<DeltaItem>> ReadDelta(std::string_view lineage, uint64_t seq);
  Status AddCommit(Mutation& mutation, std::string_view lineage, uint64_t seq, std::span<const DeltaEntry> delta,
                   std::string_view base_of = {});
  Status AddDelete(Mutation& mutation, std::string_view lineage, uint64_t seq, DeleteOutcome* outcome);
  Status AddAbsorb(Mutation& mutation, std::string_view lineage, uint64_t seq, uint64_t into, DeleteOutcome* outcome);
  Result<std::optional<LineageMember>> GetMember(std::string_view lineage, uint64_t seq);
  Result<std::optional<uint64_t>> NextMember(std::string_view lineage, uint64_t after_seq);

  rocksdb::DB* const db_;
  std::mutex mu_;  // serialises mutations (they read before they write)
};

}  // namespace ebs::snapshot
