// The fixed master key of the snapshot fuzzers and their seed generator: the
// seeds' encrypted chunk objects and v2 manifests are sealed with it, so the
// fuzzers, holding the same key, get past authentication and reach what lies
// behind it (decompression, the content check, the manifest round trip).
#pragma once

#include <string>

#include "ebs/engine/key_service.h"
#include "ebs/snapshot/chunk_crypto.h"

namespace ebs::snapshot::fuzz {

inline const ChunkCrypto& Crypto() {
  static const ChunkCrypto crypto([] {
    MasterKey key;
    key.info.name = "fuzz";
    key.info.id = "key-00f0f0f0f0f0f0f0";
    key.info.created_at_ms = 1764000000000;
    for (int i = 0; i < 32; ++i) key.secret.push_back(static_cast<char>(0xa5 ^ i));
    return key;
  }());
  return crypto;
}

// Little-endian stores, for patching lengths and checksums into inputs.
inline void Put32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
inline void Put64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}

}  // namespace ebs::snapshot::fuzz
