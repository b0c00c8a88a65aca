#include "ebs/engine/volume_type.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <optional>
#include <string>
#include <vector>

namespace ebs {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

using T = VolumeType;
constexpr std::optional<uint32_t> kNone = std::nullopt;

VolumeParams Params(T type, uint64_t size, std::optional<uint32_t> iops = kNone,
                    std::optional<uint32_t> throughput = kNone) {
  VolumeParams p;
  p.type = type;
  p.size_bytes = size;
  p.iops = iops;
  p.throughput_mibps = throughput;
  return p;
}

VolumeConfig Config(T type, uint64_t size, uint32_t iops = 0, uint32_t throughput = 0) {
  return VolumeConfig{type, size, iops, throughput};
}

// One row of the create table: a request and either the config it yields or
// a piece of the error that names the limit.
struct CreateCase {
  std::string name;
  VolumeParams params;
  std::optional<VolumeConfig> want;  // set: must be accepted with exactly this
  std::string error;                 // want unset: must be refused with this substring
};

CreateCase Ok(std::string name, VolumeParams p, VolumeConfig want) {
  return {std::move(name), p, want, ""};
}
CreateCase Bad(std::string name, VolumeParams p, std::string error) {
  return {std::move(name), p, std::nullopt, std::move(error)};
}

std::vector<CreateCase> CreateCases() {
  const uint64_t G = kGiB, TB = kTiB;
  return {
      // gp2
      Ok("gp2_min_size", Params(T::kGp2, 1 * G), Config(T::kGp2, 1 * G)),
      Bad("gp2_below_min_size", Params(T::kGp2, 0), "The volume size is invalid for gp2 volumes: 0 GiB. gp2 volumes must be at least 1 GiB"),
      Ok("gp2_max_size", Params(T::kGp2, 16 * TB), Config(T::kGp2, 16 * TB)),
      Bad("gp2_above_max_size", Params(T::kGp2, 16 * TB + G),
          "Volume of 16385GiB is too large for volume type gp2; maximum is 16384GiB. (gp2 takes 1 GiB to 16 TiB)"),
      Bad("gp2_20tib", Params(T::kGp2, 20 * TB), "Volume of 20480GiB is too large for volume type gp2; maximum is 16384GiB."),
      Bad("gp2_partial_gib", Params(T::kGp2, G + 1), "1073741825 bytes is not a whole number of GiB"),
      Bad("gp2_iops", Params(T::kGp2, 100 * G, 3000),
          "InvalidParameterCombination: The parameter iops is not supported for gp2 volumes."),
      Bad("gp2_throughput", Params(T::kGp2, 100 * G, kNone, 125),
          "InvalidParameterCombination: throughput can only be specified for volumeType gp3. (gp2 does not"),

      // gp3
      Ok("gp3_min_size_defaults", Params(T::kGp3, 1 * G), Config(T::kGp3, 1 * G, 3000, 125)),
      Bad("gp3_below_min_size", Params(T::kGp3, 0), "gp3 volumes must be at least 1 GiB in size."),
      Ok("gp3_max_size", Params(T::kGp3, 64 * TB), Config(T::kGp3, 64 * TB, 3000, 125)),
      Bad("gp3_above_max_size", Params(T::kGp3, 64 * TB + G), "too large for volume type gp3; maximum is 65536GiB."),
      Ok("gp3_min_iops", Params(T::kGp3, 1 * G, 3000), Config(T::kGp3, 1 * G, 3000, 125)),
      Bad("gp3_below_min_iops", Params(T::kGp3, 100 * G, 2999),
          "Volume iops of 2999 is too low; minimum is 3000. (gp3 takes 3000 to 80000 IOPS)"),
      Ok("gp3_max_iops_at_exact_ratio", Params(T::kGp3, 160 * G, 80000),
         Config(T::kGp3, 160 * G, 80000, 125)),
      Bad("gp3_above_max_iops", Params(T::kGp3, 1000 * G, 80001),
          "Volume iops of 80001 is too high; maximum is 80000."),
      Bad("gp3_max_iops_one_gib_short", Params(T::kGp3, 159 * G, 80000),
          "Iops to volume size ratio of 503.144654 is too high; maximum is 500 (a 159 GiB gp3 volume takes at most 79500 IOPS)"),
      Ok("gp3_ratio_exact", Params(T::kGp3, 7 * G, 3500), Config(T::kGp3, 7 * G, 3500, 125)),
      Bad("gp3_ratio_past", Params(T::kGp3, 7 * G, 3501), "ratio of 500.142857 is too high; maximum is 500"),
      Bad("gp3_small_volume_above_included", Params(T::kGp3, 1 * G, 3001),
          "Iops to volume size ratio of 3001.000000 is too high; maximum is 500 (a 1 GiB gp3 volume takes at most 3000 IOPS)"),
      Ok("gp3_min_throughput", Params(T::kGp3, 1 * G, kNone, 125),
         Config(T::kGp3, 1 * G, 3000, 125)),
      Bad("gp3_below_min_throughput", Params(T::kGp3, 1 * G, kNone, 124),
          "Volume throughput of 124 is too low; minimum is 125. (gp3 takes 125 to 2000 MiB/s)"),
      Ok("gp3_max_throughput", Params(T::kGp3, 100 * G, 8000, 2000),
         Config(T::kGp3, 100 * G, 8000, 2000)),
      Bad("gp3_above_max_throughput", Params(T::kGp3, 1000 * G, 80000, 2001),
          "Volume throughput of 2001 is too high; maximum is 2000."),
      Ok("gp3_throughput_ratio_exact", Params(T::kGp3, 10 * G, 3000, 750),
         Config(T::kGp3, 10 * G, 3000, 750)),
      Bad("gp3_throughput_ratio_past", Params(T::kGp3, 10 * G, 3000, 751),
          "Throughput (MiBps) to iops ratio of 0.250333 is too high; maximum is 0.250000 MiBps per iops "
          "(a gp3 volume with 3000 IOPS takes at most 750 MiB/s)"),
      Bad("gp3_max_throughput_needs_8000_iops", Params(T::kGp3, 100 * G, 7999, 2000),
          "Throughput (MiBps) to iops ratio of 0.250031 is too high"),

      // io1
      Ok("io1_min_size_min_iops", Params(T::kIo1, 4 * G, 100), Config(T::kIo1, 4 * G, 100)),
      Bad("io1_below_min_size", Params(T::kIo1, 3 * G, 100), "The volume size is invalid for io1 volumes: 3 GiB. io1 volumes must be at least 4 GiB in size. "
          "Please specify a volume size above the minimum limit. (io1 takes 4 GiB to 16 TiB)"),
      Ok("io1_max_size", Params(T::kIo1, 16 * TB, 64000), Config(T::kIo1, 16 * TB, 64000)),
      Bad("io1_above_max_size", Params(T::kIo1, 16 * TB + G, 100), "too large for volume type io1; maximum is 16384GiB."),
      Bad("io1_iops_missing", Params(T::kIo1, 100 * G),
          "InvalidParameterCombination: The parameter iops must be specified for io1 volumes. (io1 takes 100 to 64000 IOPS)"),
      Bad("io1_below_min_iops", Params(T::kIo1, 100 * G, 99), "Volume iops of 99 is too low; minimum is 100."),
      Ok("io1_max_iops_at_exact_ratio", Params(T::kIo1, 1280 * G, 64000),
         Config(T::kIo1, 1280 * G, 64000)),
      Bad("io1_above_max_iops", Params(T::kIo1, 16 * TB, 64001), "Volume iops of 64001 is too high; maximum is 64000."),
      Bad("io1_max_iops_one_gib_short", Params(T::kIo1, 1279 * G, 64000), "ratio of 50.039093 is too high; maximum is 50"),
      Ok("io1_ratio_exact", Params(T::kIo1, 10 * G, 500), Config(T::kIo1, 10 * G, 500)),
      Bad("io1_ratio_past", Params(T::kIo1, 10 * G, 501),
          "Iops to volume size ratio of 50.100000 is too high; maximum is 50 (a 10 GiB io1 volume takes at most 500 IOPS)"),
      Bad("io1_throughput", Params(T::kIo1, 100 * G, 1000, 200), "throughput can only be specified for volumeType gp3."),

      // io2
      Ok("io2_min_size_min_iops", Params(T::kIo2, 4 * G, 100), Config(T::kIo2, 4 * G, 100)),
      Bad("io2_below_min_size", Params(T::kIo2, 3 * G, 100), "io2 volumes must be at least 4 GiB in size."),
      Ok("io2_max_size", Params(T::kIo2, 64 * TB, 256000), Config(T::kIo2, 64 * TB, 256000)),
      Bad("io2_above_max_size", Params(T::kIo2, 64 * TB + G, 100), "too large for volume type io2; maximum is 65536GiB."),
      Bad("io2_iops_missing", Params(T::kIo2, 100 * G), "The parameter iops must be specified for io2 volumes."),
      Bad("io2_below_min_iops", Params(T::kIo2, 100 * G, 99), "Volume iops of 99 is too low; minimum is 100. (io2 takes 100 to 256000 IOPS)"),
      Ok("io2_max_iops_at_exact_ratio", Params(T::kIo2, 256 * G, 256000),
         Config(T::kIo2, 256 * G, 256000)),
      Bad("io2_above_max_iops", Params(T::kIo2, 64 * TB, 256001), "Volume iops of 256001 is too high; maximum is 256000."),
      Bad("io2_ratio_past", Params(T::kIo2, 255 * G, 256000),
          "Iops to volume size ratio of 1003.921569 is too high; maximum is 1000 (a 255 GiB io2 volume takes at "
          "most 255000 IOPS)"),
      Bad("io2_throughput", Params(T::kIo2, 100 * G, 1000, 200), "throughput can only be specified for volumeType gp3. (io2 does not take"),

      // st1
      Ok("st1_min_size", Params(T::kSt1, 125 * G), Config(T::kSt1, 125 * G)),
      Bad("st1_below_min_size", Params(T::kSt1, 124 * G), "The volume size is invalid for st1 volumes: 124 GiB. st1 volumes must be at least 125 GiB"),
      Ok("st1_max_size", Params(T::kSt1, 16 * TB), Config(T::kSt1, 16 * TB)),
      Bad("st1_above_max_size", Params(T::kSt1, 16 * TB + G), "too large for volume type st1; maximum is 16384GiB."),
      Bad("st1_iops", Params(T::kSt1, 500 * G, 500), "The parameter iops is not supported for st1 volumes. (only gp3, io1 and io2"),
      Bad("st1_throughput", Params(T::kSt1, 500 * G, kNone, 250), "throughput can only be specified for volumeType gp3."),

      // sc1
      Ok("sc1_min_size", Params(T::kSc1, 125 * G), Config(T::kSc1, 125 * G)),
      Bad("sc1_below_min_size", Params(T::kSc1, 124 * G), "sc1 volumes must be at least 125 GiB in size."),
      Ok("sc1_max_size", Params(T::kSc1, 16 * TB), Config(T::kSc1, 16 * TB)),
      Bad("sc1_above_max_size", Params(T::kSc1, 16 * TB + G), "too large for volume type sc1; maximum is 16384GiB."),
      Bad("sc1_iops", Params(T::kSc1, 500 * G, 250), "The parameter iops is not supported for sc1 volumes."),
      Bad("sc1_throughput", Params(T::kSc1, 500 * G, kNone, 80), "throughput can only be specified for volumeType gp3."),

      // standard
      Ok("standard_min_size", Params(T::kStandard, 1 * G), Config(T::kStandard, 1 * G)),
      Bad("standard_below_min_size", Params(T::kStandard, 0), "standard volumes must be at least 1 GiB in size."),
      Ok("standard_max_size", Params(T::kStandard, 1 * TB), Config(T::kStandard, 1 * TB)),
      Bad("standard_above_max_size", Params(T::kStandard, 1 * TB + G),
          "Volume of 1025GiB is too large for volume type standard; maximum is 1024GiB. (standard takes 1 GiB to 1 TiB)"),
      Bad("standard_iops", Params(T::kStandard, 100 * G, 100), "The parameter iops is not supported for standard volumes."),
      Bad("standard_throughput", Params(T::kStandard, 100 * G, kNone, 40),
          "throughput can only be specified for volumeType gp3. (standard does not take provisioned throughput)"),
  };
}

class CreateTableTest : public ::testing::TestWithParam<CreateCase> {};

TEST_P(CreateTableTest, EdgesAcceptedAndOnePastRefused) {
  const CreateCase& c = GetParam();
  Result<VolumeConfig> r = ValidateCreate(c.params);
  if (c.want) {
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r.value(), *c.want);
  } else {
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), EINVAL);
    EXPECT_THAT(r.status().message(), StartsWith("InvalidParameter"));
    EXPECT_THAT(r.status().message(), HasSubstr(c.error));
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, CreateTableTest, ::testing::ValuesIn(CreateCases()),
                         [](const ::testing::TestParamInfo<CreateCase>& param_info) {
                           return param_info.param.name;
                         });

