#include "ebs/engine/event_loop.h"

#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace ebs {

Result<std::unique_ptr<EventLoop>> EventLoop::Create(unsigned entries) {
  std::unique_ptr<EventLoop> loop(new EventLoop());
  // The completion queue is sized well beyond the submission queue: a
  // connection keeps many operations in flight and the kernel must never drop
  // a completion. Only the loop's thread submits (SINGLE_ISSUER), and task
  // work runs when it waits (DEFER_TASKRUN) instead of interrupting it: on a
  // small, virtualised machine the interrupts and wake-ups cost more than the
  // I/O. The ring starts disabled so that the loop's thread, not this one,
  // becomes its single issuer when it enables it.
  const unsigned base = IORING_SETUP_CQSIZE;
  // TASKRUN_FLAG makes the kernel raise IORING_SQ_TASKRUN when task work is
  // waiting, so a loop that busy-polls sees new work without a system call.
  const unsigned fast = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED;
  int rc = -EINVAL;
  // Older kernels lack the fast flags.
  for (unsigned flags : {base | fast | IORING_SETUP_TASKRUN_FLAG, base | fast, base}) {
    io_uring_params params{};
    params.flags = flags;
    params.cq_entries = entries * 8;
    rc = io_uring_queue_init_params(entries, &loop->ring_, &params);
    if (rc == 0) {
      loop->disabled_ = flags & IORING_SETUP_R_DISABLED;
      loop->taskrun_flag_ = flags & IORING_SETUP_TASKRUN_FLAG;
      break;
    }
  }
  if (rc < 0) return Status::FromErrno(rc, "io_uring_queue_init");
  loop->event_fd_ = eventfd(0, EFD_CLOEXEC);
  if (loop->event_fd_ < 0) {
    io_uring_queue_exit(&loop->ring_);
    return Status::FromErrno(errno, "eventfd");
  }
  loop->wakeup_.loop = loop.get();
  loop->thread_id_ = std::this_thread::get_id();
  loop->ArmWakeup();
  return loop;
}

EventLoop::~EventLoop() {
  Stop();
  io_uring_queue_exit(&ring_);
  if (event_fd_ >= 0) close(event_fd_);
}

void EventLoop::ArmWakeup() {
  io_uring_sqe* sqe = GetSqe(&wakeup_);
  io_uring_prep_read(sqe, event_fd_, &wakeup_.value, sizeof(wakeup_.value), 0);
}

void EventLoop::Wakeup::OnComplete(int, uint32_t) {
  if (!loop->stop_.load()) loop->ArmWakeup();
}

void EventLoop::Start(std::string name) {
  thread_ = std::thread([this, name = std::move(name)] {
    pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
    thread_id_ = std::this_thread::get_id();
    if (disabled_) {
      // io_uring_enable_rings() is missing from Debian 12's liburing build.
      syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0);
    }
    Run();
  });
}

void EventLoop::Stop() {
  if (!thread_.joinable()) return;
  stop_ = true;
  uint64_t one = 1;
  (void)!write(event_fd_, &one, sizeof(one));
  thread_.join();
}

void EventLoop::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    posted_.push_back(std::move(fn));
  }
  uint64_t one = 1;
  (void)!write(event_fd_, &one, sizeof(one));
}

io_uring_sqe* EventLoop::GetSqe(IoCompletion* completion) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  io_uring_sqe_set_data(sqe, completion);
  ++inflight_;
  return sqe;
}

void EventLoop::DrainPosted() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (posted_.empty()) return;
    running_.swap(posted_);
  }
  for (auto& fn : running_) fn();
  running_.clear();
}

EventLoop::PollResult EventLoop::BusyPoll() {
  io_uring_submit(&ring_);  // also runs task work the kernel has flagged
  auto now = std::chrono::steady_clock::now();
  const auto deadline = now + busy_poll_;
  for (;;) {
    if (io_uring_cq_ready(&ring_) > 0) return PollResult::kWork;
    if (stop_.load(std::memory_order_relaxed)) return PollResult::kNothing;
    if (IO_URING_READ_ONCE(*ring_.sq.kflags) & IORING_SQ_TASKRUN) {
      io_uring_get_events(&ring_);
      continue;
    }
    if (now >= deadline) return PollResult::kNothing;
    // A runnable thread on this CPU (a client, another loop) goes first. If
    // one did, the CPU is oversubscribed and polling takes from others.
    const auto before = now;
    sched_yield();
    now = std::chrono::steady_clock::now();
    if (now - before > kYieldedAway) return PollResult::kContended;
  }
}

void EventLoop::RecordIdleSpell(bool short_spell) {
  // An exponential moving average with weight 1/8 in fixed point.
  short_idle_score_ += ((short_spell ? kScoreOne : 0) - short_idle_score_) / 8;
}

void EventLoop::WaitPolling() {
  // Polling pays only while work almost always arrives within the window:
  // a poll that finds nothing wastes the window, one that finds work saves
  // a wake-up. The loop keeps a moving average of how often its idle spells
  // were shorter than the window, whether it polled through them or slept
  // (then the sleep's length tells), and polls only while that is at least
  // 90%. A quiet loop, or a throttled volume whose requests are released
  // every few hundred microseconds, sleeps at once as before; so does a loop
  // whose CPU other threads are waiting for.
  if (short_idle_score_ < kPollThreshold) {
    const auto t0 = std::chrono::steady_clock::now();
    io_uring_submit_and_wait(&ring_, 1);
    RecordIdleSpell(std::chrono::steady_clock::now() - t0 < busy_poll_);
    return;
  }
  switch (BusyPoll()) {
    case PollResult::kWork:
      RecordIdleSpell(true);
      return;
    case PollResult::kNothing:
      RecordIdleSpell(false);
      break;
    case PollResult::kContended:
      short_idle_score_ = 0;  // polling here slows the others more than it helps
      break;
  }
  io_uring_submit_and_wait(&ring_, 1);
}

void EventLoop::RunOnce() {
  DrainPosted();
  if (polls_ && io_uring_cq_ready(&ring_) == 0) {
    WaitPolling();
  } else {
    io_uring_submit_and_wait(&ring_, 1);
  }
  io_uring_cqe* cqe;
  unsigned head;
  unsigned seen = 0;
  // Completions may submit new work; GetSqe flushes if the queue fills.
  io_uring_for_each_cqe(&ring_, head, cqe) {
    ++seen;
    auto* c = static_cast<IoCompletion*>(io_uring_cqe_get_data(cqe));
    int res = cqe->res;
    uint32_t flags = cqe->flags;
    if (!(flags & IORING_CQE_F_MORE)) --inflight_;
    if (c != nullptr) c->OnComplete(res, flags);
  }
  io_uring_cq_advance(&ring_, seen);
  DrainPosted();
}

void EventLoop::Run() {
  while (!stop_.load()) RunOnce();
  DrainPosted();
}

}  // namespace ebs
