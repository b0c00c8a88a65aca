// An event loop: one thread, one io_uring ring. Disk I/O and socket I/O are
// both submitted to the ring of the loop that owns the request, and every
// completion runs on that loop's thread.
#pragma once

#include <liburing.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "ebs/engine/status.h"

namespace ebs {

// Receives the completion of one io_uring operation. The address of the
// IoCompletion is the SQE's user_data. Runs on the loop's thread.
class IoCompletion {
 public:
  virtual ~IoCompletion() = default;
  // `res` is the CQE result: >= 0 on success, -errno on failure.
  virtual void OnComplete(int res, uint32_t cqe_flags) = 0;
};

class EventLoop {
 public:
  // `entries`: submission queue depth of the ring.
  static Result<std::unique_ptr<EventLoop>> Create(unsigned entries = 1024);
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Before Start(): when the loop runs out of work it checks for new
  // completions without sleeping for up to `d` before it waits in the kernel.
  // A thread that sleeps must be woken by whoever sends it work (a client's
  // send, on this machine an inter-processor interrupt into an idle virtual
  // CPU); one that polls is not. Zero turns polling off.
  // Kernels without IORING_SETUP_TASKRUN_FLAG never poll.
  void set_busy_poll(std::chrono::nanoseconds d) {
    busy_poll_ = d;
    polls_ = d.count() > 0 && taskrun_flag_;
  }

  // Starts the loop's thread. Stop() asks it to return after the current
  // batch of completions and joins it.
  void Start(std::string name);
  void Stop();

  // Runs `fn` on the loop's thread. Safe to call from any thread.
  void Post(std::function<void()> fn);

  // True when called from this loop's thread.
  bool InLoopThread() const { return std::this_thread::get_id() == thread_id_.load(); }

  // REQUIRES: loop thread. Returns a zeroed SQE whose user_data is set to
  // `completion`. Flushes the queue to the kernel when it is full, so it never
  // fails while the ring works.
  io_uring_sqe* GetSqe(IoCompletion* completion);

  // Number of operations submitted and not yet completed (loop thread only).
  uint64_t inflight() const { return inflight_; }

 private:
  EventLoop() = default;
  void Run();
  // Submits, waits for at least one completion, runs every completion ready.
  void RunOnce();
  void DrainPosted();
  void ArmWakeup();
  // Waits for a completion, busy-polling first while that has paid (.cc).
  void WaitPolling();
  // Submits, then spins until a completion is ready (kWork) or busy_poll_
  // has passed (kNothing), running task work the kernel flags on the way and
  // yielding the CPU between looks; kContended when another thread took it.
  enum class PollResult { kWork, kNothing, kContended };
  PollResult BusyPoll();
  // A sched_yield that takes longer than this ran another thread.
  static constexpr std::chrono::microseconds kYieldedAway{20};
  // Folds one idle spell, shorter than busy_poll_ or not, into the average
  // that decides whether to poll.
  void RecordIdleSpell(bool short_spell);

  struct Wakeup : IoCompletion {
    EventLoop* loop = nullptr;
    uint64_t value = 0;
    void OnComplete(int res, uint32_t flags) override;
  };

  io_uring ring_{};
  int event_fd_ = -1;
  bool disabled_ = false;  // created disabled; the loop thread enables it
  bool taskrun_flag_ = false;  // the kernel flags waiting task work
  std::chrono::nanoseconds busy_poll_{0};
  bool polls_ = false;  // busy_poll_ > 0 and the kernel flags task work
  // How often idle spells ended within busy_poll_ (kScoreOne = always).
  static constexpr int kScoreOne = 1024;
  static constexpr int kPollThreshold = kScoreOne * 9 / 10;
  int short_idle_score_ = 0;
  Wakeup wakeup_;
  std::thread thread_;
  std::atomic<std::thread::id> thread_id_{};
  std::atomic<bool> stop_{false};
  uint64_t inflight_ = 0;
  std::mutex mu_;
  std::vector<std::function<void()>> posted_;  // under mu_
  std::vector<std::function<void()>> running_;
};

}  // namespace ebs
