// Point-in-time snapshots of a volume that stays in use.
//
// A snapshot cuts a volume at one instant: CopyOnWriteLayer::Freeze holds new
// writes, trims and write-zeroes and waits until none is in flight below;
// the snapshot then takes the change tracker's cut and decides which chunks
// it must read; Thaw lets writes go on. From then until the snapshot has
// read them, the chunks it still needs are guarded by a CopyOutSession: a
// write that would change one first hands the chunk's old content to the
// snapshot (copy-before-write) and only then reaches the data file. Writes to
// any other chunk, and all reads, pass straight through.
//
// Holding writes lasts only for the drain and the cut (a few milliseconds);
// a write that hits a guarded chunk waits for that one chunk to be read and
// handed over. If handing it over fails (a full store), the snapshot fails,
// never the write.
#pragma once

#include "ebs/engine/copy_out_session.h"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ebs/engine/block_device.h"
#include "ebs/engine/status.h"

namespace ebs {

// The layer in a volume's stack that freezes writes for a snapshot's cut and
// enforces copy-before-write while a CopyOutSession is attached. Sits above
// the change-tracking layer (so a frozen layer means no write is on its way
// to the tracker or the file) and below throttling (so waiting here does not
// spend the volume's I/O tokens twice).
class CopyOnWriteLayer final : public DeviceLayer {
 public:
  explicit CopyOnWriteLayer(std::shared_ptr<BlockDevice> next);
  ~CopyOnWriteLayer() override;

  void Submit(EventLoop& loop, IoRequest* req) override;

  // Holds every new write, trim and write-zeroes, and returns once every one
  // already passed down has completed. Blocks; control or worker threads only.
  // REQUIRES: not frozen.
  void Freeze();
  // Lets held and new requests go; with `session`, writes to the chunks it
  // guards copy them out first until Detach. REQUIRES: frozen.
  void Thaw(std::shared_ptr<CopyOutSession> session = nullptr);
  // Stops guarding (the snapshot has every chunk, or gave up). Returns once
  // no request is waiting on the session. Blocks.
  void Detach();

  // Writes currently held or waiting for a copy-out (tests and stats).
  size_t waiting() const;

 private:
  // Per request (IoRequest::LayerState): the completion this layer replaced.
  struct Saved {
    IoCallback callback;
    void* owner;
  };
  static void Completed(IoRequest* req, int result);
  void PassDown(EventLoop& loop, IoRequest* req);
  void RunCopyOut();

  // Mutating requests accepted and not yet completed (held ones excluded).
  std::atomic<int64_t> in_flight_{0};
  std::atomic<bool> frozen_{false};
  std::atomic<bool> guarding_{false};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<CopyOutSession> session_;  // under mu_
  IoRequest* held_head_ = nullptr;           // under mu_: frozen requests, FIFO via link
  IoRequest* held_tail_ = nullptr;           // under mu_
  size_t held_ = 0;                          // under mu_
  IoRequest* copy_head_ = nullptr;           // under mu_: waiting for a copy-out
  IoRequest* copy_tail_ = nullptr;           // under mu_
  size_t copying_ = 0;                       // under mu_: queued or being copied out
  bool stop_ = false;                        // under mu_
  std::thread copier_;                       // runs while a session is attached
};

}  // namespace ebs
