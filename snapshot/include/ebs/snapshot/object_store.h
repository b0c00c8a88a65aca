// ObjectStore: where chunk objects and manifests live. A flat namespace of
// keys to immutable byte strings, shaped after S3 so that an S3 backend can
// implement it later; nothing above this interface may assume a filesystem.
//
// Keys are '/'-separated paths of segments made of [A-Za-z0-9._-]; a segment
// is non-empty and does not start with '.' (so "." and ".." are impossible,
// and backends may use dot-names for their own temporary files). At most
// kMaxObjectKeyLength bytes, segments at most kMaxKeySegmentLength.
// The store's own layout:
//   chunks/ab/cd/<32 hex digits>      a chunk object, by its content hash
//   snapshots/<snapshot id>.manifest  a snapshot's manifest
//
// Contract every backend keeps:
// - Put is atomic and durable: once it returns OK the object survives a
//   crash or power cut, and a reader never sees a partial object. A failed
//   Put (ENOSPC included) leaves either the previous object or none. Put
//   replaces an existing object.
// - PutBatched is Put whose durability may wait for the next Flush: atomic
//   (never seen partial by a reader of this machine), durable only once
//   Flush returns OK. For uploads of many objects, which then make them all
//   durable at once before anything points at them. A backend whose puts are
//   durable anyway (S3) keeps the defaults.
// - Get of a missing key is ENOENT. Delete of a missing key is OK, as in S3,
//   so an interrupted garbage collection can simply be repeated.
// - A key that breaks the rules above is EINVAL, before any I/O.
// - All methods are safe for concurrent use from many threads.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "ebs/engine/status.h"
#include "ebs/snapshot/content_hash.h"

namespace ebs::snapshot {

inline constexpr size_t kMaxObjectKeyLength = 1024;
inline constexpr size_t kMaxKeySegmentLength = 200;  // leaves room for temp-file decoration under NAME_MAX

class ObjectStore {
 public:
  virtual ~ObjectStore() = default;

  [[nodiscard]] virtual Status Put(std::string_view key, std::string_view bytes) = 0;
  [[nodiscard]] virtual Status PutBatched(std::string_view key, std::string_view bytes) { return Put(key, bytes); }
  [[nodiscard]] virtual Status Flush() { return Status::Ok(); }
  [[nodiscard]] virtual Result<std::string> Get(std::string_view key) = 0;
  // Get, for an object likely to be read again (a snapshot export's
  // chunks): a store that Gets around its cache (a restore reads each object
  // once) reads this one through it.
  [[nodiscard]] virtual Result<std::string> GetCached(std::string_view key) { return Get(key); }
  [[nodiscard]] virtual Status Delete(std::string_view key) = 0;
  [[nodiscard]] virtual Result<bool> Exists(std::string_view key) = 0;
  // Every key that starts with `prefix` (a plain string prefix, as in S3,
  // not necessarily ending at a '/'), sorted bytewise. An empty prefix lists
  // everything. `prefix` must consist of key characters (EINVAL otherwise).
  [[nodiscard]] virtual Result<std::vector<std::string>> List(std::string_view prefix) = 0;
};

// OK when `key` follows the key rules above; EINVAL saying why otherwise.
Status ValidateObjectKey(std::string_view key);

// "chunks/ab/cd/<hex>": two levels of 256-way fan-out keep directories of a
// directory backend small (a million chunks is ~15 per leaf directory), and
// spread S3 request load across key prefixes.
std::string ChunkKey(const ContentHash& hash);
inline constexpr std::string_view kChunkKeyPrefix = "chunks/";

// "snapshots/<id>.manifest". The id is not checked here; Put validates it as
// part of the key.
std::string ManifestKey(std::string_view snapshot_id);
inline constexpr std::string_view kManifestKeyPrefix = "snapshots/";
inline constexpr std::string_view kManifestKeySuffix = ".manifest";

}  // namespace ebs::snapshot
