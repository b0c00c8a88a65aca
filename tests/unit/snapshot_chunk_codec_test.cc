// Chunk objects: round trips for the kinds of data volumes hold, the raw
// fallback, and detection of every kind of damage.
#include <gtest/gtest.h>
#include <xxhash.h>

#include <random>
#include <span>
#include <string>
#include <vector>

#include "ebs/snapshot/chunk_codec.h"
#include "test_util.h"
#include "ebs/snapshot/chunk_map.h"

namespace ebs::snapshot {
namespace {

using ebs::testing::RandomBytes;
using ebs::testing::TextBytes;

constexpr size_t kChunk = 512 * 1024;

ChunkHeader HeaderOf(const std::string& object) {
  auto h = ParseChunkHeader(object);
  EXPECT_TRUE(h.ok()) << h.status().ToString();
  return h.ok() ? *h : ChunkHeader{};
}

TEST(ContentHashTest, HexRoundTripAndKnownValue) {
  // XXH3-128 of the empty input, as printed by `xxhsum -H2`.
  ContentHash empty = ContentHash::Of("", 0);
  EXPECT_EQ("99aa06d3014798d86001c324468d497f", empty.ToHex());
  auto parsed = ContentHash::FromHex(empty.ToHex());
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(empty, *parsed);
  auto upper = ContentHash::FromHex("99AA06D3014798D86001C324468D497F");
  ASSERT_TRUE(upper.ok());
  EXPECT_EQ(empty, *upper);
  EXPECT_EQ(EINVAL, ContentHash::FromHex("99aa").status().code());
  EXPECT_EQ(EINVAL, ContentHash::FromHex("zz" + std::string(30, '0')).status().code());
  EXPECT_TRUE(ContentHash::ZeroChunk().IsZeroChunk());
  EXPECT_FALSE(empty.IsZeroChunk());
}

TEST(ChunkCodecTest, IsAllZero) {
  std::string z(kChunk, '\0');
  EXPECT_TRUE(IsAllZero(z.data(), z.size()));
  EXPECT_TRUE(IsAllZero(z.data(), 0));
  for (size_t pos : {size_t{0}, size_t{63}, size_t{64}, kChunk / 2, kChunk - 1}) {
    z[pos] = 1;
    EXPECT_FALSE(IsAllZero(z.data(), z.size())) << pos;
    z[pos] = 0;
  }
  EXPECT_FALSE(IsAllZero("\0\0\x01", 3));
}

TEST(ChunkCodecTest, RoundTripsRandomTextAndZeros) {
  ChunkCodec codec;
  std::string object, out;
  struct Case {
    const char* name;
    std::string data;
  } cases[] = {{"random", RandomBytes(kChunk, 1)},
               {"text", TextBytes(kChunk)},
               {"zeros", std::string(kChunk, '\0')},
               {"short", "x"},
               {"empty", ""},
               {"odd length", TextBytes(kChunk - 3)}};
  for (const Case& c : cases) {
    ContentHash hash;
    ASSERT_TRUE(codec.Encode(c.data.data(), c.data.size(), &object, &hash).ok()) << c.name;
    EXPECT_EQ(ContentHash::Of(c.data.data(), c.data.size()), hash) << c.name;
    EXPECT_EQ(hash, HeaderOf(object).content_hash) << c.name;
    ASSERT_TRUE(codec.Decode(object, hash, &out).ok()) << c.name;
    EXPECT_EQ(c.data, out) << c.name;
    // The one-shot functions agree with the context-reusing class.
    auto again = EncodeChunk(c.data.data(), c.data.size());
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(object, *again) << c.name;
    auto decoded = DecodeChunk(*again, hash);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(c.data, *decoded) << c.name;
  }
}

TEST(ChunkCodecTest, CompressibleDataIsStoredWithZstd) {
  std::string text = TextBytes(kChunk);
  auto object = EncodeChunk(text.data(), text.size());
  ASSERT_TRUE(object.ok());
  ChunkHeader h = HeaderOf(*object);
  EXPECT_EQ(ChunkCodecId::kZstd, h.codec);
  EXPECT_LT(object->size(), text.size() / 3) << "text should compress well";
  EXPECT_EQ(text.size(), h.uncompressed_length);
  EXPECT_EQ(object->size() - kChunkHeaderSize, h.stored_length);
}

TEST(ChunkCodecTest, IncompressibleDataFallsBackToRaw) {
  std::string random = RandomBytes(kChunk, 2);
  auto object = EncodeChunk(random.data(), random.size());
  ASSERT_TRUE(object.ok());
  ChunkHeader h = HeaderOf(*object);
  EXPECT_EQ(ChunkCodecId::kRaw, h.codec);
  EXPECT_EQ(kChunkHeaderSize + random.size(), object->size());
  EXPECT_EQ(0, std::memcmp(object->data() + kChunkHeaderSize, random.data(), random.size()));
}

TEST(ChunkCodecTest, RefusesOversizedChunks) {
  std::string big(kMaxChunkObjectLength + 1, 'a');
  EXPECT_EQ(EINVAL, EncodeChunk(big.data(), big.size()).status().code());
}

// Every single-byte flip in the header of both a zstd and a raw object is
// detected: each field is either checked directly or cross-checked.
TEST(ChunkCodecTest, EveryHeaderByteFlipIsDetected) {
  for (const std::string& data : {TextBytes(64 * 1024), RandomBytes(64 * 1024, 3)}) {
    ChunkCodec codec;
    std::string object;
    ContentHash hash;
    ASSERT_TRUE(codec.Encode(data.data(), data.size(), &object, &hash).ok());
    std::string out;
    for (size_t i = 0; i < kChunkHeaderSize; ++i) {
      for (uint8_t mask : {0x01, 0x80, 0xff}) {
        std::string bad = object;
        bad[i] = static_cast<char>(bad[i] ^ mask);
        Status s = codec.Decode(bad, hash, &out);
        EXPECT_EQ(EIO, s.code()) << "byte " << i << " mask " << int(mask) << " was not detected";
      }
    }
  }
}

TEST(ChunkCodecTest, ErrorsSayWhatIsWrong) {
  std::string text = TextBytes(64 * 1024);
  ChunkCodec codec;
  std::string object, out;
  ContentHash hash;
  ASSERT_TRUE(codec.Encode(text.data(), text.size(), &object, &hash).ok());
  auto expect = [&](std::string bad, const std::string& needle, const ContentHash& want) {
    Status s = codec.Decode(bad, want, &out);
    EXPECT_EQ(EIO, s.code());
    EXPECT_NE(std::string::npos, s.message().find(needle)) << "'" << s.message() << "' lacks '" << needle << "'";
  };
  std::string bad = object;
  bad[0] = 'X';
  expect(bad, "bad magic", hash);
  bad = object;
  bad[4] = 2;
  expect(bad, "unsupported format version 2", hash);
  bad = object;
  bad[5] = 7;
  expect(bad, "unknown codec 7", hash);
  expect(object.substr(0, 10), "truncated", hash);
  expect(object.substr(0, object.size() - 1), "truncated", hash);
  expect(object + "x", "trailing bytes", hash);
  bad = object;
  bad[16] ^= 1;  // the stored checksum itself
  expect(bad, "checksum mismatch", hash);
  bad = object;
  bad[kChunkHeaderSize + 5] ^= 0x10;  // a stored byte
  expect(bad, "checksum mismatch", hash);
  ContentHash other = ContentHash::Of("other", 5);
  expect(object, "wrong key", other);

  // A damaged zstd stream whose checksum was recomputed (a buggy writer, or
  // damage before checksumming) still fails, in decompression.
  bad = object;
  std::memset(bad.data() + kChunkHeaderSize, 0, 4);  // the zstd frame magic
  uint64_t checksum = XXH3_64bits(bad.data() + kChunkHeaderSize, bad.size() - kChunkHeaderSize);
  std::memcpy(bad.data() + 16, &checksum, 8);  // little-endian host
  expect(bad, "zstd decompression failed", hash);
}

TEST(ChunkCodecTest, EveryTruncationIsDetected) {
  for (const std::string& data : {TextBytes(16 * 1024), RandomBytes(16 * 1024, 6)}) {
    auto object = EncodeChunk(data.data(), data.size());
    ASSERT_TRUE(object.ok());
    ContentHash hash = ContentHash::Of(data.data(), data.size());
    for (size_t len = 0; len < object->size(); len += (len < 64 ? 1 : 97)) {
      auto out = DecodeChunk(std::string_view(*object).substr(0, len), hash);
      ASSERT_FALSE(out.ok()) << len;
      EXPECT_NE(std::string::npos, out.status().message().find("truncated")) << out.status().message();
    }
  }
}

TEST(ChunkCodecTest, ContentHashMismatchIsDetected) {
  // A raw object whose stored bytes and checksum are consistent but whose
  // content is not what the key names: the final hash check catches it.
  std::string a = RandomBytes(64 * 1024, 4);
  std::string b = a;
  b[100] ^= 1;
  auto obj_b = EncodeChunk(b.data(), b.size());
  ASSERT_TRUE(obj_b.ok());
  ContentHash hash_a = ContentHash::Of(a.data(), a.size());
  std::string forged = *obj_b;
  std::memcpy(forged.data() + 24, hash_a.bytes.data(), 16);  // header claims a's hash
  auto out = DecodeChunk(forged, hash_a);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(std::string::npos, out.status().message().find("content hash mismatch")) << out.status().message();
}

TEST(ChunkCodecTest, ContextIsReusableAcrossSizesAndAfterErrors) {
  ChunkCodec codec(3);
  std::string object, out;
  for (int i = 0; i < 20; ++i) {
    std::string data = i % 2 ? TextBytes(1000 * (i + 1)) : RandomBytes(4096 * (i + 1), i);
    ContentHash hash;
    ASSERT_TRUE(codec.Encode(data.data(), data.size(), &object, &hash).ok());
    if (i % 5 == 0) {
      std::string bad = object;
      bad.back() ^= 1;
      EXPECT_FALSE(codec.Decode(bad, hash, &out).ok());
    }
    ASSERT_TRUE(codec.Decode(object, hash, &out).ok());
    EXPECT_EQ(data, out);
  }
}

TEST(ChunkCodecTest, DecodesIntoACallersBuffer) {
  // Restore decodes into an aligned buffer for direct I/O: the same bytes
  // and checks as decoding into a string, and a chunk larger than the
  // buffer is refused rather than written past its end.
  ChunkCodec codec;
  std::string out, object;
  std::vector<char> buf(kChunk);
  for (const std::string& data : {RandomBytes(kChunk, 9), TextBytes(kChunk), RandomBytes(kChunk / 2 + 1, 10)}) {
    ContentHash hash;
    ASSERT_TRUE(codec.Encode(data.data(), data.size(), &object, &hash).ok());
    auto n = codec.Decode(object, hash, std::span<char>(buf));
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    ASSERT_EQ(data.size(), *n);
    EXPECT_EQ(0, std::memcmp(data.data(), buf.data(), data.size()));
    auto small = codec.Decode(object, hash, std::span<char>(buf.data(), data.size() - 1));
    ASSERT_FALSE(small.ok());
    EXPECT_EQ(EIO, small.status().code());
    std::string bad = object;
    bad[kChunkHeaderSize + 7] ^= 1;
    EXPECT_FALSE(codec.Decode(bad, hash, std::span<char>(buf)).ok());
  }
}

TEST(ChunkMapTest, ChunkSizesAndDeltaShape) {
  EXPECT_TRUE(ValidateChunkSize(kDefaultChunkSize).ok());
  EXPECT_TRUE(ValidateChunkSize(64 * 1024).ok());
  EXPECT_TRUE(ValidateChunkSize(4 * 1024 * 1024).ok());
  EXPECT_FALSE(ValidateChunkSize(32 * 1024).ok());
  EXPECT_FALSE(ValidateChunkSize(8 * 1024 * 1024).ok());
  EXPECT_FALSE(ValidateChunkSize(3 * 64 * 1024).ok());
  EXPECT_EQ(3u, ChunkCount(2 * kDefaultChunkSize + 1, kDefaultChunkSize));
  EXPECT_EQ(2u, ChunkCount(2 * kDefaultChunkSize, kDefaultChunkSize));
  ContentHash h = ContentHash::Of("a", 1);
  std::vector<DeltaEntry> ok = {{0, h}, {5, h}, {9, ContentHash::ZeroChunk()}};
  EXPECT_TRUE(ValidateDelta(ok, 10).ok());
  EXPECT_FALSE(ValidateDelta(ok, 9).ok());
  std::vector<DeltaEntry> dup = {{1, h}, {1, h}};
  EXPECT_FALSE(ValidateDelta(dup, 10).ok());
  std::vector<DeltaEntry> unsorted = {{2, h}, {1, h}};
  EXPECT_FALSE(ValidateDelta(unsorted, 10).ok());
}

// The digest computed incrementally through a chain of deltas equals the
// digest of the final map computed from scratch, whatever the order.
TEST(ChunkMapTest, MapDigestIsIncremental) {
  std::mt19937 rng(5);
  std::vector<ContentHash> map(64);  // ZeroChunk() everywhere
  MapDigest incremental;
  for (int step = 0; step < 200; ++step) {
    uint64_t i = rng() % map.size();
    ContentHash next = rng() % 4 == 0 ? ContentHash::ZeroChunk() : ContentHash::Of(&step, sizeof step);
    incremental.Replace(i, map[i], next);
    map[i] = next;
  }
  MapDigest full;
  for (size_t i = map.size(); i-- > 0;) full.Add(i, map[i]);
  EXPECT_EQ(full.value(), incremental.value());
  // Position matters: the same hash at another index is another map.
  MapDigest a, b;
  ContentHash h = ContentHash::Of("x", 1);
  a.Add(1, h);
  b.Add(2, h);
  EXPECT_NE(a.value(), b.value());
}

}  // namespace
}  // namespace ebs::snapshot
