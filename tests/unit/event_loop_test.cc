// The event loop with and without busy polling: posted work and socket
// completions run on the loop's thread in order, and a loop that polls stops
// polling when work stops arriving.
#include "ebs/engine/event_loop.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <thread>

#include "test_util.h"

namespace ebs {
namespace {

using namespace std::chrono_literals;

// Receives one byte at a time from a socket through the ring and records
// what arrived, re-arming itself after each byte.
class Receiver : public IoCompletion {
 public:
  Receiver(EventLoop* loop, int fd) : loop_(loop), fd_(fd) {}
  void Arm() {
    io_uring_sqe* sqe = loop_->GetSqe(this);
    io_uring_prep_recv(sqe, fd_, &byte_, 1, 0);
  }
  void OnComplete(int res, uint32_t) override {
    EXPECT_TRUE(loop_->InLoopThread());
    if (res != 1) {
      closed_ = true;
      return;
    }
    received_ += byte_;
    count_.store(received_.size());
    Arm();
  }
  std::string received() const { return received_; }
  size_t count() const { return count_.load(); }

 private:
  EventLoop* loop_;
  int fd_;
  char byte_ = 0;
  std::string received_;
  std::atomic<size_t> count_{0};
  bool closed_ = false;
};

double ProcessCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

class EventLoopTest : public ::testing::TestWithParam<int> {
 protected:
  // A started loop polling for the test's parameter in microseconds.
  std::unique_ptr<EventLoop> StartPollingLoop() {
    auto loop = testing::StartLoop("test-loop", 64, std::chrono::microseconds(GetParam()));
    EXPECT_NE(loop, nullptr);
    return loop;
  }
};

TEST_P(EventLoopTest, PostedWorkRunsOnTheLoopInOrder) {
  auto loop = StartPollingLoop();
  std::string order;
  std::promise<void> done;
  for (char c = 'a'; c <= 'z'; ++c) {
    loop->Post([&, c] {
      EXPECT_TRUE(loop->InLoopThread());
      order += c;
      if (c == 'z') done.set_value();
    });
  }
  ASSERT_EQ(done.get_future().wait_for(10s), std::future_status::ready);
  EXPECT_EQ(order, "abcdefghijklmnopqrstuvwxyz");
  loop->Stop();
}

// One byte at a time, each sent only after the previous one was received:
// the pattern of a client that waits for every reply, where a polling loop
// must still see each byte and a sleeping one must be woken for each.
TEST_P(EventLoopTest, SocketBytesSentOneAtATimeAllArriveInOrder) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  auto loop = StartPollingLoop();
  Receiver receiver(loop.get(), sv[0]);
  loop->Post([&] { receiver.Arm(); });

  std::string sent;
  for (int i = 0; i < 2000; ++i) {
    char c = static_cast<char>('A' + i % 26);
    ASSERT_EQ(write(sv[1], &c, 1), 1);
    sent += c;
    // Waiting here also spaces some bytes beyond the polling window.
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (receiver.count() < sent.size()) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "byte " << i << " never arrived";
      if (i % 100 == 0) std::this_thread::sleep_for(200us);
    }
  }
  close(sv[1]);  // the receiver sees end of file and stops re-arming
  loop->Stop();
  close(sv[0]);
  EXPECT_EQ(receiver.received(), sent);
}

// After a burst of work a polling loop may spin for its window, then must
// sleep: an idle server spends no CPU.
TEST_P(EventLoopTest, IdleLoopSleeps) {
  auto loop = StartPollingLoop();
  for (int i = 0; i < 1000; ++i) {
    std::promise<void> ran;
    loop->Post([&] { ran.set_value(); });
    ASSERT_EQ(ran.get_future().wait_for(10s), std::future_status::ready);
  }
  std::this_thread::sleep_for(50ms);  // far beyond any polling window
  const double before = ProcessCpuSeconds();
  std::this_thread::sleep_for(500ms);
  const double used = ProcessCpuSeconds() - before;
  // A loop still spinning would use about 0.5 s in this time.
  EXPECT_LT(used, 0.1) << "CPU seconds used by an idle loop in 0.5 s";
  loop->Stop();
}

INSTANTIATE_TEST_SUITE_P(BusyPoll, EventLoopTest, ::testing::Values(0, 50, 1000),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return info.param == 0 ? std::string("Off") : std::to_string(info.param) + "us";
                         });

}  // namespace
}  // namespace ebs
