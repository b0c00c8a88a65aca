#include "ebs/engine/volume_metrics.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace ebs {
namespace {
constexpr int64_t kSecondNs = 1'000'000'000;
constexpr int64_t kMinuteNs = 60 * kSecondNs;
constexpr uint64_t kRwOpUnit = 256 * 1024;  // VolumeConsumedReadWriteOps' unit
}

int VolumeMetrics::BucketOf(uint64_t ns) {
  if (ns < kSubBuckets) return static_cast<int>(ns);
  int exp = 63 - std::countl_zero(ns);  // ns in [2^exp, 2^(exp+1))
  int sub = static_cast<int>((ns >> (exp - 3)) & (kSubBuckets - 1));
  int b = (exp - 2) * kSubBuckets + sub;
  return b < kBuckets ? b : kBuckets - 1;
}

double VolumeMetrics::BucketValue(int b) {
  if (b < kSubBuckets) return b;
  int exp = b / kSubBuckets + 2;
  int sub = b % kSubBuckets;
  // Middle of the bucket.
  return std::ldexp(1.0 + (sub + 0.5) / kSubBuckets, exp);
}

void VolumeMetrics::OnStart(int64_t now_ns) {
  const uint64_t before = in_flight_.fetch_add(1, std::memory_order_relaxed);
  if (before > 1) return;
  // Only the idle -> busy and busy -> pending transitions take the lock;
  // under it each state is re-checked against the count, which other
  // threads may have moved meanwhile.
  std::lock_guard<std::mutex> lock(idle_mu_);
  if (before == 0) {
    if (!idle_) return;
    idle_ = false;
    if (now_ns > idle_since_ns_) idle_ns_ += static_cast<uint64_t>(now_ns - idle_since_ns_);
    return;
  }
  if (pending_ || in_flight_.load(std::memory_order_relaxed) < 2) return;
  pending_ = true;
  pending_since_ns_ = now_ns;
}

void VolumeMetrics::OnComplete(bool write, uint64_t bytes, int64_t latency_ns, bool failed, int64_t now_ns) {
  uint64_t lat = latency_ns > 0 ? static_cast<uint64_t>(latency_ns) : 0;
  if (failed) {
    errors_.fetch_add(1, std::memory_order_relaxed);
  } else {
    if (write) {
      write_ops_.fetch_add(1, std::memory_order_relaxed);
      write_bytes_.fetch_add(bytes, std::memory_order_relaxed);
    } else {
      read_ops_.fetch_add(1, std::memory_order_relaxed);
      read_bytes_.fetch_add(bytes, std::memory_order_relaxed);
    }
    // CloudWatch (using_cloudwatch_ebs): an I/O under 256 KiB counts 1, a
    // larger one in 256 KiB units (1 MiB: 4), each request on its own.
    consumed_rw_ops_.fetch_add(std::max<uint64_t>(1, (bytes + kRwOpUnit - 1) / kRwOpUnit),
                               std::memory_order_relaxed);
  }
  (write ? write_time_ns_ : read_time_ns_).fetch_add(lat, std::memory_order_relaxed);
  latency_[BucketOf(lat)].fetch_add(1, std::memory_order_relaxed);
  MaybeNote(now_ns);
  const uint64_t before = in_flight_.fetch_sub(1, std::memory_order_relaxed);
  if (before > 2) return;
  std::lock_guard<std::mutex> lock(idle_mu_);
  if (before == 2) {
    if (!pending_ || in_flight_.load(std::memory_order_relaxed) >= 2) return;  // pending again already
    pending_ = false;
    if (now_ns > pending_since_ns_) pending_ns_ += static_cast<uint64_t>(now_ns - pending_since_ns_);
    return;
  }
  if (in_flight_.load(std::memory_order_relaxed) != 0 || idle_) return;  // busy again already
  idle_ = true;
  idle_since_ns_ = now_ns;
}

