// The performance a volume delivers, as a pure model with an injected clock:
// EBS I/O accounting (256 KiB / 1 MiB units with sequential merging), token
// buckets for IOPS and throughput, and the burst credit buckets (gp2 and
// standard I/O credits, st1/sc1 throughput credits). The throttle layer asks
// it when a request may start; tests drive hours of simulated time in
// milliseconds. Not thread-safe: the owner serialises calls.
#pragma once

#include <cstdint>

#include "ebs/engine/volume_type.h"

namespace ebs {

// What one request costs against the limits.
struct IoCost {
  double ios = 0;      // counted I/O operations (EBS accounting); 0 when merged into the previous
  // Bytes charged against the throughput limit and credits: those
  // transferred on SSD types; on HDD types 1 MiB per counted I/O.
  uint64_t bytes = 0;
};

class PerformanceModel {
 public:
  // Token buckets hold this much time's worth of tokens: enough to absorb
  // scheduling jitter, small enough that no one-second window sees more than
  // about 1.05x the limit.
  static constexpr int64_t kBucketDepthNs = 50'000'000;

  // Credit buckets start full, as EBS volumes do.
  PerformanceModel(const PerformanceLimits& limits, int64_t now_ns);

  // New limits (modify). Credit balances carry over, clamped to the new
  // bucket sizes; a volume that gains a bucket starts it full.
  void SetLimits(const PerformanceLimits& limits, int64_t now_ns);
  const PerformanceLimits& limits() const { return limits_; }

  // EBS accounting of a read or write at [offset, offset+length), updating
  // the sequential-merge state. Call once per request, in arrival order.
  IoCost Account(uint64_t offset, uint64_t length);

  // How long until a request of `cost` may start (0: now). Does not consume.
  int64_t WaitNs(const IoCost& cost, int64_t now_ns);
  // Which limit the last WaitNs() > 0 was waiting for.
  bool last_wait_was_iops() const { return last_wait_iops_; }
  // Takes the request's tokens and credits. REQUIRES: WaitNs(cost, now) == 0.
  void Consume(const IoCost& cost, int64_t now_ns);

  // Rates in force now (burst while credits last, else baseline).
  double CurrentIops(int64_t now_ns);
  double CurrentThroughputBytesPerSec(int64_t now_ns);
  // BurstBalance in percent of the bucket (I/O credits for gp2 and standard,
  // throughput credits for st1/sc1); 100 for types without a bucket.
  double BurstBalancePercent(int64_t now_ns);
  double io_credits(int64_t now_ns);
  double throughput_credits_bytes(int64_t now_ns);

 private:
  void Advance(int64_t now_ns);
  double IopsRate() const;
  double BytesRate() const;

  PerformanceLimits limits_;
  int64_t last_ns_;
  // Token buckets; may go negative (a request larger than the depth is
  // admitted when the bucket is non-negative and leaves a debt).
  double iops_tokens_;
  double byte_tokens_;
  // Credit buckets.
  double io_credits_;
  double tp_credits_bytes_;
  // Sequential merge state.
  uint64_t merge_end_ = UINT64_MAX;
  uint64_t merged_bytes_ = 0;
  bool last_wait_iops_ = false;
};

}  // namespace ebs