// The common failures, whole: EC2's code and message (what a script written
// against AWS matches), then ebs's hint in brackets.
TEST(ValidateCreateTest, AwsWordingVerbatim) {
  const std::pair<VolumeParams, std::string> cases[] = {
      {Params(T::kIo1, 10 * kGiB, 3000),
       "InvalidParameterValue: Iops to volume size ratio of 300.000000 is too high; maximum is 50 "
       "(a 10 GiB io1 volume takes at most 500 IOPS)"},
      {Params(T::kGp3, 20 * kGiB, 15000),
       "InvalidParameterValue: Iops to volume size ratio of 750.000000 is too high; maximum is 500 "
       "(a 20 GiB gp3 volume takes at most 10000 IOPS)"},
      {Params(T::kGp3, 100 * kGiB, 3000, 1000),
       "InvalidParameterValue: Throughput (MiBps) to iops ratio of 0.333333 is too high; maximum is 0.250000 "
       "MiBps per iops (a gp3 volume with 3000 IOPS takes at most 750 MiB/s)"},
      {Params(T::kGp2, 0),
       "InvalidParameterValue: The volume size is invalid for gp2 volumes: 0 GiB. gp2 volumes must be at least "
       "1 GiB in size. Please specify a volume size above the minimum limit. (gp2 takes 1 GiB to 16 TiB)"},
      {Params(T::kStandard, 2000 * kGiB),
       "InvalidParameterValue: Volume of 2000GiB is too large for volume type standard; maximum is 1024GiB. "
       "(standard takes 1 GiB to 1 TiB)"},
      {Params(T::kIo2, 100 * kGiB, 50),
       "InvalidParameterValue: Volume iops of 50 is too low; minimum is 100. (io2 takes 100 to 256000 IOPS)"},
      {Params(T::kGp2, 100 * kGiB, 3000),
       "InvalidParameterCombination: The parameter iops is not supported for gp2 volumes. "
       "(only gp3, io1 and io2 take provisioned IOPS)"},
      {Params(T::kIo1, 100 * kGiB, 1000, 200),
       "InvalidParameterCombination: throughput can only be specified for volumeType gp3. "
       "(io1 does not take provisioned throughput)"},
      {Params(T::kIo2, 100 * kGiB),
       "InvalidParameterCombination: The parameter iops must be specified for io2 volumes. "
       "(io2 takes 100 to 256000 IOPS)"},
  };
  for (const auto& [params, want] : cases) {
    Result<VolumeConfig> r = ValidateCreate(params);
    ASSERT_FALSE(r.ok()) << want;
    EXPECT_EQ(want, r.status().message());
    EXPECT_EQ(EINVAL, r.status().code());
  }
}

