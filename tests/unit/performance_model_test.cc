// The performance model on a virtual clock: EBS accounting examples, token
// bucket rates, burst credit buckets draining and refilling over simulated
// hours, limits changed mid-stream.
#include "ebs/engine/performance_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

namespace ebs {
namespace {

constexpr int64_t kSec = 1'000'000'000;

PerformanceLimits LimitsOf(VolumeType type, uint64_t gib, uint32_t iops = 0, uint32_t tp = 0) {
  VolumeParams p;
  p.type = type;
  p.size_bytes = gib * kGiB;
  if (iops) p.iops = iops;
  if (tp) p.throughput_mibps = tp;
  auto c = ValidateCreate(p);
  EXPECT_TRUE(c.ok()) << c.status().message();
  return ComputeLimits(*c);
}

// Runs a closed loop that always has a request ready: issues requests as fast
// as the model admits them for `seconds` of virtual time, returns
// {ops, bytes}. `next` gives each request's offset.
struct Delivered {
  double ops;
  double bytes;
};
template <typename NextOffset>
Delivered Drive(PerformanceModel& m, int64_t& now, double seconds, uint64_t size, NextOffset next) {
  Delivered d{0, 0};
  const int64_t end = now + static_cast<int64_t>(seconds * kSec);
  while (now < end) {
    IoCost c = m.Account(next(), size);
    int64_t w = m.WaitNs(c, now);
    now += w;
    if (now >= end) break;
    m.Consume(c, now);
    d.ops += 1;
    d.bytes += static_cast<double>(size);
  }
  return d;
}

TEST(AccountingTest, ReferenceExamples) {
  PerformanceModel m(LimitsOf(VolumeType::kGp3, 100), 0);
  // One 1 MiB I/O counts as 4 on SSD types.
  EXPECT_DOUBLE_EQ(4, m.Account(0, kMiB).ios);
  // Eight sequential 32 KiB I/Os count as 1.
  double total = 0;
  for (int i = 0; i < 8; ++i) total += m.Account(10 * kMiB + i * 32 * kKiB, 32 * kKiB).ios;
  EXPECT_DOUBLE_EQ(1, total);
  // Eight random 32 KiB I/Os count as 8.
  total = 0;
  for (int i = 0; i < 8; ++i) total += m.Account((i * 7 + 3) * kMiB, 32 * kKiB).ios;
  EXPECT_DOUBLE_EQ(8, total);
  // Sequential 4 KiB I/Os are below the merge size: each counts.
  total = 0;
  for (int i = 0; i < 8; ++i) total += m.Account(50 * kMiB + i * 4 * kKiB, 4 * kKiB).ios;
  EXPECT_DOUBLE_EQ(8, total);
  // A merged I/O is full at 256 KiB: the ninth sequential 32 KiB starts a new one.
  total = 0;
  for (int i = 0; i < 9; ++i) total += m.Account(80 * kMiB + i * 32 * kKiB, 32 * kKiB).ios;
  EXPECT_DOUBLE_EQ(2, total);
}

TEST(AccountingTest, HddCountsOneMiBUnits) {
  PerformanceModel m(LimitsOf(VolumeType::kSt1, 1024), 0);
  EXPECT_DOUBLE_EQ(1, m.Account(0, kMiB).ios);
  EXPECT_DOUBLE_EQ(2, m.Account(5 * kMiB, 2 * kMiB).ios);
  double total = 0;
  for (int i = 0; i < 16; ++i) total += m.Account(100 * kMiB + i * 64 * kKiB, 64 * kKiB).ios;
  EXPECT_DOUBLE_EQ(1, total) << "sequential I/Os merge up to 1 MiB";
  total = 0;
  for (int i = 0; i < 4; ++i) total += m.Account((200 + 3 * i) * kMiB, 4 * kKiB).ios;
  EXPECT_DOUBLE_EQ(4, total) << "each random small I/O is one 1 MiB unit";
}

// st1/sc1 (hdd-vols): each counted I/O spends a full 1 MiB of throughput,
// whatever its size; I/Os merged into one spend nothing more.
TEST(AccountingTest, St1Sc1ChargeAFullMiBPerCountedIo) {
  PerformanceModel m(LimitsOf(VolumeType::kSc1, 125), 0);
  EXPECT_EQ(kMiB, m.Account(3 * kMiB, 4 * kKiB).bytes) << "random 4 KiB";
  EXPECT_EQ(kMiB, m.Account(9 * kMiB, 64 * kKiB).bytes) << "random 64 KiB";
  EXPECT_EQ(kMiB, m.Account(20 * kMiB, kMiB).bytes) << "1 MiB";
  EXPECT_EQ(2 * kMiB, m.Account(40 * kMiB, 2 * kMiB).bytes) << "2 MiB counts two";
  uint64_t total = 0;
  for (int i = 0; i < 32; ++i) total += m.Account(100 * kMiB + i * 64 * kKiB, 64 * kKiB).bytes;
  EXPECT_EQ(2 * kMiB, total) << "32 sequential 64 KiB I/Os merge into two 1 MiB blocks";
  // Not for the other types: standard and the SSD types charge the bytes moved.
  PerformanceModel standard(LimitsOf(VolumeType::kStandard, 100), 0);
  EXPECT_EQ(4 * kKiB, standard.Account(3 * kMiB, 4 * kKiB).bytes);
  PerformanceModel gp3(LimitsOf(VolumeType::kGp3, 100), 0);
  EXPECT_EQ(4 * kKiB, gp3.Account(3 * kMiB, 4 * kKiB).bytes);
}

// A 125 GiB sc1 bursts at 80 MiB/s per TiB = 9.77 MiB/s: about 10 random
// I/Os a second of any size up to 1 MiB; sequential I/O gets its bytes.
TEST(ThrottleModelTest, Sc1SmallRandomIoGetsAbout10Iops) {
  const double burst = 80.0 * 125 / 1024;
  for (uint64_t size : {4 * kKiB, 64 * kKiB, kMiB}) {
    PerformanceModel m(LimitsOf(VolumeType::kSc1, 125), 0);
    int64_t now = 0;
    uint64_t n = 0;
    Delivered d = Drive(m, now, 60, size, [&] { return (n++ * 7919 % 100000) * 3 * kMiB % (125 * kGiB); });
    EXPECT_NEAR(burst, d.ops / 60, 0.2) << size << "-byte random I/O";
  }
  PerformanceModel m(LimitsOf(VolumeType::kSc1, 125), 0);
  int64_t now = 0;
  uint64_t off = 0;
  Delivered d = Drive(m, now, 60, 64 * kKiB, [&] { return (off += 64 * kKiB); });
  EXPECT_NEAR(burst, d.bytes / kMiB / 60, 0.2) << "sequential 64 KiB merge into 1 MiB blocks";
}

// A 1 TiB st1 doing 4 KiB random reads: 250 IOPS on its burst, the credits
// spent at 250 - 40 MiB/s run out after 1 TiB / 210 MiB/s = 4,993 s, then 40
// IOPS; at 20 IOPS (half the baseline's MiB) the bucket fills again.
TEST(ThrottleModelTest, St1CreditsDrainAndRefillUnderSmallRandomIo) {
  PerformanceModel m(LimitsOf(VolumeType::kSt1, 1024), 0);
  int64_t now = 0;
  uint64_t n = 0;
  auto random = [&] { return (n++ * 104729 % 100000) * 7 * kMiB % kTiB; };
  Delivered d = Drive(m, now, 100, 4 * kKiB, random);
  EXPECT_NEAR(250, d.ops / 100, 2);
  Drive(m, now, 4800, 4 * kKiB, random);  // 4,900 s in all
  EXPECT_GT(m.BurstBalancePercent(now), 0) << "still bursting before 4,993 s";
  Drive(m, now, 200, 4 * kKiB, random);
  EXPECT_LT(m.BurstBalancePercent(now), 0.5);
  d = Drive(m, now, 100, 4 * kKiB, random);
  EXPECT_NEAR(40, d.ops / 100, 1) << "the baseline's 40 MiB/s is 40 small I/Os";
  // 20 random 4 KiB reads a second spend 20 MiB/s of credit; 40 accrue.
  const double before = m.throughput_credits_bytes(now);
  for (int i = 0; i < 20 * 1000; ++i) {
    now += kSec / 20;
    IoCost c = m.Account(random(), 4 * kKiB);
    ASSERT_EQ(0, m.WaitNs(c, now)) << "below the baseline nothing waits";
    m.Consume(c, now);
  }
  // (An emptied bucket reads 0 but may hold a debt of a few MiB.)
  EXPECT_NEAR(20.0 * 1000 * kMiB, m.throughput_credits_bytes(now) - before, 10 * kMiB);
}

TEST(ThrottleModelTest, Gp3DeliversProvisionedIops) {
  PerformanceModel m(LimitsOf(VolumeType::kGp3, 100), 0);
  int64_t now = 0;
  uint64_t n = 0;
  Delivered d = Drive(m, now, 10, 4 * kKiB, [&] { return (n++ * 7919 % 1000) * kMiB; });
  EXPECT_NEAR(3000, d.ops / 10, 3000 * 0.01);
}

TEST(ThrottleModelTest, Gp3DeliversProvisionedThroughput) {
  PerformanceModel m(LimitsOf(VolumeType::kGp3, 100, 6000, 500), 0);
  int64_t now = 0;
  uint64_t off = 0;
  Delivered d = Drive(m, now, 10, kMiB, [&] { return (off += kMiB); });
  EXPECT_NEAR(500, d.bytes / kMiB / 10, 500 * 0.01);
}

TEST(ThrottleModelTest, NoSecondSeesMoreThanFivePercentOverLimit) {
  PerformanceModel m(LimitsOf(VolumeType::kIo2, 100, 20000), 0);
  int64_t now = 0;
  uint64_t n = 0;
  for (int s = 0; s < 5; ++s) {
    Delivered d = Drive(m, now, 1, 4 * kKiB, [&] { return (n++ % 5000) * 2 * kMiB; });
    EXPECT_LE(d.ops, 20000 * 1.05) << "second " << s;
    EXPECT_GE(d.ops, 20000 * 0.95) << "second " << s;
  }
}

TEST(ThrottleModelTest, Gp2BucketDrainsIn1862sAndRefillsIn54000s) {
  // 1 GiB gp2: 100 IOPS baseline, bursts to 3000 on 5.4 M credits.
  PerformanceModel m(LimitsOf(VolumeType::kGp2, 1), 0);
  int64_t now = 0;
  EXPECT_DOUBLE_EQ(100, m.BurstBalancePercent(now));
  EXPECT_DOUBLE_EQ(3000, m.CurrentIops(now));
  uint64_t n = 0;
  auto random = [&] { return (n++ * 104729 % 1000) * kMiB; };
  Drive(m, now, 1850, 4 * kKiB, random);
  EXPECT_GT(m.io_credits(now), 0) << "still bursting after 1850 s";
  EXPECT_DOUBLE_EQ(3000, m.CurrentIops(now));
  Drive(m, now, 20, 4 * kKiB, random);
  EXPECT_LT(m.BurstBalancePercent(now), 0.5) << "5.4 M / (3000 - 100) = 1862 s";
  // Out of credits: baseline.
  Delivered d = Drive(m, now, 60, 4 * kKiB, random);
  EXPECT_NEAR(100, d.ops / 60, 5);
  // Idle, the bucket refills at the baseline rate: 5.4 M / 100 = 54,000 s.
  now += 27000 * kSec;
  EXPECT_NEAR(50, m.BurstBalancePercent(now), 1);
  now += 27000 * kSec;
  EXPECT_NEAR(100, m.BurstBalancePercent(now), 0.1);
  EXPECT_DOUBLE_EQ(3000, m.CurrentIops(now));
}

TEST(ThrottleModelTest, LargeGp2HasNoBucketAndNoBurst) {
  PerformanceModel m(LimitsOf(VolumeType::kGp2, 2000), 0);
  int64_t now = 0;
  EXPECT_DOUBLE_EQ(6000, m.CurrentIops(now));
  EXPECT_DOUBLE_EQ(100, m.BurstBalancePercent(now));
  uint64_t n = 0;
  Delivered d = Drive(m, now, 10, 4 * kKiB, [&] { return (n++ % 999) * kMiB; });
  EXPECT_NEAR(6000, d.ops / 10, 60);
}

TEST(ThrottleModelTest, St1BurstsOnThroughputCreditsThenBaseline) {
  // 1 TiB st1: 40 MiB/s baseline, 250 burst, bucket of 1 TiB of credits.
  // Draining takes 1 TiB / (250 - 40) MiB/s = 4993 s.
  PerformanceModel m(LimitsOf(VolumeType::kSt1, 1024), 0);
  int64_t now = 0;
  uint64_t off = 0;
  Delivered d = Drive(m, now, 100, kMiB, [&] { return (off += kMiB); });
  EXPECT_NEAR(250, d.bytes / kMiB / 100, 3);
  Drive(m, now, 4850, kMiB, [&] { return (off += kMiB); });  // 4950 s in all
  EXPECT_GT(m.BurstBalancePercent(now), 0);
  Drive(m, now, 100, kMiB, [&] { return (off += kMiB); });
  d = Drive(m, now, 100, kMiB, [&] { return (off += kMiB); });
  EXPECT_NEAR(40, d.bytes / kMiB / 100, 1.5) << "baseline once the credits are gone";
}

TEST(ThrottleModelTest, Sc1BurstsOnThroughputCreditsThenBaselineAndRefills) {
  // 1 TiB sc1: 12 MiB/s baseline, 80 burst, a bucket of 1 TiB of credits.
  // Draining takes 1 TiB / (80 - 12) MiB/s = 15,420 s; refilling an empty
  // bucket at the baseline takes 1 TiB / 12 MiB/s = 87,381 s.
  PerformanceModel m(LimitsOf(VolumeType::kSc1, 1024), 0);
  int64_t now = 0;
  EXPECT_DOUBLE_EQ(100, m.BurstBalancePercent(now));
  uint64_t off = 0;
  auto sequential = [&] { return (off += kMiB); };
  Delivered d = Drive(m, now, 100, kMiB, sequential);
  EXPECT_NEAR(80, d.bytes / kMiB / 100, 1);
  Drive(m, now, 15200, kMiB, sequential);  // 15,300 s in all
  EXPECT_GT(m.BurstBalancePercent(now), 0) << "still bursting before 15,420 s";
  Drive(m, now, 200, kMiB, sequential);
  EXPECT_LT(m.BurstBalancePercent(now), 0.5);
  d = Drive(m, now, 100, kMiB, sequential);
  EXPECT_NEAR(12, d.bytes / kMiB / 100, 0.5) << "baseline once the credits are gone";
  // Idle, the credits come back at the baseline rate.
  now += static_cast<int64_t>(87381.0 / 2 * kSec);
  EXPECT_NEAR(50, m.BurstBalancePercent(now), 1);
  now += static_cast<int64_t>(87381.0 / 2 * kSec) + kSec;
  EXPECT_NEAR(100, m.BurstBalancePercent(now), 0.1);
  d = Drive(m, now, 10, kMiB, sequential);
  EXPECT_NEAR(80, d.bytes / kMiB / 10, 1) << "bursting again with a full bucket";
}

TEST(ThrottleModelTest, Sc1CapsAt250IopsOfSmallRandomIo) {
  PerformanceModel m(LimitsOf(VolumeType::kSc1, 16 * 1024), 0);
  int64_t now = 0;
  uint64_t n = 0;
  Delivered d = Drive(m, now, 10, 16 * kKiB, [&] { return (n++ * 7 % 10000) * 3 * kMiB; });
  EXPECT_NEAR(250, d.ops / 10, 5);
}

TEST(ThrottleModelTest, LimitsChangedMidStreamTakeEffect) {
  PerformanceModel m(LimitsOf(VolumeType::kGp3, 100), 0);
  int64_t now = 0;
  uint64_t n = 0;
  auto random = [&] { return (n++ * 7919 % 1000) * kMiB; };
  Delivered before = Drive(m, now, 5, 4 * kKiB, random);
  m.SetLimits(LimitsOf(VolumeType::kGp3, 100, 6000), now);
  Delivered after = Drive(m, now, 5, 4 * kKiB, random);
  EXPECT_NEAR(3000, before.ops / 5, 40);
  EXPECT_NEAR(6000, after.ops / 5, 70);
  // gp3 -> gp2 (100 GiB): the new bucket starts full, bursting to 3000.
  m.SetLimits(LimitsOf(VolumeType::kGp2, 100), now);
  EXPECT_DOUBLE_EQ(100, m.BurstBalancePercent(now));
  EXPECT_DOUBLE_EQ(3000, m.CurrentIops(now));
}

TEST(ThrottleModelTest, EveryTypeAtItsSizeEdgesDeliversItsLimits) {
  struct Row {
    VolumeType type;
    uint64_t gib;
    uint32_t iops;
    double expect_iops;   // 4 KiB random, after any burst
    double expect_mibps;  // 1 MiB sequential
  };
  // A credit bucket starts full, so bursting types deliver their burst rate.
  // 1 MiB sequential counts 4 I/Os on SSD types (256 KiB units), so io1 and
  // io2 at the low edge are held by IOPS, not throughput; standard (magnetic)
  // counts 1 MiB units, so its 300 IOPS burst leaves its 90 MiB/s the limit.
  // st1/sc1 charge each small random I/O a full MiB: at 125 GiB their burst
  // throughput, not their IOPS cap, limits 4 KiB random I/O.
  const Row rows[] = {
      {VolumeType::kGp2, 1, 0, 3000, 128},          {VolumeType::kGp2, 16384, 0, 16000, 250},
      {VolumeType::kGp3, 1, 0, 3000, 125},          {VolumeType::kGp3, 65536, 80000, 80000, 2000},
      {VolumeType::kIo1, 4, 200, 200, 50},          {VolumeType::kIo1, 16384, 64000, 64000, 1000},
      {VolumeType::kIo2, 4, 4000, 4000, 1000},      {VolumeType::kIo2, 65536, 256000, 256000, 4000},
      {VolumeType::kSt1, 125, 0, 250.0 * 125 / 1024, 250.0 * 125 / 1024},  {VolumeType::kSt1, 16384, 0, 500, 500},
      {VolumeType::kSc1, 125, 0, 80.0 * 125 / 1024, 80.0 * 125 / 1024},    {VolumeType::kSc1, 16384, 0, 250, 250},
      {VolumeType::kStandard, 1, 0, 300, 90},       {VolumeType::kStandard, 1024, 0, 300, 90},
  };
  for (const Row& r : rows) {
    const uint32_t tp = r.type == VolumeType::kGp3 && r.iops == 80000 ? 2000 : 0;
    const std::string what = std::string(VolumeTypeName(r.type)) + " " + std::to_string(r.gib) + " GiB";
    {
      PerformanceModel m(LimitsOf(r.type, r.gib, r.iops, tp), 0);
      int64_t now = 0;
      uint64_t n = 0;
      // Ten seconds: the first 50 ms of tokens are then within 0.5%.
      Delivered d = Drive(m, now, 10, 4 * kKiB, [&] { return (n++ * 7919 % 100) * 3 * kMiB; });
      EXPECT_NEAR(r.expect_iops, d.ops / 10, r.expect_iops * 0.01) << what << ", 4 KiB random";
    }
    {
      PerformanceModel m(LimitsOf(r.type, r.gib, r.iops, tp), 0);
      int64_t now = 0;
      uint64_t off = 0;
      Delivered d = Drive(m, now, 10, kMiB, [&] { return (off += kMiB); });
      EXPECT_NEAR(r.expect_mibps, d.bytes / kMiB / 10, r.expect_mibps * 0.01 + 0.1) << what << ", 1 MiB sequential";
    }
  }
}

}  // namespace
}  // namespace ebs
