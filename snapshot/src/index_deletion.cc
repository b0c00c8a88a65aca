// SnapshotIndex's deletion rule (snapshot_index.h): deleting, absorbing,
// retiring and dropping members of a lineage.
#include "index_internal.h"

namespace ebs::snapshot {

// --- Deletion -------------------------------------------------------------------

Result<std::vector<SnapshotIndex::DeltaItem>> SnapshotIndex::ReadDelta(std::string_view lineage, uint64_t seq) {
  std::vector<DeltaItem> items;
  const std::string prefix = DeltaSeqPrefix(lineage, seq);
  const std::string upper = PrefixEnd(prefix);
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  for (it->Seek(prefix); it->Valid(); it->Next()) {
    if (it->key().size() != prefix.size() + 8) return Status::IoError("snapshot index: corrupt delta key");
    auto h = HashValue(it->value(), it->key());
    if (!h.ok()) return h.status();
    items.push_back({coding::DecodeBig64(it->key().data() + prefix.size()), seq, *h, false});
  }
  if (!it->status().ok()) return Db(it->status(), "scan delta");
  return items;
}

Status SnapshotIndex::AddAbsorb(Mutation& m, std::string_view lineage, uint64_t seq, uint64_t into,
                                DeleteOutcome* outcome) {
  outcome->absorbed_into = into;
  auto items = ReadDelta(lineage, seq);
  if (!items.ok()) return items.status();
  // Decide each entry's fate: a chunk that `into` changed again is dropped
  // (nothing from `into` on can see this entry, and nothing before `seq`
  // ever could); any other moves to `into`. Both deltas are sorted by chunk,
  // so one forward iterator over delta(into) answers every question.
  const std::string into_prefix = DeltaSeqPrefix(lineage, into);
  const std::string into_upper = PrefixEnd(into_prefix);
  rocksdb::Slice into_upper_slice(into_upper);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &into_upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  if (!items->empty()) it->Seek(DeltaKey(lineage, into, items->front().chunk));
  for (DeltaItem& item : *items) {
    const std::string target = DeltaKey(lineage, into, item.chunk);
    // Advance to the first key >= target: short hops by Next(), long ones
    // by Seek(), so both a dense and a sparse delta(into) cost little.
    for (int hops = 0; it->Valid() && it->key().compare(target) < 0; ++hops) {
      if (hops == 8) {
        it->Seek(target);
        break;
      }
      it->Next();
    }
    if (!it->status().ok()) return Db(it->status(), "scan delta");
    item.move = !(it->Valid() && it->key() == target);
    if (item.move) {
      ++outcome->moved;
    } else {
      ++outcome->dropped;
      m.Ref(item.hash, -1);
    }
  }
  // Key order: see Mutation. d|seq < d|into because seq < into.
  for (const DeltaItem& item : *items) m.batch.Delete(DeltaKey(lineage, seq, item.chunk));
  for (const DeltaItem& item : *items) {
    if (item.move) m.batch.Put(DeltaKey(lineage, into, item.chunk), rocksdb::Slice(item.hash.AsBytes()));
  }
  m.batch.Delete(MemberKey(lineage, seq));
  for (const DeltaItem& item : *items) {
    // m|chunk|~into sorts before m|chunk|~seq.
    if (item.move) m.batch.Put(MapKey(lineage, item.chunk, into), rocksdb::Slice(item.hash.AsBytes()));
    m.batch.Delete(MapKey(lineage, item.chunk, seq));
  }
  return Status::Ok();
}

Status SnapshotIndex::AddDelete(Mutation& m, std::string_view lineage, uint64_t seq, DeleteOutcome* outcome) {
  outcome->seq = seq;
  auto next = NextMember(lineage, seq);
  if (!next.ok()) return next.status();
  if (!next->has_value()) {
    // The newest member: the lineage's next snapshot will be a delta against
    // it, so its entries must outlive it.
    m.batch.Put(MemberKey(lineage, seq), std::string(1, kRetired));
    outcome->retired = true;
    return Status::Ok();
  }
  return AddAbsorb(m, lineage, seq, **next, outcome);
}

Result<DeleteOutcome> SnapshotIndex::DeleteSnapshotEntries(std::string_view lineage, uint64_t seq) {
  EBS_RETURN_IF_ERROR(ValidateName("lineage id", lineage));
  std::lock_guard lock(mu_);
  auto member = GetMember(lineage, seq);
  if (!member.ok()) return member.status();
  if (!member->has_value() || !(*member)->live()) {
    return Status::NotFound("lineage " + std::string(lineage) + " has no live snapshot seq " + std::to_string(seq));
  }
  Mutation m;
  DeleteOutcome outcome;
  EBS_RETURN_IF_ERROR(AddDelete(m, lineage, seq, &outcome));
  EBS_RETURN_IF_ERROR(m.Write(db_, &outcome.released));
  return outcome;
}

Result<DeleteOutcome> SnapshotIndex::DeleteSnapshot(std::string_view id) {
  std::lock_guard lock(mu_);
  auto record = GetSnapshot(id);
  if (!record.ok()) return record.status();
  Mutation m;
  DeleteOutcome outcome;
  outcome.seq = record->seq;
  // Only a committed snapshot has entries; a pending or failed one is just
  // its record.
  auto member = GetMember(record->lineage, record->seq);
  if (!member.ok()) return member.status();
  if (member->has_value() && (*member)->live()) {
    EBS_RETURN_IF_ERROR(AddDelete(m, record->lineage, record->seq, &outcome));
  }
  m.DeleteRecord(id);
  EBS_RETURN_IF_ERROR(m.Write(db_, &outcome.released));
  return outcome;
}

Result<std::vector<DeleteOutcome>> SnapshotIndex::AbsorbRetired(std::string_view lineage) {
  EBS_RETURN_IF_ERROR(ValidateName("lineage id", lineage));
  std::lock_guard lock(mu_);
  auto members = ListLineage(lineage);
  if (!members.ok()) return members.status();
  std::vector<DeleteOutcome> outcomes;
  // Ascending, one batch per step: absorbing member i only removes member i,
  // so member i+1 is still the next one when its own turn comes, and each
  // step reads what the previous one wrote.
  for (size_t i = 0; i + 1 < members->size(); ++i) {
    if (!(*members)[i].retired) continue;
    Mutation m;
    DeleteOutcome outcome;
    outcome.seq = (*members)[i].seq;
    EBS_RETURN_IF_ERROR(AddAbsorb(m, lineage, (*members)[i].seq, (*members)[i + 1].seq, &outcome));
    EBS_RETURN_IF_ERROR(m.Write(db_, &outcome.released));
    outcomes.push_back(std::move(outcome));
  }
  return outcomes;
}

Result<std::vector<ContentHash>> SnapshotIndex::DropRetiredTip(std::string_view lineage) {
  EBS_RETURN_IF_ERROR(ValidateName("lineage id", lineage));
  std::lock_guard lock(mu_);
  auto members = ListLineage(lineage);
  if (!members.ok()) return members.status();
  // Members after the newest live one are visible only to seqs beyond every
  // live snapshot, which (by the caller's promise) will never exist. That
  // includes a fork's base once none of its snapshots is left.
  size_t first = members->size();
  while (first > 0 && !(*members)[first - 1].live()) --first;
  std::vector<DeltaItem> items;
  for (size_t i = first; i < members->size(); ++i) {
    auto delta = ReadDelta(lineage, (*members)[i].seq);
    if (!delta.ok()) return delta.status();
    items.insert(items.end(), delta->begin(), delta->end());
  }
  Mutation m;
  // Key order: see Mutation. `items` is in (seq, chunk) order: d| order.
  for (const DeltaItem& item : items) {
    m.batch.Delete(DeltaKey(lineage, item.seq, item.chunk));
    m.Ref(item.hash, -1);
  }
  for (size_t i = first; i < members->size(); ++i) m.batch.Delete(MemberKey(lineage, (*members)[i].seq));
  std::sort(items.begin(), items.end(), [](const DeltaItem& a, const DeltaItem& b) {
    return a.chunk != b.chunk ? a.chunk < b.chunk : a.seq > b.seq;  // m| order: chunk, then newest first
  });
  for (const DeltaItem& item : items) m.batch.Delete(MapKey(lineage, item.chunk, item.seq));
  std::vector<ContentHash> released;
  EBS_RETURN_IF_ERROR(m.Write(db_, &released));
  return released;
}

}  // namespace ebs::snapshot