TEST(ValidateCreateTest, TypeAndSizeRequired) {
  VolumeParams no_type;
  no_type.size_bytes = 10 * kGiB;
  Result<VolumeConfig> r = ValidateCreate(no_type);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("MissingParameter: volume type"));

  VolumeParams no_size;
  no_size.type = T::kGp3;
  r = ValidateCreate(no_size);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("MissingParameter: size"));
}

TEST(VolumeTypeNamesTest, RoundTripAndSsd) {
  const T all[] = {T::kGp2, T::kGp3, T::kIo1, T::kIo2, T::kSt1, T::kSc1, T::kStandard};
  for (T t : all) {
    Result<VolumeType> parsed = ParseVolumeType(VolumeTypeName(t));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(parsed.value(), t);
  }
  EXPECT_EQ(VolumeTypeName(T::kStandard), "standard");
  EXPECT_TRUE(IsSsd(T::kGp2));
  EXPECT_TRUE(IsSsd(T::kIo2));
  EXPECT_FALSE(IsSsd(T::kSt1));
  EXPECT_FALSE(IsSsd(T::kStandard));

  Result<VolumeType> bad = ParseVolumeType("gp4");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), EINVAL);
  EXPECT_THAT(bad.status().message(), HasSubstr("'gp4'"));
  EXPECT_FALSE(ParseVolumeType("GP3").ok());
  EXPECT_FALSE(ParseVolumeType("").ok());
}

