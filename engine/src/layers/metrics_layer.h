// Watches every read and write of a volume as its user sees it (throttle
// wait included) and feeds VolumeMetrics. The top layer of a volume's stack.
#pragma once

#include "ebs/engine/block_device.h"
#include "ebs/engine/clock.h"
#include "ebs/engine/volume_metrics.h"

namespace ebs {

class MetricsLayer final : public DeviceLayer {
 public:
  MetricsLayer(std::shared_ptr<BlockDevice> next, VolumeMetrics* metrics, const Clock* clock)
      : DeviceLayer(std::move(next)), metrics_(metrics), clock_(clock) {}
  void Submit(EventLoop& loop, IoRequest* req) override;

 private:
  // Per request (IoRequest::LayerState): the completion this layer replaced.
  struct Saved {
    IoCallback callback;
    void* owner;
  };
  static void Done(IoRequest* req, int result);
  VolumeMetrics* const metrics_;
  const Clock* const clock_;
};

}  // namespace ebs
