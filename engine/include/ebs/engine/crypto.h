// The cryptographic primitives encryption at rest is built from, over
// OpenSSL's EVP interface (AES-NI where the CPU has it):
//
// - random bytes for keys and nonces (the OpenSSL DRBG);
// - AES-256-GCM sealing with a fresh 12-byte nonce, for wrapped data keys
//   and snapshot chunk objects: nonce || ciphertext || 16-byte tag;
// - HMAC-SHA256, for manifest authentication and for deriving purpose keys
//   from a master key (HKDF-Expand, RFC 5869, with one fixed label per use,
//   so that a key for one purpose reveals nothing about another).
//
// Every function is thread-safe; secrets are std::string of raw bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ebs/engine/status.h"

namespace ebs::crypto {

inline constexpr size_t kKeySize = 32;       // AES-256
inline constexpr size_t kGcmNonceSize = 12;  // 96 bits: GCM's native IV size
inline constexpr size_t kGcmTagSize = 16;
inline constexpr size_t kGcmOverhead = kGcmNonceSize + kGcmTagSize;
inline constexpr size_t kMacSize = 32;  // HMAC-SHA256

// `len` bytes from the OpenSSL DRBG. Fails only if the DRBG cannot seed.
Result<std::string> RandomBytes(size_t len);

// AES-256-GCM with a fresh random nonce. `aad` is authenticated, not stored:
// it binds the ciphertext to its context (which volume, which object), so a
// sealed blob moved elsewhere does not open. Appends nonce || ct || tag to
// *out (which is cleared first).
Status Seal(std::string_view key, std::string_view plaintext, std::string_view aad, std::string* out);
// The inverse. EBADMSG ("authentication failed") when the key, the aad or
// any byte of `sealed` is wrong; never returns unauthenticated bytes.
Status Open(std::string_view key, std::string_view sealed, std::string_view aad, std::string* out);

// HMAC-SHA256 of `data` under `key`: 32 raw bytes.
std::string Mac(std::string_view key, std::string_view data);
// Constant-time comparison of two MACs.
bool MacEqual(std::string_view a, std::string_view b);

// HKDF-Expand(PRK = master, info = label, L = len) with HMAC-SHA256.
// REQUIRES: len <= 255 * 32.
std::string DeriveKey(std::string_view master, std::string_view label, size_t len);

std::string ToHex(std::string_view raw);
// EINVAL unless `hex` is an even number of hex digits.
Result<std::string> FromHex(std::string_view hex);

}  // namespace ebs::crypto
