// The throttle layer over a real data file and event loop: requests over the
// limit wait in order and all succeed; limits change live; metrics count
// what went through.
#include "layers/throttle_layer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <mutex>
#include <vector>

#include "io/file_device.h"
#include "layers/metrics_layer.h"
#include "test_util.h"

namespace ebs {
namespace {

// Records the order in which requests reach the layer below the throttle
// (the file device may complete them in any order; the throttle's promise is
// the order it lets them through).
class SubmitOrderRecorder final : public DeviceLayer {
 public:
  using DeviceLayer::DeviceLayer;
  void Submit(EventLoop& loop, IoRequest* req) override {
    order.push_back(req);  // loop thread only
    next_->Submit(loop, req);
  }
  std::vector<IoRequest*> order;
};

// Records, for each request reaching the layer below, the loop it was handed
// on and whether that call ran on that loop's thread. Any loop thread.
class LoopRecorder final : public DeviceLayer {
 public:
  using DeviceLayer::DeviceLayer;
  void Submit(EventLoop& loop, IoRequest* req) override {
    {
      std::lock_guard<std::mutex> lock(mu);
      seen.push_back({req, &loop, loop.InLoopThread()});
    }
    next_->Submit(loop, req);
  }
  struct Seen {
    IoRequest* req;
    EventLoop* loop;
    bool on_loop_thread;
  };
  std::mutex mu;
  std::vector<Seen> seen;
};

PerformanceLimits Gp3(uint32_t iops, uint32_t tp = 125) {
  VolumeParams p;
  p.type = VolumeType::kGp3;
  p.size_bytes = 100 * kGiB;
  p.iops = iops;
  p.throughput_mibps = tp;
  auto c = ValidateCreate(p);
  EXPECT_TRUE(c.ok());
  return ComputeLimits(*c);
}

class ThrottleLayerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = testing::StartLoop("throttle-test", 256);
    ASSERT_NE(nullptr, loop_);
    auto file = FileDevice::Open(dir_.path() + "/v.img", 64 << 20, true);
    ASSERT_TRUE(file.ok());
    file_ = *file;
  }
  void TearDown() override { loop_->Stop(); }

