// Manifest: a snapshot's self-describing record, stored as the object
// "snapshots/<id>.manifest" next to its chunks. The RocksDB index can be
// rebuilt from the manifests alone (`ebs store reindex`): each one names its
// lineage, its place in it and its parent, and carries its delta.
//
// Binary, not JSON: a delta entry is 24 bytes (u64 chunk index + 16-byte
// hash), so the full first snapshot of a 512 GiB volume (1 M chunks of
// 512 KiB) has a ~24 MiB manifest that encodes and decodes at memory speed.
//
// Layout (integers little-endian):
//
//   0  magic            "EBSM"
//   4  format version   u16, 1
//   6  reserved         u16, 0
//   8  total length     u64, the whole encoding including the trailer
//  16  sequence         u64
//  24  volume size      u64, bytes
//  32  chunk size       u32
//  36  reserved         u32, 0
//  40  created at       i64, Unix milliseconds
//  48  map digest       u64, MapDigest of the snapshot's whole chunk map
//  56  entry count      u64
//  64  six strings, each u16 length + bytes: snapshot id, volume name,
//      volume id, lineage id, parent snapshot id, description
//  ..  version 2 only: two more strings, key name and key id
//  ..  entry count x (u64 chunk index, 16-byte content hash), ascending
//  ..  version 2 only: 32-byte HMAC-SHA256 of every preceding byte, under
//      the key's manifest key (chunk_crypto.h)
//  ..  trailer          u64, XXH3-64 of every preceding byte
//
// Version 1 is a plain snapshot's manifest; version 2 an encrypted one's.
//
// The total length in the header is what lets Decode tell a truncated
// object ("truncated: N of M bytes") from a damaged one (checksum mismatch).
//
// Pure functions over values; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ebs/engine/status.h"
#include "ebs/snapshot/chunk_crypto.h"
#include "ebs/snapshot/chunk_map.h"

namespace ebs::snapshot {

inline constexpr uint16_t kManifestFormatVersion = 1;
inline constexpr uint16_t kEncryptedManifestFormatVersion = 2;

struct Manifest {
  std::string snapshot_id;
  std::string volume_name;
  std::string volume_id;
  // A lineage is the chain of snapshots that share one change history (one
  // volume's successive snapshots). `sequence` orders them; the delta is
  // relative to the snapshot before it in the lineage, named by
  // `parent_snapshot_id` (empty for the first, whose delta is relative to an
  // all-zero volume). In a restored volume's lineage (snapshot_index.h,
  // forks) the first member is a base, id "<lineage>.base", whose delta is
  // the whole map of the snapshot it copies, named as its parent; the
  // snapshot after the base names that snapshot as its parent too.
  std::string lineage_id;
  uint64_t sequence = 0;
  std::string parent_snapshot_id;
  uint64_t volume_size = 0;
  uint32_t chunk_size = kDefaultChunkSize;
  int64_t created_at_ms = 0;
  std::string description;
  // What this snapshot changed relative to its parent: sorted by chunk,
  // unique, ZeroChunk() for a chunk that became zero.
  std::vector<DeltaEntry> delta;
  // MapDigest of the whole chunk map as of this snapshot, computed
  // incrementally from the parent's (see chunk_map.h): rebuilding the map
  // from the chain of deltas must reproduce it.
  uint64_t map_digest = 0;
  // An encrypted snapshot's master key (empty for a plain one).
  std::string key_name;
  std::string key_id;

  uint64_t chunk_count() const { return ChunkCount(volume_size, chunk_size); }
  friend bool operator==(const Manifest&, const Manifest&) = default;
};

// EINVAL when the manifest is not well formed: chunk size out of range, a
// delta that is not sorted/unique or points past the volume, a string longer
// than 65535 bytes, an empty snapshot id or lineage id.
// A manifest with a key id needs `crypto` for that key (EINVAL otherwise).
Result<std::string> EncodeManifest(const Manifest& manifest, const ChunkCrypto* crypto = nullptr);

// Refuses anything that is not exactly one intact manifest, with EIO and a
// message naming the fault: bad magic, unsupported version, truncated,
// trailing bytes, checksum mismatch, or (in a manifest whose checksum is
// right, i.e. written by a buggy encoder) malformed contents.
Result<Manifest> DecodeManifest(std::string_view bytes);

// Checks the MAC of an encrypted manifest (already decoded) under `crypto`:
// EACCES when it does not match (altered, or another key).
Status VerifyManifestMac(std::string_view bytes, const ChunkCrypto& crypto);

}  // namespace ebs::snapshot
