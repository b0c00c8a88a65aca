#include "layers/hydration_layer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>

#include "ebs/engine/file_util.h"
#include "ebs/engine/log.h"

namespace ebs {

Status HydrationLayer::CreateBitmap(const std::string& bitmap_path, uint64_t volume_size, uint64_t chunk_size) {
  ChangeTracker::Options opts;
  opts.chunk_size = chunk_size;
  opts.if_missing = ChangeTracker::IfMissing::kCreateEmpty;
  auto t = ChangeTracker::Open(bitmap_path, volume_size, opts);
  return t.ok() ? Status::Ok() : t.status();
}

Result<std::shared_ptr<HydrationLayer>> HydrationLayer::Open(std::shared_ptr<BlockDevice> next,
                                                             const std::string& data_path,
                                                             const std::string& bitmap_path,
                                                             std::shared_ptr<ChunkSource> source, Options options) {
  ChangeTracker::Options opts;
  opts.chunk_size = options.chunk_size;
  opts.if_missing = ChangeTracker::IfMissing::kFail;
  // Size 0: keep the chunk count recorded when the volume was restored; a
  // volume grown since has zeros beyond it, nothing to load.
  auto bitmap = ChangeTracker::Open(bitmap_path, 0, opts);
  if (!bitmap.ok()) {
    return Status::Error(bitmap.status().code(), "the record of loaded chunks (" + bitmap_path +
                                                     ") cannot be opened: " + bitmap.status().message());
  }
  if ((*bitmap)->chunk_size() != options.chunk_size) {
    return Status::InvalidArgument("the record of loaded chunks has another chunk size than " + source->Describe());
  }
  int fd = ::open(data_path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + data_path);
  return std::shared_ptr<HydrationLayer>(
      new HydrationLayer(std::move(next), fd, *bitmap, std::move(source), options));
}

HydrationLayer::HydrationLayer(std::shared_ptr<BlockDevice> next, int fd, std::shared_ptr<ChangeTracker> bitmap,
                               std::shared_ptr<ChunkSource> source, Options options)
    : DeviceLayer(std::move(next)),
      fd_(fd),
      bitmap_(std::move(bitmap)),
      source_(std::move(source)),
      options_(options),
      source_chunks_(bitmap_->chunk_count()),
      total_(source_chunks_),
      shift_(static_cast<unsigned>(std::countr_zero(options.chunk_size))),
      words_(new std::atomic<uint64_t>[(source_chunks_ + 63) / 64 + 1]) {
  ChangeSet marked = bitmap_->Marked();
  uint64_t n = 0;
  for (uint64_t w = 0; w < (source_chunks_ + 63) / 64 + 1; ++w) {
    uint64_t bits = w < marked.words.size() ? marked.words[w] : 0;
    words_[w].store(bits, std::memory_order_relaxed);
    n += static_cast<uint64_t>(std::popcount(bits));
  }
  loaded_.store(n);
  complete_.store(n >= total_);
  // Fetching waits on the store (a disk, or S3's round trips) as much as it
  // decodes: four threads per core, so first touches of many chunks overlap.
  const int threads = kFetchThreadsPerCore * std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  for (int i = 0; i < threads; ++i) requests_.emplace_back([this] { RunRequests(); });
  committer_ = std::thread([this] { RunCommits(); });
}

HydrationLayer::~HydrationLayer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  work_.notify_all();
  commit_.notify_all();
  for (auto& t : requests_) t.join();
  if (background_.joinable()) background_.join();
  // The committer records what was written before it stops.
  committer_.join();
  ::close(fd_);
}

bool HydrationLayer::Loaded(uint64_t chunk) const {
  if (chunk >= source_chunks_) return true;
  return (words_[chunk / 64].load(std::memory_order_acquire) >> (chunk % 64)) & 1;
}

