#include "ebs/engine/performance_model.h"

#include <algorithm>
#include <cmath>

namespace ebs {
namespace {

constexpr double kNsPerSec = 1e9;
// SSD accounting merges sequential I/Os from this size up (shared/EBS-REFERENCE.md).
constexpr uint64_t kMergeMinBytes = 32 * kKiB;

}  // namespace

PerformanceModel::PerformanceModel(const PerformanceLimits& limits, int64_t now_ns)
    : limits_(limits), last_ns_(now_ns) {
  io_credits_ = static_cast<double>(limits.io_credit_bucket);
  tp_credits_bytes_ = static_cast<double>(limits.throughput_credit_bucket_mib) * kMiB;
  // Token buckets start empty: a new volume delivers its rate from the first
  // request, not a bucket's worth more.
  iops_tokens_ = 0;
  byte_tokens_ = 0;
}

void PerformanceModel::SetLimits(const PerformanceLimits& limits, int64_t now_ns) {
  Advance(now_ns);
  const bool had_io_bucket = limits_.io_credit_bucket > 0;
  const bool had_tp_bucket = limits_.throughput_credit_bucket_mib > 0;
  limits_ = limits;
  const double io_max = static_cast<double>(limits.io_credit_bucket);
  const double tp_max = static_cast<double>(limits.throughput_credit_bucket_mib) * kMiB;
  io_credits_ = had_io_bucket ? std::min(io_credits_, io_max) : io_max;
  tp_credits_bytes_ = had_tp_bucket ? std::min(tp_credits_bytes_, tp_max) : tp_max;
  iops_tokens_ = std::min(iops_tokens_, IopsRate() * kBucketDepthNs / kNsPerSec);
  byte_tokens_ = std::min(byte_tokens_, BytesRate() * kBucketDepthNs / kNsPerSec);
}

double PerformanceModel::IopsRate() const {
  if (limits_.io_credit_bucket > 0 && io_credits_ > 0) return limits_.burst_iops;
  return limits_.baseline_iops;
}

double PerformanceModel::BytesRate() const {
  bool burst = false;
  if (limits_.throughput_credit_bucket_mib > 0) {
    burst = tp_credits_bytes_ > 0;
  } else if (limits_.io_credit_bucket > 0) {
    burst = io_credits_ > 0;  // gp2 170-334 GiB and standard burst on I/O credits
  }
  return (burst ? limits_.burst_throughput_mibps : limits_.baseline_throughput_mibps) * kMiB;
}

void PerformanceModel::Advance(int64_t now_ns) {
  if (now_ns <= last_ns_) return;
  const double dt = static_cast<double>(now_ns - last_ns_) / kNsPerSec;
  last_ns_ = now_ns;
  // Credits accrue at the baseline rate (the new type's, while optimizing), up to the bucket size.
  if (limits_.io_credit_bucket > 0) {
    const double refill = limits_.io_credit_refill_iops > 0 ? limits_.io_credit_refill_iops : limits_.baseline_iops;
    io_credits_ = std::min(io_credits_ + refill * dt, static_cast<double>(limits_.io_credit_bucket));
  }
  if (limits_.throughput_credit_bucket_mib > 0) {
    const double refill = limits_.throughput_credit_refill_mibps > 0 ? limits_.throughput_credit_refill_mibps
                                                                     : limits_.baseline_throughput_mibps;
    tp_credits_bytes_ = std::min(tp_credits_bytes_ + refill * kMiB * dt,
                                 static_cast<double>(limits_.throughput_credit_bucket_mib) * kMiB);
  }
  iops_tokens_ = std::min(iops_tokens_ + IopsRate() * dt, IopsRate() * kBucketDepthNs / kNsPerSec);
  byte_tokens_ = std::min(byte_tokens_ + BytesRate() * dt, BytesRate() * kBucketDepthNs / kNsPerSec);
}

IoCost PerformanceModel::Account(uint64_t offset, uint64_t length) {
  IoCost cost;
  cost.bytes = length;
  const uint64_t unit = limits_.io_unit_bytes ? limits_.io_unit_bytes : 256 * kKiB;
  const bool ssd = unit < kMiB;
  const bool sequential = offset == merge_end_;
  merge_end_ = offset + length;
  if (length >= unit) {
    cost.ios = std::ceil(static_cast<double>(length) / static_cast<double>(unit));
    merged_bytes_ = unit;  // a full unit: the next sequential I/O starts a new one
  } else {
    const bool mergeable = !ssd || length >= kMergeMinBytes;
    if (mergeable && sequential && merged_bytes_ + length <= unit) {
      merged_bytes_ += length;  // part of the I/O already counted
      cost.ios = 0;
    } else {
      merged_bytes_ = mergeable ? length : unit;
      cost.ios = 1;
    }
  }
  // st1/sc1 (hdd-vols): every counted I/O spends a full 1 MiB of throughput and
  // of throughput credit, whatever its size; the I/Os merged into it spend
  // nothing more. A run of sequential small I/Os thus costs its bytes (one
  // MiB per MiB), a random 4 KiB read 256 times its bytes.
  if (limits_.charge_whole_units) cost.bytes = static_cast<uint64_t>(cost.ios) * unit;
  return cost;
}

int64_t PerformanceModel::WaitNs(const IoCost& cost, int64_t now_ns) {
  Advance(now_ns);
  double wait_s = 0;
  last_wait_iops_ = false;
  // A zero rate means "not limited" (a throttle turned off for a dimension).
  if (cost.ios > 0 && iops_tokens_ < 0 && IopsRate() > 0) {
    wait_s = -iops_tokens_ / IopsRate();
    last_wait_iops_ = true;
  }
  if (cost.bytes > 0 && byte_tokens_ < 0 && BytesRate() > 0) {
    double w = -byte_tokens_ / BytesRate();
    if (w > wait_s) {
      wait_s = w;
      last_wait_iops_ = false;
    }
  }
  if (wait_s <= 0) return 0;
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(wait_s * kNsPerSec)));
}

