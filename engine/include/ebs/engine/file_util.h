// Small file-system helpers shared by the engine's durable structures.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>

#include <sys/types.h>

#include "ebs/engine/status.h"

namespace ebs {

// fsyncs a directory, making creations, renames and removals in it durable.
Status SyncDirectory(const std::string& dir);

// mkdir -p with `mode`, each directory it creates made durable in its parent
// (a power cut loses no directory a caller went on to fill). An existing
// non-directory on the path is ENOTDIR.
Status MakeDurableDirectories(const std::string& path, mode_t mode);

// Writes all of `bytes` to `fd`, retrying short writes and EINTR; errors
// name `path`. A short write is not an error: the next write says why it
// stopped (ENOSPC on a full disk).
Status WriteAll(int fd, std::string_view bytes, const std::string& path);

// Writes `n` bytes at `buf` to `fd` at offset `off`, retrying short writes
// and EINTR; errors name `path` ("write PATH: ...").
Status PwriteAll(int fd, const void* buf, size_t n, uint64_t off, const std::string& path);

// Direct I/O (O_DIRECT) wants buffers, offsets and lengths in whole blocks
// of the device; 4 KiB satisfies every device and file system we meet.
inline constexpr size_t kDirectIoAlign = 4096;

// A second descriptor on the file open on `fd`, with O_DIRECT and `flags`
// (O_RDONLY or O_WRONLY): -1 with errno set when the file system refuses
// direct I/O (EINVAL) or the open fails.
int ReopenDirect(int fd, int flags);

// Volume data files are kept in small page-cache folios. On ext4 with large
// folios (Linux 6.16 and later) readahead caches a file in folios of up to
// 2 MiB and a buffered write is cached as one folio as large as the write;
// every later small write into such a folio walks all of its buffer heads.
// 4 KiB random writes ran 4x slower over a range read sequentially before,
// and 2-3x slower over a range written with 1 MiB writes.
//
// AdviseBlockAccess marks `fd` (a data file, opened for buffered I/O) for
// block-device access: no readahead, so what it reads is cached as 4 KiB
// pages. Block clients do their own readahead and send large reads. Only
// this descriptor is affected; advisory (a file system may ignore it).
void AdviseBlockAccess(int fd);

// Buffered writes of volume data go down in pieces of at most this size, so
// they are cached in folios no larger (small writes into 128 KiB folios cost
// nothing measurable).
inline constexpr size_t kDataWritePiece = 128 * 1024;

// PwriteAll in pieces of kDataWritePiece: buffered writes of volume data
// outside the event loops (lazy loading, restore).
Status PwriteVolumeData(int fd, const void* buf, size_t n, uint64_t off, const std::string& path);

// A reusable buffer aligned for direct I/O: Get(n) hands out at least n bytes
// (empty when the allocation fails), reallocating only to grow.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }
  std::span<char> Get(size_t size) {
    if (size > size_) {
      std::free(data_);
      data_ = static_cast<char*>(std::aligned_alloc(kDirectIoAlign, (size + kDirectIoAlign - 1) & ~(kDirectIoAlign - 1)));
      size_ = data_ != nullptr ? size : 0;
    }
    return {data_, data_ != nullptr ? size : 0};
  }

 private:
  char* data_ = nullptr;
  size_t size_ = 0;
};

// Takes group and other access away from `path` (followed if a symbolic
// link): a mode with any of 077 set becomes mode & 0700; a private mode is
// left alone. Fails when the mode cannot be changed (another user's file or
// directory, a read-only file system) with an error that names `what`
// ("data directory"), the path, its mode and, when not ours, its owner.
// ENOENT when `path` does not exist.
Status MakePrivate(const std::string& path, const std::string& what);

// MakePrivate on the directory `dir` and on each entry directly in it (not
// deeper; symbolic links in it are left alone). For small directories (the
// catalog, volume data files, keys): it visits every entry.
Status MakeDirectoryPrivate(const std::string& dir, const std::string& what);

// Names that become file names and URI parts (volumes, keys):
// [A-Za-z0-9][A-Za-z0-9._-]{0,63}. `what` names the kind in the error
// ("volume name", "key name").
Status ValidateName(const std::string& what, const std::string& name);

}  // namespace ebs
