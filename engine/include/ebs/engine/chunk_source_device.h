// A read-only device over a ChunkSource: a snapshot served as it is stored,
// with no volume behind it (the snapshot exports of `ebs serve`). Reads are
// answered from decoded chunks kept in a bounded cache; a chunk not cached is
// fetched by one of the device's threads (fetching, checking, decrypting and
// decompressing block, so never on an event loop), once however many
// requests want it. Sequential reads fetch a few chunks ahead.
//
// Writes, trims and write-zeroes fail with EPERM; flush and cache succeed.
// Map tells chunks the source has no data for (holes) from the rest.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "ebs/engine/block_device.h"
#include "ebs/engine/chunk_source.h"

namespace ebs {

class ChunkSourceDevice final : public BlockDevice {
 public:
  struct Options {
    uint64_t size = 0;                 // bytes; the last chunk may be partial
    uint64_t chunk_size = 512 * 1024;  // the source's chunk size (a power of two)
    size_t cache_chunks = 64;         // decoded chunks kept (at least threads + readahead)
    int threads = 0;            // fetching threads; 0: one per core (decoding is CPU work)
    int readahead_chunks = 16;  // fetched ahead of a sequential reader
  };
  ChunkSourceDevice(std::shared_ptr<ChunkSource> source, Options options);
  // Requests still queued complete with ESHUTDOWN first.
  ~ChunkSourceDevice() override;

  uint64_t size() const override { return options_.size; }
  void Submit(EventLoop& loop, IoRequest* req) override;
  Status Map(uint64_t offset, uint64_t length, std::vector<Extent>* out, size_t max_extents) override;
  Status Resize(uint64_t) override { return Status::Error(EROFS, "a snapshot cannot be resized"); }

  // The source is gone (the snapshot was deleted): from now on every request
  // fails with ESHUTDOWN.
  void Close();
  bool closed() const { return closed_.load(std::memory_order_acquire); }
  const ChunkSource& source() const { return *source_; }

 private:
  using Chunk = std::shared_ptr<std::string>;  // never changed while cached
  static constexpr uint64_t kInlineChunks = 4;   // a read of up to this many chunks may be served inline
  static constexpr size_t kSpareBuffers = 8;
  // Serves a read of chunks all in the cache (or holes) at once, on the
  // submitting thread, unless another thread holds the cache's lock.
  bool ReadCached(IoRequest* req);
  // Copies chunk `c`'s part of `req` (from `bytes`, zeros past its end or
  // when null) to req->buf + done; returns the bytes copied.
  uint64_t CopyOut(IoRequest* req, uint64_t c, const std::string* bytes, uint64_t done);
  void Run();
  // Serves one read (blocking). Returns 0 or -errno.
  int Read(IoRequest* req);
  // The decoded content of `chunk` (empty: zeros), from the cache or fetched.
  Result<Chunk> Get(uint64_t chunk);
  // Queues fetches of the chunks after `last` for a sequential reader.
  void ReadAhead(uint64_t last);
  // REQUIRES: mu_. Inserts into the cache, evicting the least recent.
  void CacheLocked(uint64_t chunk, Chunk data);

  const std::shared_ptr<ChunkSource> source_;
  const Options options_;
  const unsigned shift_;
  const uint64_t chunks_;
  std::atomic<bool> closed_{false};
  std::atomic<uint64_t> next_sequential_{UINT64_MAX};  // where a sequential reader reads next

  std::mutex mu_;
  std::condition_variable cv_;       // work queued, or stopping
  std::condition_variable fetched_;  // a fetch finished
  IoQueue waiting_;                  // under mu_: reads waiting for a thread
  std::vector<uint64_t> prefetch_;   // under mu_: chunks to fetch ahead (LIFO is fine)
  std::list<uint64_t> lru_;          // under mu_: most recent first
  struct Entry {
    Chunk data;
    std::list<uint64_t>::iterator pos;
  };
  std::unordered_map<uint64_t, Entry> cache_;  // under mu_
  std::unordered_set<uint64_t> fetching_;       // under mu_: chunks being fetched
  std::vector<Chunk> spare_;                    // under mu_: evicted buffers for the next fetches
  bool stop_ = false;                           // under mu_
  std::vector<std::thread> threads_;
};

}  // namespace ebs
