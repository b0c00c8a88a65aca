#include "layers/copy_on_write_layer.h"

#include <algorithm>

namespace ebs {
namespace {

bool Mutates(const IoRequest& req) {
  return req.kind == IoKind::kWrite || req.kind == IoKind::kTrim || req.kind == IoKind::kWriteZeroes;
}

}  // namespace

// ---------------------------------------------------------------------------
// CopyOutSession

CopyOutSession::CopyOutSession(Reader reader, uint64_t volume_size, uint64_t chunk_size, std::vector<uint64_t> chunks,
                               Handler handler)
    : reader_(std::move(reader)),
      volume_size_(volume_size),
      chunk_size_(chunk_size),
      chunks_(std::move(chunks)),
      handler_(std::move(handler)),
      state_(new std::atomic<uint8_t>[chunks_.size() > 0 ? chunks_.size() : 1]) {
  for (size_t i = 0; i < chunks_.size(); ++i) state_[i].store(kPending, std::memory_order_relaxed);
}

std::pair<size_t, size_t> CopyOutSession::Positions(uint64_t offset, uint64_t length) const {
  if (length == 0 || chunks_.empty()) return {0, 0};
  const uint64_t first = offset / chunk_size_;
  const uint64_t last = (offset + length - 1) / chunk_size_;
  auto lo = std::lower_bound(chunks_.begin(), chunks_.end(), first);
  auto hi = std::upper_bound(lo, chunks_.end(), last);
  return {static_cast<size_t>(lo - chunks_.begin()), static_cast<size_t>(hi - chunks_.begin())};
}

bool CopyOutSession::Guards(uint64_t offset, uint64_t length) const {
  auto [lo, hi] = Positions(offset, length);
  for (size_t p = lo; p < hi; ++p) {
    if (state_[p].load(std::memory_order_acquire) != kDone) return true;
  }
  return false;
}

Status CopyOutSession::Process(size_t position, std::string* buf) {
  uint8_t expected = kPending;
  if (state_[position].compare_exchange_strong(expected, kTaken, std::memory_order_acq_rel)) Run(position, buf);
  return Status::Ok();
}

void CopyOutSession::Preserve(uint64_t offset, uint64_t length) {
  auto [lo, hi] = Positions(offset, length);
  std::string buf;
  for (size_t p = lo; p < hi; ++p) {
    uint8_t expected = kPending;
    if (state_[p].compare_exchange_strong(expected, kTaken, std::memory_order_acq_rel)) {
      Run(p, &buf);
      by_writes_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  // Chunks a worker is reading right now: the write must not overtake it.
  std::unique_lock<std::mutex> lock(mu_);
  for (size_t p = lo; p < hi; ++p) {
    cv_.wait(lock, [&] { return state_[p].load(std::memory_order_acquire) == kDone; });
  }
}

void CopyOutSession::Run(size_t position, std::string* buf) {
  const uint64_t offset = chunks_[position] * chunk_size_;
  const size_t len = static_cast<size_t>(std::min<uint64_t>(chunk_size_, volume_size_ - offset));
  buf->resize(len);
  Status st = reader_(offset, len, buf->data());
  if (!st.ok()) {
    st = Status::Error(st.code(), "read chunk " + std::to_string(chunks_[position]) + " for the snapshot: " +
                                      st.message());
  }
  if (st.ok()) st = handler_(position, *buf);
  if (!st.ok()) Fail(st);
  state_[position].store(kDone, std::memory_order_release);
  std::lock_guard<std::mutex> lock(mu_);
  ++done_;
  cv_.notify_all();
}

void CopyOutSession::Fail(const Status& st) {
  std::lock_guard<std::mutex> lock(mu_);
  if (failure_.ok()) failure_ = st;
  // Nobody will read the chunks not yet taken: writes stop waiting for them.
  for (size_t p = 0; p < chunks_.size(); ++p) {
    uint8_t expected = kPending;
    if (state_[p].compare_exchange_strong(expected, kDone, std::memory_order_acq_rel)) ++done_;
  }
  cv_.notify_all();
}

void CopyOutSession::Cancel(const Status& why) { Fail(why); }

Status CopyOutSession::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return done_ == chunks_.size(); });
  return failure_;
}

// ---------------------------------------------------------------------------
// CopyOnWriteLayer