// ---- ValidateModify ----

VolumeParams Modify(std::optional<T> type = std::nullopt, std::optional<uint64_t> size = std::nullopt,
                    std::optional<uint32_t> iops = kNone, std::optional<uint32_t> throughput = kNone) {
  VolumeParams p;
  p.type = type;
  p.size_bytes = size;
  p.iops = iops;
  p.throughput_mibps = throughput;
  return p;
}

void ExpectModified(const VolumeConfig& current, const VolumeParams& p, const VolumeConfig& want) {
  Result<VolumeConfig> r = ValidateModify(current, p);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r.value(), want);
}

void ExpectRefused(const VolumeConfig& current, const VolumeParams& p, const std::string& error) {
  Result<VolumeConfig> r = ValidateModify(current, p);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), EINVAL);
  EXPECT_THAT(r.status().message(), HasSubstr(error));
}

const uint64_t G = kGiB;

TEST(ValidateModifyTest, GrowKeepsPerformance) {
  ExpectModified(Config(T::kGp3, 10 * G, 4000, 500), Modify(std::nullopt, 20 * G),
                 Config(T::kGp3, 20 * G, 4000, 500));
  ExpectModified(Config(T::kGp2, 10 * G), Modify(std::nullopt, 16 * kTiB), Config(T::kGp2, 16 * kTiB));
}

