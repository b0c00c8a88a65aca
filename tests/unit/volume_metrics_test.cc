// Volume metrics on a virtual clock: the per-minute figures (queue length,
// counted I/Os consumed) cover the last minute, not the volume's lifetime;
// counters and latency percentiles add up what completed.
#include "ebs/engine/volume_metrics.h"

#include <gtest/gtest.h>

namespace ebs {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSec = 1000 * kMs;

// `per_second` reads a second, each `latency_ms` long and counted as one
// I/O, for `seconds` seconds from `now`.
void Drive(VolumeMetrics& m, int64_t& now, int seconds, int per_second, int64_t latency_ms) {
  for (int s = 0; s < seconds; ++s) {
    for (int i = 0; i < per_second; ++i) {
      const int64_t t = now + i * (kSec / per_second);
      m.OnStart(t);
      m.OnConsumed(1);
      m.OnComplete(false, 4096, latency_ms * kMs, false, t + latency_ms * kMs);
    }
    now += kSec;
  }
}

TEST(VolumeMetricsTest, CountsWhatCompleted) {
  VolumeMetrics m(0);
  m.OnStart(0);
  m.OnComplete(true, 8192, 2 * kMs, false, 2 * kMs);
  m.OnStart(3 * kMs);
  m.OnComplete(false, 4096, 1 * kMs, false, 4 * kMs);
  m.OnStart(5 * kMs);
  m.OnComplete(false, 4096, 1 * kMs, true, 6 * kMs);
  VolumeMetrics::Sample s = m.Read(10 * kMs);
  EXPECT_EQ(1u, s.write_ops);
  EXPECT_EQ(8192u, s.write_bytes);
  EXPECT_EQ(1u, s.read_ops);
  EXPECT_EQ(4096u, s.read_bytes);
  EXPECT_EQ(1u, s.errors);
  EXPECT_EQ(0u, s.in_flight);
  EXPECT_NEAR(0.002, s.total_write_time_s, 1e-9);
  // Busy 0-2, 3-4 and 5-6 ms of 10: idle 6 ms.
  EXPECT_NEAR(0.006, s.idle_time_s, 1e-9);
}

TEST(VolumeMetricsTest, QueueLengthAndConsumedOpsCoverTheLastMinute) {
  VolumeMetrics m(0);
  int64_t now = 0;
  // 1000 reads a second of 2 ms each: two outstanding on average.
  Drive(m, now, 90, 1000, 2);
  VolumeMetrics::Sample s = m.Read(now);
  EXPECT_NEAR(60, s.period_s, 1.01);
  EXPECT_NEAR(2, s.queue_length, 0.05);
  EXPECT_NEAR(1000, s.period_consumed_ops / s.period_s, 20);
  // Then 500 a second of 10 ms: five outstanding. A lifetime average would
  // still mix in the first 90 s a minute later; the period does not.
  Drive(m, now, 61, 500, 10);
  s = m.Read(now);
  EXPECT_NEAR(60, s.period_s, 1.01);
  EXPECT_NEAR(5, s.queue_length, 0.1);
  EXPECT_NEAR(500, s.period_consumed_ops / s.period_s, 10);
  EXPECT_NEAR(90 * 1000 + 61 * 500, s.consumed_ops, 1e-6) << "the counter still covers the lifetime";
  EXPECT_EQ(90u * 1000 + 61 * 500, s.read_ops);
}

TEST(VolumeMetricsTest, AYoungVolumesPeriodStartsWhenItWasOpened) {
  VolumeMetrics m(0);
  int64_t now = 0;
  Drive(m, now, 10, 100, 20);  // two outstanding
  VolumeMetrics::Sample s = m.Read(now);
  EXPECT_NEAR(10, s.period_s, 1e-9);
  EXPECT_NEAR(2, s.queue_length, 0.01);
  // Idle for two minutes: nothing outstanding in the last one. Counters
  // are noted once a second, so the period may take in up to a second of
  // what came before it (here 100 I/Os, 2 s of requests outstanding).
  now += 120 * kSec;
  s = m.Read(now);
  EXPECT_NEAR(60, s.period_s, 1.01);
  EXPECT_LE(s.queue_length, 2.0 / 60);
  EXPECT_LE(s.period_consumed_ops, 100);
  // And once the period is clear of that second, exactly nothing.
  now += 2 * kSec;
  s = m.Read(now);
  EXPECT_EQ(0, s.queue_length);
  EXPECT_EQ(0, s.period_consumed_ops);
}

TEST(VolumeMetricsTest, LatencyPercentiles) {
  VolumeMetrics m(0);
  int64_t now = 0;
  for (int i = 1; i <= 1000; ++i) {  // 1 .. 1000 us
    m.OnStart(now);
    m.OnComplete(false, 4096, i * 1000, false, now + i * 1000);
    now += kMs;
  }
  VolumeMetrics::Sample s = m.Read(now);
  // Buckets are about 9% wide.
  EXPECT_NEAR(500, s.latency_p50_us, 50);
  EXPECT_NEAR(900, s.latency_p90_us, 90);
  EXPECT_NEAR(990, s.latency_p99_us, 99);
}

}  // namespace
}  // namespace ebs
