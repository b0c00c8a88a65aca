// libFuzzer target: bytes read back from the store as a chunk object. The
// decoder must refuse anything malformed with an error, never crash, and
// never return data whose hash differs from the one asked for.
//
// Each input is decoded three ways: as a plain snapshot's object, as an
// encrypted snapshot's (under the fixed key of fuzz_key.h), and "repaired":
// its stored length, checksum and (raw) length set to match and, when its
// header says encrypted, its stored bytes sealed under the fixed key. The
// first two exercise the checks against damage; the repaired form gets past
// them (and past authentication), so the fuzzer reaches decompression and
// the content check of plain and encrypted objects alike.
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "ebs/snapshot/chunk_codec.h"
#include "fuzz_key.h"

namespace {

using ebs::snapshot::ChunkCodec;
using ebs::snapshot::ChunkCrypto;
using ebs::snapshot::ContentHash;

void Check(ChunkCodec& codec, std::string_view object, const ChunkCrypto* crypto) {
  auto header = ebs::snapshot::ParseChunkHeader(object);
  const ContentHash expected = header.ok() ? header->content_hash : ContentHash{};
  std::string out;
  if (!codec.Decode(object, expected, &out, crypto).ok()) return;
  const ContentHash got = crypto != nullptr ? crypto->Address(out.data(), out.size())
                                            : ContentHash::Of(out.data(), out.size());
  if (!(got == expected)) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static ChunkCodec codec;
  const ChunkCrypto& crypto = ebs::snapshot::fuzz::Crypto();
  std::string_view object(reinterpret_cast<const char*>(data), size);
  Check(codec, object, nullptr);
  Check(codec, object, &crypto);

  constexpr size_t kHeader = ebs::snapshot::kChunkHeaderSize;
  if (size < kHeader || size - kHeader > ebs::snapshot::kMaxChunkObjectLength) return 0;
  std::string repaired(object.substr(0, kHeader));
  std::string_view inner = object.substr(kHeader);
  const bool encrypted = (static_cast<uint8_t>(object[6]) & ebs::snapshot::kChunkFlagEncrypted) != 0;
  if (object[5] == static_cast<char>(ebs::snapshot::ChunkCodecId::kRaw)) {
    ebs::snapshot::fuzz::Put32(repaired.data() + 8, static_cast<uint32_t>(inner.size()));
  }
  std::string stored;
  if (encrypted) {
    ContentHash address;
    std::memcpy(address.bytes.data(), object.data() + 24, 16);
    if (!crypto.Seal(inner, address, &stored).ok()) __builtin_trap();
  } else {
    stored.assign(inner);
  }
  ebs::snapshot::fuzz::Put32(repaired.data() + 12, static_cast<uint32_t>(stored.size()));
  ebs::snapshot::fuzz::Put64(repaired.data() + 16, XXH3_64bits(stored.data(), stored.size()));
  repaired += stored;
  Check(codec, repaired, encrypted ? &crypto : nullptr);
  return 0;
}