void VolumeMetrics::OnHeldBack(bool iops_limit, int64_t from_ns, int64_t until_ns) {
  if (from_ns < 0) return;  // clocks start at or after 0; nothing to mark before
  HeldRing& ring = iops_limit ? iops_held_ : throughput_held_;
  const int64_t last = std::max(from_ns, until_ns - 1) / kSecondNs;
  // Only the newest kHeldSlots seconds fit in the ring (a wait that long is
  // a debt of one huge request on a tiny limit).
  for (int64_t s = std::max(from_ns / kSecondNs, last - (kHeldSlots - 1)); s <= last; ++s) {
    ring[static_cast<size_t>(s % kHeldSlots)].store(s + 1, std::memory_order_relaxed);
  }
}

int VolumeMetrics::HeldSeconds(const HeldRing& ring, int64_t now_ns) {
  // The 60 windows ending with the current (partial) one. Seconds marked
  // ahead of now (a wait planned into the future) count once they come.
  const int64_t now_s = now_ns / kSecondNs;
  int n = 0;
  for (const auto& slot : ring) {
    const int64_t s = slot.load(std::memory_order_relaxed) - 1;
    if (s >= 0 && s <= now_s && s > now_s - kExceededWindows) ++n;
  }
  return n;
}

void VolumeMetrics::OnThrottleWait(int64_t wait_ns) {
  throttled_ns_.fetch_add(static_cast<uint64_t>(std::max<int64_t>(0, wait_ns)), std::memory_order_relaxed);
  throttled_requests_.fetch_add(1, std::memory_order_relaxed);
}

void VolumeMetrics::MaybeNote(int64_t now_ns) const {
  if (now_ns < next_note_ns_.load(std::memory_order_relaxed)) return;
  std::unique_lock<std::mutex> lock(notes_mu_, std::try_to_lock);
  if (lock.owns_lock()) NoteLocked(now_ns);  // else another thread is noting
}

void VolumeMetrics::NoteLocked(int64_t now_ns) const {
  if (now_ns < next_note_ns_.load(std::memory_order_relaxed)) return;
  int64_t pending_since = -1;
  const uint64_t pending = PendingNs(now_ns, &pending_since);
  notes_[notes_count_ % kNotes] = {now_ns, read_time_ns_.load() + write_time_ns_.load(), consumed_milli_ios_.load(),
                                   consumed_rw_ops_.load(), pending, pending_since};
  ++notes_count_;
  next_note_ns_.store(now_ns + kSecondNs, std::memory_order_relaxed);
}

uint64_t VolumeMetrics::IdleNs(int64_t now_ns) const {
  std::lock_guard<std::mutex> lock(idle_mu_);
  uint64_t idle = idle_ns_;
  if (idle_ && now_ns > idle_since_ns_) idle += static_cast<uint64_t>(now_ns - idle_since_ns_);
  return idle;
}

uint64_t VolumeMetrics::PendingNs(int64_t now_ns, int64_t* since_ns) const {
  std::lock_guard<std::mutex> lock(idle_mu_);
  if (since_ns != nullptr) *since_ns = pending_ ? pending_since_ns_ : -1;
  uint64_t pending = pending_ns_;
  if (pending_ && now_ns > pending_since_ns_) pending += static_cast<uint64_t>(now_ns - pending_since_ns_);
  return pending;
}

double VolumeMetrics::Percentile(double p) const {
  uint64_t total = 0;
  for (const auto& b : latency_) total += b.load(std::memory_order_relaxed);
  if (total == 0) return 0;
  uint64_t rank = static_cast<uint64_t>(std::ceil(p * static_cast<double>(total)));
  uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += latency_[i].load(std::memory_order_relaxed);
    if (seen >= rank) return BucketValue(i);
  }
  return BucketValue(kBuckets - 1);
}

double VolumeMetrics::ThroughputPercentage(const Sample& s, uint32_t provisioned_iops) {
  if (s.period_s <= 0 || provisioned_iops == 0) return 100;
  // The pending time the provisioned rate was not delivered in, as a share.
  const double delivered_s = s.period_consumed_ops / provisioned_iops;
  const double short_s = s.period_pending_s - std::min(s.period_pending_s, delivered_s);
  return 100.0 * (1.0 - short_s / s.period_s);
}

