#include "ebs/engine/volume_type.h"

#include <algorithm>
#include <array>
#include <cstdio>

namespace ebs {
namespace {

// The static rules of one type (shared/EBS-REFERENCE.md, "Volume types").
// Ratio limits are in IOPS per GiB; 0 means the parameter is not provisionable.
struct TypeRules {
  VolumeType type;
  std::string_view name;
  uint64_t min_size;
  uint64_t max_size;
  uint32_t min_iops;
  uint32_t max_iops;
  uint32_t max_iops_per_gib;
};

constexpr std::array<TypeRules, 7> kRules = {{
    {VolumeType::kGp2, "gp2", 1 * kGiB, 16 * kTiB, 0, 0, 0},
    {VolumeType::kGp3, "gp3", 1 * kGiB, 64 * kTiB, 3000, 80000, 500},
    {VolumeType::kIo1, "io1", 4 * kGiB, 16 * kTiB, 100, 64000, 50},
    {VolumeType::kIo2, "io2", 4 * kGiB, 64 * kTiB, 100, 256000, 1000},
    {VolumeType::kSt1, "st1", 125 * kGiB, 16 * kTiB, 0, 0, 0},
    {VolumeType::kSc1, "sc1", 125 * kGiB, 16 * kTiB, 0, 0, 0},
    {VolumeType::kStandard, "standard", 1 * kGiB, 1 * kTiB, 0, 0, 0},
}};

// gp3 includes this much at no extra provisioning; above it the ratio rules apply.
constexpr uint32_t kGp3DefaultIops = 3000;
constexpr uint32_t kGp3DefaultThroughput = 125;
// IOPS a type change to io1, io2 or gp3 gets when none are given (ModifyVolume).
constexpr uint32_t kModifyDefaultIops = 3000;
constexpr uint32_t kGp3MaxThroughput = 2000;
// gp3 throughput above the included 125 MiB/s needs 4 IOPS per MiB/s (0.25 MiB/s per IOPS).
constexpr uint32_t kGp3IopsPerMibps = 4;

const TypeRules& RulesFor(VolumeType type) {
  for (const TypeRules& rules : kRules) {
    if (rules.type == type) return rules;
  }
  return kRules[0];  // unreachable: every enumerator has a row
}

bool AcceptsIops(VolumeType type) { return RulesFor(type).max_iops != 0; }
bool AcceptsThroughput(VolumeType type) { return type == VolumeType::kGp3; }

// Sizes in messages are exact: a whole TiB reads as TiB, anything else as GiB
// (sizes reaching these messages are already whole GiB). A rounded "16 TiB"
// for 16385 GiB would make "above the 16 TiB maximum" read as nonsense.
std::string SizeText(uint64_t bytes) {
  if (bytes != 0 && bytes % kTiB == 0) return std::to_string(bytes / kTiB) + " TiB";
  if (bytes % kGiB == 0) return std::to_string(bytes / kGiB) + " GiB";
  return std::to_string(bytes) + " bytes";
}

Status InvalidValue(const std::string& message) {
  return Status::InvalidArgument("InvalidParameterValue: " + message);
}
Status InvalidCombination(const std::string& message) {
  return Status::InvalidArgument("InvalidParameterCombination: " + message);
}

// The messages below open with the text EC2 returns for the same failure
// (as seen in public CreateVolume/ModifyVolume error reports; see
// docs/volume-types.md for which were seen and which follow their pattern),
// so scripts written against AWS match them, then ebs's hint in brackets.
// EC2 prints ratios with six decimals ("%f").
std::string Fixed6(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%f", v);
  return buf;
}
std::string Hint(const std::string& text) { return " (" + text + ")"; }

std::string IopsRange(const TypeRules& rules) {
  return std::string(rules.name) + " takes " + std::to_string(rules.min_iops) + " to " +
         std::to_string(rules.max_iops) + " IOPS";
}

// Refuses parameters the target type does not take, naming both.
Status CheckAccepted(VolumeType type, const VolumeParams& params) {
  const std::string name(VolumeTypeName(type));
  if (params.iops && !AcceptsIops(type)) {
    return InvalidCombination("The parameter iops is not supported for " + name + " volumes." +
                              Hint("only gp3, io1 and io2 take provisioned IOPS"));
  }
  if (params.throughput_mibps && !AcceptsThroughput(type)) {
    return InvalidCombination("throughput can only be specified for volumeType gp3." +
                              Hint(name + " does not take provisioned throughput"));
  }
  return Status::Ok();
}

Status CheckSize(VolumeType type, uint64_t size) {
  const TypeRules& rules = RulesFor(type);
  const std::string name(rules.name);
  if (size % kGiB != 0) {
    return InvalidValue("size " + std::to_string(size) + " bytes is not a whole number of GiB");
  }
  const uint64_t gib = size / kGiB;
  if (size < rules.min_size) {
    return InvalidValue("The volume size is invalid for " + name + " volumes: " + std::to_string(gib) + " GiB. " +
                        name + " volumes must be at least " + std::to_string(rules.min_size / kGiB) +
                        " GiB in size. Please specify a volume size above the minimum limit." +
                        Hint(name + " takes " + SizeText(rules.min_size) + " to " + SizeText(rules.max_size)));
  }
  if (size > rules.max_size) {
    return InvalidValue("Volume of " + std::to_string(gib) + "GiB is too large for volume type " + name +
                        "; maximum is " + std::to_string(rules.max_size / kGiB) + "GiB." +
                        Hint(name + " takes " + SizeText(rules.min_size) + " to " + SizeText(rules.max_size)));
  }
  return Status::Ok();
}

// Most IOPS the ratio rule allows at this size. gp3's ratio only applies
// above the included 3000, so a small gp3 volume still gets 3000.
uint64_t MaxIopsForSize(const TypeRules& rules, uint64_t size) {
  uint64_t by_ratio = size / kGiB * rules.max_iops_per_gib;
  if (rules.type == VolumeType::kGp3) by_ratio = std::max<uint64_t>(by_ratio, kGp3DefaultIops);
  return by_ratio;
}

// REQUIRES: the type accepts IOPS and the size already passed CheckSize.
Status CheckIops(VolumeType type, uint64_t size, uint32_t iops) {
  const TypeRules& rules = RulesFor(type);
  const std::string name(rules.name);
  if (iops < rules.min_iops) {
    return InvalidValue("Volume iops of " + std::to_string(iops) + " is too low; minimum is " +
                        std::to_string(rules.min_iops) + "." + Hint(IopsRange(rules)));
  }
  if (iops > rules.max_iops) {
    return InvalidValue("Volume iops of " + std::to_string(iops) + " is too high; maximum is " +
                        std::to_string(rules.max_iops) + "." + Hint(IopsRange(rules)));
  }
  const uint64_t max_for_size = MaxIopsForSize(rules, size);
  if (iops > max_for_size) {
    const double ratio = static_cast<double>(iops) / static_cast<double>(size / kGiB);
    return InvalidValue("Iops to volume size ratio of " + Fixed6(ratio) + " is too high; maximum is " +
                        std::to_string(rules.max_iops_per_gib) +
                        Hint("a " + SizeText(size) + " " + name + " volume takes at most " +
                             std::to_string(max_for_size) + " IOPS"));
  }
  return Status::Ok();
}

// gp3 only. REQUIRES: iops already passed CheckIops.
Status CheckThroughput(uint32_t iops, uint32_t throughput) {
  const std::string range = "gp3 takes " + std::to_string(kGp3DefaultThroughput) + " to " +
                            std::to_string(kGp3MaxThroughput) + " MiB/s";
  if (throughput < kGp3DefaultThroughput) {
    return InvalidValue("Volume throughput of " + std::to_string(throughput) + " is too low; minimum is " +
                        std::to_string(kGp3DefaultThroughput) + "." + Hint(range));
  }
  if (throughput > kGp3MaxThroughput) {
    return InvalidValue("Volume throughput of " + std::to_string(throughput) + " is too high; maximum is " +
                        std::to_string(kGp3MaxThroughput) + "." + Hint(range));
  }
  const uint32_t max_for_iops = std::max(kGp3DefaultThroughput, iops / kGp3IopsPerMibps);
  if (throughput > max_for_iops) {
    return InvalidValue("Throughput (MiBps) to iops ratio of " +
                        Fixed6(static_cast<double>(throughput) / static_cast<double>(iops)) +
                        " is too high; maximum is " + Fixed6(1.0 / kGp3IopsPerMibps) + " MiBps per iops" +
                        Hint("a gp3 volume with " + std::to_string(iops) + " IOPS takes at most " +
                             std::to_string(max_for_iops) + " MiB/s"));
  }
  return Status::Ok();
}

// Checks a fully populated configuration: everything but "was it given".
Status CheckConfig(const VolumeConfig& config) {
  EBS_RETURN_IF_ERROR(CheckSize(config.type, config.size_bytes));
  if (AcceptsIops(config.type)) {
    EBS_RETURN_IF_ERROR(CheckIops(config.type, config.size_bytes, config.iops));
  }
  if (AcceptsThroughput(config.type)) {
    EBS_RETURN_IF_ERROR(CheckThroughput(config.iops, config.throughput_mibps));
  }
  return Status::Ok();
}

Status IopsRequired(VolumeType type) {
  const std::string name(VolumeTypeName(type));
  return InvalidCombination("The parameter iops must be specified for " + name + " volumes." +
                            Hint(IopsRange(RulesFor(type))));
}

std::string Describe(const VolumeConfig& c) {
  std::string out = SizeText(c.size_bytes) + " " + std::string(VolumeTypeName(c.type)) + " volume";
  if (AcceptsIops(c.type)) out += " with " + std::to_string(c.iops) + " IOPS";
  if (AcceptsThroughput(c.type)) out += " and " + std::to_string(c.throughput_mibps) + " MiB/s";
  return out;
}

}  // namespace

std::string_view VolumeTypeName(VolumeType type) { return RulesFor(type).name; }

Result<VolumeType> ParseVolumeType(std::string_view name) {
  // Exact, lower-case match like the EC2 API: "GP3" is refused there too.
  for (const TypeRules& rules : kRules) {
    if (rules.name == name) return rules.type;
  }
  return InvalidValue("volume type '" + std::string(name) +
                      "' is not one of gp2, gp3, io1, io2, st1, sc1, standard");
}

bool IsSsd(VolumeType type) {
  switch (type) {
    case VolumeType::kGp2:
    case VolumeType::kGp3:
    case VolumeType::kIo1:
    case VolumeType::kIo2:
      return true;
    case VolumeType::kSt1:
    case VolumeType::kSc1:
    case VolumeType::kStandard:
      return false;
  }
  return false;
}

Result<VolumeConfig> ValidateCreate(const VolumeParams& params) {
  if (!params.type) return Status::InvalidArgument("MissingParameter: volume type must be specified");
  if (!params.size_bytes) return Status::InvalidArgument("MissingParameter: size must be specified");
  const VolumeType type = *params.type;
  EBS_RETURN_IF_ERROR(CheckAccepted(type, params));

  VolumeConfig config;
  config.type = type;
  config.size_bytes = *params.size_bytes;
  if (type == VolumeType::kGp3) {
    config.iops = params.iops.value_or(kGp3DefaultIops);
    config.throughput_mibps = params.throughput_mibps.value_or(kGp3DefaultThroughput);
  } else if (AcceptsIops(type)) {
    // io1/io2 have no default: the user pays per provisioned IOPS, so we never pick a number.
    // The size is checked first so a bad size is reported even when iops is also missing.
    EBS_RETURN_IF_ERROR(CheckSize(type, config.size_bytes));
    if (!params.iops) return IopsRequired(type);
    config.iops = *params.iops;
  }
  EBS_RETURN_IF_ERROR(CheckConfig(config));
  return config;
}

Result<VolumeConfig> ValidateModify(const VolumeConfig& current, const VolumeParams& params) {
  const VolumeType type = params.type.value_or(current.type);
  EBS_RETURN_IF_ERROR(CheckAccepted(type, params));

  VolumeConfig next;
  next.type = type;
  next.size_bytes = params.size_bytes.value_or(current.size_bytes);
  if (next.size_bytes < current.size_bytes) {
    return InvalidValue("size can only grow: " + SizeText(next.size_bytes) +
                        " is smaller than the current " + SizeText(current.size_bytes));
  }

  // Defaults for what is not given (the ModifyVolume API reference; gp2 to
  // gp3 in the user guide's "ebs-modify-volume"):
  // - IOPS: kept while the type stays; changing the type to io1, io2 or gp3
  //   gives 3,000, except gp2 -> gp3, which gets the higher of the gp2
  //   volume's baseline IOPS and 3,000. A 3,000 that does not fit the size
  //   (a 10 GiB io1 allows 500) is refused as AWS refuses it.
  // - Throughput (gp3 only): kept gp3 -> gp3, else 125, except gp2 -> gp3,
  //   which gets the higher of the gp2 volume's throughput (128 MiB/s up to
  //   170 GiB, 250 above) and 125.
  const bool type_changes = type != current.type;
  const bool gp2_to_gp3 = current.type == VolumeType::kGp2 && type == VolumeType::kGp3;
  const PerformanceLimits gp2 = gp2_to_gp3 ? ComputeLimits(current) : PerformanceLimits{};
  if (params.iops) {
    next.iops = *params.iops;
  } else if (AcceptsIops(type)) {
    next.iops = type_changes ? kModifyDefaultIops : current.iops;
    if (gp2_to_gp3) next.iops = std::max(kModifyDefaultIops, gp2.baseline_iops);
  }
  if (params.throughput_mibps) {
    next.throughput_mibps = *params.throughput_mibps;
  } else if (type == VolumeType::kGp3) {
    next.throughput_mibps = type_changes ? kGp3DefaultThroughput : current.throughput_mibps;
    if (gp2_to_gp3) {
      next.throughput_mibps =
          std::max(kGp3DefaultThroughput, static_cast<uint32_t>(gp2.burst_throughput_mibps));
    }
  }

  if (next == current) {
    return InvalidValue("modification changes nothing: the volume is already a " +
                        Describe(current));
  }
  EBS_RETURN_IF_ERROR(CheckConfig(next));
  return next;
}

PerformanceLimits ComputeLimits(const VolumeConfig& config) {
  PerformanceLimits limits;
  const uint64_t gib = config.size_bytes / kGiB;
  const double tib = static_cast<double>(config.size_bytes) / static_cast<double>(kTiB);
  limits.io_unit_bytes = IsSsd(config.type) ? static_cast<uint32_t>(256 * kKiB)
                                            : static_cast<uint32_t>(kMiB);

  switch (config.type) {
    case VolumeType::kGp2: {
      limits.baseline_iops = static_cast<uint32_t>(std::clamp<uint64_t>(3 * gib, 100, 16000));
      // Below 3000 baseline (< 1000 GiB) the volume bursts on I/O credits;
      // at or above it the baseline already meets the burst, so no bucket.
      if (limits.baseline_iops < 3000) {
        limits.burst_iops = 3000;
        limits.io_credit_bucket = 5'400'000;
      } else {
        limits.burst_iops = limits.baseline_iops;
      }
      if (gib <= 170) {
        limits.baseline_throughput_mibps = limits.burst_throughput_mibps = 128;
      } else if (gib >= 334) {
        limits.baseline_throughput_mibps = limits.burst_throughput_mibps = 250;
      } else {
        limits.baseline_throughput_mibps = 128;
        limits.burst_throughput_mibps = 250;
      }
      break;
    }
    case VolumeType::kGp3:
      limits.baseline_iops = limits.burst_iops = config.iops;
      limits.baseline_throughput_mibps = limits.burst_throughput_mibps = config.throughput_mibps;
      break;
    case VolumeType::kIo1: {
      limits.baseline_iops = limits.burst_iops = config.iops;
      // 256 KiB per IOPS (= iops / 4 MiB/s) up to 500; above 32,000 IOPS each
      // extra IOPS adds 16 KiB/s (= 1/64 MiB/s), reaching 1000 at 64,000.
      const double iops = config.iops;
      double mibps = std::min(iops / 4.0, 500.0);
      if (config.iops > 32000) mibps = std::min(500.0 + (iops - 32000.0) / 64.0, 1000.0);
      limits.baseline_throughput_mibps = limits.burst_throughput_mibps = mibps;
      break;
    }
    case VolumeType::kIo2:
      limits.baseline_iops = limits.burst_iops = config.iops;
      // 0.256 MiB/s per IOPS, computed as *256/1000 so round figures stay exact.
      limits.baseline_throughput_mibps = limits.burst_throughput_mibps =
          std::min(static_cast<double>(config.iops) * 256.0 / 1000.0, 4000.0);
      break;
    case VolumeType::kSt1:
    case VolumeType::kSc1: {
      const bool st1 = config.type == VolumeType::kSt1;
      const double cap = st1 ? 500.0 : 250.0;
      limits.baseline_iops = limits.burst_iops = st1 ? 500 : 250;
      limits.baseline_throughput_mibps = std::min((st1 ? 40.0 : 12.0) * tib, cap);
      limits.burst_throughput_mibps = std::min((st1 ? 250.0 : 80.0) * tib, cap);
      // 1 TiB of credit per TiB of size: the bucket holds the volume's size.
      limits.throughput_credit_bucket_mib = config.size_bytes / kMiB;
      limits.charge_whole_units = true;
      break;
    }
    case VolumeType::kStandard:
      // "About 100 IOPS on average, bursting to hundreds": modelled as gp2 is,
      // on an I/O credit bucket of one hour at the baseline (360,000 credits),
      // so a full bucket sustains the 300 IOPS burst for 30 minutes.
      limits.baseline_iops = 100;
      limits.burst_iops = 300;
      limits.io_credit_bucket = 360'000;
      limits.baseline_throughput_mibps = 40;
      limits.burst_throughput_mibps = 90;
      break;
  }
  return limits;
}

PerformanceLimits OptimizingLimits(const VolumeConfig& from, const VolumeConfig& to) {
  const PerformanceLimits old = ComputeLimits(from);
  PerformanceLimits best = ComputeLimits(to);
  best.io_credit_refill_iops = best.baseline_iops;
  best.throughput_credit_refill_mibps = best.baseline_throughput_mibps;
  best.baseline_iops = std::max(old.baseline_iops, best.baseline_iops);
  best.burst_iops = std::max(old.burst_iops, best.burst_iops);
  best.baseline_throughput_mibps = std::max(old.baseline_throughput_mibps, best.baseline_throughput_mibps);
  best.burst_throughput_mibps = std::max(old.burst_throughput_mibps, best.burst_throughput_mibps);
  return best;
}

}  // namespace ebs