void PerformanceModel::Consume(const IoCost& cost, int64_t now_ns) {
  Advance(now_ns);
  iops_tokens_ -= cost.ios;
  byte_tokens_ -= static_cast<double>(cost.bytes);
  // Every counted I/O spends one credit and credits accrue at the baseline
  // rate, so bursting drains the bucket at (burst - baseline). A balance may
  // dip below zero: that debt is what holds an exhausted volume to its
  // baseline (clamping at zero would let it spend credits it never earned).
  if (limits_.io_credit_bucket > 0) io_credits_ -= cost.ios;
  if (limits_.throughput_credit_bucket_mib > 0) tp_credits_bytes_ -= static_cast<double>(cost.bytes);
}

double PerformanceModel::CurrentIops(int64_t now_ns) {
  Advance(now_ns);
  return IopsRate();
}

double PerformanceModel::CurrentThroughputBytesPerSec(int64_t now_ns) {
  Advance(now_ns);
  return BytesRate();
}

double PerformanceModel::io_credits(int64_t now_ns) {
  Advance(now_ns);
  return std::max(0.0, io_credits_);
}

double PerformanceModel::throughput_credits_bytes(int64_t now_ns) {
  Advance(now_ns);
  return std::max(0.0, tp_credits_bytes_);
}

double PerformanceModel::BurstBalancePercent(int64_t now_ns) {
  Advance(now_ns);
  if (limits_.throughput_credit_bucket_mib > 0) {
    return std::max(0.0, 100.0 * tp_credits_bytes_ / (static_cast<double>(limits_.throughput_credit_bucket_mib) * kMiB));
  }
  if (limits_.io_credit_bucket > 0) return std::max(0.0, 100.0 * io_credits_ / static_cast<double>(limits_.io_credit_bucket));
  return 100.0;
}

}  // namespace ebs
