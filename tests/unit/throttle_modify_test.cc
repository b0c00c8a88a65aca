// A type change under load, on a virtual clock: the throttle layer with a
// closed-loop client (QD32 4 KiB random writes, completions instant) while
// the test moves the clock in 0.5 ms steps and pumps the layer itself (the
// scheduler's clock never moves, so it never pumps). Every 100 ms window
// from the change on must deliver the new configuration's rate; the limits
// are applied as VolumeManager::ApplyLimits applies them (OptimizingLimits
// while optimizing, then the target).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <string>
#include <vector>

#include "ebs/engine/clock.h"
#include "layers/throttle_layer.h"
#include "test_util.h"

namespace ebs {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kStepNs = kMs / 2;
constexpr int64_t kWindowNs = 100 * kMs;

VolumeConfig Config(VolumeType type, uint64_t gib, uint32_t iops = 0, uint32_t tp = 0) {
  VolumeParams p;
  p.type = type;
  p.size_bytes = gib * kGiB;
  if (iops) p.iops = iops;
  if (tp) p.throughput_mibps = tp;
  auto c = ValidateCreate(p);
  EXPECT_TRUE(c.ok()) << c.status().message();
  return c.ok() ? *c : VolumeConfig{};
}

// The bottom of the stack: counts each request in the 100 ms window of the
// virtual clock it arrived in, then completes it (later, on the loop).
class CountingDevice final : public BlockDevice {
 public:
  CountingDevice(const Clock* clock, int64_t origin_ns) : clock_(clock), origin_ns_(origin_ns) {}
  uint64_t size() const override { return 1ULL << 40; }
  void Submit(EventLoop& loop, IoRequest* req) override {
    const int64_t since = clock_->NowNs() - origin_ns_;
    if (since >= 0) {
      const auto w = static_cast<size_t>(since / kWindowNs);
      if (windows.size() <= w) windows.resize(w + 1);
      ++windows[w];  // loop thread only
    }
    below.fetch_add(1);
    loop.Post([req] { req->Finish(0); });
  }
  Status Map(uint64_t, uint64_t, std::vector<Extent>*, size_t) override { return Status::Ok(); }
  Status Resize(uint64_t) override { return Status::Ok(); }

  std::vector<int> windows;  // requests per 100 ms window from origin
  std::atomic<int> below{0};  // submitted here, completion not yet resubmitted

