#include "ebs/engine/size.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <string>

namespace ebs {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kKi = uint64_t{1} << 10;
constexpr uint64_t kMi = uint64_t{1} << 20;
constexpr uint64_t kGi = uint64_t{1} << 30;
constexpr uint64_t kTi = uint64_t{1} << 40;
constexpr uint64_t kPi = uint64_t{1} << 50;

struct ParseCase {
  std::string text;
  uint64_t bytes;
};

TEST(ParseSizeTest, AcceptsBytesAndBinaryUnits) {
  const ParseCase cases[] = {
      {"0", 0},
      {"1073741824", kGi},
      {"123", 123},
      {"123B", 123},
      {"123 bytes", 123},
      {"4K", 4 * kKi},
      {"4k", 4 * kKi},
      {"4KB", 4 * kKi},
      {"4kib", 4 * kKi},
      {"512M", 512 * kMi},
      {"512MiB", 512 * kMi},
      {"10G", 10 * kGi},
      {"10g", 10 * kGi},
      {"10GB", 10 * kGi},
      {"10GiB", 10 * kGi},
      {"10gIb", 10 * kGi},
      {"10 GiB", 10 * kGi},
      {"  10G  ", 10 * kGi},
      {"1T", kTi},
      {"16TiB", 16 * kTi},
      {"2P", 2 * kPi},
      {"007G", 7 * kGi},
      {"18446744073709551615", UINT64_MAX},
      {"16383P", 16383 * kPi},
  };
  for (const ParseCase& c : cases) {
    SCOPED_TRACE(c.text);
    Result<uint64_t> r = ParseSize(c.text);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r.value(), c.bytes);
  }
}

struct RejectCase {
  std::string text;
  std::string why;
};

TEST(ParseSizeTest, RejectsBadInputWithClearMessage) {
  const RejectCase cases[] = {
      {"", "empty"},
      {"   ", "empty"},
      {"-1", "negative"},
      {"-10G", "negative"},
      {"1.5G", "fractions are not supported"},
      {"0.5", "fractions are not supported"},
      {"1,5G", "fractions are not supported"},
      {"abc", "expected a whole number"},
      {"G10", "expected a whole number"},
      {"+10G", "expected a whole number"},
      {"10X", "unknown unit 'X'"},
      {"10GiBs", "unknown unit 'GiBs'"},
      {"10Gi", "unknown unit 'Gi'"},
      {"10 G B", "unknown unit"},
      {"10E", "unknown unit 'E'"},
      {"10G5", "unknown unit"},
      {"18446744073709551616", "does not fit in 64 bits"},
      {"99999999999999999999999", "does not fit in 64 bits"},
      {"16384P", "does not fit in 64 bits"},
      {"17179869184G", "does not fit in 64 bits"},
  };
  for (const RejectCase& c : cases) {
    SCOPED_TRACE(c.text);
    Result<uint64_t> r = ParseSize(c.text);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), EINVAL);
    EXPECT_THAT(r.status().message(), HasSubstr(c.why));
    EXPECT_THAT(r.status().message(), HasSubstr("'" + c.text + "'"));
  }
}

TEST(FormatSizeTest, HumanStrings) {
  EXPECT_EQ(FormatSize(0), "0 bytes");
  EXPECT_EQ(FormatSize(1), "1 byte");
  EXPECT_EQ(FormatSize(123), "123 bytes");
  EXPECT_EQ(FormatSize(1023), "1023 bytes");
  EXPECT_EQ(FormatSize(kKi), "1 KiB");
  EXPECT_EQ(FormatSize(512 * kMi), "512 MiB");
  EXPECT_EQ(FormatSize(10 * kGi), "10 GiB");
  EXPECT_EQ(FormatSize(kGi + kGi / 2), "1.5 GiB");
  EXPECT_EQ(FormatSize(kGi + kGi / 4), "1.25 GiB");
  EXPECT_EQ(FormatSize(kGi + kGi / 20 + 1), "1.05 GiB");
  EXPECT_EQ(FormatSize(16 * kTi), "16 TiB");
  EXPECT_EQ(FormatSize(3 * kPi), "3 PiB");
  EXPECT_EQ(FormatSize(UINT64_MAX), "15.99 EiB");
}

TEST(FormatSizeTest, TruncatesRatherThanRoundsUp) {
  // Just below 1 GiB must not read as "1024 MiB".
  EXPECT_EQ(FormatSize(kGi - 1), "1023.99 MiB");
  EXPECT_EQ(FormatSize(2 * kGi - 1), "1.99 GiB");
  EXPECT_EQ(FormatSize(kGi + 1), "1 GiB");
}

TEST(FormatSizeTest, WholeUnitsRoundTripThroughParse) {
  for (uint64_t bytes : {uint64_t{7}, 4 * kKi, 512 * kMi, 10 * kGi, 16 * kTi, 2 * kPi}) {
    Result<uint64_t> r = ParseSize(FormatSize(bytes));
    ASSERT_TRUE(r.ok()) << FormatSize(bytes);
    EXPECT_EQ(r.value(), bytes);
  }
}

}  // namespace
}  // namespace ebs
