// Per-volume counters in the CloudWatch AWS/EBS set, plus latency
// percentiles. Updated from every event loop at once: counters are atomics.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <mutex>

#include <nlohmann/json.hpp>

namespace ebs {

class VolumeMetrics {
 public:
  explicit VolumeMetrics(int64_t now_ns) : created_ns_(now_ns), next_note_ns_(now_ns), idle_since_ns_(now_ns) {}

  // A read or write enters the volume (before any throttling).
  void OnStart(int64_t now_ns);
  // It completed after `latency_ns` (throttle wait included).
  void OnComplete(bool write, uint64_t bytes, int64_t latency_ns, bool failed, int64_t now_ns);
  // The throttle holds requests back over [from_ns, until_ns) because of
  // the IOPS (or else the throughput) limit: every one-second window of the
  // clock that the interval touches counts as held back on that limit. The
  // throttle reports each wait it plans, up to when it will look again, so
  // a queue held back for a minute marks all sixty windows.
  void OnHeldBack(bool iops_limit, int64_t from_ns, int64_t until_ns);
  // A request the throttle held back was released after `wait_ns`.
  void OnThrottleWait(int64_t wait_ns);
  // Counted I/O operations (EBS accounting) consumed by admitted requests.
  void OnConsumed(double ios) { consumed_milli_ios_.fetch_add(static_cast<uint64_t>(ios * 1000)); }

  struct Sample {
    uint64_t read_ops, write_ops, read_bytes, write_bytes, errors;
    double total_read_time_s, total_write_time_s, idle_time_s, elapsed_s;
    uint64_t in_flight;
    double queue_length;  // average requests outstanding over the last minute (Little's law)
    double consumed_ops;  // counted I/Os (throttle accounting, merged), since the volume was opened
    // CloudWatch's VolumeConsumedReadWriteOps: each completed read or write
    // counts ceil(size / 256 KiB), at least 1, before any merging.
    uint64_t consumed_rw_ops;
    // The last minute (CloudWatch's period), or since the volume was opened
    // when that is shorter: its length, the counted I/Os consumed in it and
    // the time in it with I/O pending (two or more requests outstanding:
    // one being served and others waiting).
    double period_s;
    double period_consumed_ops;
    uint64_t period_consumed_rw_ops;  // VolumeConsumedReadWriteOps' count in the period
    double period_pending_s;
    double throttled_time_s;
    uint64_t throttled_requests;
    // Of the last 60 one-second windows (the current one included), how many
    // saw requests held back on each limit, and whether that is "consistently"
    // (at least kExceededSeconds of them).
    int iops_exceeded_seconds, throughput_exceeded_seconds;
    bool iops_exceeded_last_minute, throughput_exceeded_last_minute;
    double latency_p50_us, latency_p90_us, latency_p99_us, latency_p999_us;
  };
  Sample Read(int64_t now_ns) const;

  // VolumeIOPSExceededCheck / VolumeThroughputExceededCheck are 1 when the
  // workload "consistently" tried to exceed the limit during the last
  // minute: held back in at least half of its one-second windows.
  static constexpr int kExceededWindows = 60;
  static constexpr int kExceededSeconds = 30;

  // VolumeThroughputPercentage (io1/io2; using_cloudwatch_ebs: "the
  // percentage of IOPS delivered of the total IOPS provisioned"; "if there
  // are no other pending I/O requests in a minute, the metric value will be
  // 100 percent") over the sample's period: time without I/O pending (at
  // most one request outstanding) counts 100%; time with I/O pending counts
  // the IOPS delivered (counted I/Os of the period, credited to that time)
  // as a share of `provisioned_iops`, at most 100%. That is
  // 100 x (not_pending + min(pending, delivered / provisioned)) / period.
  // Idle, queue depth 1, or a queue held at the limit read 100; a queue the
  // volume serves below its provisioned IOPS (slow first reads of a lazily
  // restored volume) reads less. 100 for an empty period.
  static double ThroughputPercentage(const Sample& s, uint32_t provisioned_iops);

 private:
  static constexpr int kSubBuckets = 8;  // per power of two: ~9% resolution
  static constexpr int kBuckets = 64 * kSubBuckets;
  static int BucketOf(uint64_t ns);
  static double BucketValue(int b);
  double Percentile(double p) const;

  // Once a second (at the first completion after each second boundary, and
  // on Read) the cumulative counters the per-minute figures need are noted
  // in a ring, so a minute's worth is a difference of two notes.
  struct Note {
    int64_t t_ns;
    uint64_t busy_ns;  // read_time_ns_ + write_time_ns_
    uint64_t consumed_milli_ios;
    uint64_t consumed_rw_ops;
    uint64_t pending_ns;       // time with I/O pending up to t_ns
    int64_t pending_since_ns;  // when the pending at t_ns began; -1: none
  };
  static constexpr int kNotes = 64;  // >= 63 s at one a second at most
  void MaybeNote(int64_t now_ns) const;
  void NoteLocked(int64_t now_ns) const;
  uint64_t IdleNs(int64_t now_ns) const;     // takes idle_mu_
  // Time with I/O pending up to now, and since when it is (-1: it is not).
  // Takes idle_mu_.
  uint64_t PendingNs(int64_t now_ns, int64_t* since_ns = nullptr) const;
  // Held-back marks: slot s % kHeldSlots holds s + 1 for second s (0: none).
  static constexpr int kHeldSlots = 64;
  using HeldRing = std::array<std::atomic<int64_t>, kHeldSlots>;
  static int HeldSeconds(const HeldRing& ring, int64_t now_ns);

  const int64_t created_ns_;
  std::atomic<uint64_t> read_ops_{0}, write_ops_{0}, read_bytes_{0}, write_bytes_{0}, errors_{0};
  std::atomic<uint64_t> read_time_ns_{0}, write_time_ns_{0};
  std::atomic<uint64_t> consumed_milli_ios_{0};
  std::atomic<uint64_t> consumed_rw_ops_{0};
  std::atomic<uint64_t> throttled_ns_{0}, throttled_requests_{0};
  HeldRing iops_held_{}, throughput_held_{};
  std::array<std::atomic<uint64_t>, kBuckets> latency_{};
  // Idle time: the lock is taken on the 0 <-> 1 in-flight transitions only.
  std::atomic<uint64_t> in_flight_{0};
  mutable std::atomic<int64_t> next_note_ns_;
  mutable std::mutex notes_mu_;
  mutable std::array<Note, kNotes> notes_{};  // under notes_mu_
  mutable int notes_count_ = 0;                // under notes_mu_
  // Pending time likewise, on the 1 <-> 2 transitions.
  mutable std::mutex idle_mu_;
  bool idle_ = true;             // under idle_mu_
  int64_t idle_since_ns_;        // under idle_mu_
  uint64_t idle_ns_ = 0;         // under idle_mu_
  bool pending_ = false;         // under idle_mu_
  int64_t pending_since_ns_ = 0;  // under idle_mu_
  uint64_t pending_ns_ = 0;      // under idle_mu_
};

}  // namespace ebs
