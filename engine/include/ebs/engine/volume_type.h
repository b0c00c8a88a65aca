// The EBS volume types: which parameters each accepts, the ranges and ratios
// that bound them (shared/EBS-REFERENCE.md), and the performance each delivers.
// Pure functions, no I/O: safe for concurrent use.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ebs/engine/status.h"

namespace ebs {

inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * kKiB;
inline constexpr uint64_t kGiB = 1024 * kMiB;
inline constexpr uint64_t kTiB = 1024 * kGiB;

enum class VolumeType { kGp2, kGp3, kIo1, kIo2, kSt1, kSc1, kStandard };

std::string_view VolumeTypeName(VolumeType type);
// Accepts the AWS names (gp2, gp3, io1, io2, st1, sc1, standard).
Result<VolumeType> ParseVolumeType(std::string_view name);
bool IsSsd(VolumeType type);

// A volume's provisioned configuration after defaults have been applied.
// iops / throughput_mibps are 0 for types where they are not provisionable
// (gp2, st1, sc1, standard; throughput also for io1/io2).
struct VolumeConfig {
  VolumeType type = VolumeType::kGp3;
  uint64_t size_bytes = 0;
  uint32_t iops = 0;
  uint32_t throughput_mibps = 0;
  bool operator==(const VolumeConfig&) const = default;
};

// What a create or modify asks for; unset fields were not given.
struct VolumeParams {
  std::optional<VolumeType> type;
  std::optional<uint64_t> size_bytes;
  std::optional<uint32_t> iops;
  std::optional<uint32_t> throughput_mibps;
};

// Validates a create request (type and size required) and fills defaults
// (gp3: 3000 IOPS, 125 MiB/s). Errors carry EC2's code and open with EC2's
// own message, then name the limit, e.g. "InvalidParameterValue: Iops to
// volume size ratio of 300.000000 is too high; maximum is 50 (a 10 GiB io1
// volume takes at most 500 IOPS)".
Result<VolumeConfig> ValidateCreate(const VolumeParams& params);

// Validates a modification of `current`: size only grows, the result must be a
// valid configuration of its (possibly new) type. Parameters not given keep
// their value while the type stays; a type change to io1, io2 or gp3 gets
// 3,000 IOPS and (gp3) 125 MiB/s, gp2 -> gp3 the higher of those and the gp2
// volume's own (ModifyVolume). Refuses a modification that changes nothing.
Result<VolumeConfig> ValidateModify(const VolumeConfig& current, const VolumeParams& params);

// The performance a configuration delivers (the model the throttle enforces).
struct PerformanceLimits {
  uint32_t baseline_iops = 0;            // sustained IOPS
  uint32_t burst_iops = 0;               // == baseline_iops when the type has no IOPS burst
  double baseline_throughput_mibps = 0;  // sustained MiB/s
  double burst_throughput_mibps = 0;     // == baseline when no throughput burst
  uint64_t io_credit_bucket = 0;         // gp2: 5,400,000 I/O credits; 0 otherwise
  uint64_t throughput_credit_bucket_mib = 0;  // st1/sc1: 1 TiB of credit per TiB of size (in MiB)
  uint32_t io_unit_bytes = 0;            // 256 KiB for SSD types, 1 MiB for HDD types
  // st1/sc1: each counted I/O spends a whole unit (1 MiB) of throughput and
  // throughput credit, whatever its size; otherwise the bytes transferred.
  bool charge_whole_units = false;
  // The rates the credit buckets refill at; 0: the baseline. Only the limits
  // of an optimizing modification set them (its rates may exceed the new
  // type's baseline, its credits still earn at that baseline).
  double io_credit_refill_iops = 0;
  double throughput_credit_refill_mibps = 0;
};
PerformanceLimits ComputeLimits(const VolumeConfig& config);

// The limits while a modification from `from` to `to` is optimizing: each
// rate the better of the two (performance never drops below the old
// configuration), accounted and credited as `to` (its I/O unit, its credit
// buckets, refilled at its own baseline).
PerformanceLimits OptimizingLimits(const VolumeConfig& from, const VolumeConfig& to);

}  // namespace ebs
