#include "ebs/snapshot/content_hash.h"

#include <xxhash.h>

#include "ebs/engine/crypto.h"

namespace ebs::snapshot {
namespace {

ContentHash Canonical(XXH128_hash_t h) {
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, h);
  ContentHash out;
  static_assert(sizeof(canonical.digest) == sizeof(out.bytes));
  std::memcpy(out.bytes.data(), canonical.digest, out.bytes.size());
  return out;
}

}  // namespace

ContentHash ContentHash::Of(const void* data, size_t len) { return Canonical(XXH3_128bits(data, len)); }

ContentHash ContentHash::OfKeyed(const void* data, size_t len, std::string_view secret) {
  return Canonical(XXH3_128bits_withSecret(data, len, secret.data(), secret.size()));
}

std::string ContentHash::ToHex() const { return crypto::ToHex(AsBytes()); }

Result<ContentHash> ContentHash::FromHex(std::string_view hex) {
  if (hex.size() != 32) {
    return Status::InvalidArgument("content hash '" + std::string(hex) + "' must be 32 hex digits");
  }
  auto raw = crypto::FromHex(hex);
  if (!raw.ok()) return Status::InvalidArgument("content hash '" + std::string(hex) + "' is not hexadecimal");
  return FromBytes(*raw);
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
