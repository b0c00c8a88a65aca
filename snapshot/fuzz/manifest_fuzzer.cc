// libFuzzer target: bytes read back from the store as a snapshot manifest.
// Decoding must refuse malformed input with an error and never crash; what
// it accepts must encode back to the same bytes.
#include <string>
#include <string_view>

#include "ebs/snapshot/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto m = ebs::snapshot::DecodeManifest(bytes);
  if (!m.ok()) return 0;
  auto again = ebs::snapshot::EncodeManifest(*m);
  if (!again.ok() || *again != bytes) __builtin_trap();
  return 0;
}
