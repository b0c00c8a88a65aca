// The volume I/O path as layers. A BlockDevice accepts asynchronous requests;
// a DeviceLayer wraps another device and forwards what it does not handle
// (throttling, change tracking, lazy restore, fault injection), in the spirit
// of nbdkit filters. FileDevice (file_device.h) is the base of every stack.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <new>
#include <type_traits>
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

// The deepest stack a request can pass (BlockDevice::layer_index), and
// what each layer may keep in a request (IoRequest::LayerState).
inline constexpr uint8_t kMaxLayers = 12;
inline constexpr size_t kLayerStateBytes = 40;

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
  // A queue link for the layer that holds the request back right now.
  IoRequest* link = nullptr;
  // When the request entered the stack (the top layer sets it; a layer
  // below that needs the time reads it here instead of the clock), or 0.
  int64_t start_ns = 0;

  // Each layer's own state for this request (nbdkit's per-request handle):
  // a layer of the stack has an index (BlockDevice::layer_index) and keeps
  // what it needs while the request is beneath it, a completion it
  // replaced included, in its slot. No other layer reads it.
  template <typename T>
  T& LayerState(uint8_t layer) {
    static_assert(sizeof(T) <= kLayerStateBytes && alignof(T) <= 8 && std::is_trivially_copyable_v<T>,
                  "a layer's per-request state must fit its slot");
    return *std::launder(reinterpret_cast<T*>(layer_state_[layer]));
  }
  // Makes `callback`/`owner` the request's completion, saving the current
  // one in `saved` (a layer's state) for RestoreCompletion.
  void InterceptCompletion(IoCallback callback, void* owner, IoCallback* saved_callback, void** saved_owner) {
    *saved_callback = this->callback;
    *saved_owner = this->owner;
    this->callback = callback;
    this->owner = owner;
  }

  void OnComplete(int res, uint32_t) override { on_cqe(this, res); }
  void Finish(int result) { callback(this, result); }

 private:
  alignas(8) unsigned char layer_state_[kMaxLayers][kLayerStateBytes];
};

// Requests a layer holds back, first in first out, threaded through
// IoRequest::link (nothing allocated). Not thread-safe: the owner's lock
// guards it.
struct IoQueue {
  IoRequest* head = nullptr;
  IoRequest* tail = nullptr;
  bool empty() const { return head == nullptr; }
  void Push(IoRequest* req) {
    req->link = nullptr;
    if (tail != nullptr) {
      tail->link = req;
    } else {
      head = req;
    }
    tail = req;
  }
  // REQUIRES: !empty().
  IoRequest* Pop() {
    IoRequest* req = head;
    head = req->link;
    if (head == nullptr) tail = nullptr;
    req->link = nullptr;
    return req;
  }
};

struct Extent {
  uint64_t offset;
  uint64_t length;
  bool hole;  // reads as zeros and is not allocated
};

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;
  // The device's place in its stack: 0 for the base, one more than the
  // device beneath for a layer. Indexes the layer's IoRequest::LayerState.
  uint8_t layer_index() const { return layer_index_; }
  virtual uint64_t size() const = 0;
  // Starts `req` on `loop`. REQUIRES: called on loop's thread; req's range
  // lies within size(). The callback runs later on the same thread (never
  // inside Submit).
  virtual void Submit(EventLoop& loop, IoRequest* req) = 0;
  // Appends extents describing [offset, offset+length) in order, at most
  // `max_extents` of them (kAllExtents: no limit): when it stops there, the
  // last one appended ends before offset+length. Synchronous: it asks the
  // file system, not the disk.
  static constexpr size_t kAllExtents = SIZE_MAX;
  virtual Status Map(uint64_t offset, uint64_t length, std::vector<Extent>* out, size_t max_extents) = 0;
  // Changes the size (grow only); safe while requests run.
  virtual Status Resize(uint64_t new_size) = 0;

 protected:
  uint8_t layer_index_ = 0;
};

// Forwards everything to the next layer; a layer overrides what it changes.
class DeviceLayer : public BlockDevice {
 public:
  // A stack deeper than kMaxLayers is a programming error: it aborts.
  explicit DeviceLayer(std::shared_ptr<BlockDevice> next) : next_(std::move(next)) {
    if (next_->layer_index() + 1 >= kMaxLayers) std::abort();
    layer_index_ = static_cast<uint8_t>(next_->layer_index() + 1);
  }
  uint64_t size() const override { return next_->size(); }
  void Submit(EventLoop& loop, IoRequest* req) override { next_->Submit(loop, req); }
  Status Map(uint64_t offset, uint64_t length, std::vector<Extent>* out, size_t max_extents) override {
    return next_->Map(offset, length, out, max_extents);
  }
  Status Resize(uint64_t new_size) override { return next_->Resize(new_size); }

 protected:
  std::shared_ptr<BlockDevice> next_;
};

}  // namespace ebs
