// Fault injection for tests (in the spirit of nbdkit's error filter): fails a
// chosen share of a volume's requests with a chosen errno, optionally only
// while a trigger file exists. Failed requests never reach the data file, so
// nothing already written is touched. Enabled only by `ebs serve
// --inject-fault`.
#pragma once

#include <atomic>
#include <mutex>
#include <random>
#include <string>

#include "ebs/engine/block_device.h"

namespace ebs {

struct FaultSpec {
  std::string volume;        // which volume
  int error = EIO;           // errno to fail with
  double rate = 1.0;         // share of matching requests failed, 0..1
  bool reads = true;         // which requests match
  bool writes = true;        // writes, trims and zeroes
  bool flushes = false;
  uint64_t seed = 1;
  std::string trigger_file;  // if set, faults only while this file exists

  // "volume=NAME,error=EIO|ENOSPC|...,rate=0.1,ops=read+write+flush,seed=N,trigger=PATH"
  static Result<FaultSpec> Parse(const std::string& text);
};

class FaultLayer final : public DeviceLayer {
 public:
  FaultLayer(std::shared_ptr<BlockDevice> next, FaultSpec spec);
  void Submit(EventLoop& loop, IoRequest* req) override;
  uint64_t injected() const { return injected_.load(); }

 private:
  bool ShouldFail(const IoRequest& req);

  const FaultSpec spec_;
  std::mutex mu_;
  std::mt19937_64 rng_;  // GUARDED_BY(mu_)
  std::atomic<uint64_t> injected_{0};
};

}  // namespace ebs
