// StoreAudit::Reindex: the index rebuilt from the store's manifests alone.
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>

#include "records.h"
#include "store_audit.h"

namespace ebs::snapshot {

Result<nlohmann::json> StoreAudit::Reindex(bool force) {
  auto keys = ctx_.store->List(kManifestKeyPrefix);
  if (!keys.ok()) return keys.status();
  // Every problem below drops a snapshot (or a chain's correctness) from
  // the new index, and with it the references that keep its objects from
  // gc: without `force`, any of them leaves the index as it is.
  nlohmann::json problems = nlohmann::json::array();
  std::map<std::string, std::map<uint64_t, Manifest>> lineages;  // lineage -> seq -> manifest
  std::set<std::string> deleted;
  for (const auto& key : *keys) {
    if (key.ends_with(".deleted")) {
      deleted.insert(key.substr(kManifestKeyPrefix.size(), key.size() - kManifestKeyPrefix.size() - 8));
      continue;
    }
    if (!key.ends_with(kManifestKeySuffix)) continue;
    auto bytes = ctx_.store->Get(key);
    auto m = bytes.ok() ? DecodeManifest(*bytes) : Result<Manifest>(bytes.status());
    const std::string skipped = force ? " (skipped)" : "";
    if (!m.ok()) {
      problems.push_back({{"object", key}, {"error", m.status().message() + skipped}});
      continue;
    }
    if (m->chunk_size != ctx_.chunk_size) {
      problems.push_back({{"object", key}, {"error", "chunk size differs from the store's" + skipped}});
      continue;
    }
    if (key != ManifestKey(m->snapshot_id)) {
      problems.push_back({{"object", key}, {"error", "holds the manifest of " + m->snapshot_id + skipped}});
      continue;
    }
    lineages[m->lineage_id][m->sequence] = std::move(*m);
  }
  // A completed snapshot of the current index whose manifest is not in the
  // store at all would vanish without a word. (The index may be what is
  // broken: if it cannot be listed, the store alone decides.)
  if (auto current = ctx_.index->ListSnapshots(); current.ok()) {
    std::set<std::string> listed(keys->begin(), keys->end());
    for (const auto& r : *current) {
      if (r.state == SnapshotState::kCompleted && !listed.count(ManifestKey(r.id))) {
        problems.push_back({{"object", ManifestKey(r.id)},
                            {"snapshot", r.id},
                            {"error", "missing: snapshot " + r.id + " is completed in the index" +
                                          (force ? " (dropped)" : "")}});
      }
    }
  }
  auto refuse = [&]() -> Status {
    std::string list;
    for (const auto& p : problems) {
      list += fmt::format("\n  {}: {}", p["object"].get<std::string>(), p["error"].get<std::string>());
    }
    return Status::IoError(fmt::format(
        "store reindex refused, the index is unchanged: the store does not describe every snapshot "
        "(rebuilding without these would drop their snapshots, and store gc then their objects; "
        "--force does that):{}",
        list));
  };
  if (!problems.empty() && !force) return refuse();
  // A fresh index beside the old one; swapped in only when complete.
  const std::string dir = ctx_.root + "/index";
  const std::string fresh = ctx_.root + "/index.reindex";
  std::error_code ec;
  std::filesystem::remove_all(fresh, ec);
  auto index = SnapshotIndex::Open(fresh);
  if (!index.ok()) return index.status();
  uint64_t snapshots = 0, removed = 0, bases = 0;
  for (auto& [lineage, members] : lineages) {
    std::map<uint64_t, ContentHash> map;  // the lineage's whole map as deltas apply
    for (auto& [seq, m] : members) {
      if (IsBaseOf(m)) {
        // A fork's base: a copy of its source's map, with no record; always
        // its lineage's first member, so `map` was empty until now.
        MapDigest digest;
        for (const auto& e : m.delta) {
          if (!e.hash.IsZeroChunk()) map[e.chunk] = e.hash;
        }
        for (const auto& [chunk, hash] : map) digest.Add(chunk, hash);
        if (digest.value() != m.map_digest || seq != members.begin()->first) {
          problems.push_back({{"object", ManifestKey(m.snapshot_id)},
                              {"error", "the base of lineage " + lineage + " does not reproduce its map"}});
        }
        Status st = (*index)->CommitDelta(lineage, seq, m.delta, m.parent_snapshot_id);
        if (!st.ok()) return Status::Error(st.code(), "reindex of " + m.snapshot_id + " failed: " + st.message());
        ++bases;
        continue;
      }
      MapDigest digest;
      SnapshotRecord rec = RecordOf(m);
      rec.changed_bytes = DataBytes(m.delta, m.volume_size, m.chunk_size);
      for (const auto& e : m.delta) {
        if (e.hash.IsZeroChunk()) {
          map.erase(e.chunk);
        } else {
          map[e.chunk] = e.hash;
        }
      }
      for (const auto& [chunk, hash] : map) {
        digest.Add(chunk, hash);
        rec.logical_bytes += ChunkBytes(chunk, m.volume_size, m.chunk_size);
      }
      if (digest.value() != m.map_digest) {
        problems.push_back({{"object", ManifestKey(m.snapshot_id)},
                            {"snapshot", m.snapshot_id},
                            {"error", "its chain of deltas does not reproduce the map it recorded (digest mismatch)"}});
      }
      Status st = (*index)->CompleteSnapshot(rec, m.delta);
      if (!st.ok()) return Status::Error(st.code(), "reindex of " + rec.id + " failed: " + st.message());
      ++snapshots;
    }
    // Deleted snapshots kept as bases: delete them again, in order, now that
    // their successors are in (absorbed into the next, or retired if last).
    for (auto& [seq, m] : members) {
      if (!deleted.count(m.snapshot_id)) continue;
      auto out = (*index)->DeleteSnapshot(m.snapshot_id);
      if (!out.ok()) return out.status();
      --snapshots;
      ++removed;
    }
  }
  index->reset();
  if (!problems.empty() && !force) {
    std::filesystem::remove_all(fresh, ec);
    return refuse();
  }
  ctx_.index.reset();
  const std::string old = ctx_.root + "/index.old";
  std::filesystem::remove_all(old, ec);
  std::filesystem::rename(dir, old, ec);
  if (ec) return Status::IoError("reindex: cannot move the old index aside: " + ec.message());
  std::filesystem::rename(fresh, dir, ec);
  if (ec) {
    std::filesystem::rename(old, dir, ec);
    return Status::IoError("reindex: cannot put the new index in place");
  }
  auto reopened = SnapshotIndex::Open(dir);
  if (!reopened.ok()) return reopened.status();
  ctx_.index = std::move(*reopened);
  std::filesystem::remove_all(old, ec);
  return nlohmann::json{{"snapshots", snapshots}, {"deleted_bases", removed}, {"fork_bases", bases},
                        {"ok", problems.empty()}, {"problems", problems}};
}

}  // namespace ebs::snapshot
