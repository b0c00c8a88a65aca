// Enforces a volume's performance limits: requests over the limit wait, in
// order, and are never failed for it. One ThrottleLayer per volume, shared by
// every connection on every loop; the ThrottleScheduler thread releases
// waiting requests when their tokens are due.
#pragma once

#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "ebs/engine/block_device.h"
#include "ebs/engine/clock.h"
#include "ebs/engine/performance_model.h"
#include "ebs/engine/volume_metrics.h"

namespace ebs {

class ThrottleLayer;

// One thread for all throttled volumes: sleeps until the earliest volume has
// tokens for its first waiting request, then lets that volume release what it
// can. Thread-safe.
class ThrottleScheduler {
 public:
  // `clock` must be the one the layers use.
  explicit ThrottleScheduler(const Clock* clock = SteadyClock::Default());
  ~ThrottleScheduler();
  // Pump `layer` at `when_ns` (clock time) or earlier if already due.
  void Wake(ThrottleLayer* layer, int64_t when_ns);
  // Forget `layer`; waits if it is being pumped right now.
  void Remove(ThrottleLayer* layer);

 private:
  void Run();
  const Clock* const clock_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<ThrottleLayer*, int64_t> due_;  // under mu_
  ThrottleLayer* pumping_ = nullptr;                 // under mu_
  bool stop_ = false;                                // under mu_
  std::thread thread_;
};

class ThrottleLayer final : public DeviceLayer {
 public:
  ThrottleLayer(std::shared_ptr<BlockDevice> next, const PerformanceLimits& limits, ThrottleScheduler* scheduler,
                VolumeMetrics* metrics, const Clock* clock);
  ~ThrottleLayer() override;

  void Submit(EventLoop& loop, IoRequest* req) override;

  // Takes effect for the next request and those waiting. With `later`, the
  // limits switch to `later` at `switch_at_ns` (the end of `optimizing`,
  // during which performance must not drop below the old configuration).
  void SetLimits(const PerformanceLimits& now, std::optional<PerformanceLimits> later = std::nullopt,
                 int64_t switch_at_ns = 0);

  // Releases the waiting requests whose tokens are due, in order. Returns
  // when to be called again, or 0 when nothing waits. Scheduler thread.
  int64_t Pump(int64_t now_ns);

  struct State {
    PerformanceLimits limits;
    double burst_balance_percent;
    double io_credits;
    double throughput_credits_mib;
    double current_iops;
    double current_throughput_mibps;
    size_t waiting;
  };
  State Read();

 private:
  // Per request while it waits in line (IoRequest::LayerState).
  struct Queued {
    double cost_ios;
    uint64_t cost_bytes;
    int64_t queued_ns;
  };
  void MaybeSwitch(int64_t now_ns);  // REQUIRES: mu_

  ThrottleScheduler* const scheduler_;
  VolumeMetrics* const metrics_;
  const Clock* const clock_;
  std::mutex mu_;
  PerformanceModel model_;                  // under mu_
  std::optional<PerformanceLimits> later_;  // under mu_
  int64_t switch_at_ns_ = 0;                // under mu_
  IoQueue waiting_queue_;                   // under mu_: waiting requests
  size_t waiting_ = 0;                      // under mu_
};

}  // namespace ebs