 private:
  const Clock* const clock_;
  const int64_t origin_ns_;
};

class TypeChangeUnderLoad : public ::testing::Test {
 protected:
  static constexpr int kDepth = 32;
  // The virtual clock starts late so the frozen scheduler's waits are long.
  ManualClock clock_{1000LL * 1'000'000'000};
  ManualClock frozen_{0};
  ThrottleScheduler scheduler_{&frozen_};
  std::unique_ptr<EventLoop> loop_ = testing::StartLoop("type-change", 256);

  struct Client {
    IoRequest io;
    ThrottleLayer* throttle;
    CountingDevice* device;
    EventLoop* loop;
    const std::atomic<bool>* stop;
    uint64_t seed;
  };

  // Waits until the loop has run everything posted so far.
  void Drain() {
    std::atomic<bool> done{false};
    loop_->Post([&] { done = true; });
    while (!done.load()) std::this_thread::yield();
  }

  // Runs `from` under load for 2 s, changes to `to` (optimizing for
  // `optimize_ns` first), runs 3 s more. Returns requests per 100 ms window,
  // window 0 starting at the change.
  std::vector<int> Run(const VolumeConfig& from, const VolumeConfig& to, int64_t optimize_ns) {
    const int64_t change_at = clock_.NowNs() + 2000 * kMs;
    auto device = std::make_shared<CountingDevice>(&clock_, change_at);
    VolumeMetrics metrics(clock_.NowNs());
    ThrottleLayer throttle(device, ComputeLimits(from), &scheduler_, &metrics, &clock_);
    std::atomic<bool> stop{false};
    std::vector<Client> clients(kDepth);
    for (int i = 0; i < kDepth; ++i) {
      Client& c = clients[i];
      c.throttle = &throttle;
      c.device = device.get();
      c.loop = loop_.get();
      c.stop = &stop;
      c.seed = static_cast<uint64_t>(i) * 7919 + 1;
      c.io.kind = IoKind::kWrite;
      c.io.length = 4096;
      c.io.owner = &c;
      c.io.callback = [](IoRequest* io, int result) {
        EXPECT_EQ(0, result);
        Client* c = static_cast<Client*>(io->owner);
        if (c->stop->load()) {
          c->device->below.fetch_sub(1);
          return;
        }
        c->seed = c->seed * 6364136223846793005ULL + 1442695040888963407ULL;
        io->offset = (c->seed >> 20) % (1 << 18) * 4096;  // random within 1 GiB
        io->start_ns = 0;
        c->throttle->Submit(*c->loop, io);
        c->device->below.fetch_sub(1);
      };
    }
    loop_->Post([&] {
      for (Client& c : clients) {
        c.io.offset = c.seed * 4096;
        c.throttle->Submit(*c.loop, &c.io);
      }
    });
    Drain();
    bool changed = false;
    const int64_t end = change_at + 3000 * kMs;
    while (clock_.NowNs() < end) {
      clock_.Advance(kStepNs);
      if (!changed && clock_.NowNs() >= change_at) {
        changed = true;
        if (optimize_ns > 0) {
          throttle.SetLimits(OptimizingLimits(from, to), ComputeLimits(to), clock_.NowNs() + optimize_ns);
        } else {
          throttle.SetLimits(ComputeLimits(to));
        }
      }
      // Pump (what the scheduler would do), then let the loop submit what was
      // released and the clients resubmit, until all is quiet at this instant.
      throttle.Pump(clock_.NowNs());
      Drain();
      while (device->below.load() > 0) std::this_thread::yield();
      Drain();
    }
    // The clients stop; what waits is released and completes before the
    // layer goes away.
    stop = true;
    while (throttle.Read().waiting > 0 || device->below.load() > 0) {
      clock_.Advance(kStepNs);
      throttle.Pump(clock_.NowNs());
      Drain();
    }
    std::vector<int> windows = device->windows;
    windows.resize(30);
    return windows;
  }

  // Every window within 3% (and one request) of `rate` x 100 ms; the first
  // may also hold what the bucket banked (50 ms at the new rate).
  static void ExpectWindows(const std::vector<int>& windows, double rate, size_t from, size_t to,
                            const std::string& what) {
    for (size_t w = from; w < to; ++w) {
      const double want = rate * 0.1;
      const double slack = want * 0.03 + 1 + (w == 0 ? rate * 0.05 : 0);
      EXPECT_NEAR(windows[w], want, slack) << what << ": window " << w << " (" << w * 100 << "-" << (w + 1) * 100
                                           << " ms after the change)";
    }
  }
};

// The e2e flake of issue 27: gp3 at 6,000 changed to io2 at 2,000.
TEST_F(TypeChangeUnderLoad, Gp3ToIo2DeliversTheNewRateFromTheFirstWindow) {
  auto w = Run(Config(VolumeType::kGp3, 20, 6000), Config(VolumeType::kIo2, 20, 2000), 0);
  ExpectWindows(w, 2000, 0, w.size(), "gp3 6000 -> io2 2000");
}

TEST_F(TypeChangeUnderLoad, Io2ToGp3RaisesAtOnce) {
  auto w = Run(Config(VolumeType::kIo2, 20, 2000), Config(VolumeType::kGp3, 20, 6000), 0);
  ExpectWindows(w, 6000, 0, w.size(), "io2 2000 -> gp3 6000");
}

TEST_F(TypeChangeUnderLoad, WhileOptimizingTheOldRateHoldsThenTheNew) {
  // 500 ms optimizing: the better (old) 6,000 for five windows, then 2,000.
  auto w = Run(Config(VolumeType::kGp3, 20, 6000), Config(VolumeType::kIo2, 20, 2000), 500 * kMs);
  ExpectWindows(w, 6000, 0, 5, "optimizing gp3 6000 -> io2 2000");
  ExpectWindows(w, 2000, 5, w.size(), "optimized io2 2000");
}

TEST_F(TypeChangeUnderLoad, Gp2BurstingToIo2) {
  // A 100 GiB gp2 bursting at 3,000 on its credits, changed to io2 at 2,000.
  auto w = Run(Config(VolumeType::kGp2, 100), Config(VolumeType::kIo2, 100, 2000), 0);
  ExpectWindows(w, 2000, 0, w.size(), "gp2 100 GiB -> io2 2000");
}

TEST_F(TypeChangeUnderLoad, Io2ToGp2BurstsOnAFullBucket) {
  // A volume that gains a credit bucket starts it full: 3,000 at once.
  auto w = Run(Config(VolumeType::kIo2, 100, 2000), Config(VolumeType::kGp2, 100), 0);
  ExpectWindows(w, 3000, 0, w.size(), "io2 2000 -> gp2 100 GiB");
}

TEST(OptimizingLimitsTest, RatesAreTheBetterOfBothCreditsEarnAtTheNewBaseline) {
  // io2 at 2,000 -> a 100 GiB gp2 (baseline 300, burst 3,000): while
  // optimizing, 2,000 sustained and 3,000 on credits, and the credits refill
  // at gp2's 300, not at 2,000.
  PerformanceLimits l = OptimizingLimits(Config(VolumeType::kIo2, 100, 2000), Config(VolumeType::kGp2, 100));
  EXPECT_EQ(2000u, l.baseline_iops);
  EXPECT_EQ(3000u, l.burst_iops);
  EXPECT_EQ(5'400'000u, l.io_credit_bucket);
  EXPECT_DOUBLE_EQ(300, l.io_credit_refill_iops);
  PerformanceModel m(l, 0);
  // 10 s at 3,000 with a refill of 300 spends 27,000 credits.
  int64_t now = 0;
  for (int i = 0; i < 30000; ++i) {
    IoCost c = m.Account(static_cast<uint64_t>(i) * 7 * kMiB, 4096);
    now += m.WaitNs(c, now);
    m.Consume(c, now);
  }
  EXPECT_NEAR(5'400'000 - 27'000, m.io_credits(now), 300);
}

}  // namespace
}  // namespace ebs