TEST(ValidateModifyTest, GrowPastTypeMaximumRefused) {
  ExpectRefused(Config(T::kGp2, 10 * G), Modify(std::nullopt, 16 * kTiB + G),
                "Volume of 16385GiB is too large for volume type gp2; maximum is 16384GiB.");
}

TEST(ValidateModifyTest, ShrinkRefused) {
  Result<VolumeConfig> r = ValidateModify(Config(T::kGp2, 30 * G), Modify(std::nullopt, 20 * G));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), EINVAL);
  EXPECT_EQ(r.status().message(),
            "InvalidParameterValue: size can only grow: 20 GiB is smaller than the current 30 GiB");
}

TEST(ValidateModifyTest, NoOpRefused) {
  const VolumeConfig gp3 = Config(T::kGp3, 10 * G, 3000, 125);
  ExpectRefused(gp3, Modify(), "changes nothing");
  ExpectRefused(gp3, Modify(T::kGp3), "changes nothing");
  ExpectRefused(gp3, Modify(T::kGp3, 10 * G, 3000, 125),
                "already a 10 GiB gp3 volume with 3000 IOPS and 125 MiB/s");
  ExpectRefused(Config(T::kGp2, 10 * G), Modify(std::nullopt, 10 * G), "already a 10 GiB gp2 volume");
}

TEST(ValidateModifyTest, ChangeIopsAndThroughputInPlace) {
  ExpectModified(Config(T::kIo1, 100 * G, 1000), Modify(std::nullopt, std::nullopt, 5000),
                 Config(T::kIo1, 100 * G, 5000));
  ExpectRefused(Config(T::kIo1, 100 * G, 1000), Modify(std::nullopt, std::nullopt, 5001),
                "Iops to volume size ratio of 50.010000 is too high; maximum is 50 (a 100 GiB io1 volume takes at most 5000 IOPS)");
  ExpectModified(Config(T::kGp3, 100 * G, 8000, 125), Modify(std::nullopt, std::nullopt, kNone, 2000),
                 Config(T::kGp3, 100 * G, 8000, 2000));
  // Lowering IOPS while the carried throughput needs them is refused, not adjusted.
  ExpectRefused(Config(T::kGp3, 100 * G, 8000, 2000), Modify(std::nullopt, std::nullopt, 4000),
                "Throughput (MiBps) to iops ratio of 0.500000 is too high; maximum is 0.250000 MiBps per iops");
  ExpectRefused(Config(T::kGp2, 100 * G), Modify(std::nullopt, std::nullopt, 3000),
                "The parameter iops is not supported for gp2 volumes.");
  ExpectRefused(Config(T::kIo2, 100 * G, 1000), Modify(std::nullopt, std::nullopt, kNone, 200),
                "throughput can only be specified for volumeType gp3. (io2 does not take");
}

