#include "ebs/engine/image_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "ebs/engine/file_util.h"
#include "keys/sector_cipher.h"

namespace ebs {

struct ImageWriter::State {
  std::atomic<bool> direct_ok{false};
};

ImageWriter::ImageWriter(int fd, std::shared_ptr<SectorCipher> cipher, std::string what)
    : fd_(fd), cipher_(std::move(cipher)), what_(std::move(what)), state_(std::make_unique<State>()) {
  direct_fd_ = ReopenDirect(fd_, O_WRONLY);
  state_->direct_ok = direct_fd_ >= 0;
}

ImageWriter::~ImageWriter() {
  if (direct_fd_ >= 0) ::close(direct_fd_);
  ::close(fd_);
}

bool ImageWriter::direct() const { return state_->direct_ok.load(std::memory_order_relaxed); }

Status ImageWriter::Write(uint64_t offset, char* buf, size_t n, size_t capacity) {
  const std::string where = what_ + " at " + std::to_string(offset);
  if (n % kDirectIoAlign == 0) {
    // Whole sectors: encrypted in place for an encrypted volume.
    if (cipher_) EBS_RETURN_IF_ERROR(cipher_->Encrypt(offset, buf, buf, n));
    if (state_->direct_ok.load(std::memory_order_relaxed)) {
      Status w = PwriteAll(direct_fd_, buf, n, offset, where);
      if (w.code() != EINVAL) return w;
      state_->direct_ok = false;  // the file system wants other alignment: buffered from now on
    }
    return PwriteVolumeData(fd_, buf, n, offset, where);
  }
  // A partial last chunk: buffered. An encrypted volume stores whole
  // sectors, the plaintext padded with zeros.
  if (cipher_) {
    const size_t padded = (n + SectorCipher::kSectorSize - 1) / SectorCipher::kSectorSize * SectorCipher::kSectorSize;
    if (padded > capacity) return Status::InvalidArgument("image writer: buffer too small to pad " + where);
    std::memset(buf + n, 0, padded - n);
    EBS_RETURN_IF_ERROR(cipher_->Encrypt(offset, buf, buf, padded));
    n = padded;
  }
  return PwriteVolumeData(fd_, buf, n, offset, where);
}

Status ImageWriter::Sync() {
  if (fdatasync(fd_) != 0) return Status::FromErrno(errno, "sync " + what_);
  return Status::Ok();
}

}  // namespace ebs
