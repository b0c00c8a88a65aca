#include "records.h"

#include <random>

#include <fmt/format.h>

#include "ebs/engine/time.h"
#include "ebs/engine/volume_record.h"  // NowMs

namespace ebs::snapshot {

std::string NewSnapshotId() {
  std::random_device rd;
  std::mt19937_64 gen((static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(NowMs()));
  uint64_t high = gen() & 0xf;
  return fmt::format("snap-{:01x}{:016x}", high, gen());
}

uint64_t DataBytes(const std::vector<DeltaEntry>& entries, uint64_t volume_size, uint64_t chunk_size) {
  uint64_t n = 0;
  for (const auto& e : entries) {
    if (!e.hash.IsZeroChunk()) n += ChunkBytes(e.chunk, volume_size, chunk_size);
  }
  return n;
}

Manifest ManifestOf(const SnapshotRecord& rec, std::vector<DeltaEntry> delta, uint64_t map_digest) {
  Manifest m;
  m.snapshot_id = rec.id;
  m.volume_name = rec.volume_name;
  m.volume_id = rec.volume_id;
  m.lineage_id = rec.lineage;
  m.sequence = rec.seq;
  m.parent_snapshot_id = rec.parent_id;
  m.volume_size = rec.volume_size;
  m.chunk_size = rec.chunk_size;
  m.created_at_ms = rec.created_at_ms;
  m.description = rec.description;
  m.key_name = rec.key_name;
  m.key_id = rec.key_id;
  m.delta = std::move(delta);
  m.map_digest = map_digest;
  return m;
}

SnapshotRecord RecordOf(const Manifest& m) {
  SnapshotRecord r;
  r.id = m.snapshot_id;
  r.state = SnapshotState::kCompleted;
  r.volume_name = m.volume_name;
  r.volume_id = m.volume_id;
  r.lineage = m.lineage_id;
  r.seq = m.sequence;
  r.parent_id = m.parent_snapshot_id;
  r.volume_size = m.volume_size;
  r.chunk_size = m.chunk_size;
  r.created_at_ms = m.created_at_ms;
  r.description = m.description;
  r.key_name = m.key_name;
  r.key_id = m.key_id;
  return r;
}

Result<std::vector<Tombstoned>> ListTombstoned(ObjectStore& store) {
  auto keys = store.List(kManifestKeyPrefix);
  if (!keys.ok()) return keys.status();
  std::vector<Tombstoned> out;
  for (const auto& key : *keys) {
    if (!key.ends_with(kTombstoneSuffix)) continue;
    Tombstoned t;
    t.id = key.substr(kManifestKeyPrefix.size(), key.size() - kManifestKeyPrefix.size() - kTombstoneSuffix.size());
    auto bytes = store.Get(ManifestKey(t.id));
    if (bytes.ok()) {
      auto m = DecodeManifest(*bytes);
      if (!m.ok()) continue;  // damaged: left for store check and reindex to report
      t.manifest = std::move(*m);
    } else if (bytes.status().code() != ENOENT) {
      return bytes.status();
    }
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace ebs::snapshot