CopyOnWriteLayer::CopyOnWriteLayer(std::shared_ptr<BlockDevice> next) : DeviceLayer(std::move(next)) {}

CopyOnWriteLayer::~CopyOnWriteLayer() { Detach(); }

void CopyOnWriteLayer::Submit(EventLoop& loop, IoRequest* req) {
  if (!Mutates(*req) || req->length == 0) {
    next_->Submit(loop, req);
    return;
  }
  // Counted before the frozen check, and Freeze sets frozen before it reads
  // the count: either this request is held, or Freeze waits for it.
  in_flight_.fetch_add(1);
  if (frozen_.load() || guarding_.load()) {
    std::unique_lock<std::mutex> lock(mu_);
    if (frozen_.load()) {
      req->loop = &loop;
      req->link = nullptr;
      if (held_tail_) {
        held_tail_->link = req;
      } else {
        held_head_ = req;
      }
      held_tail_ = req;
      ++held_;
      if (in_flight_.fetch_sub(1) == 1) cv_.notify_all();
      return;
    }
    if (session_ && session_->Guards(req->offset, req->length)) {
      req->loop = &loop;
      req->link = nullptr;
      if (copy_tail_) {
        copy_tail_->link = req;
      } else {
        copy_head_ = req;
      }
      copy_tail_ = req;
      ++copying_;
      cv_.notify_all();
      return;
    }
  }
  PassDown(loop, req);
}

void CopyOnWriteLayer::PassDown(EventLoop& loop, IoRequest* req) {
  auto& saved = req->LayerState<Saved>(layer_index());
  req->InterceptCompletion(&CopyOnWriteLayer::Completed, this, &saved.callback, &saved.owner);
  next_->Submit(loop, req);
}

void CopyOnWriteLayer::Completed(IoRequest* req, int result) {
  auto* self = static_cast<CopyOnWriteLayer*>(req->owner);
  const auto& saved = req->LayerState<Saved>(self->layer_index());
  req->callback = saved.callback;
  req->owner = saved.owner;
  if (self->in_flight_.fetch_sub(1) == 1 && self->frozen_.load()) {
    std::lock_guard<std::mutex> lock(self->mu_);
    self->cv_.notify_all();
  }
  req->callback(req, result);
}

void CopyOnWriteLayer::Freeze() {
  std::unique_lock<std::mutex> lock(mu_);
  frozen_.store(true);
  cv_.wait(lock, [&] { return in_flight_.load() == 0; });
}

void CopyOnWriteLayer::Thaw(std::shared_ptr<CopyOutSession> session) {
  IoRequest* held;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (session) {
      session_ = std::move(session);
      guarding_.store(true);
      if (!copier_.joinable()) {
        stop_ = false;
        copier_ = std::thread([this] { RunCopyOut(); });
      }
    }
    held = held_head_;
    held_head_ = held_tail_ = nullptr;
    held_ = 0;
    frozen_.store(false);
  }
  // Each goes through Submit again on its own loop, in the order it came.
  while (held) {
    IoRequest* req = held;
    held = held->link;
    req->loop->Post([this, req] { Submit(*req->loop, req); });
  }
}

void CopyOnWriteLayer::Detach() {
  std::thread copier;
  {
    std::unique_lock<std::mutex> lock(mu_);
    guarding_.store(false);
    session_.reset();
    // Requests already queued pass down once the copier sees no session.
    cv_.notify_all();
    cv_.wait(lock, [&] { return copying_ == 0; });
    stop_ = true;
    cv_.notify_all();
    copier = std::move(copier_);
  }
  if (copier.joinable()) copier.join();
}

void CopyOnWriteLayer::RunCopyOut() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || copy_head_ != nullptr; });
    if (copy_head_ == nullptr) return;  // stop_, nothing left
    IoRequest* req = copy_head_;
    copy_head_ = req->link;
    if (!copy_head_) copy_tail_ = nullptr;
    std::shared_ptr<CopyOutSession> session = session_;
    lock.unlock();
    if (session) session->Preserve(req->offset, req->length);
    req->loop->Post([this, req] { PassDown(*req->loop, req); });
    lock.lock();
    --copying_;
    cv_.notify_all();
  }
}

size_t CopyOnWriteLayer::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return held_ + copying_;
}

}  // namespace ebs
