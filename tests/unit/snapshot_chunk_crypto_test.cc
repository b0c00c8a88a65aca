// Encrypted snapshots: chunk objects sealed under keys derived from a master
// key and named by a keyed address, and manifests carrying a MAC.
#include "ebs/snapshot/chunk_crypto.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstring>
#include <random>
#include <string>

#include "ebs/snapshot/chunk_codec.h"
#include "test_util.h"
#include "ebs/snapshot/manifest.h"

namespace ebs::snapshot {
namespace {

using ebs::testing::RandomBytes;
using ebs::testing::TextBytes;

MasterKey MakeKey(const std::string& name, const std::string& id, char seed) {
  MasterKey k;
  k.info.name = name;
  k.info.id = id;
  k.info.created_at_ms = 1732530000000;
  k.secret.resize(32);
  for (size_t i = 0; i < k.secret.size(); ++i) k.secret[i] = static_cast<char>(seed + i * 3);
  return k;
}

// Rewrites the stored checksum of a chunk object so that damage to its
// stored bytes gets past the checksum to the authentication.
void FixChunkChecksum(std::string* object) {
  uint64_t sum = XXH3_64bits(object->data() + kChunkHeaderSize, object->size() - kChunkHeaderSize);
  for (int i = 0; i < 8; ++i) (*object)[16 + i] = static_cast<char>(sum >> (8 * i));
}

// Rewrites a manifest's trailer (XXH3-64 of every preceding byte, LE).
void FixManifestTrailer(std::string* bytes) {
  const size_t body = bytes->size() - 8;
  uint64_t sum = XXH3_64bits(bytes->data(), body);
  for (int i = 0; i < 8; ++i) (*bytes)[body + i] = static_cast<char>(sum >> (8 * i));
}

class ChunkCryptoTest : public ::testing::Test {
 protected:
  MasterKey key_a_ = MakeKey("alpha", "key-00000000000000aa", 1);
  MasterKey key_b_ = MakeKey("beta", "key-00000000000000bb", 2);
  ChunkCrypto a_{key_a_};
  ChunkCrypto b_{key_b_};
  ChunkCodec codec_;
};

TEST_F(ChunkCryptoTest, NamesAndIdsComeFromTheKey) {
  EXPECT_EQ("alpha", a_.key_name());
  EXPECT_EQ("key-00000000000000aa", a_.key_id());
  EXPECT_EQ("beta", b_.key_name());
}

TEST_F(ChunkCryptoTest, EncryptedRoundTrip) {
  struct Case {
    const char* name;
    std::string data;
  } cases[] = {{"text", TextBytes(512 * 1024)},
               {"random", RandomBytes(512 * 1024, 1)},
               {"small", "x"},
               {"empty", ""},
               {"odd", TextBytes(4096 + 3)}};
  for (const Case& c : cases) {
    std::string object, out;
    ContentHash hash;
    Status st = codec_.Encode(c.data.data(), c.data.size(), &object, &hash, &a_);
    ASSERT_TRUE(st.ok()) << c.name << ": " << st.ToString();
    auto header = ParseChunkHeader(object);
    ASSERT_TRUE(header.ok()) << c.name << ": " << header.status().ToString();
    EXPECT_TRUE(header->encrypted) << c.name;
    EXPECT_EQ(hash, header->content_hash) << c.name;
    EXPECT_EQ(c.data.size(), header->uncompressed_length) << c.name;
    st = codec_.Decode(object, hash, &out, &a_);
    ASSERT_TRUE(st.ok()) << c.name << ": " << st.ToString();
    EXPECT_EQ(c.data, out) << c.name;
    // A second ChunkCrypto from the same master key reads it too.
    ChunkCrypto again(key_a_);
    ASSERT_TRUE(codec_.Decode(object, hash, &out, &again).ok()) << c.name;
    EXPECT_EQ(c.data, out) << c.name;
  }
}

TEST_F(ChunkCryptoTest, CompressesBeforeEncrypting) {
  const std::string text = TextBytes(512 * 1024);
  std::string object;
  ASSERT_TRUE(codec_.Encode(text.data(), text.size(), &object, nullptr, &a_).ok());
  auto header = ParseChunkHeader(object);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(ChunkCodecId::kZstd, header->codec);
  EXPECT_LT(object.size(), text.size() / 3) << "encrypted text must still be compressed";
  const std::string random = RandomBytes(64 * 1024, 2);
  ASSERT_TRUE(codec_.Encode(random.data(), random.size(), &object, nullptr, &a_).ok());
  header = ParseChunkHeader(object);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(ChunkCodecId::kRaw, header->codec);
  EXPECT_EQ(kChunkHeaderSize + random.size() + 28, object.size()) << "nonce and tag: 28 bytes";
}

TEST_F(ChunkCryptoTest, StoredBytesHoldNoPlaintext) {
  for (const std::string& data : {TextBytes(64 * 1024), RandomBytes(64 * 1024, 3)}) {
    std::string object;
    ASSERT_TRUE(codec_.Encode(data.data(), data.size(), &object, nullptr, &a_).ok());
    for (size_t at : {size_t{0}, size_t{1000}, data.size() / 2, data.size() - 32}) {
      EXPECT_EQ(std::string::npos, object.find(data.substr(at, 32))) << "plaintext at " << at << " is in the object";
    }
    // Not even the zstd frame is visible (its magic is 28 b5 2f fd).
    EXPECT_EQ(std::string::npos, object.find("\x28\xb5\x2f\xfd"));
  }
}

TEST_F(ChunkCryptoTest, TwoEncodingsDifferButNameTheSameChunk) {
  const std::string data = TextBytes(8192);
  std::string o1, o2;
  ContentHash h1, h2;
  ASSERT_TRUE(codec_.Encode(data.data(), data.size(), &o1, &h1, &a_).ok());
  ASSERT_TRUE(codec_.Encode(data.data(), data.size(), &o2, &h2, &a_).ok());
  EXPECT_EQ(h1, h2) << "equal chunks under one key must deduplicate";
  EXPECT_NE(o1, o2) << "a fresh nonce per seal";
}

TEST_F(ChunkCryptoTest, AddressIsKeyed) {
  const std::string data = TextBytes(8192);
  ContentHash ha, hb;
  std::string object;
  ASSERT_TRUE(codec_.Encode(data.data(), data.size(), &object, &ha, &a_).ok());
  ASSERT_TRUE(codec_.Encode(data.data(), data.size(), &object, &hb, &b_).ok());
  EXPECT_EQ(a_.Address(data.data(), data.size()), ha);
  EXPECT_EQ(b_.Address(data.data(), data.size()), hb);
  EXPECT_NE(ContentHash::Of(data.data(), data.size()), ha) << "the address is the plain content hash";
  EXPECT_NE(ContentHash::Of(data.data(), data.size()), hb);
  EXPECT_NE(ha, hb) << "two keys give one address: content is linkable across keys";
  // Deterministic, content-dependent.
  ChunkCrypto again(key_a_);
  EXPECT_EQ(ha, again.Address(data.data(), data.size()));
  std::string other = data;
  other[100] ^= 1;
  EXPECT_NE(ha, a_.Address(other.data(), other.size()));
  EXPECT_NE(a_.Address("", 0), b_.Address("", 0));
  // A key with the same secret under another name and id derives the same
  // keys (they come from the secret only).
  MasterKey renamed = key_a_;
  renamed.info.name = "renamed";
  renamed.info.id = "key-1111111111111111";
  EXPECT_EQ(ha, ChunkCrypto(renamed).Address(data.data(), data.size()));
}

TEST_F(ChunkCryptoTest, DecodeWithAnotherKeyFails) {
  for (const std::string& data : {TextBytes(16 * 1024), RandomBytes(16 * 1024, 4)}) {
    std::string object, out = "untouched";
    ContentHash hash;
    ASSERT_TRUE(codec_.Encode(data.data(), data.size(), &object, &hash, &a_).ok());
    Status st = codec_.Decode(object, hash, &out, &b_);
    ASSERT_FALSE(st.ok()) << "decoded with the other key";
    EXPECT_EQ(EACCES, st.code()) << st.ToString();
    EXPECT_NE(data, out);
    // And it still decodes with the right one afterwards (the codec is reusable).
    ASSERT_TRUE(codec_.Decode(object, hash, &out, &a_).ok());
    EXPECT_EQ(data, out);
  }
}

TEST_F(ChunkCryptoTest, EncryptionFlagMustMatchTheSnapshot) {
  const std::string data = TextBytes(16 * 1024);
  std::string sealed, plain, out;
  ContentHash sealed_hash, plain_hash;
  ASSERT_TRUE(codec_.Encode(data.data(), data.size(), &sealed, &sealed_hash, &a_).ok());
  ASSERT_TRUE(codec_.Encode(data.data(), data.size(), &plain, &plain_hash).ok());
  Status st = codec_.Decode(sealed, sealed_hash, &out);
  EXPECT_EQ(EIO, st.code()) << "an encrypted object decoded without a key: " << st.ToString();
  EXPECT_EQ(EIO, DecodeChunk(sealed, sealed_hash).status().code());
  st = codec_.Decode(plain, plain_hash, &out, &a_);
  EXPECT_EQ(EIO, st.code()) << "a plain object accepted in an encrypted snapshot: " << st.ToString();
  // A plain object claiming the encrypted address is refused too.
  std::string forged = plain;
  std::memcpy(forged.data() + 24, sealed_hash.bytes.data(), 16);
  EXPECT_FALSE(codec_.Decode(forged, sealed_hash, &out, &a_).ok());
}

TEST_F(ChunkCryptoTest, EveryFlippedByteIsDetected) {
  for (const std::string& data : {TextBytes(3000), RandomBytes(2000, 5)}) {
    std::string object, out;
    ContentHash hash;
    ASSERT_TRUE(codec_.Encode(data.data(), data.size(), &object, &hash, &a_).ok());
    for (size_t i = 0; i < object.size(); ++i) {
      std::string bad = object;
      bad[i] ^= 0x01;
      Status st = codec_.Decode(bad, hash, &out, &a_);
      EXPECT_FALSE(st.ok()) << "flip of byte " << i << " of " << object.size() << " was not detected";
      // Damage after the header with the checksum recomputed: only the
      // authentication can catch it, and does.
      if (i >= kChunkHeaderSize) {
        FixChunkChecksum(&bad);
        st = codec_.Decode(bad, hash, &out, &a_);
        EXPECT_EQ(EACCES, st.code()) << "stored byte " << i << " altered (checksum fixed): " << st.ToString();
      }
    }
  }
}

TEST_F(ChunkCryptoTest, AnObjectMovedToAnotherAddressDoesNotOpen) {
  const std::string x = TextBytes(8192);
  const std::string y = RandomBytes(8192, 6);
  std::string ox, oy, out;
  ContentHash hx, hy;
  ASSERT_TRUE(codec_.Encode(x.data(), x.size(), &ox, &hx, &a_).ok());
  ASSERT_TRUE(codec_.Encode(y.data(), y.size(), &oy, &hy, &a_).ok());
  // Looked up under y's name: the header says otherwise.
  EXPECT_FALSE(codec_.Decode(ox, hy, &out, &a_).ok());
  // With the header rewritten to y's name: the seal is bound to x's.
  std::string moved = ox;
  std::memcpy(moved.data() + 24, hy.bytes.data(), 16);
  Status st = codec_.Decode(moved, hy, &out, &a_);
  EXPECT_EQ(EACCES, st.code()) << st.ToString();
}

TEST_F(ChunkCryptoTest, SealAndOpenDirectly) {
  const ContentHash addr = a_.Address("abc", 3);
  std::string sealed, out;
  ASSERT_TRUE(a_.Seal("payload", addr, &sealed).ok());
  ASSERT_TRUE(a_.Open(sealed, addr, &out).ok());
  EXPECT_EQ("payload", out);
  EXPECT_EQ(EACCES, b_.Open(sealed, addr, &out).code());
  EXPECT_EQ(EACCES, a_.Open(sealed, a_.Address("abd", 3), &out).code());
  EXPECT_EQ(EACCES, a_.Open(sealed.substr(0, 10), addr, &out).code());
  // The MAC is keyed and covers every byte.
  EXPECT_EQ(32u, a_.ManifestMac("m").size());
  EXPECT_EQ(a_.ManifestMac("m"), ChunkCrypto(key_a_).ManifestMac("m"));
  EXPECT_NE(a_.ManifestMac("m"), b_.ManifestMac("m"));
  EXPECT_NE(a_.ManifestMac("m"), a_.ManifestMac("n"));
}

// ---- Manifests of encrypted snapshots ----

Manifest SampleManifest(size_t entries, const ChunkCrypto* crypto) {
  Manifest m;
  m.snapshot_id = "snap-0123456789abcdef0";
  m.volume_name = "data";
  m.volume_id = "vol-0123456789abcdef0";
  m.lineage_id = "lin-42";
  m.sequence = 3;
  m.parent_snapshot_id = "snap-00000000000000002";
  m.volume_size = uint64_t{1} << 34;
  m.created_at_ms = 1732530000123;
  m.description = "encrypted";
  for (size_t i = 0; i < entries; ++i) {
    uint64_t v = i;
    ContentHash h = crypto ? crypto->Address(&v, sizeof v) : ContentHash::Of(&v, sizeof v);
    m.delta.push_back({i * 3 + 1, i % 7 == 0 ? ContentHash::ZeroChunk() : h});
  }
  m.map_digest = 0x0102030405060708;
  if (crypto) {
    m.key_name = crypto->key_name();
    m.key_id = crypto->key_id();
  }
  return m;
}

uint16_t VersionOf(const std::string& bytes) {
  return static_cast<uint16_t>(static_cast<uint8_t>(bytes[4]) | static_cast<uint8_t>(bytes[5]) << 8);
}

TEST_F(ChunkCryptoTest, EncryptedManifestRoundTripsAndVerifies) {
  for (size_t n : {0, 1, 50}) {
    Manifest m = SampleManifest(n, &a_);
    auto bytes = EncodeManifest(m, &a_);
    ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
    EXPECT_EQ(kEncryptedManifestFormatVersion, VersionOf(*bytes));
    auto back = DecodeManifest(*bytes);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(m, *back);
    EXPECT_EQ("alpha", back->key_name);
    EXPECT_EQ("key-00000000000000aa", back->key_id);
    Status st = VerifyManifestMac(*bytes, a_);
    EXPECT_TRUE(st.ok()) << st.ToString();
    // Deterministic: re-encoding the decoded manifest gives the same bytes.
    auto again = EncodeManifest(*back, &a_);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*bytes, *again);
  }
}

TEST_F(ChunkCryptoTest, ManifestMacUnderAnotherKeyFails) {
  auto bytes = EncodeManifest(SampleManifest(10, &a_), &a_);
  ASSERT_TRUE(bytes.ok());
  Status st = VerifyManifestMac(*bytes, b_);
  EXPECT_EQ(EACCES, st.code()) << st.ToString();
}

TEST_F(ChunkCryptoTest, AlteredManifestWithAValidChecksumFailsTheMac) {
  const std::string good = *EncodeManifest(SampleManifest(10, &a_), &a_);
  const size_t mac_at = good.size() - 8 - 32;
  // The MAC itself altered, the trailer recomputed: the manifest decodes
  // (it looks intact) but does not verify.
  for (size_t i = mac_at; i < mac_at + 32; i += 5) {
    std::string bad = good;
    bad[i] ^= 0x20;
    FixManifestTrailer(&bad);
    ASSERT_TRUE(DecodeManifest(bad).ok()) << "the trailer was not recomputed correctly";
    EXPECT_EQ(EACCES, VerifyManifestMac(bad, a_).code()) << "MAC byte " << i - mac_at;
  }
  // The contents altered (the description, a delta hash, the sequence), the
  // trailer recomputed: the MAC no longer matches.
  std::string bad = good;
  size_t at = bad.find("encrypted");
  ASSERT_NE(std::string::npos, at);
  bad[at] = 'E';
  FixManifestTrailer(&bad);
  auto decoded = DecodeManifest(bad);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ("Encrypted", decoded->description);
  EXPECT_EQ(EACCES, VerifyManifestMac(bad, a_).code());
  bad = good;
  bad[mac_at - 1] ^= 0x01;  // the last byte of the last delta hash
  FixManifestTrailer(&bad);
  EXPECT_EQ(EACCES, VerifyManifestMac(bad, a_).code());
  bad = good;
  bad[16] ^= 0x01;  // the sequence
  FixManifestTrailer(&bad);
  EXPECT_EQ(EACCES, VerifyManifestMac(bad, a_).code());
}

TEST_F(ChunkCryptoTest, EveryByteFlipOfAnEncryptedManifestIsRefused) {
  const std::string good = *EncodeManifest(SampleManifest(4, &a_), &a_);
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] ^= 0x80;
    bool refused = !DecodeManifest(bad).ok() || !VerifyManifestMac(bad, a_).ok();
    EXPECT_TRUE(refused) << "flip at byte " << i << " accepted";
    // With the checksum made to match, the MAC still catches it.
    if (i < good.size() - 8) {
      FixManifestTrailer(&bad);
      refused = !DecodeManifest(bad).ok() || !VerifyManifestMac(bad, a_).ok();
      EXPECT_TRUE(refused) << "flip at byte " << i << " (trailer fixed) accepted";
    }
  }
}

