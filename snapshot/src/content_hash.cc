#include "ebs/snapshot/content_hash.h"

#include <xxhash.h>

namespace ebs::snapshot {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

ContentHash ContentHash::Of(const void* data, size_t len) {
  XXH128_hash_t h = XXH3_128bits(data, len);
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, h);
  ContentHash out;
  static_assert(sizeof(canonical.digest) == sizeof(out.bytes));
  std::memcpy(out.bytes.data(), canonical.digest, out.bytes.size());
  return out;
}

std::string ContentHash::ToHex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(32, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    s[2 * i] = kDigits[bytes[i] >> 4];
    s[2 * i + 1] = kDigits[bytes[i] & 0xf];
  }
  return s;
}

Result<ContentHash> ContentHash::FromHex(std::string_view hex) {
  if (hex.size() != 32) {
    return Status::InvalidArgument("content hash '" + std::string(hex) + "' must be 32 hex digits");
  }
  ContentHash out;
  for (size_t i = 0; i < out.bytes.size(); ++i) {
    int hi = HexValue(hex[2 * i]);
    int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return Status::InvalidArgument("content hash '" + std::string(hex) + "' is not hexadecimal");
    }
    out.bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

Result<ContentHash> ContentHash::FromBytes(std::string_view raw) {
  if (raw.size() != 16) {
    return Status::InvalidArgument("content hash must be 16 bytes, got " + std::to_string(raw.size()));
  }
  ContentHash out;
  std::memcpy(out.bytes.data(), raw.data(), 16);
  return out;
}

}  // namespace ebs::snapshot
