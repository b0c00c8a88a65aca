// What changed since a snapshot, from the index alone: the deltas a diff of
// two snapshots reads, the snapshots a dirty bitmap of a volume or of a
// snapshot can be against, and the chunks such a bitmap marks. Reads only
// (the index is safe for concurrent reads, store_context.h), so a server's
// event loops ask beside any operation in progress.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "store_context.h"

namespace ebs::snapshot {

// Deltas (from_seq, to_seq] of `lineage`.
struct DeltaSpan {
  std::string lineage;
  uint64_t from_seq = 0;
  uint64_t to_seq = 0;
};

// Where what differs between snapshots `a` and `b` is recorded: their
// lineage's deltas between them, or, for a snapshot and one of a volume
// restored from it (either order), the restored lineage's deltas after its
// base. EINVAL when they are of unrelated volumes.
Result<DeltaSpan> DeltaSpanOf(SnapshotIndex& index, const SnapshotRecord& a, const SnapshotRecord& b);

class ChangeQueries {
 public:
  explicit ChangeQueries(StoreContext& ctx) : ctx_(ctx) {}

  // The completed snapshots a bitmap of completed snapshot `id` can be
  // against: the others of its lineage and the one its lineage forked from.
  Result<std::vector<std::string>> BitmapsOfSnapshot(const std::string& id);
  // Those of volume `v`: the completed snapshots of its lineage and the one
  // it forked from, or, not snapshotted since a restore, its source.
  Result<std::vector<std::string>> BitmapsOfVolume(const VolumeRecord& v);
  // The chunks that differ between completed snapshots `from` and `to`
  // (SnapshotService::Diff's list), ascending.
  Result<std::vector<uint64_t>> Changed(const std::string& from, const std::string& to);
  // The chunks of volume `v` changed from completed snapshot `from` up to
  // the cut v.last_cut names, ascending (the volume's tracker holds what
  // changed after it). nullopt when nothing is known: the cut is another
  // store's, or not the newest snapshot of its lineage (every chunk then
  // counts as changed).
  Result<std::optional<std::vector<uint64_t>>> ChangedSinceCut(const VolumeRecord& v, const std::string& from);

 private:
  // Completed snapshots of `lineage`, and the id its first member copies
  // (a fork's base), if any.
  Result<std::vector<std::string>> OfLineage(const std::string& lineage);
  StoreContext& ctx_;
};

}  // namespace ebs::snapshot
