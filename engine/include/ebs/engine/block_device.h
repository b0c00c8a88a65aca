// The volume I/O path as layers. A BlockDevice accepts asynchronous requests;
// a DeviceLayer wraps another device and forwards what it does not handle
// (throttling, change tracking, lazy restore, fault injection), in the spirit
// of nbdkit filters. FileDevice (file_device.h) is the base of every stack.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "ebs/engine/event_loop.h"
#include "ebs/engine/status.h"

namespace ebs {

enum class IoKind : uint8_t { kRead, kWrite, kFlush, kTrim, kWriteZeroes, kCache };

// IoRequest::flags.
inline constexpr uint32_t kIoFua = 1u << 0;     // durable when completed
inline constexpr uint32_t kIoNoHole = 1u << 1;  // write-zeroes must allocate (no punch)
// write-zeroes: fail with EOPNOTSUPP rather than be slower than writing
// zeros. Every zeroing path of FileDevice is a metadata operation, so it
// never fails for this; a layer that would copy data must honour it.
inline constexpr uint32_t kIoFastZero = 1u << 2;

struct IoRequest;
// Called once per request on the thread of the loop it was submitted on.
// `result` is 0 or -errno.
using IoCallback = void (*)(IoRequest* req, int result);

// One request. The submitter owns it and keeps it alive until the callback
// runs; layers never allocate per request. Offsets and lengths are in bytes
// and have been checked against the device size by the caller.
struct IoRequest : IoCompletion {
  IoKind kind = IoKind::kRead;
  uint32_t flags = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  char* buf = nullptr;          // read / write data (length bytes)
  IoCallback callback = nullptr;
  void* owner = nullptr;        // for the submitter's use

  // Private to the layer currently executing the request: the layer that
  // puts the request on a ring sets `on_cqe` to receive its completion.
  EventLoop* loop = nullptr;
  void (*on_cqe)(IoRequest* req, int res) = nullptr;
  void* layer = nullptr;
  uint64_t done = 0;
  uint8_t stage = 0;
  int inline_result = 0;
  // For layers that hold a request back or watch it complete (throttle,
  // metrics): a queue link, the start time and the caller's completion.
  IoRequest* link = nullptr;
  int64_t start_ns = 0;
  int64_t queued_ns = 0;
  double cost_ios = 0;
  IoCallback upper_callback = nullptr;
  void* upper_owner = nullptr;
  // The same for the copy-on-write layer, which watches writes complete
  // beneath the metrics layer.
  IoCallback lower_callback = nullptr;
  void* lower_owner = nullptr;
  // The same for the encryption layer, which may put a buffer of
  // ciphertext (and an aligned range) in place of the caller's while the
  // request runs beneath it.
  IoCallback crypt_callback = nullptr;
  void* crypt_owner = nullptr;
  char* crypt_buf = nullptr;
  uint64_t crypt_offset = 0;
  uint64_t crypt_length = 0;
  void OnComplete(int res, uint32_t) override { on_cqe(this, res); }
  void Finish(int result) { callback(this, result); }
};

struct Extent {
  uint64_t offset;
  uint64_t length;
  bool hole;  // reads as zeros and is not allocated
};

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;
  virtual uint64_t size() const = 0;
  // Starts `req` on `loop`. REQUIRES: called on loop's thread; req's range
  // lies within size(). The callback runs later on the same thread (never
  // inside Submit).
  virtual void Submit(EventLoop& loop, IoRequest* req) = 0;
  // Appends extents describing [offset, offset+length) in order. Synchronous:
  // it asks the file system, not the disk.
  virtual Status Map(uint64_t offset, uint64_t length, std::vector<Extent>* out) = 0;
  // Changes the size (grow only); safe while requests run.
  virtual Status Resize(uint64_t new_size) = 0;
};

// Forwards everything to the next layer; a layer overrides what it changes.
class DeviceLayer : public BlockDevice {
 public:
  explicit DeviceLayer(std::shared_ptr<BlockDevice> next) : next_(std::move(next)) {}
  uint64_t size() const override { return next_->size(); }
  void Submit(EventLoop& loop, IoRequest* req) override { next_->Submit(loop, req); }
  Status Map(uint64_t offset, uint64_t length, std::vector<Extent>* out) override {
    return next_->Map(offset, length, out);
  }
  Status Resize(uint64_t new_size) override { return next_->Resize(new_size); }

 protected:
  std::shared_ptr<BlockDevice> next_;
};

}  // namespace ebs
