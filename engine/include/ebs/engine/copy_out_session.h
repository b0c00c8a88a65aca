// The chunks a snapshot still reads after its cut, shared between the
// snapshot's workers and the writes that would change them first (the
// copy-on-write layer, engine/src/layers/copy_on_write_layer.h).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

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
  size_t done_ = 0;                // under mu_
  Status failure_ = Status::Ok();  // under mu_
};

}  // namespace ebs
