// Chunk objects: the bytes a chunk is stored as in the object store.
//
// Layout (all integers little-endian), kChunkHeaderSize = 40 bytes of header
// followed by the stored bytes:
//
//   0  magic            "EBSC"
//   4  format version   u8, 1
//   5  codec            u8, 0 = raw, 1 = zstd (one frame)
//   6  flags            u16, bit 0 = encrypted; other bits must be 0
//   8  uncompressed len u32, the chunk's length
//  12  stored len       u32, bytes that follow the header
//  16  stored checksum  u64, XXH3-64 of the stored bytes
//  24  content hash     16 bytes, XXH3-128 of the uncompressed bytes
//  40  stored bytes
//
// Why these fields: the stored checksum lets `verify` and `store check`
// detect a damaged object before spending time decompressing it, and tells
// damage in storage apart from a codec bug; the content hash in the header
// makes an object self-describing (a reindex or a misplaced file can be
// recognised without its key); the lengths bound every allocation before any
// byte is trusted. Every header field is cross-checked by DecodeChunk, so a
// flipped byte anywhere in an object is reported, never returned as data.
//
// Encrypted objects (snapshots of encrypted volumes, chunk_crypto.h): the
// content hash is the keyed address, and the stored bytes are the raw or
// zstd bytes sealed with AES-256-GCM (12-byte nonce, ciphertext, 16-byte
// tag); the stored checksum still covers what is stored, so `store check`
// finds damage without the key.
//
// Zstd is used only when it makes the object smaller; otherwise the chunk is
// stored raw (random data, already-compressed data), so decoding a raw
// chunk costs one copy and no CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "ebs/engine/status.h"
#include "ebs/snapshot/chunk_crypto.h"
#include "ebs/snapshot/content_hash.h"

struct ZSTD_CCtx_s;
struct ZSTD_DCtx_s;

namespace ebs::snapshot {

inline constexpr size_t kChunkHeaderSize = 40;
inline constexpr uint8_t kChunkFormatVersion = 1;
// A fast level: snapshots must beat restic on throughput with both cores
// busy. On text in 512 KiB chunks (micro_bench) level 1 stores 38.7% at
// 300 MB/s, level 2 36.6% at 230 MB/s, level 3 36.2% at 170 MB/s: level 2
// takes most of what level 3 saves for half its extra time.
inline constexpr int kDefaultCompressionLevel = 2;
// The codec refuses larger chunks so that a corrupt length can never make a
// decoder allocate more than this.
inline constexpr uint32_t kMaxChunkObjectLength = 4 * 1024 * 1024;

enum class ChunkCodecId : uint8_t { kRaw = 0, kZstd = 1 };

inline constexpr uint16_t kChunkFlagEncrypted = 1;

struct ChunkHeader {
  ChunkCodecId codec = ChunkCodecId::kRaw;
  bool encrypted = false;
  uint32_t uncompressed_length = 0;
  uint32_t stored_length = 0;
  uint64_t stored_checksum = 0;
  ContentHash content_hash;
};

// True when all `len` bytes are zero. All-zero chunks are never stored.
bool IsAllZero(const void* data, size_t len);

// Parses and checks the header of `object` (magic, version, codec, reserved
// bits, lengths against the object's size and kMaxChunkObjectLength). Does
// not read the stored bytes. Errors are EIO with a message naming the fault.
Result<ChunkHeader> ParseChunkHeader(std::string_view object);

// Encodes and decodes chunk objects, keeping one zstd compression and one
// decompression context alive between calls: a pipeline thread creates one
// ChunkCodec and reuses it for every chunk instead of allocating ~1 MiB of
// zstd state per chunk.
//
// REQUIRES external synchronization: use one ChunkCodec per thread.
class ChunkCodec {
 public:
  // `level` is a zstd level, clamped to what the linked zstd supports.
  explicit ChunkCodec(int level = kDefaultCompressionLevel);
  ~ChunkCodec();
  ChunkCodec(const ChunkCodec&) = delete;
  ChunkCodec& operator=(const ChunkCodec&) = delete;

  // Writes the object for `len` bytes at `data` into *object (replacing its
  // contents, reusing its capacity). The content hash is computed here; it is
  // also returned in *hash when that is not null, so the caller can name the
  // object without hashing twice. EINVAL when len > kMaxChunkObjectLength,
  // ENOMEM when zstd cannot allocate, EIO on an unexpected zstd error.
  //
  // With `crypto`, the object is encrypted and named by the keyed address.
  Status Encode(const void* data, size_t len, std::string* object, ContentHash* hash = nullptr,
                const ChunkCrypto* crypto = nullptr);

  // Checks `object` completely and writes the chunk's bytes into *data
  // (replacing its contents, reusing its capacity). `expected` is the hash
  // the object was looked up by: an object whose header or content does not
  // match it is refused. Every failure is EIO with a message that says
  // exactly what is wrong (bad magic, unsupported version, unknown codec,
  // truncated, trailing bytes, checksum mismatch, decompression failure,
  // length mismatch, content hash mismatch). On failure *data is unspecified.
  //
  // `crypto`: the snapshot's keys when it is encrypted. An object whose
  // encryption flag disagrees is refused with EIO (a snapshot's objects are
  // all encrypted or all plain); one that does not authenticate, with EACCES.
  Status Decode(std::string_view object, const ContentHash& expected, std::string* data,
                const ChunkCrypto* crypto = nullptr);
  // The same into `out` (for example an aligned buffer for direct I/O);
  // returns the chunk's length. EIO when the chunk is larger than `out`.
  Result<size_t> Decode(std::string_view object, const ContentHash& expected, std::span<char> out,
                        const ChunkCrypto* crypto = nullptr);

  int level() const { return level_; }

 private:
  Status DecodeInto(const ChunkHeader& h, std::string_view object, const ContentHash& expected, char* out,
                    const ChunkCrypto* crypto);

  const int level_;
  ZSTD_CCtx_s* cctx_ = nullptr;  // created lazily
  ZSTD_DCtx_s* dctx_ = nullptr;  // created lazily
  std::string sealed_;           // encryption scratch
};

// One-shot forms of ChunkCodec::Encode/Decode for callers off the hot path.
// Each call creates and frees zstd contexts.
Result<std::string> EncodeChunk(const void* data, size_t len, int level = kDefaultCompressionLevel);
Result<std::string> DecodeChunk(std::string_view object, const ContentHash& expected);

}  // namespace ebs::snapshot
