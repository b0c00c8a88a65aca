// Progress of long operations (snapshot upload, restore, export, verify):
// reported by the code doing the work, shown by whoever asked for it. The
// control server forwards it to its client as lines before the reply; the
// CLI draws a bar on a terminal. Nothing is reported when nobody listens.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

namespace ebs {

class Progress {
 public:
  virtual ~Progress() = default;
  // `done` of `total` units (chunks) of `stage` ("uploading vol0"). May be
  // called from several threads (never concurrently: reporters serialise).
  virtual void Update(std::string_view stage, uint64_t done, uint64_t total) = 0;
};

// The listener of the operation running on this thread, or null.
Progress* CurrentProgress();

// Sets this thread's listener for its lifetime.
class ScopedProgress {
 public:
  explicit ScopedProgress(Progress* progress);
  ~ScopedProgress();
  ScopedProgress(const ScopedProgress&) = delete;
  ScopedProgress& operator=(const ScopedProgress&) = delete;

 private:
  Progress* previous_;
};

// Counts work done by any number of threads and passes it to the listener
// current when it was made, at most ten times a second, and once at the end.
class ProgressReporter {
 public:
  ProgressReporter(std::string stage, uint64_t total);
  ~ProgressReporter();  // the final update
  void Add(uint64_t n = 1);

 private:
  void Send(uint64_t done);
  Progress* const progress_;
  const std::string stage_;
  const uint64_t total_;
  std::atomic<uint64_t> done_{0};
  std::atomic<int64_t> last_ns_{0};
  std::atomic<bool> sending_{false};
};

}  // namespace ebs
