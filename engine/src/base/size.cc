#include "ebs/engine/size.h"

#include <array>
#include <cctype>
#include <limits>

namespace ebs {
namespace {

struct Unit {
  char letter;  // upper case; '\0' for bytes
  std::string_view name;
  uint64_t bytes;
};

// Largest first, so FormatSize picks the first unit that fits.
constexpr std::array<Unit, 6> kUnits = {{
    {'E', "EiB", uint64_t{1} << 60},
    {'P', "PiB", uint64_t{1} << 50},
    {'T', "TiB", uint64_t{1} << 40},
    {'G', "GiB", uint64_t{1} << 30},
    {'M', "MiB", uint64_t{1} << 20},
    {'K', "KiB", uint64_t{1} << 10},
}};

bool IsSpace(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
char Upper(char c) { return static_cast<char>(std::toupper(static_cast<unsigned char>(c))); }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Upper(a[i]) != Upper(b[i])) return false;
  }
  return true;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

Status Invalid(std::string_view text, std::string_view why) {
  return Status::InvalidArgument("InvalidParameterValue: invalid size '" + std::string(text) +
                                 "': " + std::string(why));
}

// The multiplier a unit suffix stands for, or 0 if the suffix is not a unit.
// "K", "KB" and "KiB" are all binary: EBS has no decimal sizes, and a user
// typing "10GB" for a volume means 10 GiB.
uint64_t UnitMultiplier(std::string_view suffix) {
  if (suffix.empty() || EqualsIgnoreCase(suffix, "B") || EqualsIgnoreCase(suffix, "byte") ||
      EqualsIgnoreCase(suffix, "bytes")) {
    return 1;
  }
  for (const Unit& unit : kUnits) {
    if (unit.letter == 'E') continue;  // not offered: nothing that large fits a volume
    if (Upper(suffix.front()) != unit.letter) continue;
    std::string_view rest = suffix.substr(1);
    if (rest.empty() || EqualsIgnoreCase(rest, "B") || EqualsIgnoreCase(rest, "iB")) {
      return unit.bytes;
    }
  }
  return 0;
}

}  // namespace

Result<uint64_t> ParseSize(std::string_view text) {
  std::string_view s = Trim(text);
  if (s.empty()) return Invalid(text, "empty; give a number of bytes or e.g. 10G");
  if (s.front() == '-') return Invalid(text, "size must not be negative");
  if (!IsDigit(s.front())) return Invalid(text, "expected a whole number, e.g. 10G or 1073741824");

  uint64_t number = 0;
  bool overflow = false;
  size_t i = 0;
  for (; i < s.size() && IsDigit(s[i]); ++i) {
    const uint64_t digit = static_cast<uint64_t>(s[i] - '0');
    // Keep scanning after an overflow so the message can still be about the
    // whole input rather than a truncated prefix.
    if (number > (std::numeric_limits<uint64_t>::max() - digit) / 10) overflow = true;
    if (!overflow) number = number * 10 + digit;
  }
  if (i < s.size() && (s[i] == '.' || s[i] == ',')) {
    return Invalid(text, "fractions are not supported; use a smaller unit (e.g. 1536M, not 1.5G)");
  }
  std::string_view suffix = Trim(s.substr(i));
  const uint64_t multiplier = UnitMultiplier(suffix);
  if (multiplier == 0) {
    return Invalid(text, "unknown unit '" + std::string(suffix) +
                             "'; use K, M, G, T or P, optionally followed by iB or B");
  }
  if (overflow || number > std::numeric_limits<uint64_t>::max() / multiplier) {
    return Invalid(text, "too large: does not fit in 64 bits (the maximum is 18446744073709551615 bytes)");
  }
  return number * multiplier;
}

std::string FormatSize(uint64_t bytes) {
  for (const Unit& unit : kUnits) {
    if (bytes < unit.bytes) continue;
    const uint64_t whole = bytes / unit.bytes;
    const uint64_t rem = bytes % unit.bytes;
    // Two decimals by long division, one digit at a time: rem * 100 could
    // exceed 64 bits for EiB, rem * 10 cannot (rem < 2^60).
    const uint64_t tenths = rem * 10 / unit.bytes;
    const uint64_t hundredths = (rem * 10 % unit.bytes) * 10 / unit.bytes;
    std::string out = std::to_string(whole);
    if (tenths != 0 || hundredths != 0) {
      out += '.';
      out += static_cast<char>('0' + tenths);
      if (hundredths != 0) out += static_cast<char>('0' + hundredths);
    }
    out += ' ';
    out += unit.name;
    return out;
  }
  return std::to_string(bytes) + (bytes == 1 ? " byte" : " bytes");
}

}  // namespace ebs
