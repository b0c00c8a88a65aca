#include "io/file_device.h"
#include "ebs/engine/file_util.h"
#include "ebs/engine/size.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace ebs {
namespace {

// Stages of a request inside FileDevice.
enum Stage : uint8_t {
  kMain = 0,      // the operation itself
  kPunchForZero,  // ZERO_RANGE unsupported here (tmpfs): punch first,
  kAllocateZero,  // then allocate the punched range
  kSyncAfter,     // FUA on trim/zeroes: fdatasync after the operation
  kInlineWrite,   // written with pwrite on the loop thread; a NOP carries the result
  kRejected,      // refused before any I/O; a NOP carries the error
};

// Buffered writes up to this size are copied into the page cache on the loop
// thread. io_uring cannot do them without blocking on ext4 and hands them to
// a worker thread; on a small machine that hand-off costs more than the copy.
constexpr uint64_t kInlineWriteMax = 128 * 1024;

}  // namespace

Result<std::shared_ptr<FileDevice>> FileDevice::Open(const std::string& path, uint64_t size,
                                                     bool create) {
  int flags = O_RDWR | O_CLOEXEC;
  if (create) flags |= O_CREAT | O_EXCL;
  int fd = ::open(path.c_str(), flags, 0600);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return Status::FromErrno(err, "stat " + path);
  }
  if (static_cast<uint64_t>(st.st_size) < size && ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EFBIG) {
      return Status::Error(EFBIG, "the file system holding " + path + " cannot hold a " + FormatSize(size) +
                                      " file (ext4 stops just short of 16 TiB): put the data directory on "
                                      "XFS or btrfs for volumes this large");
    }
    return Status::FromErrno(err, "truncate " + path);
  }
  AdviseBlockAccess(fd);
  return std::shared_ptr<FileDevice>(new FileDevice(fd, size));
}

FileDevice::~FileDevice() {
  // The last user is gone (server stopping, last connection closed): make
  // what clients wrote durable even if they never flushed.
  fdatasync(fd_);
  ::close(fd_);
}

void FileDevice::Submit(EventLoop& loop, IoRequest* req) {
  req->loop = &loop;
  req->on_cqe = &FileDevice::Continue;
  req->layer = this;
  req->done = 0;
  req->stage = kMain;
  const uint64_t size = this->size();
  if (req->kind != IoKind::kFlush && (req->offset > size || req->length > size - req->offset)) {
    // Callers check ranges; this is the last line of defence for the data
    // file (an out-of-range write would silently extend it).
    req->stage = kRejected;
    req->inline_result = -EINVAL;
    io_uring_prep_nop(loop.GetSqe(req));
    return;
  }
  if ((req->kind == IoKind::kRead || req->kind == IoKind::kWrite) && req->length == 0) {
    req->stage = kRejected;  // nothing to transfer: done (a 0-byte write must not look like a failed one)
    req->inline_result = 0;
    io_uring_prep_nop(loop.GetSqe(req));
    return;
  }
  Issue(req);
}

void FileDevice::Issue(IoRequest* req) {
  io_uring_sqe* sqe = req->loop->GetSqe(req);
  if (req->stage == kSyncAfter) {
    io_uring_prep_fsync(sqe, fd_, IORING_FSYNC_DATASYNC);
    return;
  }
  if (req->stage == kPunchForZero) {
    io_uring_prep_fallocate(sqe, fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, req->offset,
                            req->length);
    return;
  }
  if (req->stage == kAllocateZero) {
    io_uring_prep_fallocate(sqe, fd_, FALLOC_FL_KEEP_SIZE, req->offset, req->length);
    return;
  }
  switch (req->kind) {
    case IoKind::kRead:
      io_uring_prep_read(sqe, fd_, req->buf + req->done, static_cast<unsigned>(req->length - req->done),
                         req->offset + req->done);
      break;
    case IoKind::kWrite: {
      const bool fua = req->flags & kIoFua;
      const uint64_t left = req->length - req->done;
      if (!fua && left <= kInlineWriteMax) {
        ssize_t n = pwrite(fd_, req->buf + req->done, left, static_cast<off_t>(req->offset + req->done));
        req->stage = kInlineWrite;
        req->inline_result = n < 0 ? -errno : static_cast<int>(n);
        io_uring_prep_nop(sqe);  // completes on the ring, never inside Submit
        break;
      }
      // Larger writes go to the ring in pieces of kDataWritePiece, one after
      // another (Continue's short-transfer path goes on with the rest; the
      // last piece, being small, is written inline), so the page cache holds
      // them in small folios (see AdviseBlockAccess). Cold 1 MiB writes got
      // faster (no high-order page allocations); warm ones kept their
      // throughput for about 8% more CPU. A FUA write goes whole: RWF_DSYNC
      // makes only the range it writes durable.
      io_uring_prep_write(sqe, fd_, req->buf + req->done,
                          static_cast<unsigned>(fua ? left : std::min<uint64_t>(left, kDataWritePiece)),
                          req->offset + req->done);
      if (fua) sqe->rw_flags = RWF_DSYNC;
      break;
    }
    case IoKind::kFlush:
      io_uring_prep_fsync(sqe, fd_, IORING_FSYNC_DATASYNC);
      break;
    case IoKind::kTrim:
      io_uring_prep_fallocate(sqe, fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, req->offset,
                              req->length);
      break;
    case IoKind::kWriteZeroes:
      io_uring_prep_fallocate(sqe, fd_,
                              (req->flags & kIoNoHole) ? (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)
                                                       : (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE),
                              req->offset, req->length);
      break;
    case IoKind::kCache:
      io_uring_prep_fadvise(sqe, fd_, req->offset, static_cast<off_t>(req->length), POSIX_FADV_WILLNEED);
      break;
  }
}

