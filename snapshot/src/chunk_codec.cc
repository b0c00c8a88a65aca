#include "ebs/snapshot/chunk_codec.h"

#include <xxhash.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <cinttypes>
#include <cstring>
#include <string>

#include "coding.h"
#include "ebs/engine/crypto.h"

namespace ebs::snapshot {
namespace {

constexpr char kMagic[4] = {'E', 'B', 'S', 'C'};

Status Corrupt(const std::string& what) { return Status::IoError("corrupt chunk object: " + what); }

std::string Hex64(uint64_t v) {
  char buf[17];
  snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

}  // namespace

bool IsAllZero(const void* data, size_t len) {
  auto p = static_cast<const unsigned char*>(data);
  // OR 64 bytes at a time (the compiler vectorises this) and stop at the
  // first non-zero block: real data almost always fails in the first block,
  // zero chunks are scanned at memory speed.
  while (len >= 64) {
    uint64_t w[8];
    std::memcpy(w, p, 64);
    if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0) return false;
    p += 64;
    len -= 64;
  }
  unsigned char acc = 0;
  for (size_t i = 0; i < len; ++i) acc |= p[i];
  return acc == 0;
}

Result<ChunkHeader> ParseChunkHeader(std::string_view object) {
  if (object.size() < kChunkHeaderSize) {
    return Corrupt("truncated: " + std::to_string(object.size()) + " bytes, shorter than the " +
                   std::to_string(kChunkHeaderSize) + "-byte header");
  }
  const char* p = object.data();
  if (std::memcmp(p, kMagic, 4) != 0) {
    return Corrupt("bad magic " + crypto::ToHex(std::string_view(p, 4)) + " (expected 45425343, \"EBSC\")");
  }
  uint8_t version = static_cast<uint8_t>(p[4]);
  if (version != kChunkFormatVersion) {
    return Corrupt("unsupported format version " + std::to_string(version) + " (this build reads version " +
                   std::to_string(kChunkFormatVersion) + ")");
  }
  uint8_t codec = static_cast<uint8_t>(p[5]);
  if (codec != static_cast<uint8_t>(ChunkCodecId::kRaw) && codec != static_cast<uint8_t>(ChunkCodecId::kZstd)) {
    return Corrupt("unknown codec " + std::to_string(codec));
  }
  const uint16_t flags = coding::DecodeFixed16(p + 6);
  if ((flags & ~kChunkFlagEncrypted) != 0) return Corrupt("reserved header bits are set");
  ChunkHeader h;
  h.codec = static_cast<ChunkCodecId>(codec);
  h.encrypted = (flags & kChunkFlagEncrypted) != 0;
  h.uncompressed_length = coding::DecodeFixed32(p + 8);
  h.stored_length = coding::DecodeFixed32(p + 12);
  h.stored_checksum = coding::DecodeFixed64(p + 16);
  std::memcpy(h.content_hash.bytes.data(), p + 24, 16);
  if (h.uncompressed_length > kMaxChunkObjectLength) {
    return Corrupt("uncompressed length " + std::to_string(h.uncompressed_length) + " exceeds the maximum " +
                   std::to_string(kMaxChunkObjectLength));
  }
  uint64_t want = kChunkHeaderSize + uint64_t{h.stored_length};
  if (object.size() < want) {
    return Corrupt("truncated: " + std::to_string(object.size()) + " bytes, header says " +
                   std::to_string(kChunkHeaderSize) + " + " + std::to_string(h.stored_length));
  }
  if (object.size() > want) {
    return Corrupt(std::to_string(object.size() - want) + " trailing bytes after the " +
                   std::to_string(h.stored_length) + " stored bytes");
  }
  // Raw chunks store exactly their bytes; a zstd chunk is only written when
  // strictly smaller. Either way a mismatch here is damage. Encryption adds
  // a fixed nonce and tag.
  const uint64_t overhead = h.encrypted ? crypto::kGcmOverhead : 0;
  if (h.stored_length < overhead) return Corrupt("encrypted chunk shorter than its nonce and tag");
  const uint64_t inner = h.stored_length - overhead;
  if (h.codec == ChunkCodecId::kRaw && inner != h.uncompressed_length) {
    return Corrupt("raw chunk stores " + std::to_string(inner) + " bytes but its length is " +
                   std::to_string(h.uncompressed_length));
  }
  if (h.codec == ChunkCodecId::kZstd && inner >= h.uncompressed_length) {
    return Corrupt("zstd chunk stores " + std::to_string(inner) + " bytes for a " +
                   std::to_string(h.uncompressed_length) + "-byte chunk");
  }
  return h;
}

ChunkCodec::ChunkCodec(int level) : level_(std::clamp(level, ZSTD_minCLevel(), ZSTD_maxCLevel())) {}

ChunkCodec::~ChunkCodec() {
  ZSTD_freeCCtx(cctx_);
  ZSTD_freeDCtx(dctx_);
}

Status ChunkCodec::Encode(const void* data, size_t len, std::string* object, ContentHash* hash_out,
                          const ChunkCrypto* crypto) {
  if (len > kMaxChunkObjectLength) {
    return Status::InvalidArgument("chunk of " + std::to_string(len) + " bytes exceeds the maximum " +
                                   std::to_string(kMaxChunkObjectLength));
  }
  const ContentHash hash = crypto != nullptr ? crypto->Address(data, len) : ContentHash::Of(data, len);
  if (hash_out != nullptr) *hash_out = hash;

  // Room for the raw form; compression is given one byte less than that, so
  // zstd itself stops (dstSize_tooSmall) as soon as it cannot win.
  object->resize(kChunkHeaderSize + len);
  char* stored = object->data() + kChunkHeaderSize;
  size_t stored_len = len;
  ChunkCodecId codec = ChunkCodecId::kRaw;
  if (len > 1) {
    if (cctx_ == nullptr && (cctx_ = ZSTD_createCCtx()) == nullptr) {
      return Status::Error(ENOMEM, "cannot allocate a zstd compression context");
    }
    size_t r = ZSTD_compressCCtx(cctx_, stored, len - 1, data, len, level_);
    if (!ZSTD_isError(r)) {
      codec = ChunkCodecId::kZstd;
      stored_len = r;
    } else if (ZSTD_getErrorCode(r) != ZSTD_error_dstSize_tooSmall) {
      return Status::IoError(std::string("zstd compression failed: ") + ZSTD_getErrorName(r));
    }
  }
  if (codec == ChunkCodecId::kRaw && len > 0) std::memcpy(stored, data, len);
  object->resize(kChunkHeaderSize + stored_len);
  if (crypto != nullptr) {
    EBS_RETURN_IF_ERROR(crypto->Seal(std::string_view(object->data() + kChunkHeaderSize, stored_len), hash, &sealed_));
    stored_len = sealed_.size();
    object->resize(kChunkHeaderSize);
    object->append(sealed_);
  }
  stored = object->data() + kChunkHeaderSize;

  char* p = object->data();
  std::memcpy(p, kMagic, 4);
  p[4] = static_cast<char>(kChunkFormatVersion);
  p[5] = static_cast<char>(codec);
  p[6] = static_cast<char>(crypto != nullptr ? kChunkFlagEncrypted : 0);  // flags, u16 little-endian
  p[7] = 0;
  coding::EncodeFixed32(p + 8, static_cast<uint32_t>(len));
  coding::EncodeFixed32(p + 12, static_cast<uint32_t>(stored_len));
  coding::EncodeFixed64(p + 16, XXH3_64bits(stored, stored_len));
  std::memcpy(p + 24, hash.bytes.data(), 16);
  return Status::Ok();
}

Status ChunkCodec::Decode(std::string_view object, const ContentHash& expected, std::string* data,
                          const ChunkCrypto* crypto) {
  auto header = ParseChunkHeader(object);
  if (!header.ok()) return header.status();
  data->resize(header->uncompressed_length);
  return DecodeInto(*header, object, expected, data->data(), crypto);
}

Result<size_t> ChunkCodec::Decode(std::string_view object, const ContentHash& expected, std::span<char> out,
                                  const ChunkCrypto* crypto) {
  auto header = ParseChunkHeader(object);
  if (!header.ok()) return header.status();
  if (header->uncompressed_length > out.size()) {
    return Corrupt("chunk of " + std::to_string(header->uncompressed_length) + " bytes is larger than the " +
                   std::to_string(out.size()) + "-byte chunks it should hold");
  }
  EBS_RETURN_IF_ERROR(DecodeInto(*header, object, expected, out.data(), crypto));
  return size_t{header->uncompressed_length};
}

Status ChunkCodec::DecodeInto(const ChunkHeader& h, std::string_view object, const ContentHash& expected, char* out,
                              const ChunkCrypto* crypto) {
  if (h.content_hash != expected) {
    return Corrupt("header names content " + h.content_hash.ToHex() + ", expected " + expected.ToHex() +
                   " (damaged header or object stored under the wrong key)");
  }
  const char* stored = object.data() + kChunkHeaderSize;
  uint64_t checksum = XXH3_64bits(stored, h.stored_length);
  if (checksum != h.stored_checksum) {
    return Corrupt("checksum mismatch over " + std::to_string(h.stored_length) + " stored bytes: header " +
                   Hex64(h.stored_checksum) + ", computed " + Hex64(checksum));
  }
  uint32_t stored_length = h.stored_length;
  if (h.encrypted != (crypto != nullptr)) {
    if (h.encrypted) return Corrupt("object is marked encrypted, but its snapshot is not (damaged header?)");
    return Corrupt("chunk " + expected.ToHex() + " is not encrypted, but its snapshot is");
  }
  if (crypto != nullptr) {
    EBS_RETURN_IF_ERROR(crypto->Open(std::string_view(stored, stored_length), expected, &sealed_));
    stored = sealed_.data();
    stored_length = static_cast<uint32_t>(sealed_.size());
  }
  const size_t length = h.uncompressed_length;
  if (h.codec == ChunkCodecId::kRaw) {
    if (stored_length > 0) std::memcpy(out, stored, stored_length);
  } else {
    if (dctx_ == nullptr && (dctx_ = ZSTD_createDCtx()) == nullptr) {
      return Status::Error(ENOMEM, "cannot allocate a zstd decompression context");
    }
    size_t r = ZSTD_decompressDCtx(dctx_, out, length, stored, stored_length);
    if (ZSTD_isError(r)) {
      return Corrupt(std::string("zstd decompression failed: ") + ZSTD_getErrorName(r));
    }
    if (r != length) {
      return Corrupt("decompressed to " + std::to_string(r) + " bytes, header says " + std::to_string(length));
    }
  }
  ContentHash actual = crypto != nullptr ? crypto->Address(out, length) : ContentHash::Of(out, length);
  if (actual != expected) {
    return Corrupt("content hash mismatch: expected " + expected.ToHex() + ", content hashes to " +
                   actual.ToHex());
  }
  return Status::Ok();
}

Result<std::string> EncodeChunk(const void* data, size_t len, int level) {
  ChunkCodec codec(level);
  std::string object;
  EBS_RETURN_IF_ERROR(codec.Encode(data, len, &object));
  return object;
}

Result<std::string> DecodeChunk(std::string_view object, const ContentHash& expected) {
  ChunkCodec codec;
  std::string data;
  EBS_RETURN_IF_ERROR(codec.Decode(object, expected, &data));
  return data;
}

}  // namespace ebs::snapshot
