// The throttle layer over a real data file and event loop: requests over the
// limit wait in order and all succeed; limits change live; metrics count
// what went through.
#include "ebs/engine/throttle_layer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <vector>

#include "ebs/engine/file_device.h"
#include "ebs/engine/metrics_layer.h"
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
  EXPECT_TRUE(s.iops_exceeded_last_minute);
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

}  // namespace
}  // namespace ebs