void FileDevice::Continue(IoRequest* req, int res) {
  auto* self = static_cast<FileDevice*>(req->layer);
  if (req->stage == kRejected) {
    req->Finish(req->inline_result);
    return;
  }
  if (req->stage == kInlineWrite) {
    req->stage = kMain;
    res = req->inline_result;
  }
  if (res == -EINTR || res == -EAGAIN) {
    self->Issue(req);
    return;
  }
  if (req->stage == kMain && (req->kind == IoKind::kRead || req->kind == IoKind::kWrite)) {
    if (res < 0) {
      req->Finish(res);
      return;
    }
    if (res == 0) {
      if (req->kind == IoKind::kWrite) {
        req->Finish(-EIO);
        return;
      }
      // Past the end of the file (a concurrent grow not yet visible): zeros.
      std::memset(req->buf + req->done, 0, req->length - req->done);
      req->done = req->length;
    } else {
      req->done += static_cast<uint64_t>(res);
    }
    if (req->done < req->length) {
      self->Issue(req);  // short transfer: resubmit the rest
      return;
    }
    req->Finish(0);
    return;
  }
  if (req->stage == kMain && req->kind == IoKind::kWriteZeroes && res == -EOPNOTSUPP &&
      (req->flags & kIoNoHole)) {
    req->stage = kPunchForZero;
    self->Issue(req);
    return;
  }
  if (res < 0 && req->kind != IoKind::kCache) {  // CACHE is advisory only
    req->Finish(res);
    return;
  }
  if (req->stage == kPunchForZero) {
    req->stage = kAllocateZero;
    self->Issue(req);
    return;
  }
  if (req->stage != kSyncAfter && (req->flags & kIoFua) &&
      (req->kind == IoKind::kTrim || req->kind == IoKind::kWriteZeroes)) {
    req->stage = kSyncAfter;
    self->Issue(req);
    return;
  }
  req->Finish(0);
}

Status FileDevice::Map(uint64_t offset, uint64_t length, std::vector<Extent>* out, size_t max_extents) {
  const uint64_t end = offset + length;
  const size_t limit = max_extents > SIZE_MAX - out->size() ? SIZE_MAX : out->size() + max_extents;
  uint64_t pos = offset;
  while (pos < end && out->size() < limit) {
    off_t data = lseek(fd_, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0 && errno != ENXIO) return Status::FromErrno(errno, "lseek SEEK_DATA");
    uint64_t data_start = data < 0 ? end : std::min<uint64_t>(static_cast<uint64_t>(data), end);
    if (data_start > pos) {
      out->push_back({pos, data_start - pos, true});
      pos = data_start;
      if (pos >= end || out->size() >= limit) break;
    }
    off_t hole = lseek(fd_, static_cast<off_t>(pos), SEEK_HOLE);
    if (hole < 0) return Status::FromErrno(errno, "lseek SEEK_HOLE");
    uint64_t hole_start = std::min<uint64_t>(static_cast<uint64_t>(hole), end);
    out->push_back({pos, hole_start - pos, false});
    pos = hole_start;
  }
  return Status::Ok();
}

Status FileDevice::Resize(uint64_t new_size) {
  if (new_size < size()) return Status::InvalidArgument("a volume cannot shrink");
  if (ftruncate(fd_, static_cast<off_t>(new_size)) != 0) {
    return Status::FromErrno(errno, "grow data file");
  }
  size_.store(new_size, std::memory_order_release);
  return Status::Ok();
}

}  // namespace ebs
