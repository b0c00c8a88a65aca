#include "store_audit.h"

#include <map>
#include <mutex>
#include <set>

#include <fmt/format.h>

#include "ebs/engine/progress.h"
#include "ebs/snapshot/chunk_codec.h"
#include "ebs/snapshot/directory_object_store.h"
#include "parallel.h"
#include "records.h"

namespace ebs::snapshot {

Status StoreAudit::RecoverInterrupted() {
  auto all = ctx_.index->ListSnapshots();
  if (!all.ok()) return all.status();
  bool any = false;
  for (auto r : *all) {
    if (r.state != SnapshotState::kPending) continue;
    // A manifest it wrote before dying names objects the gc below removes:
    // left in the store, a reindex would bring the snapshot back completed
    // and broken. Removed first, so a crash here leaves it pending and this
    // runs again.
    EBS_RETURN_IF_ERROR(ctx_.DropUncommittedManifests(r));
    r.state = SnapshotState::kError;
    r.error = "interrupted: the process taking it stopped before it completed";
    EBS_RETURN_IF_ERROR(ctx_.index->PutSnapshot(r));
    any = true;
  }
  // Its uploaded objects are referenced by nothing.
  if (any) {
    auto gc = Gc();
    if (!gc.ok()) return gc.status();
  }
  return Status::Ok();
}

Result<nlohmann::json> StoreAudit::Verify(const std::string& id) {
  auto r = ctx_.index->GetSnapshot(id);
  if (!r.ok()) return r.status();  // the index names the missing snapshot
  nlohmann::json bad = nlohmann::json::array();
  auto crypto = ctx_.CryptoFor(*r);
  if (!crypto.ok()) return crypto.status();  // nothing can be checked without the key
  if (Status m = ctx_.CheckManifest(*r, crypto->get()); !m.ok()) {
    bad.push_back({{"object", ManifestKey(id)}, {"error", m.message()}});
  }
  auto map = ctx_.FullMap(*r);
  if (!map.ok()) return map.status();
  std::mutex mu;
  ProgressReporter progress("verifying " + id, map->size());
  Status st = ParallelFor(map->size(), ctx_.workers, [&](size_t i) -> Status {
    progress.Add();
    thread_local ChunkCodec codec;
    thread_local std::string data;
    const DeltaEntry& e = (*map)[i];
    auto object = ctx_.store->Get(ChunkKey(e.hash));
    Status problem = object.ok() ? codec.Decode(*object, e.hash, &data, crypto->get()) : object.status();
    if (!problem.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      bad.push_back({{"chunk", e.chunk}, {"object", ChunkKey(e.hash)}, {"error", problem.message()}});
    }
    return Status::Ok();
  });
  if (!st.ok()) return st;
  return nlohmann::json{{"snapshot", id}, {"chunks_checked", map->size()}, {"ok", bad.empty()}, {"bad", bad}};
}

Result<nlohmann::json> StoreAudit::Gc() {
  // Lineages whose volume is gone keep nothing for a next snapshot (see
  // DropAbandonedTip): a volume deleted after its newest snapshot was, or
  // while the store was not open (volume delete does not open it). A
  // volume of this data directory is known by its id (lineage), not its
  // name, which a new volume may reuse.
  auto ids = ctx_.VolumeIds();
  if (!ids.ok()) return ids.status();
  auto lineages = ctx_.index->ListLineages();
  if (!lineages.ok()) return lineages.status();
  uint64_t dropped = 0;
  for (const auto& l : *lineages) {
    if (ids->count(l)) continue;
    auto n = lineages_.DropAbandonedTip(l);
    if (!n.ok()) return n.status();
    dropped += *n;
  }
  // Manifests and tombstones of deleted snapshots left by an interrupted
  // deletion or fold.
  EBS_RETURN_IF_ERROR(lineages_.RemoveSupersededManifests(""));
  // Temporary files of uploads a killed process left: only old ones, since
  // another process may be writing into this store directory right now.
  uint64_t temporaries = 0;
  if (auto* dir = dynamic_cast<DirectoryObjectStore*>(ctx_.store.get()); dir != nullptr) {
    auto n = dir->RemoveStaleTemporaries();
    if (!n.ok()) return n.status();
    temporaries = *n;
  }
  auto keys = ctx_.store->List(kChunkKeyPrefix);
  if (!keys.ok()) return keys.status();
  uint64_t removed = dropped;
  for (const auto& key : *keys) {
    std::string hex = key.substr(key.rfind('/') + 1);
    auto h = ContentHash::FromHex(hex);
    if (!h.ok()) continue;  // not ours
    auto refs = ctx_.index->RefCount(*h);
    if (!refs.ok()) return refs.status();
    if (*refs == 0) {
      EBS_RETURN_IF_ERROR(ctx_.store->Delete(key));
      ++removed;
    }
  }
  return nlohmann::json{{"objects_examined", keys->size()}, {"objects_removed", removed},
                        {"temporaries_removed", temporaries}};
}

Result<nlohmann::json> StoreAudit::Check() {
  nlohmann::json problems = nlohmann::json::array();
  // Every problem names an object (the one missing, unreferenced or
  // miscounted, or the manifest of the snapshot concerned).
  auto problem = [&](const std::string& object, const std::string& error) {
    problems.push_back({{"object", object}, {"error", error}});
  };
  // Reference counts against the entries that name each object: a count
  // too high keeps garbage, one too low lets gc delete data a snapshot needs.
  auto audit = ctx_.index->AuditReferences();
  if (!audit.ok()) return audit.status();
  for (const auto& p : audit->problems) {
    std::string error = fmt::format("reference count {} but {} index entries name it", p.stored, p.in_deltas);
    if (p.in_maps != p.in_deltas) error += fmt::format(" ({} in chunk maps)", p.in_maps);
    problem(ChunkKey(p.hash), error);
    // A hash named by entries but without a count is not in the list below:
    // its object must exist all the same.
    if (p.stored == 0 && p.in_deltas + p.in_maps > 0) {
      auto exists = ctx_.store->Exists(ChunkKey(p.hash));
      if (!exists.ok()) return exists.status();
      if (!*exists) problem(ChunkKey(p.hash), "referenced but missing");
    }
  }
  auto refs = ctx_.index->ListRefCounts();
  if (!refs.ok()) return refs.status();
  for (const auto& [hash, count] : *refs) {
    auto exists = ctx_.store->Exists(ChunkKey(hash));
    if (!exists.ok()) return exists.status();
    if (!*exists) problem(ChunkKey(hash), "referenced but missing");
  }
  auto keys = ctx_.store->List(kChunkKeyPrefix);
  if (!keys.ok()) return keys.status();
  for (const auto& key : *keys) {
    auto h = ContentHash::FromHex(key.substr(key.rfind('/') + 1));
    if (!h.ok()) {
      problem(key, "not a chunk object name");
      continue;
    }
    auto n = ctx_.index->RefCount(*h);
    if (!n.ok()) return n.status();
    if (*n == 0) problem(key, "not referenced by any snapshot (store gc removes it)");
  }
  // Manifests against snapshot records and lineages: every completed
  // snapshot has one (a reindex would drop it otherwise), and every one
  // belongs to the index (a reindex would bring back a snapshot that is not
  // there). Kept besides the records: the manifest of a deleted snapshot
  // that is still the base of its lineage's next one, with its tombstone,
  // and a fork's base.
  auto manifest_keys = ctx_.store->List(kManifestKeyPrefix);
  if (!manifest_keys.ok()) return manifest_keys.status();
  std::set<std::string> manifests, tombstones;
  for (const auto& key : *manifest_keys) {
    const std::string name = key.substr(kManifestKeyPrefix.size());
    if (name.ends_with(".deleted")) {
      tombstones.insert(name.substr(0, name.size() - 8));
    } else if (name.ends_with(kManifestKeySuffix)) {
      manifests.insert(name.substr(0, name.size() - kManifestKeySuffix.size()));
    }
  }
  auto records = ctx_.index->ListSnapshots();
  if (!records.ok()) return records.status();
  std::map<std::string, SnapshotState> states;
  std::map<std::string, std::vector<LineageMember>> lineages;  // of completed snapshots
  for (const auto& r : *records) {
    states[r.id] = r.state;
    if (r.state != SnapshotState::kCompleted) continue;
    if (!manifests.count(r.id)) {
      problem(ManifestKey(r.id), "missing: the manifest of completed snapshot " + r.id);
    }
    auto it = lineages.find(r.lineage);
    if (it == lineages.end()) {
      auto members = ctx_.index->ListLineage(r.lineage);
      if (!members.ok()) return members.status();
      it = lineages.emplace(r.lineage, std::move(*members)).first;
    }
    bool live = false;
    for (const auto& mbr : it->second) live = live || (mbr.seq == r.seq && mbr.live());
    if (!live) {
      problem(ManifestKey(r.id), fmt::format("completed snapshot {} has no chunk map in the index (lineage {} seq {})",
                                             r.id, r.lineage, r.seq));
    }
  }
  for (const auto& id : manifests) {
    auto state = states.find(id);
    if (state != states.end()) {
      if (state->second != SnapshotState::kCompleted) {
        problem(ManifestKey(id), "the manifest of snapshot " + id + ", which is " +
                                     std::string(SnapshotStateName(state->second)) +
                                     " (a reindex would bring it back completed)");
      }
      continue;
    }
    if (tombstones.count(id)) continue;  // deleted, kept as the base of the next snapshot
    if (id.ends_with(kBaseIdSuffix)) {
      const std::string lineage = id.substr(0, id.size() - kBaseIdSuffix.size());
      auto members = ctx_.index->ListLineage(lineage);
      if (members.ok() && !members->empty() && members->front().base()) continue;
      problem(ManifestKey(id), "the base of lineage " + lineage + ", which the index does not have");
      continue;
    }
    problem(ManifestKey(id), "the manifest of snapshot " + id +
                                 ", which is not in the index (a reindex would bring it back)");
  }
  return nlohmann::json{{"objects", keys->size()},
                        {"referenced", refs->size()},
                        {"reference_entries", audit->entries},
                        {"manifests", manifests.size()},
                        {"ok", problems.empty()},
                        {"problems", problems}};
}

}  // namespace ebs::snapshot
