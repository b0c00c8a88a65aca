// The chunk map of a volume: how a volume is cut into chunks, and how a
// snapshot describes which chunks it changed (its delta).
//
// A volume of `volume_size` bytes is cut into ChunkCount() chunks of
// `chunk_size` bytes (the last one may be short). A snapshot stores only its
// delta relative to its parent: (chunk index, content hash) for every chunk
// that changed, where ContentHash::ZeroChunk() means "the chunk became zero".
// A chunk that appears in no delta of the chain reads as zeros.
//
// Value types and pure functions; thread-compatible.
#pragma once

#include <cstdint>
#include <span>

#include "ebs/engine/status.h"
#include "ebs/snapshot/content_hash.h"

namespace ebs::snapshot {

// Chunk size is fixed per store at creation. 512 KiB is the block size of
// the EBS direct APIs; the allowed range keeps per-chunk overhead (index
// entries, object headers, requests) and copy-before-write latency bounded.
inline constexpr uint32_t kDefaultChunkSize = 512 * 1024;
inline constexpr uint32_t kMinChunkSize = 64 * 1024;
inline constexpr uint32_t kMaxChunkSize = 4 * 1024 * 1024;

// OK for a power of two in [kMinChunkSize, kMaxChunkSize]; EINVAL otherwise.
// Powers of two keep chunk arithmetic exact for every block size a client
// may use.
Status ValidateChunkSize(uint64_t chunk_size);

// Number of chunks covering `volume_size` bytes. REQUIRES: chunk_size > 0.
inline uint64_t ChunkCount(uint64_t volume_size, uint32_t chunk_size) {
  return volume_size / chunk_size + (volume_size % chunk_size != 0 ? 1 : 0);
}

struct DeltaEntry {
  uint64_t chunk = 0;  // chunk index
  ContentHash hash;    // ZeroChunk() = the chunk became zero
  friend bool operator==(const DeltaEntry&, const DeltaEntry&) = default;
};

// OK when chunk indexes are strictly increasing (sorted, no duplicates) and
// each is below `chunk_count`; EINVAL naming the first offending entry
// otherwise. Both manifests and the index rely on this shape.
Status ValidateDelta(std::span<const DeltaEntry> delta, uint64_t chunk_count);

// An order-independent digest of a whole chunk map (every non-zero chunk of a
// snapshot, not just its delta). It is a sum modulo 2^64 of one XXH3-64 term
// per (index, hash), so a child's digest is computed from its parent's in
// time proportional to the delta:
//     digest.Replace(i, hash_in_parent, hash_in_child)   for each changed i.
// Manifests record it so that rebuilding the index from the store can check
// that a chain of deltas reproduces exactly the map the snapshot had.
// Zero chunks contribute nothing, so "absent" and ZeroChunk() agree.
// Not a cryptographic commitment: it detects accidents, not adversaries.
class MapDigest {
 public:
  MapDigest() = default;
  explicit MapDigest(uint64_t value) : value_(value) {}
  void Add(uint64_t chunk, const ContentHash& hash) { value_ += Term(chunk, hash); }
  void Remove(uint64_t chunk, const ContentHash& hash) { value_ -= Term(chunk, hash); }
  void Replace(uint64_t chunk, const ContentHash& old_hash, const ContentHash& new_hash) {
    Remove(chunk, old_hash);
    Add(chunk, new_hash);
  }
  uint64_t value() const { return value_; }

  static uint64_t Term(uint64_t chunk, const ContentHash& hash);

 private:
  uint64_t value_ = 0;
};

}  // namespace ebs::snapshot
