#include "ebs/engine/chunk_source_device.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

namespace ebs {

ChunkSourceDevice::ChunkSourceDevice(std::shared_ptr<ChunkSource> source, Options options)
    : source_(std::move(source)),
      options_(options),
      shift_(static_cast<unsigned>(std::countr_zero(options.chunk_size))),
      chunks_((options.size + options.chunk_size - 1) / options.chunk_size) {
  const int threads =
      options_.threads > 0 ? options_.threads : std::max(2, static_cast<int>(std::thread::hardware_concurrency()));
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
}

ChunkSourceDevice::~ChunkSourceDevice() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  fetched_.notify_all();
  for (auto& t : threads_) t.join();
}

void ChunkSourceDevice::Close() {
  closed_.store(true, std::memory_order_release);
  std::lock_guard<std::mutex> lock(mu_);
  prefetch_.clear();
  cache_.clear();
  lru_.clear();
}

void ChunkSourceDevice::Submit(EventLoop& loop, IoRequest* req) {
  req->loop = &loop;
  int result = 0;
  if (closed()) {
    result = -ESHUTDOWN;
  } else {
    switch (req->kind) {
      case IoKind::kRead:
        if (req->length == 0) break;
        {
          // Sequential readers are seen here, in the order requests arrive.
          const uint64_t last = (req->offset + req->length - 1) >> shift_;
          if (next_sequential_.exchange(req->offset + req->length) == req->offset) ReadAhead(last);
          if (ReadCached(req)) break;  // every chunk it needs is decoded already: no thread hop
          std::lock_guard<std::mutex> lock(mu_);
          waiting_.Push(req);
        }
        cv_.notify_one();
        return;
      case IoKind::kFlush:
      case IoKind::kCache:
        break;
      case IoKind::kWrite:
      case IoKind::kTrim:
      case IoKind::kWriteZeroes:
        result = -EPERM;
        break;
    }
  }
  loop.Post([req, result] { req->Finish(result); });
}

void ChunkSourceDevice::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !waiting_.empty() || !prefetch_.empty(); });
    if (!waiting_.empty()) {
      IoRequest* req = waiting_.Pop();
      const bool stopping = stop_;
      lock.unlock();
      const int result = stopping || closed() ? -ESHUTDOWN : Read(req);
      req->loop->Post([req, result] { req->Finish(result); });
      lock.lock();
      continue;
    }
    if (stop_) return;
    // Idle: fetch ahead for a sequential reader.
    const uint64_t chunk = prefetch_.back();
    prefetch_.pop_back();
    if (cache_.count(chunk) != 0 || fetching_.count(chunk) != 0) continue;
    lock.unlock();
    (void)Get(chunk);  // a failure is met again (and reported) by the read that needs it
    lock.lock();
  }
}

bool ChunkSourceDevice::ReadCached(IoRequest* req) {
  const uint64_t first = req->offset >> shift_;
  const uint64_t last = (req->offset + req->length - 1) >> shift_;
  Chunk held[kInlineChunks];
  if (last - first >= kInlineChunks) return false;
  {
    std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
    if (!lock.owns_lock()) return false;  // a fetching thread has it: never wait on the loop
    for (uint64_t c = first; c <= last; ++c) {
      if (!source_->HasData(c)) continue;
      auto it = cache_.find(c);
      if (it == cache_.end()) return false;
      lru_.splice(lru_.begin(), lru_, it->second.pos);
      held[c - first] = it->second.data;
    }
  }
  uint64_t done = 0;
  for (uint64_t c = first; c <= last; ++c) done += CopyOut(req, c, held[c - first].get(), done);
  return true;
}

uint64_t ChunkSourceDevice::CopyOut(IoRequest* req, uint64_t c, const std::string* bytes, uint64_t done) {
  const uint64_t chunk_start = c << shift_;
  const uint64_t from = std::max(req->offset, chunk_start) - chunk_start;
  const uint64_t to = std::min(req->offset + req->length, chunk_start + options_.chunk_size) - chunk_start;
  char* dst = req->buf + done;
  const uint64_t have = bytes == nullptr ? 0 : std::min<uint64_t>(bytes->size(), to);
  if (have > from) std::memcpy(dst, bytes->data() + from, have - from);
  const uint64_t zero_from = std::max(have, from);
  if (to > zero_from) std::memset(dst + (zero_from - from), 0, to - zero_from);
  return to - from;
}