bool HydrationLayer::RangeLoaded(uint64_t offset, uint64_t length) const {
  if (length == 0) return true;
  const uint64_t first = offset >> shift_;
  const uint64_t last = (offset + length - 1) >> shift_;
  for (uint64_t c = first; c <= last; ++c) {
    if (!Loaded(c)) return false;
  }
  return true;
}

Status HydrationLayer::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void HydrationLayer::Submit(EventLoop& loop, IoRequest* req) {
  if (complete_.load(std::memory_order_acquire) || req->kind == IoKind::kFlush ||
      RangeLoaded(req->offset, req->length)) {
    next_->Submit(loop, req);
    return;
  }
  // Loading blocks (fetch, write, sync): never on the loop's thread.
  req->loop = &loop;
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) {  // no thread is left to serve it
    loop.Post([req] { req->Finish(-ESHUTDOWN); });
    return;
  }
  waiting_.Push(req);
  work_.notify_one();
}

Status HydrationLayer::Resize(uint64_t new_size) { return next_->Resize(new_size); }

Status HydrationLayer::Map(uint64_t offset, uint64_t length, std::vector<Extent>* out, size_t max_extents) {
  if (complete_.load(std::memory_order_acquire) || RangeLoaded(offset, length)) {
    return next_->Map(offset, length, out, max_extents);
  }
  const size_t first = out->size();
  auto append = [out](uint64_t off, uint64_t len, bool hole) {
    if (!out->empty() && out->back().hole == hole && out->back().offset + out->back().length == off) {
      out->back().length += len;
    } else {
      out->push_back({off, len, hole});
    }
  };
  const uint64_t end = offset + length;
  uint64_t pos = offset;
  std::vector<Extent> part;
  while (pos < end && out->size() - first < max_extents) {
    const uint64_t chunk = pos >> shift_;
    const uint64_t chunk_end = std::min(end, (chunk + 1) << shift_);
    if (Loaded(chunk)) {
      part.clear();
      // One more than still fits: the first may merge into the last appended.
      const size_t room = max_extents - (out->size() - first);
      EBS_RETURN_IF_ERROR(next_->Map(pos, chunk_end - pos, &part, room == SIZE_MAX ? room : room + 1));
      for (const auto& e : part) {
        append(e.offset, e.length, e.hole);
        if (out->size() - first > max_extents) {  // the extra one did not merge
          out->pop_back();
          return Status::Ok();
        }
      }
      if (!part.empty() && part.back().offset + part.back().length < chunk_end) break;  // the layer below stopped
    } else {
      append(pos, chunk_end - pos, !source_->HasData(chunk));
    }
    pos = chunk_end;
  }
  return Status::Ok();
}

Status HydrationLayer::Write(uint64_t chunk, uint64_t* fetched) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    // Bounded: chunks written but not recorded yet wait for the committer,
    // so memory does not grow with the volume (chunks of zeros are written
    // as fast as they are counted).
    cv_.wait(lock, [&] {
      return stop_ || (!loading_.count(chunk) && (written_.size() < kMaxUnrecorded || written_.count(chunk)));
    });
    if (stop_) return Status::Error(ESHUTDOWN, "the volume is closing");
    if (Loaded(chunk) || written_.count(chunk)) return Status::Ok();
    loading_.insert(chunk);
  }
  Status st = Status::Ok();
  std::string data;
  const uint64_t offset = chunk << shift_;
  st = source_->Fetch(chunk, &data);
  if (fetched != nullptr) *fetched = data.size();
  if (st.ok() && !data.empty() && options_.cipher) st = options_.cipher->EncryptPadded(offset, &data);
  if (st.ok() && !data.empty()) {
    // Durable later, before the record says it is loaded (RunCommits): after
    // a crash a chunk is either loaded whole or loaded again.
    st = PwriteVolumeData(fd_, data.data(), data.size(), offset, "loaded chunk " + std::to_string(chunk));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    loading_.erase(chunk);
    if (st.ok()) {
      written_.insert(chunk);
      failed_.erase(chunk);
      to_commit_.push_back(chunk);
      commit_.notify_one();
    }
  }
  cv_.notify_all();
  if (!st.ok()) {
    st = Status::IoError("loading chunk " + std::to_string(chunk) + " from " + source_->Describe() +
                         " failed: " + st.message());
  }
  return st;
}