// ModifyVolume's defaults: a type change to io1, io2 or gp3 without IOPS
// gives 3,000 (not the old value); throughput 125 unless gp3 stays gp3.
TEST(ValidateModifyTest, TypeChangeToIo1Io2Gp3Defaults3000Iops) {
  ExpectModified(Config(T::kGp3, 60 * G, 6000, 500), Modify(T::kIo1), Config(T::kIo1, 60 * G, 3000));
  // 3000 IOPS on 10 GiB breaks io1's 50/GiB: refused rather than silently lowered.
  ExpectRefused(Config(T::kGp3, 10 * G, 3000, 125), Modify(T::kIo1),
                "Iops to volume size ratio of 300.000000 is too high; maximum is 50 (a 10 GiB io1 volume takes at most 500 IOPS)");
  // Growing in the same request makes it fit.
  ExpectModified(Config(T::kGp3, 10 * G, 3000, 125), Modify(T::kIo1, 60 * G),
                 Config(T::kIo1, 60 * G, 3000));
  ExpectModified(Config(T::kGp3, 10 * G, 3000, 125), Modify(T::kIo1, std::nullopt, 500),
                 Config(T::kIo1, 10 * G, 500));
  ExpectModified(Config(T::kIo1, 100 * G, 5000), Modify(T::kIo2), Config(T::kIo2, 100 * G, 3000));
  ExpectModified(Config(T::kIo2, 100 * G, 100), Modify(T::kIo1), Config(T::kIo1, 100 * G, 3000));
  // From types without IOPS, too (no longer refused).
  ExpectModified(Config(T::kGp2, 100 * G), Modify(T::kIo1), Config(T::kIo1, 100 * G, 3000));
  ExpectModified(Config(T::kSt1, 500 * G), Modify(T::kIo2), Config(T::kIo2, 500 * G, 3000));
  ExpectModified(Config(T::kStandard, 100 * G), Modify(T::kGp3), Config(T::kGp3, 100 * G, 3000, 125));
  ExpectModified(Config(T::kGp2, 100 * G), Modify(T::kIo1, std::nullopt, 5000),
                 Config(T::kIo1, 100 * G, 5000));
  // The type unchanged: IOPS kept.
  ExpectModified(Config(T::kIo1, 100 * G, 5000), Modify(std::nullopt, 200 * G), Config(T::kIo1, 200 * G, 5000));
}

TEST(ValidateModifyTest, ProvisionedToGp3Gets3000And125) {
  ExpectModified(Config(T::kIo1, 100 * G, 5000), Modify(T::kGp3), Config(T::kGp3, 100 * G, 3000, 125));
  ExpectModified(Config(T::kIo1, 100 * G, 200), Modify(T::kGp3), Config(T::kGp3, 100 * G, 3000, 125));
  ExpectModified(Config(T::kIo2, 200 * G, 100000), Modify(T::kGp3), Config(T::kGp3, 200 * G, 3000, 125));
  // Explicit iops wins.
  ExpectModified(Config(T::kIo2, 200 * G, 100000), Modify(T::kGp3, std::nullopt, 80000),
                 Config(T::kGp3, 200 * G, 80000, 125));
  // gp3 stays gp3: throughput kept.
  ExpectModified(Config(T::kGp3, 100 * G, 8000, 500), Modify(std::nullopt, std::nullopt, 6000),
                 Config(T::kGp3, 100 * G, 6000, 500));
}