int ChunkSourceDevice::Read(IoRequest* req) {
  const uint64_t first = req->offset >> shift_;
  const uint64_t last = (req->offset + req->length - 1) >> shift_;
  uint64_t done = 0;
  for (uint64_t c = first; c <= last; ++c) {
    if (!source_->HasData(c)) {
      done += CopyOut(req, c, nullptr, done);
      continue;
    }
    auto data = Get(c);
    if (!data.ok()) return -(data.status().code() != 0 ? data.status().code() : EIO);
    done += CopyOut(req, c, data->get(), done);
  }
  return 0;
}

Result<ChunkSourceDevice::Chunk> ChunkSourceDevice::Get(uint64_t chunk) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (stop_ || closed()) return Status::Error(ESHUTDOWN, "the snapshot export is closed");
      auto it = cache_.find(chunk);
      if (it != cache_.end()) {
        lru_.splice(lru_.begin(), lru_, it->second.pos);
        return it->second.data;
      }
      if (fetching_.insert(chunk).second) break;  // ours to fetch
      fetched_.wait(lock);
    }
  }
  Chunk data;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!spare_.empty()) {
      data = std::move(spare_.back());
      spare_.pop_back();
    }
  }
  if (data == nullptr) data = std::make_shared<std::string>();
  Status st = source_->Fetch(chunk, data.get());  // overwrites it, in its memory when it is large enough
  {
    std::lock_guard<std::mutex> lock(mu_);
    fetching_.erase(chunk);
    if (st.ok() && !closed()) CacheLocked(chunk, data);
  }
  fetched_.notify_all();
  if (!st.ok()) return Status::Error(EIO, st.message());
  return data;
}

void ChunkSourceDevice::ReadAhead(uint64_t last) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    prefetch_.clear();  // only the reader's newest position matters
    // Pushed farthest first: taken from the back, the nearest goes first.
    for (int i = options_.readahead_chunks; i >= 1; --i) {
      const uint64_t c = last + static_cast<uint64_t>(i);
      if (c >= chunks_ || !source_->HasData(c) || cache_.count(c) != 0 || fetching_.count(c) != 0) continue;
      prefetch_.push_back(c);
    }
    if (prefetch_.empty()) return;
  }
  cv_.notify_all();
}

void ChunkSourceDevice::CacheLocked(uint64_t chunk, Chunk data) {
  auto it = cache_.find(chunk);
  if (it != cache_.end()) {
    it->second.data = std::move(data);
    lru_.splice(lru_.begin(), lru_, it->second.pos);
    return;
  }
  lru_.push_front(chunk);
  cache_.emplace(chunk, Entry{std::move(data), lru_.begin()});
  const size_t limit = std::max<size_t>(options_.cache_chunks, 1);
  while (cache_.size() > limit) {
    auto victim = cache_.find(lru_.back());
    // A buffer no reader holds is kept for the next fetch: a chunk's worth
    // of fresh memory costs page faults and zeroing each time.
    if (victim->second.data.use_count() == 1 && spare_.size() < kSpareBuffers) {
      // The last reader's copy out of it happened before its reference went.
      std::atomic_thread_fence(std::memory_order_acquire);
      spare_.push_back(std::move(victim->second.data));
    }
    cache_.erase(victim);
    lru_.pop_back();
  }
}

Status ChunkSourceDevice::Map(uint64_t offset, uint64_t length, std::vector<Extent>* out, size_t max_extents) {
  const uint64_t end = std::min(offset + length, options_.size);
  uint64_t pos = offset;
  size_t appended = 0;
  while (pos < end) {
    const uint64_t c = pos >> shift_;
    const bool hole = !source_->HasData(c);
    const uint64_t next = std::min(end, (c + 1) << shift_);
    if (!out->empty() && appended > 0 && out->back().hole == hole && out->back().offset + out->back().length == pos) {
      out->back().length += next - pos;
    } else {
      if (appended == max_extents) break;
      out->push_back(Extent{pos, next - pos, hole});
      ++appended;
    }
    pos = next;
  }
  return Status::Ok();
}

}  // namespace ebs
