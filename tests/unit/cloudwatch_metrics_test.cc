// The CloudWatch metrics whose meaning is more than a counter, on a virtual
// clock (page "using_cloudwatch_ebs"):
// - VolumeIOPSExceededCheck / VolumeThroughputExceededCheck: 1 only when the
//   workload consistently tried to exceed the limit during the last minute
//   (held back in at least 30 of the last 60 one-second windows); a burst
//   held back for a moment does not set it, a queue held back for minutes
//   never lets it fall to 0;
// - VolumeThroughputPercentage: 100 while no I/O is pending, delivered over
//   provisioned IOPS while it is;
// - VolumeConsumedReadWriteOps: each I/O in 256 KiB units, at least 1, before
//   merging.
// The load is the throttle layer under the metrics layer with closed-loop
// clients; the test moves the clock in 5 ms steps and pumps the layer itself
// (the scheduler's clock never moves, so it never pumps).
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <vector>

#include "ebs/engine/clock.h"
#include "layers/metrics_layer.h"
#include "layers/throttle_layer.h"
#include "test_util.h"

namespace ebs {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSec = 1000 * kMs;
constexpr int64_t kStepNs = 5 * kMs;

PerformanceLimits Limits(VolumeType type, uint64_t gib, uint32_t iops = 0, uint32_t tp = 0) {
  VolumeParams p;
  p.type = type;
  p.size_bytes = gib * kGiB;
  if (iops) p.iops = iops;
  if (tp) p.throughput_mibps = tp;
  auto c = ValidateCreate(p);
  EXPECT_TRUE(c.ok()) << c.status().message();
  return c.ok() ? ComputeLimits(*c) : PerformanceLimits{};
}

// Completes every request at once (on the loop), unless held: then it keeps
// them until released, as a stalled backend would.
class InstantDevice final : public BlockDevice {
 public:
  uint64_t size() const override { return 1ULL << 40; }
  void Submit(EventLoop& loop, IoRequest* req) override {
    below.fetch_add(1);
    if (hold.load()) {
      held.push_back(req);  // loop thread only
      return;
    }
    loop.Post([this, req] {
      below.fetch_sub(1);
      req->Finish(0);
    });
  }
  Status Map(uint64_t, uint64_t, std::vector<Extent>*, size_t) override { return Status::Ok(); }
  Status Resize(uint64_t) override { return Status::Ok(); }

  std::atomic<int> below{0};  // submitted here, not yet completed
  std::atomic<bool> hold{false};
  std::vector<IoRequest*> held;
};

class CloudWatchMetricsTest : public ::testing::Test {
 protected:
  // The virtual clock starts late so the frozen scheduler's waits are long.
  ManualClock clock_{1000 * kSec};
  ManualClock frozen_{0};
  ThrottleScheduler scheduler_{&frozen_};
  std::unique_ptr<EventLoop> loop_ = testing::StartLoop("cloudwatch", 256);

  struct Volume {
    VolumeMetrics metrics;
    std::shared_ptr<InstantDevice> device = std::make_shared<InstantDevice>();
    std::shared_ptr<ThrottleLayer> throttle;
    std::unique_ptr<MetricsLayer> top;
    Volume(const PerformanceLimits& limits, ThrottleScheduler* scheduler, const Clock* clock)
        : metrics(clock->NowNs()),
          throttle(std::make_shared<ThrottleLayer>(device, limits, scheduler, &metrics, clock)),
          top(std::make_unique<MetricsLayer>(throttle, &metrics, clock)) {}
  };
  std::unique_ptr<Volume> NewVolume(const PerformanceLimits& limits) {
    return std::make_unique<Volume>(limits, &scheduler_, &clock_);
  }

  struct Client {
    IoRequest io;
    Volume* volume;
    EventLoop* loop;
    const std::atomic<bool>* stop;
    uint64_t seed;
    bool sequential;
    std::atomic<int>* active;
  };

  void Drain() {
    std::atomic<bool> done{false};
    loop_->Post([&] { done = true; });
    while (!done.load()) std::this_thread::yield();
  }