// gp2 -> gp3 without IOPS/throughput: the higher of the gp2 volume's
// equivalent (baseline IOPS; 128 MiB/s up to 170 GiB, 250 above) and 3000/125.
TEST(ValidateModifyTest, Gp2ToGp3KeepsGp2PerformanceWhenHigher) {
  ExpectModified(Config(T::kGp2, 100 * G), Modify(T::kGp3), Config(T::kGp3, 100 * G, 3000, 128));
  ExpectModified(Config(T::kGp2, 170 * G), Modify(T::kGp3), Config(T::kGp3, 170 * G, 3000, 128));
  ExpectModified(Config(T::kGp2, 200 * G), Modify(T::kGp3), Config(T::kGp3, 200 * G, 3000, 250));
  ExpectModified(Config(T::kGp2, 2000 * G), Modify(T::kGp3), Config(T::kGp3, 2000 * G, 6000, 250));
  ExpectModified(Config(T::kGp2, 16 * kTiB), Modify(T::kGp3), Config(T::kGp3, 16 * kTiB, 16000, 250));
  // Given values win, each on its own.
  ExpectModified(Config(T::kGp2, 2000 * G), Modify(T::kGp3, std::nullopt, 4000),
                 Config(T::kGp3, 2000 * G, 4000, 250));
  ExpectModified(Config(T::kGp2, 2000 * G), Modify(T::kGp3, std::nullopt, kNone, 125),
                 Config(T::kGp3, 2000 * G, 6000, 125));
  ExpectModified(Config(T::kGp2, 100 * G), Modify(T::kGp3, std::nullopt, 6000, 500),
                 Config(T::kGp3, 100 * G, 6000, 500));
}

TEST(ValidateModifyTest, Gp3ToGp2ClearsIopsAndThroughput) {
  ExpectModified(Config(T::kGp3, 100 * G, 6000, 500), Modify(T::kGp2), Config(T::kGp2, 100 * G));
  ExpectRefused(Config(T::kGp3, 100 * G, 6000, 500), Modify(T::kGp2, std::nullopt, 6000),
                "The parameter iops is not supported for gp2 volumes.");
}

TEST(ValidateModifyTest, TypeChangeRespectsNewSizeRange) {
  ExpectRefused(Config(T::kGp2, 100 * G), Modify(T::kSt1),
                "The volume size is invalid for st1 volumes: 100 GiB. st1 volumes must be at least 125 GiB");
  ExpectModified(Config(T::kGp2, 100 * G), Modify(T::kSt1, 125 * G), Config(T::kSt1, 125 * G));
  ExpectRefused(Config(T::kGp3, 2 * kTiB, 3000, 125), Modify(T::kStandard),
                "Volume of 2048GiB is too large for volume type standard; maximum is 1024GiB.");
  ExpectModified(Config(T::kSc1, 500 * G), Modify(T::kGp2), Config(T::kGp2, 500 * G));
}

// ---- ComputeLimits ----

TEST(ComputeLimitsTest, Gp2Iops) {
  PerformanceLimits l = ComputeLimits(Config(T::kGp2, 1 * G));
  EXPECT_EQ(l.baseline_iops, 100u);
  EXPECT_EQ(l.burst_iops, 3000u);
  EXPECT_EQ(l.io_credit_bucket, 5'400'000u);

  l = ComputeLimits(Config(T::kGp2, 100 * G));
  EXPECT_EQ(l.baseline_iops, 300u);
  EXPECT_EQ(l.burst_iops, 3000u);
  EXPECT_EQ(l.io_credit_bucket, 5'400'000u);

  l = ComputeLimits(Config(T::kGp2, 999 * G));
  EXPECT_EQ(l.baseline_iops, 2997u);
  EXPECT_EQ(l.burst_iops, 3000u);
  EXPECT_EQ(l.io_credit_bucket, 5'400'000u);

  l = ComputeLimits(Config(T::kGp2, 1000 * G));
  EXPECT_EQ(l.baseline_iops, 3000u);
  EXPECT_EQ(l.burst_iops, 3000u);
  EXPECT_EQ(l.io_credit_bucket, 0u);

  l = ComputeLimits(Config(T::kGp2, 5333 * G));
  EXPECT_EQ(l.baseline_iops, 15999u);

  l = ComputeLimits(Config(T::kGp2, 5334 * G));
  EXPECT_EQ(l.baseline_iops, 16000u);
  EXPECT_EQ(l.burst_iops, 16000u);

  l = ComputeLimits(Config(T::kGp2, 16 * kTiB));
  EXPECT_EQ(l.baseline_iops, 16000u);
  EXPECT_EQ(l.io_unit_bytes, 256 * kKiB);
  EXPECT_EQ(l.throughput_credit_bucket_mib, 0u);
}

