#include "ebs/engine/progress.h"

#include <chrono>

namespace ebs {
namespace {

thread_local Progress* current = nullptr;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Progress* CurrentProgress() { return current; }

ScopedProgress::ScopedProgress(Progress* progress) : previous_(current) { current = progress; }

ScopedProgress::~ScopedProgress() { current = previous_; }

ProgressReporter::ProgressReporter(std::string stage, uint64_t total)
    : progress_(CurrentProgress()), stage_(std::move(stage)), total_(total) {
  if (progress_ != nullptr) progress_->Update(stage_, 0, total_);
}

ProgressReporter::~ProgressReporter() {
  if (progress_ == nullptr) return;
  while (sending_.exchange(true)) {
  }
  progress_->Update(stage_, done_.load(), total_);
  sending_.store(false);
}

void ProgressReporter::Add(uint64_t n) {
  uint64_t done = done_.fetch_add(n) + n;
  if (progress_ == nullptr) return;
  int64_t now = NowNs();
  int64_t last = last_ns_.load();
  if (now - last < 100'000'000 || !last_ns_.compare_exchange_strong(last, now)) return;
  Send(done);
}

void ProgressReporter::Send(uint64_t done) {
  if (sending_.exchange(true)) return;  // another thread is reporting right now
  progress_->Update(stage_, done, total_);
  sending_.store(false);
}

}  // namespace ebs