  // Submits n 4 KiB reads at once on the loop; returns the completion order
  // and the elapsed seconds once all completed. With `recorder`, also checks
  // that requests reached it in the order they were submitted.
  std::pair<std::vector<int>, double> Burst(BlockDevice& dev, int n, SubmitOrderRecorder* recorder = nullptr) {
    struct Req {
      IoRequest io;
      char buf[4096];
      int index;
      std::vector<int>* order;
      std::atomic<int>* left;
      int result = 1;
    };
    std::vector<Req> reqs(n);
    std::vector<int> order;
    std::atomic<int> left{n};
    for (int i = 0; i < n; ++i) {
      Req& r = reqs[i];
      r.io.kind = IoKind::kRead;
      r.io.offset = static_cast<uint64_t>(i % 1000) * 65536;
      r.io.length = 4096;
      r.io.buf = r.buf;
      r.index = i;
      r.order = &order;
      r.left = &left;
      r.io.owner = &r;
      r.io.callback = [](IoRequest* io, int result) {
        Req* r = static_cast<Req*>(io->owner);
        r->result = result;
        r->order->push_back(r->index);  // loop thread only
        r->left->fetch_sub(1);
      };
    }
    auto start = std::chrono::steady_clock::now();
    loop_->Post([&] {
      for (auto& r : reqs) dev.Submit(*loop_, &r.io);
    });
    while (left.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (auto& r : reqs) EXPECT_EQ(0, r.result) << "a throttled request must never fail";
    if (recorder != nullptr) {
      // Every request passed the recorder before it completed, and `left`
      // reached 0 on the loop thread after the last completion.
      EXPECT_EQ(static_cast<size_t>(n), recorder->order.size());
      size_t first_out_of_order = 0;
      while (first_out_of_order < recorder->order.size() && first_out_of_order < reqs.size() &&
             recorder->order[first_out_of_order] == &reqs[first_out_of_order].io) {
        ++first_out_of_order;
      }
      EXPECT_EQ(static_cast<size_t>(n), first_out_of_order) << "requests must leave the throttle in order";
    }
    return {order, secs};
  }

  testing::TempDir dir_;
  std::unique_ptr<EventLoop> loop_;
  std::shared_ptr<FileDevice> file_;
  ThrottleScheduler scheduler_;
};

TEST_F(ThrottleLayerTest, RequestsOverTheLimitWaitInOrderAndSucceed) {
  VolumeMetrics metrics(SteadyClock::Default()->NowNs());
  auto recorder = std::make_shared<SubmitOrderRecorder>(file_);
  ThrottleLayer throttle(recorder, Gp3(3000), &scheduler_, &metrics, SteadyClock::Default());
  // At 3000/s, 900 requests take 0.3 s (at most 50 ms of tokens, 150, can
  // build up if the loop is slow to submit on a loaded machine); unthrottled
  // they take a few milliseconds.
  auto [order, secs] = Burst(throttle, 900, recorder.get());
  EXPECT_GE(secs, 0.2);
  ASSERT_EQ(900u, order.size());
  auto s = metrics.Read(SteadyClock::Default()->NowNs());
  EXPECT_GT(s.throttled_requests, 300u);
  // Held back for a fraction of a second: marked, but not "consistently".
  EXPECT_GE(s.iops_exceeded_seconds, 1);
  EXPECT_FALSE(s.iops_exceeded_last_minute);
  EXPECT_DOUBLE_EQ(900, s.consumed_ops);
}

TEST_F(ThrottleLayerTest, RaisedLimitsApplyToWaitingRequests) {
  VolumeMetrics metrics(SteadyClock::Default()->NowNs());
  ThrottleLayer throttle(file_, Gp3(3000), &scheduler_, &metrics, SteadyClock::Default());
  std::thread raise([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    throttle.SetLimits(Gp3(16000));
  });
  // At 3000 IOPS 3000 requests would take about a second; raised to 16000
  // after 50 ms they finish far sooner.
  auto [order, secs] = Burst(throttle, 3000);
  raise.join();
  EXPECT_LT(secs, 0.6);
  EXPECT_EQ(3000u, order.size());
}

TEST_F(ThrottleLayerTest, MetricsLayerCountsWhatPassed) {
  VolumeMetrics metrics(SteadyClock::Default()->NowNs());
  auto throttle = std::make_shared<ThrottleLayer>(file_, Gp3(16000), &scheduler_, &metrics, SteadyClock::Default());
  MetricsLayer top(throttle, &metrics, SteadyClock::Default());
  Burst(top, 500);
  auto s = metrics.Read(SteadyClock::Default()->NowNs());
  EXPECT_EQ(500u, s.read_ops);
  EXPECT_EQ(500u * 4096, s.read_bytes);
  EXPECT_EQ(0u, s.write_ops);
  EXPECT_EQ(0u, s.in_flight);
  EXPECT_GT(s.total_read_time_s, 0);
  EXPECT_GT(s.latency_p50_us, 0);
  EXPECT_GE(s.latency_p99_us, s.latency_p50_us);
}

TEST_F(ThrottleLayerTest, WaitingRequestsContinueOnTheirOwnLoopInOrder) {
  // Two loops share one volume's throttle, as two connections on two loop
  // threads do. Released in batches, each request must still go on on the
  // loop that submitted it, on that loop's thread, in that loop's order.
  auto other = testing::StartLoop("throttle-other", 256);
  ASSERT_NE(nullptr, other);
  VolumeMetrics metrics(SteadyClock::Default()->NowNs());
  auto recorder = std::make_shared<LoopRecorder>(file_);
  ThrottleLayer throttle(recorder, Gp3(3000), &scheduler_, &metrics, SteadyClock::Default());
  constexpr int kPerLoop = 300;  // 600 at 3,000 IOPS: most of them wait
  struct Req {
    IoRequest io;
    char buf[4096];
    EventLoop* loop;
    std::atomic<int>* left;
  };
  std::vector<Req> reqs(2 * kPerLoop);
  std::atomic<int> left{2 * kPerLoop};
  for (int i = 0; i < 2 * kPerLoop; ++i) {
    Req& r = reqs[i];
    r.loop = i < kPerLoop ? loop_.get() : other.get();
    r.io.kind = IoKind::kRead;
    r.io.offset = static_cast<uint64_t>(i) * 4096;
    r.io.length = 4096;
    r.io.buf = r.buf;
    r.left = &left;
    r.io.owner = &r;
    r.io.callback = [](IoRequest* io, int result) {
      EXPECT_EQ(0, result);
      static_cast<Req*>(io->owner)->left->fetch_sub(1);
    };
  }
  // Interleave the two loops' submissions so the throttle's queue mixes them.
  for (int i = 0; i < kPerLoop; i += 10) {
    for (EventLoop* loop : {loop_.get(), other.get()}) {
      int base = (loop == loop_.get() ? 0 : kPerLoop) + i;
      loop->Post([&, loop, base] {
        for (int k = base; k < base + 10; ++k) throttle.Submit(*loop, &reqs[k].io);
      });
    }
  }
  while (left.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  other->Stop();

  std::lock_guard<std::mutex> lock(recorder->mu);
  ASSERT_EQ(reqs.size(), recorder->seen.size());
  std::map<EventLoop*, std::vector<IoRequest*>> order;
  for (const auto& s : recorder->seen) {
    const Req* r = static_cast<const Req*>(s.req->owner);
    EXPECT_EQ(r->loop, s.loop) << "a request must continue on the loop that submitted it";
    EXPECT_TRUE(s.on_loop_thread) << "and on that loop's thread";
    order[s.loop].push_back(s.req);
  }
  for (EventLoop* loop : {loop_.get(), other.get()}) {
    const auto& got = order[loop];
    ASSERT_EQ(static_cast<size_t>(kPerLoop), got.size());
    int base = loop == loop_.get() ? 0 : kPerLoop;
    for (int k = 0; k < kPerLoop; ++k) {
      ASSERT_EQ(&reqs[base + k].io, got[k]) << "each loop's requests must leave the throttle in its order";
    }
  }
  EXPECT_GT(metrics.Read(SteadyClock::Default()->NowNs()).throttled_requests, 100u);
}

}  // namespace
}  // namespace ebs
