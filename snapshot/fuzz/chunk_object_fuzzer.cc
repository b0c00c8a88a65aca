// libFuzzer target: bytes read back from the store as a chunk object. The
// decoder must refuse anything malformed with an error, never crash, and
// never return data whose hash differs from the one asked for.
#include <string>
#include <string_view>

#include "ebs/snapshot/chunk_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view object(reinterpret_cast<const char*>(data), size);
  static ebs::snapshot::ChunkCodec codec;
  auto header = ebs::snapshot::ParseChunkHeader(object);
  ebs::snapshot::ContentHash expected = header.ok() ? header->content_hash : ebs::snapshot::ContentHash{};
  std::string out;
  ebs::Status st = codec.Decode(object, expected, &out);
  if (st.ok() && !(ebs::snapshot::ContentHash::Of(out.data(), out.size()) == expected)) __builtin_trap();
  return 0;
}
