// DirectoryObjectStore: an ObjectStore kept as one file per object under a
// root directory (key "chunks/ab/cd/<hex>" is the file <root>/chunks/ab/cd/<hex>).
//
// How the ObjectStore contract is kept on a local filesystem:
// - Put writes <dir>/.tmp.<name>.<pid>.<n> (created O_EXCL, so concurrent
//   writers never share one), fsyncs it, renames it over the key, then
//   fsyncs the directory so the rename itself is durable. Parent
//   directories are created on demand and each new one is made durable by
//   fsyncing its parent. On any failure (ENOSPC, EIO, ...) the temporary file
//   is removed, so no partial object and no litter remain.
// - PutBatched writes and renames the same way but syncs nothing; Flush
//   then makes every object written so far durable with one syncfs() of the
//   store's file system. A snapshot's upload costs one flush instead of two
//   or three fsyncs per object (each fsync is a journal commit). After a
//   power cut before the Flush, such an object may be empty or missing;
//   nothing refers to it yet (the snapshot was pending), and the recovery of
//   interrupted snapshots collects it.
// - Delete unlinks and fsyncs the directory. Empty directories are left in
//   place: removing them would race with a concurrent Put into them.
// - List skips dot-names, i.e. temporary files of Puts in flight or of a
//   crashed process. Temporary files left by a crash are never returned as
//   objects; RemoveStaleTemporaries (run by `store gc`) deletes those old
//   enough that no live Put can own them.
// - A key cannot be both an object and the parent "directory" of other keys
//   (S3 allows it; this backend returns ENOTDIR/EISDIR-style errors). The
//   store's own layout never needs it.
// - Private: directories are created 0700 and objects 0600, and Open takes
//   group and other access away from a root of our own (best effort), which
//   also hides objects an older version wrote 0644. Objects are read whatever
//   their mode, so older stores keep working.
//
// Safe for concurrent use, and by several processes on the same root.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>

#include "ebs/snapshot/object_store.h"

namespace ebs::snapshot {

class DirectoryObjectStore final : public ObjectStore {
 public:
  // Opens the store rooted at `root`, creating the directory (and its
  // parents) when missing. ENOTDIR when `root` exists and is not a directory.
  static Result<std::unique_ptr<DirectoryObjectStore>> Open(const std::string& root);

  Status Put(std::string_view key, std::string_view bytes) override;
  Status PutBatched(std::string_view key, std::string_view bytes) override;
  Status Flush() override;
  // Large objects are read with direct I/O (bypassing the page cache);
  // GetCached reads through it.
  Result<std::string> Get(std::string_view key) override { return Read(key, /*direct=*/true); }
  Result<std::string> GetCached(std::string_view key) override { return Read(key, /*direct=*/false); }
  Status Delete(std::string_view key) override;
  Result<bool> Exists(std::string_view key) override;
  Result<std::vector<std::string>> List(std::string_view prefix) override;

  // Removes the temporary files of Puts (".tmp.*") last modified at least
  // `min_age_seconds` ago, anywhere under the root except the RocksDB index
  // directories the snapshot service keeps there; returns how many. Only by
  // age, not at Open: several processes may use one root (a store named
  // with --store by more than one data directory), and a Put of another
  // process may be writing its temporary right now. A Put writes, syncs and
  // renames its temporary in well under the default hour, so an older one
  // was left by a process that died.
  Result<uint64_t> RemoveStaleTemporaries(int64_t min_age_seconds = kStaleTemporaryAge);
  static constexpr int64_t kStaleTemporaryAge = 3600;

  const std::string& root() const { return root_; }

 private:
  explicit DirectoryObjectStore(std::string root) : root_(std::move(root)) {}
  Result<std::string> Read(std::string_view key, bool direct);
  std::string PathOf(std::string_view key) const;
  // Creates the directories on the way to `key` that do not exist yet
  // (each made durable in its parent when `durable`).
  Status CreateParents(std::string_view key, bool durable);
  // Writes `bytes` under a temporary name and renames it over `key`'s file,
  // syncing the file (and the directory) only when `durable`.
  Status Write(std::string_view key, std::string_view bytes, bool durable);
  // Writes `bytes` to the new, empty file `fd` opened with O_DIRECT: whole
  // blocks direct, the rest buffered. Falls back to buffered writes (and
  // clears direct_ok_) when the file system refuses the alignment.
  Status WriteDirect(int fd, std::string_view bytes, const std::string& temp);
  // Reads the `size` bytes of the object open on `fd` with direct I/O;
  // nullopt when direct I/O is not possible here (the caller reads through
  // the page cache instead).
  Result<std::optional<std::string>> ReadDirect(int fd, size_t size, const std::string& path);

  // Objects at least this large are read with direct I/O, and written with
  // it when not durable one by one (Flush syncs them with the rest).
  static constexpr size_t kDirectIoMin = 64 << 10;

  const std::string root_;
  std::atomic<uint64_t> temp_counter_{0};
  std::atomic<bool> direct_ok_{true};  // false once the file system refused O_DIRECT
};

}  // namespace ebs::snapshot
