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

// The chunks a snapshot still has to read, and who reads each: the snapshot's
// own workers (Process) or a write about to overwrite it (Preserve). Each
// chunk's content as of the cut reaches `handler` exactly once. Thread-safe.
class CopyOutSession {
 public:
  // Receives chunk `chunks[position]`'s content as of the cut (`data`; the
  // last chunk of a volume may be short). Called from the snapshot's workers
  // and from the copy-out thread, concurrently for different chunks.
  using Handler = std::function<Status(size_t position, const std::string& data)>;
  // Reads `length` bytes at `offset` of the volume's content as it is now
  // beneath the copy-on-write layer (Volume::ReadStored: decrypted, and a
  // chunk still loading lazily read from its source). Called from the same
  // threads as the handler; blocking.
  using Reader = std::function<Status(uint64_t offset, size_t length, char* buf)>;

  // `chunks`: sorted, unique chunk indexes below ceil(volume_size / chunk_size).
  CopyOutSession(Reader reader, uint64_t volume_size, uint64_t chunk_size, std::vector<uint64_t> chunks,
                 Handler handler);

  size_t size() const { return chunks_.size(); }
  uint64_t chunk(size_t position) const { return chunks_[position]; }

  // Reads chunk `position` and hands it to the handler, unless a writer has
  // already taken it (then returns at once; Wait covers it). Snapshot workers.
  Status Process(size_t position, std::string* buf);
  // Makes sure every guarded chunk overlapping [offset, offset + length) has
  // been handed over, reading and handing over those nobody has taken yet and
  // waiting for those in progress. Never fails: a failure to hand a chunk
  // over fails the session (Wait reports it), not the write. Blocks; never
  // call it on an event loop thread.
  void Preserve(uint64_t offset, uint64_t length);
  // True when some guarded chunk overlapping the range is not yet handed over.
  bool Guards(uint64_t offset, uint64_t length) const;
  // Waits until every chunk has been handed over; the first failure, if any.
  Status Wait();
  // Fails the session: chunks not yet taken are released unread (writes no
  // longer wait for them) and Wait returns `why`.
  void Cancel(const Status& why);

  // For tests and stats: chunks handed over by writers rather than workers.
  uint64_t preserved_by_writes() const { return by_writes_.load(); }

 private:
  enum State : uint8_t { kPending = 0, kTaken = 1, kDone = 2 };
  // Position range of guarded chunks overlapping the byte range.
  std::pair<size_t, size_t> Positions(uint64_t offset, uint64_t length) const;
  // Reads and hands over `position`, which the caller has taken.
  void Run(size_t position, std::string* buf);
  void Fail(const Status& st);

  const Reader reader_;
  const uint64_t volume_size_;
  const uint64_t chunk_size_;
  const std::vector<uint64_t> chunks_;
  const Handler handler_;
  std::unique_ptr<std::atomic<uint8_t>[]> state_;
  std::atomic<uint64_t> by_writes_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  size_t done_ = 0;                // GUARDED_BY(mu_)
  Status failure_ = Status::Ok();  // GUARDED_BY(mu_)
};

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
  std::shared_ptr<CopyOutSession> session_;  // GUARDED_BY(mu_)
  IoRequest* held_head_ = nullptr;           // GUARDED_BY(mu_): frozen requests, FIFO via link
  IoRequest* held_tail_ = nullptr;           // GUARDED_BY(mu_)
  size_t held_ = 0;                          // GUARDED_BY(mu_)
  IoRequest* copy_head_ = nullptr;           // GUARDED_BY(mu_): waiting for a copy-out
  IoRequest* copy_tail_ = nullptr;           // GUARDED_BY(mu_)
  size_t copying_ = 0;                       // GUARDED_BY(mu_): queued or being copied out
  bool stop_ = false;                        // GUARDED_BY(mu_)
  std::thread copier_;                       // runs while a session is attached
};

}  // namespace ebs
