// ContentHash: the name of a chunk object, the XXH3-128 of the chunk's
// uncompressed bytes. Two chunks with equal content have equal hashes, which
// is how identical chunks are stored once across snapshots and volumes.
//
// The 16 bytes are XXH3-128's canonical (big-endian) form, so ToHex() prints
// the same digits as `xxhsum -H2` does for the raw chunk: handy when
// inspecting a store by hand.
//
// A value type; thread-compatible.
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "ebs/engine/status.h"

namespace ebs::snapshot {

struct ContentHash {
  std::array<uint8_t, 16> bytes{};

  // XXH3-128 of `len` bytes at `data`.
  static ContentHash Of(const void* data, size_t len);
  // XXH3-128 keyed with `secret` (at least 136 bytes): the address of a
  // chunk of an encrypted snapshot (chunk_crypto.h).
  static ContentHash OfKeyed(const void* data, size_t len, std::string_view secret);

  // The all-zero value. It is NOT the hash of a zero chunk: it is a sentinel
  // that a chunk map uses to say "this chunk reads as zeros and has no
  // object" (all-zero chunks are never stored). A real XXH3-128 being all
  // zero has probability 2^-128.
  static constexpr ContentHash ZeroChunk() { return ContentHash{}; }
  bool IsZeroChunk() const {
    for (uint8_t b : bytes)
      if (b != 0) return false;
    return true;
  }

  // 32 lowercase hex digits.
  std::string ToHex() const;
  // Accepts exactly 32 hex digits (either case); EINVAL otherwise.
  static Result<ContentHash> FromHex(std::string_view hex);
  // Exactly 16 raw bytes (as stored in index values and manifests); EINVAL
  // otherwise.
  static Result<ContentHash> FromBytes(std::string_view raw);
  std::string_view AsBytes() const {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }

  friend auto operator<=>(const ContentHash&, const ContentHash&) = default;
};

// For unordered containers. The hash is already uniformly distributed, so its
// first 8 bytes are a perfect bucket key.
struct ContentHashHasher {
  size_t operator()(const ContentHash& h) const {
    uint64_t v;
    std::memcpy(&v, h.bytes.data(), sizeof v);
    return static_cast<size_t>(v);
  }
};

}  // namespace ebs::snapshot