Status HydrationLayer::WaitLoaded(uint64_t chunk) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return Loaded(chunk) || failed_.count(chunk) || stop_; });
  if (Loaded(chunk)) return Status::Ok();
  if (stop_) return Status::Error(ESHUTDOWN, "the volume is closing");
  return Status::IoError("recording chunk " + std::to_string(chunk) + " as loaded failed");
}

Status HydrationLayer::MarkLoaded(const std::vector<uint64_t>& chunks) {
  // One queued mark per chunk: the record's thread persists them together.
  struct Waiter {
    std::mutex mu;
    std::condition_variable cv;
    size_t left = 0;
    int error = 0;
    void Done(int result) {
      std::lock_guard<std::mutex> lock(mu);
      if (result < 0 && error == 0) error = result;
      if (--left == 0) cv.notify_all();
    }
  } w;
  w.left = chunks.size();
  std::vector<IoRequest> reqs(chunks.size());
  for (size_t i = 0; i < chunks.size(); ++i) {
    IoRequest& r = reqs[i];
    r.kind = IoKind::kWrite;
    r.offset = chunks[i] << shift_;
    r.length = 1;
    r.owner = &w;
    r.loop = nullptr;  // completes on the record's thread
    r.on_cqe = [](IoRequest* req, int result) { static_cast<Waiter*>(req->owner)->Done(result); };
    switch (bitmap_->MarkOrQueue(&r)) {
      case ChangeTracker::MarkOutcome::kDurable:
        w.Done(0);
        break;
      case ChangeTracker::MarkOutcome::kOutOfRange:
        w.Done(-EINVAL);
        break;
      case ChangeTracker::MarkOutcome::kQueued:
        break;
    }
  }
  std::unique_lock<std::mutex> lock(w.mu);
  w.cv.wait(lock, [&] { return w.left == 0; });
  return w.error == 0 ? Status::Ok() : Status::FromErrno(-w.error, "record loaded chunks");
}

void HydrationLayer::RunCommits() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    commit_.wait(lock, [&] { return stop_ || (!to_commit_.empty() && !hold_commits_); });
    if (to_commit_.empty()) return;  // stopping, nothing left to record
    std::vector<uint64_t> batch;
    batch.swap(to_commit_);
    lock.unlock();
    // The data first, then the record: one sync of each for the whole batch.
    Status st = Status::Ok();
    // A failed sync stays failed: the kernel reports a writeback error once,
    // so a later sync could succeed while pages written before this one
    // (another batch's) never reached the disk. Nothing is recorded loaded
    // from then on; those chunks load again after a restart.
    if (sync_failed_) {
      st = Status::IoError("an earlier sync of the data file failed");
    } else if (fdatasync(fd_) != 0) {
      st = Status::FromErrno(errno, "sync loaded chunks");
      sync_failed_ = true;
    }
    if (st.ok()) st = MarkLoaded(batch);
    if (st.ok()) {
      for (uint64_t c : batch) words_[c / 64].fetch_or(uint64_t{1} << (c % 64), std::memory_order_acq_rel);
      if (loaded_.fetch_add(batch.size()) + batch.size() >= total_) complete_.store(true, std::memory_order_release);
    } else {
      LogError("recording " + std::to_string(batch.size()) + " loaded chunk(s) failed: " + st.message());
    }
    lock.lock();
    for (uint64_t c : batch) {
      written_.erase(c);
      if (!st.ok()) failed_.insert(c);  // its writers fail; a later request loads it again
    }
    if (!st.ok() && error_.ok()) error_ = st;
    cv_.notify_all();
  }
}

void HydrationLayer::TEST_HoldCommits(bool hold) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    hold_commits_ = hold;
  }
  commit_.notify_all();
}

