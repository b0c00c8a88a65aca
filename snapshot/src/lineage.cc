#include "lineage.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include <fmt/format.h>

#include "change_queries.h"
#include "ebs/engine/log.h"
#include "records.h"

namespace ebs::snapshot {

// A snapshot deleted while it was its lineage's newest stayed as the base of
// the next one (snapshot_index.h); now that the next one exists, fold it in
// and free what nothing needs any more.
Status Lineages::AbsorbRetired(const SnapshotRecord& rec) {
  auto members = ctx_.index->ListLineage(rec.lineage);
  if (!members.ok()) return members.status();
  bool any = false;
  for (const auto& mbr : *members) any = any || (mbr.retired && mbr.seq < rec.seq);
  if (!any) return Status::Ok();
  auto outcomes = ctx_.index->AbsorbRetired(rec.lineage);
  if (!outcomes.ok()) return outcomes.status();
  // The new snapshot's delta now reaches back to the newest live member
  // (or the lineage's base).
  auto prev = ctx_.Predecessor(rec.lineage, rec.seq);
  if (!prev.ok()) return prev.status();
  EBS_RETURN_IF_ERROR(RewriteManifest(rec, prev->first, prev->second));
  for (const auto& o : *outcomes) {
    for (const auto& h : o.released) EBS_RETURN_IF_ERROR(ctx_.pins.DeleteUnused(*ctx_.store, nullptr, h));
  }
  // The folded-in snapshots' manifests and tombstones: `rec`'s manifest no
  // longer needs them, and kept they would hold a reindex to the old chain.
  return RemoveSupersededManifests(rec.lineage, rec.seq);
}

Status Lineages::RemoveSupersededManifests(const std::string& lineage, uint64_t rewritten_seq) {
  auto tombstoned = ListTombstoned(*ctx_.store);
  if (!tombstoned.ok()) return tombstoned.status();
  std::map<std::string, std::vector<LineageMember>> lineages;
  auto members_of = [&](const std::string& l) -> Result<const std::vector<LineageMember>*> {
    auto it = lineages.find(l);
    if (it == lineages.end()) {
      auto members = ctx_.index->ListLineage(l);
      if (!members.ok()) return members.status();
      it = lineages.emplace(l, std::move(*members)).first;
    }
    return &it->second;
  };
  std::vector<std::pair<const Tombstoned*, std::optional<std::pair<std::string, uint64_t>>>> stale;
  std::set<std::pair<std::string, uint64_t>> rewrite;  // (lineage, seq) of members that absorbed one
  for (const auto& t : *tombstoned) {
    if (t.manifest && !lineage.empty() && t.manifest->lineage_id != lineage) continue;
    // Still a snapshot of the index: its deletion did not reach the index
    // (a crash right after the tombstone); deleting it again finishes it.
    if (auto r = ctx_.index->GetSnapshot(t.id); r.ok()) {
      continue;
    } else if (r.status().code() != ENOENT) {
      return r.status();
    }
    if (!t.manifest) {
      stale.push_back({&t, std::nullopt});  // only the tombstone is left
      continue;
    }
    auto members = members_of(t.manifest->lineage_id);
    if (!members.ok()) return members.status();
    const uint64_t seq = t.manifest->sequence;
    bool kept = false;
    std::optional<uint64_t> next;
    for (const auto& mbr : **members) {
      kept = kept || (mbr.seq == seq && mbr.retired);
      if (mbr.seq > seq && !next) next = mbr.seq;
    }
    if (kept) continue;  // retired: the base of the lineage's next snapshot
    // Absorbed into `next` (or dropped, with nothing after it). The manifest
    // of `next` may still be a delta against this one (a crash before it
    // was rewritten): rewrite it first, or a reindex could not rebuild it.
    std::optional<std::pair<std::string, uint64_t>> absorber;
    if (next && *next != rewritten_seq) absorber.emplace(t.manifest->lineage_id, *next);
    if (absorber) rewrite.insert(*absorber);
    stale.push_back({&t, absorber});
  }
  if (stale.empty()) return Status::Ok();
  std::vector<SnapshotRecord> records;
  if (!rewrite.empty()) {
    auto all = ctx_.index->ListSnapshots();
    if (!all.ok()) return all.status();
    records = std::move(*all);
  }
  std::set<std::pair<std::string, uint64_t>> failed;
  for (const auto& [l, seq] : rewrite) {
    auto prev = ctx_.Predecessor(l, seq);
    if (!prev.ok()) return prev.status();
    const SnapshotRecord* live = nullptr;
    for (const auto& r : records) {
      if (r.lineage == l && r.seq == seq && r.state == SnapshotState::kCompleted) live = &r;
    }
    Status st = Status::Ok();
    if (live != nullptr) {
      st = RewriteManifest(*live, prev->first, prev->second);
    } else {
      // A retired member (kept with its tombstone): its manifest only.
      for (const auto& t : *tombstoned) {
        if (!st.ok() || !t.manifest || t.manifest->lineage_id != l || t.manifest->sequence != seq) continue;
        st = RewriteManifest(RecordOf(*t.manifest), prev->first, prev->second, /*update_record=*/false);
      }
    }
    if (!st.ok()) {
      // An encrypted chain whose key is missing, say: its deleted
      // snapshot's manifest stays until a later gc can rewrite the next
      // one; the rest goes on.
      LogWarning(fmt::format("lineage {}: rewriting the manifest of seq {} failed (kept what it depends on): {}", l, seq,
                             st.message()));
      failed.emplace(l, seq);
    }
  }
  // The manifest before its tombstone: a manifest left without one would
  // look like a snapshot the index lost.
  std::erase_if(stale, [&](const auto& s) { return s.second && failed.count(*s.second); });
  for (const auto& s : stale) EBS_RETURN_IF_ERROR(ctx_.store->Delete(ManifestKey(s.first->id)));
  for (const auto& s : stale) EBS_RETURN_IF_ERROR(ctx_.store->Delete(TombstoneKey(s.first->id)));
  return Status::Ok();
}

Result<uint64_t> Lineages::DropAbandonedTip(const std::string& lineage) {
  auto members = ctx_.index->ListLineage(lineage);
  if (!members.ok()) return members.status();
  if (members->empty() || members->back().live()) return uint64_t{0};
  size_t first = members->size();
  while (first > 0 && !(*members)[first - 1].live()) --first;
  // The manifests of the members to drop (retired snapshots, by their
  // tombstones; a fork's base, by its lineage) go first: a crash after this
  // leaves index entries of a lineage that will never grow, which store
  // check accepts and the next gc drops, never a manifest a reindex would
  // bring back without its entries.
  auto tombstoned = ListTombstoned(*ctx_.store);
  if (!tombstoned.ok()) return tombstoned.status();
  std::vector<std::string> ids;
  for (size_t i = first; i < members->size(); ++i) {
    const LineageMember& mbr = (*members)[i];
    if (mbr.base()) {
      EBS_RETURN_IF_ERROR(ctx_.store->Delete(ManifestKey(BaseId(lineage))));
      continue;
    }
    for (const auto& t : *tombstoned) {
      if (t.manifest && t.manifest->lineage_id == lineage && t.manifest->sequence == mbr.seq) ids.push_back(t.id);
    }
  }
  for (const auto& id : ids) EBS_RETURN_IF_ERROR(ctx_.store->Delete(ManifestKey(id)));
  auto released = ctx_.index->DropRetiredTip(lineage);
  if (!released.ok()) return released.status();
  for (const auto& h : *released) EBS_RETURN_IF_ERROR(ctx_.store->Delete(ChunkKey(h)));
  for (const auto& id : ids) EBS_RETURN_IF_ERROR(ctx_.store->Delete(TombstoneKey(id)));
  return static_cast<uint64_t>(released->size());
}

Status Lineages::RewriteManifest(const SnapshotRecord& rec, uint64_t prev_seq, const std::string& prev_id,
                                 bool update_record) {
  auto bytes = ctx_.store->Get(ManifestKey(rec.id));
  if (!bytes.ok()) return bytes.status();
  auto m = DecodeManifest(*bytes);
  if (!m.ok()) return m.status();
  auto delta = ctx_.index->ChangedChunks(rec.lineage, prev_seq, rec.seq);
  if (!delta.ok()) return delta.status();
  m->parent_snapshot_id = prev_id;
  m->delta = *delta;
  auto crypto = ctx_.CryptoFor(rec);
  if (!crypto.ok()) return crypto.status();
  auto encoded = EncodeManifest(*m, crypto->get());
  if (!encoded.ok()) return encoded.status();
  EBS_RETURN_IF_ERROR(ctx_.store->Put(ManifestKey(rec.id), *encoded));
  if (!update_record) return Status::Ok();
  // The record says the same: its parent, and its changed bytes counted
  // over the new delta (the data in it, as CommitJob and Reindex count).
  SnapshotRecord updated = rec;
  updated.parent_id = prev_id;
  updated.changed_bytes = DataBytes(*delta, rec.volume_size, rec.chunk_size);
  if (updated != rec) EBS_RETURN_IF_ERROR(ctx_.index->PutSnapshot(updated));
  return Status::Ok();
}

Result<nlohmann::json> Lineages::Delete(const std::string& id) {
  auto r = ctx_.index->GetSnapshot(id);
  if (!r.ok()) return r.status();  // the index names the missing snapshot
  auto vols = ctx_.volumes->List();
  if (!vols.ok()) return vols.status();
  for (const auto& v : *vols) {
    if (v.record.source_snapshot == id && v.record.initialization_state == LoadState::kLoading) {
      return Status::Busy("InvalidSnapshot.InUse: volume '" + v.record.name + "' is still loading from snapshot " + id +
                          "; delete it after the volume's initialization completes");
    }
  }
  // Deleting may re-seal the next snapshot's manifest (below): an encrypted
  // chain needs its key for that, so without it nothing is changed.
  if (auto crypto = ctx_.CryptoFor(*r); !crypto.ok()) {
    return Status::Error(crypto.status().code(), "cannot delete: " + crypto.status().message());
  }
  // The tombstone first: whatever step a crash interrupts below, the store
  // says this snapshot was deleted, and a reindex deletes it again.
  const bool has_manifest = r->state == SnapshotState::kCompleted;
  if (has_manifest) EBS_RETURN_IF_ERROR(ctx_.store->Put(TombstoneKey(id), id));
  auto outcome = ctx_.index->DeleteSnapshot(id);
  if (!outcome.ok()) return outcome.status();
  // Objects nobody references any more.
  uint64_t freed = 0;
  for (const auto& h : outcome->released) {
    EBS_RETURN_IF_ERROR(ctx_.store->Delete(ChunkKey(h)));
    ++freed;
  }
  // A retired snapshot stays the base of the next one: its manifest stays,
  // with the tombstone. Absorbed, both go, once the member that absorbed it
  // (live, or itself retired) has its manifest rewritten against its new
  // predecessor, so the store stays self-describing.
  if (has_manifest && !outcome->retired) EBS_RETURN_IF_ERROR(RemoveSupersededManifests(r->lineage));
  // Retired, its volume gone (deleted; or an imported snapshot's, which
  // never had one): no next snapshot will ever absorb it, so it goes now,
  // with a fork base nothing is left to use.
  if (outcome->retired) {
    auto ids = ctx_.VolumeIds();
    if (!ids.ok()) return ids.status();
    if (!ids->count(r->lineage)) {
      auto dropped = DropAbandonedTip(r->lineage);
      if (!dropped.ok()) return dropped.status();
      freed += *dropped;
    }
  }
  return nlohmann::json{{"id", id}, {"deleted", true}, {"objects_freed", freed}};
}

Result<nlohmann::json> Lineages::Diff(const std::string& from, const std::string& to, bool with_ranges) {
  auto a = ctx_.index->GetSnapshot(from);
  if (!a.ok()) return a.status();  // the index names the missing snapshot
  auto b = ctx_.index->GetSnapshot(to);
  if (!b.ok()) return b.status();  // the index names the missing snapshot
  auto span = DeltaSpanOf(*ctx_.index, *a, *b);
  if (!span.ok()) return span.status();
  auto changed = ctx_.index->ChangedChunks(span->lineage, span->from_seq, span->to_seq);
  if (!changed.ok()) return changed.status();
  // A diff can list millions of chunks: flat arrays of numbers (columns),
  // not one JSON object or array per chunk or range (allocations each). Byte
  // ranges merge adjacent changed chunks; only when asked, since in the worst
  // case (no two chunks adjacent) they are two more arrays as long.
  const uint64_t size = std::max(a->volume_size, b->volume_size);
  const uint64_t chunk_size = a->chunk_size;
  nlohmann::json chunks = nlohmann::json::array(), zeroed = nlohmann::json::array();
  nlohmann::json offsets = nlohmann::json::array(), lengths = nlohmann::json::array();
  auto& chunk_list = chunks.get_ref<nlohmann::json::array_t&>();
  auto& offset_list = offsets.get_ref<nlohmann::json::array_t&>();
  auto& length_list = lengths.get_ref<nlohmann::json::array_t&>();
  chunk_list.reserve(changed->size());
  if (with_ranges) {
    size_t nranges = 0;
    for (size_t i = 0; i < changed->size(); ++i) nranges += i == 0 || (*changed)[i].chunk != (*changed)[i - 1].chunk + 1;
    offset_list.reserve(nranges);
    length_list.reserve(nranges);
  }
  uint64_t run_end = 0;  // end of the byte range being merged
  for (const auto& e : *changed) {
    chunk_list.emplace_back(e.chunk);
    if (e.hash.IsZeroChunk()) zeroed.push_back(e.chunk);
    const uint64_t off = e.chunk * chunk_size;
    const uint64_t len = ChunkBytes(e.chunk, size, chunk_size);
    if (!with_ranges) continue;
    if (!offset_list.empty() && run_end == off) {
      length_list.back() = length_list.back().get<uint64_t>() + len;
    } else {
      offset_list.emplace_back(off);
      length_list.emplace_back(len);
    }
    run_end = off + len;
  }
  // Built by moving, never through an initializer list (which copies).
  nlohmann::json out = nlohmann::json::object();
  out["from"] = from;
  out["to"] = to;
  out["chunk_size"] = chunk_size;
  out["volume_size"] = size;
  out["changed_chunks"] = changed->size();
  out["chunks"] = std::move(chunks);
  out["zeroed_chunks"] = std::move(zeroed);
  if (with_ranges) {
    out["ranges"] = nlohmann::json::object();
    out["ranges"]["offsets"] = std::move(offsets);
    out["ranges"]["lengths"] = std::move(lengths);
  }
  return out;
}

}  // namespace ebs::snapshot
