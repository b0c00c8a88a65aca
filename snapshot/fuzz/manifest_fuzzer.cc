// libFuzzer target: bytes read back from the store as a snapshot manifest.
// Decoding must refuse malformed input with an error and never crash; what
// it accepts must encode back to the same bytes (an encrypted snapshot's
// manifest, version 2, when its MAC verifies under the fixed key of
// fuzz_key.h, the key the encoder then seals it with).
//
// Each input is decoded as it is, and "repaired": its total length, its MAC
// (version 2) and its checksum set to match, so that the fuzzer gets past
// the checks against damage to the decoding of the contents.
#include <xxhash.h>

#include <string>
#include <string_view>

#include "ebs/snapshot/manifest.h"
#include "fuzz_key.h"

namespace {

constexpr size_t kFixedHeader = 64;
constexpr size_t kMac = 32;
constexpr size_t kTrailer = 8;

void Check(std::string_view bytes) {
  auto m = ebs::snapshot::DecodeManifest(bytes);
  if (!m.ok()) return;
  const ebs::snapshot::ChunkCrypto& crypto = ebs::snapshot::fuzz::Crypto();
  const ebs::snapshot::ChunkCrypto* sealer = nullptr;
  if (!m->key_id.empty()) {
    // Only a manifest sealed with the fixed key can be encoded back.
    if (!ebs::snapshot::VerifyManifestMac(bytes, crypto).ok() || m->key_id != crypto.key_id()) return;
    sealer = &crypto;
  }
  auto again = ebs::snapshot::EncodeManifest(*m, sealer);
  if (!again.ok() || *again != bytes) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  Check(bytes);

  if (size < kFixedHeader + kTrailer) return 0;
  std::string repaired(bytes);
  ebs::snapshot::fuzz::Put64(repaired.data() + 8, size);
  const bool v2 = repaired[4] == static_cast<char>(ebs::snapshot::kEncryptedManifestFormatVersion) && repaired[5] == 0;
  if (v2 && size >= kFixedHeader + kMac + kTrailer) {
    const size_t signed_end = size - kTrailer - kMac;
    repaired.replace(signed_end, kMac,
                     ebs::snapshot::fuzz::Crypto().ManifestMac(std::string_view(repaired).substr(0, signed_end)));
  }
  ebs::snapshot::fuzz::Put64(repaired.data() + size - kTrailer, XXH3_64bits(repaired.data(), size - kTrailer));
  Check(repaired);
  return 0;
}
