// Lazy restore: a volume created from a snapshot is served at once, before
// its data has been copied. Every chunk starts "not loaded"; a request that
// touches such a chunk first has it fetched from the snapshot (decrypted,
// decompressed) and written into the data file. A read goes on as soon as
// those bytes are in the data file (read-through: the page cache has them);
// a write, trim or write-zeroes waits until the chunk is durably recorded
// as loaded, so a crash can never load the snapshot's bytes over it. The
// record is group-committed: one fdatasync of the data file, then one
// persist of the record, for every chunk written meanwhile. A chunk is
// marked loaded only once its bytes are durable; a crash before that loads
// it again (the same bytes). Several threads fetch at once (one per core),
// requests for the same chunk share one fetch, sequential reads have the
// next chunks fetched ahead, and a background thread loads the rest in
// order, at an optional rate, through the same pipeline. Loaded chunks are
// never loaded again, so a client's write is never overwritten.
//
// What is loaded is kept in a small bitmap file beside the volume (the same
// crash-safe format as change tracking), so loading resumes after a restart.
//
// Sits below the copy-on-write layer and above change tracking: loading a
// chunk is not a change relative to the snapshot the volume came from.
#pragma once

#include "ebs/engine/chunk_source.h"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "ebs/engine/block_device.h"
#include "layers/change_tracker.h"
#include "keys/sector_cipher.h"
#include "ebs/engine/status.h"

namespace ebs {

class HydrationLayer final : public DeviceLayer {
 public:
  struct Options {
    uint64_t chunk_size = 512 * 1024;  // the snapshot's chunk size (a power of two)
    double rate_mibps = 0;             // background loading; 0 = as fast as it goes
    // An encrypted volume's cipher: loaded chunks are written encrypted.
    std::shared_ptr<SectorCipher> cipher;
  };
  // `data_path`: the volume's data file (written directly when loading).
  // `bitmap_path`: the record of loaded chunks; created empty if missing.
  static Result<std::shared_ptr<HydrationLayer>> Open(std::shared_ptr<BlockDevice> next, const std::string& data_path,
                                                      const std::string& bitmap_path,
                                                      std::shared_ptr<ChunkSource> source, Options options);
  // Stops the background and request threads (requests still waiting fail
  // with ESHUTDOWN).
  ~HydrationLayer() override;

  void Submit(EventLoop& loop, IoRequest* req) override;
  // Grows the volume: the new chunks hold zeros and count as loaded.
  Status Resize(uint64_t new_size) override;
  // Chunks not loaded yet are described by the snapshot (data or a hole),
  // not by the data file, where they are still holes.
  Status Map(uint64_t offset, uint64_t length, std::vector<Extent>* out, size_t max_extents) override;

  // Starts background loading. Separate from Open so the owner can finish
  // wiring first.
  void StartBackground();

  uint64_t loaded_chunks() const { return loaded_.load(); }
  // Requests that waited for a chunk to be fetched, and for how long in all.
  uint64_t fetch_waits() const { return fetch_waits_.load(std::memory_order_relaxed); }
  uint64_t fetch_wait_ns() const { return fetch_wait_ns_.load(std::memory_order_relaxed); }
  uint64_t total_chunks() const { return total_; }
  bool complete() const { return complete_.load(std::memory_order_acquire); }
  // The first background failure (a missing or corrupt object), if any.
  // Requests touching an unloadable chunk fail with EIO; others go on.
  Status error() const;
  bool Loaded(uint64_t chunk) const;
  uint64_t chunk_size() const { return options_.chunk_size; }
  // The content of `chunk` while it is not loaded, straight from the source:
  // nothing is written or marked. `data` becomes the chunk's bytes, possibly
  // shorter than the chunk size (zeros past its end; empty for zeros).
  // Blocking; not on an event loop thread.
  Status ReadSource(uint64_t chunk, std::string* data) { return source_->Fetch(chunk, data); }

  // Tests: while held, chunks written are not recorded as loaded (reads go
  // on; writes wait), as if the record's sync took that long.
  void TEST_HoldCommits(bool hold);

  // Creates an empty record of loaded chunks for a new lazily restored volume.
  static Status CreateBitmap(const std::string& bitmap_path, uint64_t volume_size, uint64_t chunk_size);

 private:
  HydrationLayer(std::shared_ptr<BlockDevice> next, int fd, std::shared_ptr<ChangeTracker> bitmap,
                 std::shared_ptr<ChunkSource> source, Options options);
  // Fetches chunk `chunk` and writes it into the data file unless it is
  // loaded or written already (waits while another thread does it), and
  // queues it for the committer. `fetched` (optional): bytes fetched.
  Status Write(uint64_t chunk, uint64_t* fetched);
  // Waits until `chunk` is durably loaded; EIO if its commit failed.
  Status WaitLoaded(uint64_t chunk);
  // Serves one queued request: its chunks written (a read) or loaded
  // (anything else), then passed down. Returns 0 or -errno.
  int Serve(IoRequest* req);
  void RunRequests();
  void RunCommits();
  void RunBackground();
  // Durably records `chunks` as loaded (one persist of the record).
  Status MarkLoaded(const std::vector<uint64_t>& chunks);
  bool RangeLoaded(uint64_t offset, uint64_t length) const;

  const int fd_;
  const std::shared_ptr<ChangeTracker> bitmap_;
  const std::shared_ptr<ChunkSource> source_;
  const Options options_;
  const uint64_t source_chunks_;  // chunks the volume had when restored
  const uint64_t total_;
  const unsigned shift_;
  std::unique_ptr<std::atomic<uint64_t>[]> words_;  // loaded bits (set once durable)
  std::atomic<uint64_t> loaded_{0};
  std::atomic<bool> complete_{false};

  std::atomic<uint64_t> fetch_waits_{0};
  std::atomic<uint64_t> fetch_wait_ns_{0};
  std::atomic<uint64_t> next_sequential_{UINT64_MAX};  // where a sequential reader reads next

  // How far ahead of a sequential reader chunks are fetched.
  static constexpr uint64_t kReadAheadChunks = 8;
  static constexpr int kFetchThreadsPerCore = 4;
  // Chunks written into the data file and not yet recorded as loaded, at most.
  static constexpr size_t kMaxUnrecorded = 4096;

  mutable std::mutex mu_;
  std::condition_variable cv_;            // a chunk's state changed, or stopping
  std::condition_variable work_;          // a request or a prefetch queued, or stopping
  std::condition_variable commit_;        // chunks to commit, or stopping
  std::unordered_set<uint64_t> loading_;  // under mu_: being fetched and written
  std::unordered_set<uint64_t> written_;  // under mu_: in the data file, not yet durably marked
  std::unordered_set<uint64_t> failed_;   // under mu_: their commit failed (writers waiting get EIO)
  std::vector<uint64_t> to_commit_;       // under mu_: written, for the committer
  std::vector<uint64_t> prefetch_;        // under mu_: chunks to fetch ahead
  IoQueue waiting_;                       // under mu_: requests waiting for chunks
  Status error_ = Status::Ok();           // under mu_
  bool stop_ = false;                     // under mu_
  bool hold_commits_ = false;             // under mu_ (tests)
  bool sync_failed_ = false;              // the committer's own: a sync of the data file failed
  std::vector<std::thread> requests_;
  std::thread committer_;
  std::thread background_;
};

}  // namespace ebs
