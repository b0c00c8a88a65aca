// How snapshots are named and written down, in one place: ids, the one
// conversion between an index record and its manifest, the bytes a chunk
// holds, and the names of the store's bookkeeping objects (fork bases,
// tombstones). Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ebs/engine/status.h"
#include "ebs/snapshot/manifest.h"
#include "ebs/snapshot/object_store.h"
#include "ebs/snapshot/snapshot_index.h"

namespace ebs::snapshot {

// "snap-" and 17 hex digits, as AWS snapshot ids; random.
std::string NewSnapshotId();

// The bytes of chunk `chunk` inside a volume of `volume_size` bytes: the
// chunk size, less for the last chunk, 0 past the end.
inline uint64_t ChunkBytes(uint64_t chunk, uint64_t volume_size, uint64_t chunk_size) {
  const uint64_t off = chunk * chunk_size;
  return off >= volume_size ? 0 : std::min<uint64_t>(chunk_size, volume_size - off);
}
// The data in `entries` (zero chunks count nothing).
uint64_t DataBytes(const std::vector<DeltaEntry>& entries, uint64_t volume_size, uint64_t chunk_size);

// The manifest of `rec` with `delta` and `map_digest`: every field a
// manifest shares with a record.
Manifest ManifestOf(const SnapshotRecord& rec, std::vector<DeltaEntry> delta, uint64_t map_digest);
// The record a manifest describes, completed; its byte counts (logical,
// changed, stored) are left to the caller, who knows the whole map.
SnapshotRecord RecordOf(const Manifest& m);

// A fork's base (snapshot_index.h, forks) has a manifest of its own, named
// by its lineage: "<lineage>.base". Snapshot ids never end in ".base".
inline constexpr std::string_view kBaseIdSuffix = ".base";
inline std::string BaseId(const std::string& lineage) { return lineage + std::string(kBaseIdSuffix); }
inline bool IsBaseOf(const Manifest& m) { return m.snapshot_id == BaseId(m.lineage_id); }

// Marks a deleted snapshot whose manifest is kept as the base of the next.
inline std::string TombstoneKey(const std::string& id) {
  return std::string(kManifestKeyPrefix) + id + ".deleted";
}
inline constexpr std::string_view kTombstoneSuffix = ".deleted";

// A deleted snapshot whose manifest is still in the store, beside its
// tombstone (as the base of its lineage's next snapshot, or left by an
// interrupted deletion); `manifest` is unset when only the tombstone is left.
struct Tombstoned {
  std::string id;
  std::optional<Manifest> manifest;
};
// Every tombstone in the store, with its snapshot's manifest when readable
// (a damaged one is left out, for store check and reindex to report). Few:
// one per deleted snapshot that was its lineage's newest.
Result<std::vector<Tombstoned>> ListTombstoned(ObjectStore& store);

}  // namespace ebs::snapshot
