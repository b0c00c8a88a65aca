// Fault injection for tests (in the spirit of nbdkit's error filter): fails a
// chosen share of a volume's requests with a chosen errno, optionally only
// while a trigger file exists. Failed requests never reach the data file, so
// nothing already written is touched. Enabled only by `ebs serve
// --inject-fault`.
#pragma once

#include "ebs/engine/fault_spec.h"

#include <atomic>
#include <mutex>
#include <random>
#include <string>

#include "ebs/engine/block_device.h"

namespace ebs {

class FaultLayer final : public DeviceLayer {
 public:
  FaultLayer(std::shared_ptr<BlockDevice> next, FaultSpec spec);
  void Submit(EventLoop& loop, IoRequest* req) override;
  uint64_t injected() const { return injected_.load(); }

 private:
  bool ShouldFail(const IoRequest& req);

  const FaultSpec spec_;
  std::mutex mu_;
  std::mt19937_64 rng_;  // under mu_
  std::atomic<uint64_t> injected_{0};
};

}  // namespace ebs