int HydrationLayer::Serve(IoRequest* req) {
  if (req->length == 0) return 0;
  const uint64_t first = req->offset >> shift_;
  const uint64_t last = (req->offset + req->length - 1) >> shift_;
  const bool read = req->kind == IoKind::kRead || req->kind == IoKind::kCache;
  if (read && next_sequential_.exchange(req->offset + req->length) == req->offset) {
    // A sequential reader: its next chunks are fetched ahead by idle threads.
    std::lock_guard<std::mutex> lock(mu_);
    prefetch_.clear();
    for (uint64_t c = last + kReadAheadChunks; c > last; --c) {
      if (c < source_chunks_ && !Loaded(c)) prefetch_.push_back(c);  // taken from the back: nearest first
    }
    work_.notify_all();
  }
  const auto start = std::chrono::steady_clock::now();
  // Reads need the bytes in the data file; anything else, the record too:
  // every chunk written first, so that one commit can record them all.
  for (int pass = 0; pass < (read ? 1 : 2); ++pass) {
    for (uint64_t c = first; c <= last; ++c) {
      if (Loaded(c)) continue;
      Status st = pass == 0 ? Write(c, nullptr) : WaitLoaded(c);
      if (st.code() == ESHUTDOWN) return -ESHUTDOWN;
      if (!st.ok()) {
        LogError(st.message());
        return -EIO;
      }
    }
  }
  if (!read) return 0;
  fetch_waits_.fetch_add(1, std::memory_order_relaxed);
  fetch_wait_ns_.fetch_add(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::steady_clock::now() - start).count()),
                           std::memory_order_relaxed);
  return 0;
}

void HydrationLayer::RunRequests() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_.wait(lock, [&] { return stop_ || !waiting_.empty() || !prefetch_.empty(); });
    if (waiting_.empty() && (stop_ || prefetch_.empty())) return;
    if (waiting_.empty()) {
      const uint64_t c = prefetch_.back();
      prefetch_.pop_back();
      lock.unlock();
      if (!Loaded(c)) (void)Write(c, nullptr);  // a failure is met again by the request that needs it
      lock.lock();
      continue;
    }
    IoRequest* req = waiting_.Pop();
    const bool stopping = stop_;
    lock.unlock();
    const int result = stopping ? -ESHUTDOWN : Serve(req);
    EventLoop* loop = req->loop;
    if (result == 0) {
      loop->Post([next = next_, req] { next->Submit(*req->loop, req); });
    } else {
      loop->Post([req, result] { req->Finish(result); });
    }
    lock.lock();
  }
}

void HydrationLayer::StartBackground() {
  if (complete_.load() || background_.joinable()) return;
  background_ = std::thread([this] { RunBackground(); });
}

void HydrationLayer::RunBackground() {
  const auto start = std::chrono::steady_clock::now();
  uint64_t bytes = 0;
  for (uint64_t c = 0; c < source_chunks_; ++c) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
    }
    if (Loaded(c)) continue;
    uint64_t fetched = 0;
    Status st = Write(c, &fetched);  // the committer records it
    if (st.code() == ESHUTDOWN) return;
    if (!st.ok()) {
      LogError("background loading stopped: " + st.message());
      std::lock_guard<std::mutex> lock(mu_);
      if (error_.ok()) error_ = st;
      return;
    }
    bytes += fetched;  // chunks of zeros cost nothing to load
    if (options_.rate_mibps > 0) {
      // Sleep (in short steps, to stop promptly) until the average rate
      // since the start is back under the limit.
      const double due_s = static_cast<double>(bytes) / (options_.rate_mibps * 1024 * 1024);
      for (;;) {
        double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (elapsed >= due_s) break;
        std::unique_lock<std::mutex> lock(mu_);
        if (cv_.wait_for(lock, std::chrono::duration<double>(std::min(due_s - elapsed, 0.1)), [&] { return stop_; })) {
          return;
        }
      }
    }
  }
}

}  // namespace ebs
