// Keeping lineages (snapshot_index.h has the rules): deleting a snapshot,
// folding retired members into the next snapshot, dropping what a lineage
// whose volume is gone kept for a next snapshot, rewriting manifests so the
// store stays self-describing, and diffs between members.
//
// REQUIRES: external synchronization (SnapshotService's lock).
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "store_context.h"

namespace ebs::snapshot {

class Lineages {
 public:
  explicit Lineages(StoreContext& ctx) : ctx_(ctx) {}

  // Frees only what no other snapshot needs (SnapshotService::Delete).
  Result<nlohmann::json> Delete(const std::string& id);
  // Chunks that differ between two snapshots of one lineage, or a snapshot
  // and one of a volume restored from it (SnapshotService::Diff).
  Result<nlohmann::json> Diff(const std::string& from, const std::string& to, bool with_ranges);

  // Folds retired predecessors into `rec`, just committed, and frees what
  // they alone held.
  Status AbsorbRetired(const SnapshotRecord& rec);
  // The manifests of deleted snapshots that the index no longer keeps as a
  // retired member (absorbed into the next member, or dropped), with their
  // tombstones: removed, after the member that absorbed each has its
  // manifest rewritten against its new predecessor (unless it is
  // `rewritten_seq`, done already by the caller). Also what a crash left
  // of such a removal. Only `lineage`'s, or every lineage's when empty.
  Status RemoveSupersededManifests(const std::string& lineage, uint64_t rewritten_seq = 0);
  // A lineage whose volume is gone never gets another snapshot, so what its
  // retired tip (and a fork's base with no snapshot left) kept for the next
  // one is freed: manifests first, then the index entries, then the objects
  // no longer referenced (returns how many), then tombstones. Nothing when
  // its newest member is live.
  Result<uint64_t> DropAbandonedTip(const std::string& lineage);
  // Rewrites `rec`'s manifest as a delta from `prev_seq` (0: from zeros),
  // and its record to match when `update_record` (a retired member has none).
  Status RewriteManifest(const SnapshotRecord& rec, uint64_t prev_seq, const std::string& prev_id,
                         bool update_record = true);

 private:
  StoreContext& ctx_;
};

}  // namespace ebs::snapshot