  // One step: the clock moves, the throttle releases what is due, the loop
  // submits it and the clients resubmit, until all is quiet at this instant.
  void Step(Volume& v) {
    clock_.Advance(kStepNs);
    v.throttle->Pump(clock_.NowNs());
    Drain();
    while (!v.device->hold.load() && v.device->below.load() > 0) std::this_thread::yield();
    Drain();
  }

  // Moves the clock `seconds` with nothing submitted; `each` after every second.
  void Idle(Volume& v, int seconds, const std::function<void(int)>& each = nullptr) {
    for (int s = 1; s <= seconds; ++s) {
      for (int64_t t = 0; t < kSec; t += kStepNs) Step(v);
      if (each) each(s);
    }
  }

  // Keeps `depth` reads of `length` bytes in flight (random offsets, or one
  // sequential stream each) for `seconds`; `each` after every second. The
  // clients then stop and what they left waiting completes.
  void Load(Volume& v, int depth, uint32_t length, bool sequential, int seconds,
            const std::function<void(int)>& each = nullptr) {
    std::atomic<bool> stop{false};
    std::atomic<int> active{depth};
    std::vector<Client> clients(depth);
    for (int i = 0; i < depth; ++i) {
      Client& c = clients[i];
      c.volume = &v;
      c.loop = loop_.get();
      c.stop = &stop;
      c.seed = static_cast<uint64_t>(i) * 7919 + 1;
      c.sequential = sequential;
      c.active = &active;
      c.io.kind = IoKind::kRead;
      c.io.length = length;
      c.io.offset = sequential ? static_cast<uint64_t>(i) << 32 : c.seed * 4096;
      c.io.owner = &c;
      c.io.callback = [](IoRequest* io, int result) {
        EXPECT_EQ(0, result);
        Client* c = static_cast<Client*>(io->owner);
        if (c->stop->load()) {
          c->active->fetch_sub(1);
          return;
        }
        if (c->sequential) {
          io->offset += io->length;
        } else {
          c->seed = c->seed * 6364136223846793005ULL + 1442695040888963407ULL;
          io->offset = (c->seed >> 20) % (1 << 18) * 4096;
        }
        c->volume->top->Submit(*c->loop, io);
      };
    }
    loop_->Post([&] {
      for (Client& c : clients) v.top->Submit(*c.loop, &c.io);
    });
    Drain();
    for (int s = 1; s <= seconds; ++s) {
      for (int64_t t = 0; t < kSec; t += kStepNs) Step(v);
      if (each) each(s);
    }
    stop = true;
    while (active.load() > 0) Step(v);
  }

