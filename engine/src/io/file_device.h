// The base layer: one sparse file per volume, I/O through io_uring.
#pragma once

#include <atomic>
#include <string>

#include "ebs/engine/block_device.h"

namespace ebs {

class FileDevice final : public BlockDevice {
 public:
  // Opens (or with `create`, creates with O_EXCL) the file and sets its size.
  static Result<std::shared_ptr<FileDevice>> Open(const std::string& path, uint64_t size, bool create);
  ~FileDevice() override;

  uint64_t size() const override { return size_.load(std::memory_order_acquire); }
  void Submit(EventLoop& loop, IoRequest* req) override;
  Status Map(uint64_t offset, uint64_t length, std::vector<Extent>* out, size_t max_extents) override;
  Status Resize(uint64_t new_size) override;
  int fd() const { return fd_; }

 private:
  FileDevice(int fd, uint64_t size) : fd_(fd), size_(size) {}
  static void Continue(IoRequest* req, int res);
  void Issue(IoRequest* req);

  const int fd_;
  std::atomic<uint64_t> size_;
};

}  // namespace ebs
