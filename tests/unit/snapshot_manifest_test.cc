// Manifests: exact round trips, the size of a large one, and refusal of
// every kind of damage with a clear error.
#include <gtest/gtest.h>

#include <chrono>
#include <random>

#include "ebs/snapshot/manifest.h"

namespace ebs::snapshot {
namespace {

ContentHash HashOf(uint64_t v) { return ContentHash::Of(&v, sizeof v); }

Manifest Sample(size_t entries) {
  Manifest m;
  m.snapshot_id = "snap-0123456789abcdef0";
  m.volume_name = "data";
  m.volume_id = "vol-0123456789abcdef0";
  m.lineage_id = "lin-42";
  m.sequence = 7;
  m.parent_snapshot_id = "snap-00000000000000006";
  m.volume_size = uint64_t{1} << 40;  // 1 TiB: 2 M chunks of 512 KiB
  m.chunk_size = kDefaultChunkSize;
  m.created_at_ms = 1732530000123;
  m.description = "nightly \"backup\" \xe2\x9c\x93";
  for (size_t i = 0; i < entries; ++i) {
    m.delta.push_back({i * 2 + 1, i % 10 == 0 ? ContentHash::ZeroChunk() : HashOf(i)});
  }
  m.map_digest = 0x1122334455667788;
  return m;
}

TEST(ManifestTest, RoundTrip) {
  for (size_t n : {0, 1, 1000}) {
    Manifest m = Sample(n);
    if (n == 0) m.parent_snapshot_id.clear();  // the first of a lineage
    auto bytes = EncodeManifest(m);
    ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
    auto back = DecodeManifest(*bytes);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(m, *back);
    EXPECT_EQ(*bytes, *EncodeManifest(*back)) << "encoding is deterministic";
  }
}

// A million-chunk delta is ~24 MB (24 bytes an entry) and quick both ways.
TEST(ManifestTest, MillionEntriesIs24MB) {
  Manifest m = Sample(1 << 20);
  auto start = std::chrono::steady_clock::now();
  auto bytes = EncodeManifest(m);
  ASSERT_TRUE(bytes.ok());
  auto back = DecodeManifest(*bytes);
  ASSERT_TRUE(back.ok());
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(bytes->size(), (1u << 20) * 24 + 512);
  EXPECT_GE(bytes->size(), (1u << 20) * 24);
  EXPECT_EQ(m.delta, back->delta);
  RecordProperty("encode_decode_ms", static_cast<int>(ms));
}

TEST(ManifestTest, EncodeRefusesMalformedManifests) {
  Manifest m = Sample(3);
  m.delta[1].chunk = m.delta[0].chunk;
  EXPECT_EQ(EINVAL, EncodeManifest(m).status().code()) << "duplicate chunk";
  m = Sample(3);
  std::swap(m.delta[0], m.delta[2]);
  EXPECT_EQ(EINVAL, EncodeManifest(m).status().code()) << "unsorted";
  m = Sample(3);
  m.volume_size = m.chunk_size;  // one chunk; entries point past it
  EXPECT_EQ(EINVAL, EncodeManifest(m).status().code()) << "chunk past the end";
  m = Sample(3);
  m.chunk_size = 1000;
  EXPECT_EQ(EINVAL, EncodeManifest(m).status().code()) << "chunk size";
  m = Sample(3);
  m.description.assign(70000, 'x');
  EXPECT_EQ(EINVAL, EncodeManifest(m).status().code()) << "long string";
  m = Sample(3);
  m.snapshot_id.clear();
  EXPECT_EQ(EINVAL, EncodeManifest(m).status().code()) << "no id";
}

TEST(ManifestTest, DamageIsRefusedWithClearErrors) {
  std::string good = *EncodeManifest(Sample(50));
  auto expect = [](const std::string& bytes, const std::string& needle) {
    auto r = DecodeManifest(bytes);
    ASSERT_FALSE(r.ok()) << "accepted a damaged manifest; expected '" << needle << "'";
    EXPECT_EQ(EIO, r.status().code());
    EXPECT_NE(std::string::npos, r.status().message().find(needle))
        << "'" << r.status().message() << "' lacks '" << needle << "'";
  };
  std::string bad = good;
  bad[1] = 'X';
  expect(bad, "bad magic");
  bad = good;
  bad[4] = 9;
  expect(bad, "unsupported format version 9");
  expect(good.substr(0, good.size() - 1), "truncated: " + std::to_string(good.size() - 1) + " of " +
                                              std::to_string(good.size()));
  expect(good.substr(0, good.size() / 2), "truncated");
  expect(good.substr(0, 5), "truncated");
  expect("", "truncated");
  expect(good + "z", "trailing bytes");
  // One flipped bit anywhere after the length field is a checksum mismatch
  // (flips in magic, version and length have their own messages above).
  for (size_t i = 16; i < good.size(); i += 7) {
    bad = good;
    bad[i] ^= 0x04;
    expect(bad, "checksum mismatch");
  }
}

TEST(ManifestTest, EveryByteFlipIsRefused) {
  std::string good = *EncodeManifest(Sample(4));
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] ^= 0x80;
    EXPECT_FALSE(DecodeManifest(bad).ok()) << "flip at byte " << i << " accepted";
  }
}

}  // namespace
}  // namespace ebs::snapshot
