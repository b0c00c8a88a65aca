#include "layers/hydration_layer.h"

#include <fcntl.h>
#include <unistd.h>

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
  requests_ = std::thread([this] { RunRequests(); });
}

HydrationLayer::~HydrationLayer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  if (requests_.joinable()) requests_.join();
  if (background_.joinable()) background_.join();
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
  req->link = nullptr;
  std::lock_guard<std::mutex> lock(mu_);
  if (tail_) {
    tail_->link = req;
  } else {
    head_ = req;
  }
  tail_ = req;
  cv_.notify_all();
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

Status HydrationLayer::Load(uint64_t chunk, uint64_t* fetched) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !loading_.count(chunk); });
    if (Loaded(chunk)) return Status::Ok();
    loading_.insert(chunk);
  }
  Status st = Status::Ok();
  std::string data;
  const uint64_t offset = chunk << shift_;
  st = source_->Fetch(chunk, &data);
  if (fetched != nullptr) *fetched = data.size();
  if (st.ok() && !data.empty() && options_.cipher) st = options_.cipher->EncryptPadded(offset, &data);
  if (st.ok() && !data.empty()) {
    st = PwriteVolumeData(fd_, data.data(), data.size(), offset, "loaded chunk " + std::to_string(chunk));
    // The data is durable before the record says it is loaded: after a
    // crash a chunk is either loaded whole or loaded again.
    if (st.ok() && fdatasync(fd_) != 0) st = Status::FromErrno(errno, "sync loaded chunk");
  }
  if (st.ok()) st = bitmap_->Mark(offset, 1);
  if (st.ok()) {
    words_[chunk / 64].fetch_or(uint64_t{1} << (chunk % 64), std::memory_order_acq_rel);
    if (loaded_.fetch_add(1) + 1 >= total_) complete_.store(true, std::memory_order_release);
  }
  std::lock_guard<std::mutex> lock(mu_);
  loading_.erase(chunk);
  cv_.notify_all();
  if (!st.ok()) {
    st = Status::IoError("loading chunk " + std::to_string(chunk) + " from " + source_->Describe() +
                         " failed: " + st.message());
  }
  return st;
}

void HydrationLayer::RunRequests() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || head_ != nullptr; });
    if (head_ == nullptr) return;
    IoRequest* req = head_;
    head_ = req->link;
    if (!head_) tail_ = nullptr;
    const bool stopping = stop_;
    lock.unlock();
    int result = stopping ? -ESHUTDOWN : 0;
    if (!stopping && req->length > 0) {
      const uint64_t first = req->offset >> shift_;
      const uint64_t last = (req->offset + req->length - 1) >> shift_;
      for (uint64_t c = first; c <= last && result == 0; ++c) {
        Status st = Load(c, nullptr);
        if (!st.ok()) {
          LogError(st.message());
          result = -EIO;
        }
      }
    }
    EventLoop* loop = req->loop;
    if (result == 0) {
      loop->Post([this, req] { next_->Submit(*req->loop, req); });
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
    Status st = Load(c, &fetched);
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