  VolumeMetrics::Sample Read(const Volume& v) { return v.metrics.Read(clock_.NowNs()); }
};

// A queue held at the IOPS limit for 90 s: the check is set once half a
// minute of windows has been held back and never falls back while the queue
// stays; a minute after the load stops it is 0 again.
TEST_F(CloudWatchMetricsTest, SustainedQueueSetsTheIopsCheckAndKeepsIt) {
  auto v = NewVolume(Limits(VolumeType::kGp3, 100, 3000));
  Load(*v, 32, 4096, false, 90, [&](int s) {
    // s whole seconds in, the window just begun included: s + 1 windows.
    VolumeMetrics::Sample m = Read(*v);
    EXPECT_GE(m.iops_exceeded_seconds, std::min(s, 60)) << "second " << s;
    EXPECT_LE(m.iops_exceeded_seconds, std::min(s + 1, 60)) << "second " << s;
    if (s < VolumeMetrics::kExceededSeconds - 1) {
      EXPECT_FALSE(m.iops_exceeded_last_minute) << "second " << s;
    }
    if (s >= VolumeMetrics::kExceededSeconds) {
      EXPECT_TRUE(m.iops_exceeded_last_minute) << "second " << s;
    }
    EXPECT_FALSE(m.throughput_exceeded_last_minute) << "4 KiB at 3,000 IOPS is 12 MiB/s of 125";
  });
  EXPECT_NEAR(3000.0 * 90, Read(*v).consumed_ops, 3000 * 0.02) << "and the queue got the limit";
  // Held back until the load stopped; 29 s later 30 windows of the minute
  // are still held back, 32 s later fewer.
  Idle(*v, 29);
  EXPECT_TRUE(Read(*v).iops_exceeded_last_minute);
  Idle(*v, 3);
  EXPECT_FALSE(Read(*v).iops_exceeded_last_minute);
  Idle(*v, 30);
  EXPECT_EQ(0, Read(*v).iops_exceeded_seconds);
}

// Pressure for less than half the minute does not set the check: one burst
// held back for a fraction of a second, or 20 s of a full queue. 40 s does,
// and it lasts while they are within the last minute.
TEST_F(CloudWatchMetricsTest, MomentaryPressureDoesNotSetTheCheck) {
  auto v = NewVolume(Limits(VolumeType::kGp3, 100, 3000));
  // 900 requests at once at 3,000 IOPS: held back for 0.3 s.
  Load(*v, 900, 4096, false, 0);
  VolumeMetrics::Sample m = Read(*v);
  EXPECT_GT(m.throttled_requests, 500u);
  EXPECT_LE(m.iops_exceeded_seconds, 2);
  EXPECT_FALSE(m.iops_exceeded_last_minute);
  // A lone request over the limit, held back once: after a rest the bucket
  // holds 150 tokens (50 ms at 3,000) and admits while non-negative, so of
  // 152 at once the last waits, for a third of a millisecond.
  Idle(*v, 70);
  Load(*v, 152, 4096, false, 0);
  EXPECT_EQ(1, Read(*v).iops_exceeded_seconds);
  EXPECT_FALSE(Read(*v).iops_exceeded_last_minute);

  Idle(*v, 70);
  Load(*v, 32, 4096, false, 20);
  m = Read(*v);
  EXPECT_NEAR(20, m.iops_exceeded_seconds, 1);
  EXPECT_FALSE(m.iops_exceeded_last_minute) << "20 s of 60 is not consistently";

  Idle(*v, 70);
  Load(*v, 32, 4096, false, 40);
  EXPECT_TRUE(Read(*v).iops_exceeded_last_minute);
  Idle(*v, 15);  // 40 s held back of the last 55: still consistently
  EXPECT_TRUE(Read(*v).iops_exceeded_last_minute);
  Idle(*v, 20);  // 25 of the last 60
  EXPECT_FALSE(Read(*v).iops_exceeded_last_minute);
}

// Large sequential reads hold gp3 back on its 125 MiB/s, not its IOPS; small
// random reads on sc1 too (each counted I/O is charged a full MiB).
TEST_F(CloudWatchMetricsTest, ThroughputLimitSetsTheThroughputCheck) {
  auto gp3 = NewVolume(Limits(VolumeType::kGp3, 100, 3000, 125));
  Load(*gp3, 8, 1024 * 1024, true, 40);
  VolumeMetrics::Sample m = Read(*gp3);
  EXPECT_TRUE(m.throughput_exceeded_last_minute);
  EXPECT_FALSE(m.iops_exceeded_last_minute);
  EXPECT_GE(m.throughput_exceeded_seconds, 40);

  auto sc1 = NewVolume(Limits(VolumeType::kSc1, 125));
  Load(*sc1, 8, 4096, false, 40);
  m = Read(*sc1);
  EXPECT_TRUE(m.throughput_exceeded_last_minute);
  EXPECT_FALSE(m.iops_exceeded_last_minute);
  EXPECT_NEAR(9.8 * 40, m.consumed_ops, 9.8 * 40 * 0.05) << "about 10 IOPS of 4 KiB on a 125 GiB sc1";
}

// 100% while nothing is pending: idle, or one request at a time; a queue held
// at the provisioned rate gets 100% of it too. A queue served below the
// provisioned rate (here the backend stalls) reads what it got.
TEST_F(CloudWatchMetricsTest, ThroughputPercentageIdleAndBusy) {
  const uint32_t kIops = 2000;
  auto v = NewVolume(Limits(VolumeType::kIo2, 100, kIops));
  EXPECT_DOUBLE_EQ(100, VolumeMetrics::ThroughputPercentage(Read(*v), kIops)) << "a new volume";
  Idle(*v, 30);
  EXPECT_DOUBLE_EQ(100, VolumeMetrics::ThroughputPercentage(Read(*v), kIops)) << "idle";

  Load(*v, 1, 4096, false, 61);  // one at a time: never pending
  VolumeMetrics::Sample m = Read(*v);
  EXPECT_EQ(0, m.period_pending_s);
  EXPECT_DOUBLE_EQ(100, VolumeMetrics::ThroughputPercentage(m, kIops));

  Load(*v, 32, 4096, false, 61);  // held at the limit the whole minute
  m = Read(*v);
  EXPECT_NEAR(60, m.period_pending_s, 1.01);
  EXPECT_NEAR(100, VolumeMetrics::ThroughputPercentage(m, kIops), 1);

  // The backend stalls for 30 s with 32 requests outstanding: half the
  // minute pending with nothing delivered, then a minute's quiet half.
  Idle(*v, 61);
  v->device->hold = true;
  std::atomic<int> left{32};
  std::vector<IoRequest> reqs(32);
  loop_->Post([&] {
    for (size_t i = 0; i < reqs.size(); ++i) {
      reqs[i].kind = IoKind::kRead;
      reqs[i].offset = i * 4096;
      reqs[i].length = 4096;
      reqs[i].owner = &left;
      reqs[i].callback = [](IoRequest* io, int) { static_cast<std::atomic<int>*>(io->owner)->fetch_sub(1); };
      v->top->Submit(*loop_, &reqs[i]);
    }
  });
  Drain();
  Idle(*v, 30);
  v->device->hold = false;
  loop_->Post([&] {
    for (IoRequest* r : v->device->held) {
      v->device->below.fetch_sub(1);
      r->Finish(0);
    }
    v->device->held.clear();
  });
  Drain();
  Idle(*v, 30);
  m = Read(*v);
  EXPECT_EQ(0, left.load());
  EXPECT_NEAR(30, m.period_pending_s, 1.01);
  EXPECT_NEAR(50, VolumeMetrics::ThroughputPercentage(m, kIops), 2);
}

TEST(ThroughputPercentageTest, Formula) {
  VolumeMetrics::Sample s{};
  EXPECT_DOUBLE_EQ(100, VolumeMetrics::ThroughputPercentage(s, 1000)) << "empty period";
  s.period_s = 60;
  EXPECT_DOUBLE_EQ(100, VolumeMetrics::ThroughputPercentage(s, 1000)) << "nothing pending";
  s.period_pending_s = 60;
  s.period_consumed_ops = 60 * 1000;
  EXPECT_DOUBLE_EQ(100, VolumeMetrics::ThroughputPercentage(s, 1000)) << "pending, provisioned rate delivered";
  s.period_consumed_ops = 60 * 1500;
  EXPECT_DOUBLE_EQ(100, VolumeMetrics::ThroughputPercentage(s, 1000)) << "at most 100";
  s.period_consumed_ops = 60 * 250;
  EXPECT_DOUBLE_EQ(25, VolumeMetrics::ThroughputPercentage(s, 1000)) << "pending, a quarter delivered";
  s.period_pending_s = 20;
  s.period_consumed_ops = 20 * 500;
  EXPECT_DOUBLE_EQ(100.0 * (40 + 10) / 60, VolumeMetrics::ThroughputPercentage(s, 1000));
}

// VolumeConsumedReadWriteOps: under 256 KiB counts 1, larger in 256 KiB
// units, each request on its own (the throttle's merged count is separate).
TEST(ConsumedReadWriteOpsTest, Each256KiBUnitBeforeMerging) {
  VolumeMetrics m(0);
  int64_t now = 0;
  auto complete = [&](bool write, uint64_t bytes, bool failed = false) {
    m.OnStart(now);
    now += kMs;
    m.OnComplete(write, bytes, kMs, failed, now);
  };
  complete(false, 4096);              // 1
  complete(true, 255 * 1024);         // 1
  complete(false, 256 * 1024);        // 1
  complete(true, 256 * 1024 + 512);   // 2
  complete(false, 1024 * 1024);       // 4
  complete(true, 0);                  // 1
  complete(false, 1024 * 1024, true); // failed: not consumed
  EXPECT_EQ(10u, m.Read(now).consumed_rw_ops);
  // Eight sequential 32 KiB reads: the throttle counts 1 (merged); CloudWatch 8.
  for (int i = 0; i < 8; ++i) complete(false, 32 * 1024);
  EXPECT_EQ(18u, m.Read(now).consumed_rw_ops);
}

}  // namespace
}  // namespace ebs
