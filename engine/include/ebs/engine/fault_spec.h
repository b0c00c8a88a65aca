// Test-only fault injection for a volume (`ebs serve --inject-fault`): which
// requests of which volume fail, with what error. The layer that applies it
// sits in the volume's stack (engine/src/layers/fault_layer.h).
#pragma once

#include <cerrno>
#include <cstdint>
#include <string>

#include "ebs/engine/status.h"

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

}  // namespace ebs