TEST(ComputeLimitsTest, Gp2Throughput) {
  PerformanceLimits l = ComputeLimits(Config(T::kGp2, 170 * G));
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 128);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 128);

  l = ComputeLimits(Config(T::kGp2, 171 * G));
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 128);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 250);

  l = ComputeLimits(Config(T::kGp2, 200 * G));
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 128);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 250);

  l = ComputeLimits(Config(T::kGp2, 333 * G));
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 128);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 250);

  l = ComputeLimits(Config(T::kGp2, 334 * G));
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 250);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 250);
}

TEST(ComputeLimitsTest, Gp3AsProvisioned) {
  PerformanceLimits l = ComputeLimits(Config(T::kGp3, 100 * G, 8000, 2000));
  EXPECT_EQ(l.baseline_iops, 8000u);
  EXPECT_EQ(l.burst_iops, 8000u);
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 2000);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 2000);
  EXPECT_EQ(l.io_credit_bucket, 0u);
  EXPECT_EQ(l.io_unit_bytes, 256 * kKiB);
}

TEST(ComputeLimitsTest, Io1Throughput) {
  PerformanceLimits l = ComputeLimits(Config(T::kIo1, 100 * G, 1000));
  EXPECT_EQ(l.baseline_iops, 1000u);
  EXPECT_EQ(l.burst_iops, 1000u);
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 250);  // 1000 x 256 KiB

  l = ComputeLimits(Config(T::kIo1, 100 * G, 2000));
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 500);

  l = ComputeLimits(Config(T::kIo1, 1000 * G, 32000));
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 500);

  l = ComputeLimits(Config(T::kIo1, 1000 * G, 48000));
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 750);

  l = ComputeLimits(Config(T::kIo1, 1280 * G, 64000));
  EXPECT_EQ(l.baseline_iops, 64000u);
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 1000);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 1000);
  EXPECT_EQ(l.io_unit_bytes, 256 * kKiB);
}

TEST(ComputeLimitsTest, Io2Throughput) {
  PerformanceLimits l = ComputeLimits(Config(T::kIo2, 100 * G, 1000));
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 256);

  l = ComputeLimits(Config(T::kIo2, 256 * G, 256000));
  EXPECT_EQ(l.baseline_iops, 256000u);
  EXPECT_EQ(l.burst_iops, 256000u);
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 4000);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 4000);
}

TEST(ComputeLimitsTest, St1) {
  PerformanceLimits l = ComputeLimits(Config(T::kSt1, 1 * kTiB));
  EXPECT_EQ(l.baseline_iops, 500u);
  EXPECT_EQ(l.burst_iops, 500u);
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 40);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 250);
  EXPECT_EQ(l.throughput_credit_bucket_mib, 1024u * 1024u);
  EXPECT_EQ(l.io_credit_bucket, 0u);
  EXPECT_EQ(l.io_unit_bytes, kMiB);

  l = ComputeLimits(Config(T::kSt1, 16 * kTiB));
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 500);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 500);
  EXPECT_EQ(l.throughput_credit_bucket_mib, 16u * 1024u * 1024u);

  l = ComputeLimits(Config(T::kSt1, 512 * G));
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 20);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 125);
}

TEST(ComputeLimitsTest, Sc1) {
  PerformanceLimits l = ComputeLimits(Config(T::kSc1, 1 * kTiB));
  EXPECT_EQ(l.baseline_iops, 250u);
  EXPECT_EQ(l.burst_iops, 250u);
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 12);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 80);
  EXPECT_EQ(l.throughput_credit_bucket_mib, 1024u * 1024u);
  EXPECT_EQ(l.io_unit_bytes, kMiB);

  l = ComputeLimits(Config(T::kSc1, 16 * kTiB));
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 192);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 250);
}

TEST(ComputeLimitsTest, Standard) {
  PerformanceLimits l = ComputeLimits(Config(T::kStandard, 100 * G));
  EXPECT_EQ(l.baseline_iops, 100u);
  EXPECT_EQ(l.burst_iops, 300u);
  EXPECT_DOUBLE_EQ(l.baseline_throughput_mibps, 40);
  EXPECT_DOUBLE_EQ(l.burst_throughput_mibps, 90);
  EXPECT_EQ(l.io_credit_bucket, 360000u);  // one hour at the baseline
  EXPECT_EQ(l.throughput_credit_bucket_mib, 0u);
  EXPECT_EQ(l.io_unit_bytes, kMiB);
}

}  // namespace
}  // namespace ebs
