#include "change_queries.h"

#include <algorithm>
#include <charconv>

namespace ebs::snapshot {
namespace {

std::vector<uint64_t> ChunksOf(const std::vector<DeltaEntry>& entries) {
  std::vector<uint64_t> out;
  out.reserve(entries.size());
  for (const auto& e : entries) out.push_back(e.chunk);
  return out;
}

Result<SnapshotRecord> Completed(SnapshotIndex& index, const std::string& id) {
  auto r = index.GetSnapshot(id);
  if (!r.ok()) return r.status();
  if (r->state != SnapshotState::kCompleted) return Status::InvalidArgument("snapshot " + id + " is not completed");
  return r;
}

}  // namespace

Result<DeltaSpan> DeltaSpanOf(SnapshotIndex& index, const SnapshotRecord& a, const SnapshotRecord& b) {
  if (a.lineage == b.lineage) return DeltaSpan{a.lineage, std::min(a.seq, b.seq), std::max(a.seq, b.seq)};
  // A snapshot and one of a volume restored from it: that volume's lineage
  // starts with a base copying the snapshot (snapshot_index.h, forks), so
  // the changes since are the deltas after the base.
  for (const auto& [child_p, source_p] : {std::pair{&b, &a}, std::pair{&a, &b}}) {
    const SnapshotRecord& child = *child_p;
    const SnapshotRecord& source = *source_p;
    auto members = index.ListLineage(child.lineage);
    if (!members.ok()) return members.status();
    if (!members->empty() && members->front().base_of == source.id) {
      return DeltaSpan{child.lineage, members->front().seq, child.seq};
    }
  }
  return Status::InvalidArgument("snapshots " + a.id + " and " + b.id + " are of different volumes (lineages)");
}

Result<std::vector<std::string>> ChangeQueries::OfLineage(const std::string& lineage) {
  std::vector<std::string> out;
  auto members = ctx_.index->ListLineage(lineage);
  if (!members.ok()) return members.status();
  if (!members->empty() && members->front().base()) {
    auto source = ctx_.index->GetSnapshot(members->front().base_of);
    if (source.ok() && source->state == SnapshotState::kCompleted) out.push_back(source->id);
  }
  auto all = ctx_.index->ListSnapshots();
  if (!all.ok()) return all.status();
  for (const auto& r : *all) {
    if (r.lineage == lineage && r.state == SnapshotState::kCompleted) out.push_back(r.id);
  }
  return out;
}

Result<std::vector<std::string>> ChangeQueries::BitmapsOfSnapshot(const std::string& id) {
  auto r = Completed(*ctx_.index, id);
  if (!r.ok()) return r.status();
  auto out = OfLineage(r->lineage);
  if (!out.ok()) return out.status();
  std::erase(*out, id);
  return out;
}

Result<std::vector<std::string>> ChangeQueries::BitmapsOfVolume(const VolumeRecord& v) {
  auto out = OfLineage(v.id);  // a volume's snapshots make the lineage named by its id
  if (!out.ok()) return out.status();
  if (out->empty() && !v.source_snapshot.empty() && v.last_cut == ctx_.CutName("restore", 0, v.source_snapshot)) {
    if (Completed(*ctx_.index, v.source_snapshot).ok()) out->push_back(v.source_snapshot);
  }
  return out;
}

Result<std::vector<uint64_t>> ChangeQueries::Changed(const std::string& from, const std::string& to) {
  auto a = Completed(*ctx_.index, from);
  if (!a.ok()) return a.status();
  auto b = Completed(*ctx_.index, to);
  if (!b.ok()) return b.status();
  auto span = DeltaSpanOf(*ctx_.index, *a, *b);
  if (!span.ok()) return span.status();
  auto changed = ctx_.index->ChangedChunks(span->lineage, span->from_seq, span->to_seq);
  if (!changed.ok()) return changed.status();
  return ChunksOf(*changed);
}

Result<std::optional<std::vector<uint64_t>>> ChangeQueries::ChangedSinceCut(const VolumeRecord& v,
                                                                           const std::string& from) {
  using Out = std::optional<std::vector<uint64_t>>;
  auto f = Completed(*ctx_.index, from);
  if (!f.ok()) return f.status();
  // last_cut: "STORE/LINEAGE/SEQ", or "STORE/restore/SOURCE" (StoreContext::CutName).
  const std::string prefix = ctx_.store_id + "/";
  if (v.last_cut.compare(0, prefix.size(), prefix) != 0) return Out();  // another store's cut, or none
  const std::string rest = v.last_cut.substr(prefix.size());
  const size_t slash = rest.rfind('/');
  if (slash == std::string::npos) return Out();
  const std::string lineage = rest.substr(0, slash);
  const std::string tail = rest.substr(slash + 1);
  if (lineage == "restore") {
    // Not snapshotted since the restore: the tracker holds every change.
    if (tail == from) return Out(std::vector<uint64_t>());
    return Out();
  }
  uint64_t seq = 0;
  auto [end, ec] = std::from_chars(tail.data(), tail.data() + tail.size(), seq);
  if (ec != std::errc() || end != tail.data() + tail.size()) return Out();
  auto members = ctx_.index->ListLineage(lineage);
  if (!members.ok()) return members.status();
  // The tracker counts from the newest member only; a newer one would have
  // been cut by a snapshot the volume's record does not name.
  if (members->empty() || members->back().seq != seq) return Out();
  uint64_t from_seq = 0;
  if (f->lineage == lineage) {
    from_seq = f->seq;
  } else if (members->front().base_of == f->id) {
    from_seq = members->front().seq;
  } else {
    return Status::InvalidArgument("snapshot " + from + " is not of volume " + v.name + "'s lineage");
  }
  auto changed = ctx_.index->ChangedChunks(lineage, from_seq, seq);
  if (!changed.ok()) return changed.status();
  return Out(ChunksOf(*changed));
}

}  // namespace ebs::snapshot