TEST_F(ChunkCryptoTest, ManifestWithAKeyIdNeedsItsCrypto) {
  Manifest m = SampleManifest(3, &a_);
  auto r = EncodeManifest(m);
  ASSERT_FALSE(r.ok()) << "an encrypted snapshot's manifest encoded without a MAC";
  EXPECT_EQ(EINVAL, r.status().code());
  r = EncodeManifest(m, &b_);
  ASSERT_FALSE(r.ok()) << "a manifest naming key alpha sealed with key beta";
  EXPECT_EQ(EINVAL, r.status().code());
}

TEST_F(ChunkCryptoTest, PlainManifestsAreStillVersion1) {
  Manifest m = SampleManifest(5, nullptr);
  auto bytes = EncodeManifest(m);
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  EXPECT_EQ(kManifestFormatVersion, VersionOf(*bytes));
  EXPECT_EQ(1, VersionOf(*bytes));
  auto back = DecodeManifest(*bytes);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(m, *back);
  EXPECT_TRUE(back->key_id.empty());
  EXPECT_TRUE(back->key_name.empty());
  // A plain manifest has no MAC to verify: refused, never "verified".
  EXPECT_EQ(EACCES, VerifyManifestMac(*bytes, a_).code());
  // The encrypted manifest is longer by the two key strings and the MAC.
  Manifest e = m;
  e.key_name = a_.key_name();
  e.key_id = a_.key_id();
  auto ebytes = EncodeManifest(e, &a_);
  ASSERT_TRUE(ebytes.ok());
  EXPECT_EQ(bytes->size() + 2 + e.key_name.size() + 2 + e.key_id.size() + 32, ebytes->size());
}

TEST_F(ChunkCryptoTest, DowngradedManifestDoesNotVerify) {
  // Someone without the key strips the key fields and MAC and re-encodes as
  // version 1: it decodes as a plain manifest, and the MAC check refuses it.
  Manifest m = SampleManifest(5, &a_);
  Manifest plain = m;
  plain.key_name.clear();
  plain.key_id.clear();
  auto bytes = EncodeManifest(plain);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(EACCES, VerifyManifestMac(*bytes, a_).code());
}

}  // namespace
}  // namespace ebs::snapshot
