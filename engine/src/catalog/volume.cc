// What an open volume offers besides its request path: the snapshot's cut
// and reads of its stored bytes.
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "ebs/engine/volume.h"
#include "io/file_device.h"
#include "keys/sector_cipher.h"
#include "layers/change_tracker.h"
#include "layers/copy_on_write_layer.h"
#include "layers/hydration_layer.h"

namespace ebs {
namespace {

// Reads [offset, offset + length) of the data file; zeros past its end.
Status PreadZeroPadded(int fd, uint64_t offset, size_t length, char* buf) {
  size_t done = 0;
  while (done < length) {
    ssize_t n = pread(fd, buf + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read the data file");
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  std::memset(buf + done, 0, length - done);
  return Status::Ok();
}

}  // namespace

Status Volume::ReadStored(uint64_t offset, size_t length, char* buf) const {
  auto read_file = [&](uint64_t off, size_t len, char* out) -> Status {
    EBS_RETURN_IF_ERROR(PreadZeroPadded(file_->fd(), off, len, out));
    if (cipher_) return cipher_->Decrypt(off, out, out, len);
    return Status::Ok();
  };
  if (hydration_ == nullptr || hydration_->complete()) return read_file(offset, length, buf);
  // A chunk not loaded is a hole in the data file; its content is the
  // source's. Nothing can write it meanwhile without loading it first, and
  // loading writes that same content.
  const uint64_t cs = hydration_->chunk_size();
  std::string source;
  size_t done = 0;
  while (done < length) {
    const uint64_t pos = offset + done;
    const uint64_t chunk = pos / cs;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(length - done, (chunk + 1) * cs - pos));
    if (hydration_->Loaded(chunk)) {
      EBS_RETURN_IF_ERROR(read_file(pos, n, buf + done));
    } else {
      EBS_RETURN_IF_ERROR(hydration_->ReadSource(chunk, &source));
      const uint64_t in_chunk = pos - chunk * cs;
      const size_t have = in_chunk < source.size() ? std::min<size_t>(n, source.size() - in_chunk) : 0;
      if (have > 0) std::memcpy(buf + done, source.data() + in_chunk, have);
      std::memset(buf + done + have, 0, n - have);
    }
    done += n;
  }
  return Status::Ok();
}

void Volume::FreezeWrites() { copy_on_write_->Freeze(); }
void Volume::ThawWrites(std::shared_ptr<CopyOutSession> session) { copy_on_write_->Thaw(std::move(session)); }
void Volume::DetachCopyOut() { copy_on_write_->Detach(); }
Result<ChangeSet> Volume::CutChanges() { return tracker_->Cut(); }
Status Volume::CommitCut(uint64_t generation) { return tracker_->Commit(generation); }
Status Volume::AbortCut(uint64_t generation) { return tracker_->Abort(generation); }
ChangeSet Volume::UnsnapshottedChanges() const { return tracker_->Unsnapshotted(); }

bool Volume::Loading() const { return hydration_ != nullptr && !hydration_->complete(); }

bool Volume::Untouched(uint64_t offset, uint64_t length) const {
  if (!Loading() || length == 0) return false;
  const uint64_t cs = hydration_->chunk_size();
  for (uint64_t c = offset / cs; c <= (offset + length - 1) / cs; ++c) {
    if (hydration_->Loaded(c)) return false;
  }
  return true;
}

Status Volume::SyncData() const {
  if (fdatasync(file_->fd()) != 0) return Status::FromErrno(errno, "sync the data file of volume " + name_);
  return Status::Ok();
}

}  // namespace ebs
