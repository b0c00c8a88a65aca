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
  // The throttle had to hold a request back because of the IOPS (or else
  // the throughput) limit; later it released it after `wait_ns`.
  void OnLimitReached(bool iops_limit, int64_t now_ns);
  void OnThrottleWait(int64_t wait_ns);
  // Counted I/O operations (EBS accounting) consumed by admitted requests.
  void OnConsumed(double ios) { consumed_milli_ios_.fetch_add(static_cast<uint64_t>(ios * 1000)); }

  struct Sample {
    uint64_t read_ops, write_ops, read_bytes, write_bytes, errors;
    double total_read_time_s, total_write_time_s, idle_time_s, elapsed_s;
    uint64_t in_flight;
    double queue_length;  // average requests outstanding over the last minute (Little's law)
    double consumed_ops;  // since the volume was opened
    // The last minute (CloudWatch's period), or since the volume was opened
    // when that is shorter: its length and the counted I/Os consumed in it.
    double period_s;
    double period_consumed_ops;
    double throttled_time_s;
    uint64_t throttled_requests;
    bool iops_exceeded_last_minute, throughput_exceeded_last_minute;
    double latency_p50_us, latency_p90_us, latency_p99_us, latency_p999_us;
  };
  Sample Read(int64_t now_ns) const;

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
  };
  static constexpr int kNotes = 64;  // >= 63 s at one a second at most
  void MaybeNote(int64_t now_ns) const;
  void NoteLocked(int64_t now_ns) const;

  const int64_t created_ns_;
  std::atomic<uint64_t> read_ops_{0}, write_ops_{0}, read_bytes_{0}, write_bytes_{0}, errors_{0};
  std::atomic<uint64_t> read_time_ns_{0}, write_time_ns_{0};
  std::atomic<uint64_t> consumed_milli_ios_{0};
  std::atomic<uint64_t> throttled_ns_{0}, throttled_requests_{0};
  std::atomic<int64_t> iops_exceeded_ns_{INT64_MIN / 2}, throughput_exceeded_ns_{INT64_MIN / 2};
  std::array<std::atomic<uint64_t>, kBuckets> latency_{};
  // Idle time: the lock is taken on the 0 <-> 1 in-flight transitions only.
  std::atomic<uint64_t> in_flight_{0};
  mutable std::atomic<int64_t> next_note_ns_;
  mutable std::mutex notes_mu_;
  mutable std::array<Note, kNotes> notes_{};  // under notes_mu_
  mutable int notes_count_ = 0;                // under notes_mu_
  mutable std::mutex idle_mu_;
  bool idle_ = true;             // under idle_mu_
  int64_t idle_since_ns_;        // under idle_mu_
  uint64_t idle_ns_ = 0;         // under idle_mu_
};

}  // namespace ebs