VolumeMetrics::Sample VolumeMetrics::Read(int64_t now_ns) const {
  Sample s{};
  s.read_ops = read_ops_.load();
  s.write_ops = write_ops_.load();
  s.read_bytes = read_bytes_.load();
  s.write_bytes = write_bytes_.load();
  s.errors = errors_.load();
  s.total_read_time_s = static_cast<double>(read_time_ns_.load()) / 1e9;
  s.total_write_time_s = static_cast<double>(write_time_ns_.load()) / 1e9;
  s.elapsed_s = static_cast<double>(now_ns - created_ns_) / 1e9;
  s.in_flight = in_flight_.load();
  s.idle_time_s = static_cast<double>(IdleNs(now_ns)) / 1e9;
  const uint64_t pending_now = PendingNs(now_ns);
  s.consumed_ops = static_cast<double>(consumed_milli_ios_.load()) / 1000.0;
  s.consumed_rw_ops = consumed_rw_ops_.load();
  {
    // The period is the last minute (up to a second more), or since the
    // volume was opened. Its counters at the start come from the notes
    // around that instant: the newest one at or before it, where the period
    // then starts, unless that is over a second older. A
    // completion a second or more after a note makes the next note, so then
    // nothing completed from that second until the next note but the
    // completion that made it, and the next note's counters hold for the
    // start (off by that one request). Pending time ends only at a
    // completion, so from the period's start to that note it was pending
    // exactly if the note found it pending, since its beginning.
    std::lock_guard<std::mutex> lock(notes_mu_);
    NoteLocked(now_ns);
    const int64_t from = std::max(created_ns_, now_ns - kMinuteNs);
    Note start{created_ns_, 0, 0, 0, 0, -1};
    const Note* next = nullptr;
    for (int i = 0; i < std::min(notes_count_, kNotes); ++i) {
      const Note& n = notes_[i];
      if (n.t_ns <= from && n.t_ns > start.t_ns) start = n;
      if (n.t_ns > from && (next == nullptr || n.t_ns < next->t_ns)) next = &n;
    }
    if (next != nullptr && from >= start.t_ns + kSecondNs) {
      start = *next;
      if (next->pending_since_ns >= 0) {
        start.pending_ns -= std::min(start.pending_ns,
                                     static_cast<uint64_t>(next->t_ns - std::max(next->pending_since_ns, from)));
      }
      start.t_ns = from;
    }
    const uint64_t busy_ns = read_time_ns_.load() + write_time_ns_.load();
    s.period_s = static_cast<double>(now_ns - start.t_ns) / 1e9;
    s.period_consumed_ops = static_cast<double>(consumed_milli_ios_.load() - start.consumed_milli_ios) / 1000.0;
    s.period_consumed_rw_ops = consumed_rw_ops_.load() - start.consumed_rw_ops;
    s.queue_length = s.period_s > 0 ? static_cast<double>(busy_ns - start.busy_ns) / 1e9 / s.period_s : 0;
    const uint64_t period_pending_ns = pending_now >= start.pending_ns ? pending_now - start.pending_ns : 0;
    s.period_pending_s = std::clamp(static_cast<double>(period_pending_ns) / 1e9, 0.0, s.period_s);
  }
  s.throttled_time_s = static_cast<double>(throttled_ns_.load()) / 1e9;
  s.throttled_requests = throttled_requests_.load();
  s.iops_exceeded_seconds = HeldSeconds(iops_held_, now_ns);
  s.throughput_exceeded_seconds = HeldSeconds(throughput_held_, now_ns);
  s.iops_exceeded_last_minute = s.iops_exceeded_seconds >= kExceededSeconds;
  s.throughput_exceeded_last_minute = s.throughput_exceeded_seconds >= kExceededSeconds;
  s.latency_p50_us = Percentile(0.50) / 1000;
  s.latency_p90_us = Percentile(0.90) / 1000;
  s.latency_p99_us = Percentile(0.99) / 1000;
  s.latency_p999_us = Percentile(0.999) / 1000;
  return s;
}

}  // namespace ebs
