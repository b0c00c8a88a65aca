// AES-256-XTS over 4 KiB sectors: key checks, round trips, the per-sector
// tweak (dm-crypt's plain64), the hole rule and concurrent use.
#include "keys/sector_cipher.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace ebs {
namespace {

constexpr uint64_t kSector = SectorCipher::kSectorSize;

std::string TestKey() {
  std::string key(SectorCipher::kKeySize, '\0');
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<char>(i * 7 + 1);
  return key;
}

std::string RandomData(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

std::shared_ptr<SectorCipher> MakeCipher(const std::string& key = TestKey()) {
  auto c = SectorCipher::Create(key);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *c : nullptr;
}

std::string Encrypt(const SectorCipher& c, uint64_t offset, const std::string& plain) {
  std::string out(plain.size(), '\0');
  Status st = c.Encrypt(offset, plain.data(), out.data(), plain.size());
  EXPECT_TRUE(st.ok()) << st.ToString();
  return out;
}

std::string Decrypt(const SectorCipher& c, uint64_t offset, const std::string& ct) {
  std::string out(ct.size(), '\0');
  Status st = c.Decrypt(offset, ct.data(), out.data(), ct.size());
  EXPECT_TRUE(st.ok()) << st.ToString();
  return out;
}

bool AllZero(const std::string& s) { return s.find_first_not_of('\0') == std::string::npos; }

TEST(SectorCipherTest, CreateChecksTheKey) {
  for (size_t len : {size_t{0}, size_t{32}, size_t{63}, size_t{65}, size_t{128}}) {
    auto c = SectorCipher::Create(std::string(len, 'k'));
    ASSERT_FALSE(c.ok()) << len;
    EXPECT_EQ(EINVAL, c.status().code()) << len;
  }
  // 64 bytes whose halves are equal: XTS is weak with key1 == key2.
  std::string equal = std::string(32, 'a') + std::string(32, 'a');
  auto c = SectorCipher::Create(equal);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(EINVAL, c.status().code());
  std::string half = RandomData(32, 1);
  c = SectorCipher::Create(half + half);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(EINVAL, c.status().code());
  // One byte of difference is enough.
  std::string almost = half + half;
  almost[63] ^= 1;
  EXPECT_TRUE(SectorCipher::Create(almost).ok());
  EXPECT_TRUE(SectorCipher::Create(TestKey()).ok());
}

TEST(SectorCipherTest, AlignedHelper) {
  EXPECT_TRUE(SectorCipher::Aligned(0, 0));
  EXPECT_TRUE(SectorCipher::Aligned(kSector, 3 * kSector));
  EXPECT_FALSE(SectorCipher::Aligned(512, kSector));
  EXPECT_FALSE(SectorCipher::Aligned(0, kSector + 1));
}

TEST(SectorCipherTest, RoundTripOverSeveralSectors) {
  auto c = MakeCipher();
  ASSERT_TRUE(c);
  const std::string plain = RandomData(8 * kSector, 2);
  for (uint64_t offset : {uint64_t{0}, 5 * kSector, (uint64_t{1} << 40)}) {
    std::string ct = Encrypt(*c, offset, plain);
    EXPECT_NE(plain, ct);
    for (uint64_t s = 0; s < 8; ++s) {
      EXPECT_NE(plain.substr(s * kSector, kSector), ct.substr(s * kSector, kSector)) << s;
    }
    EXPECT_EQ(plain, Decrypt(*c, offset, ct)) << offset;
    // Deterministic: the same sector, key and offset give the same ciphertext.
    EXPECT_EQ(ct, Encrypt(*c, offset, plain));
    // Sectors are independent units: one sector encrypted alone is the same
    // as it is inside a larger request, and decrypts alone.
    EXPECT_EQ(ct.substr(3 * kSector, kSector), Encrypt(*c, offset + 3 * kSector, plain.substr(3 * kSector, kSector)));
    EXPECT_EQ(plain.substr(6 * kSector, 2 * kSector),
              Decrypt(*c, offset + 6 * kSector, ct.substr(6 * kSector, 2 * kSector)));
  }
}

TEST(SectorCipherTest, EqualPlaintextAtDifferentSectorsDiffers) {
  auto c = MakeCipher();
  ASSERT_TRUE(c);
  const std::string sector = RandomData(kSector, 3);
  const std::string repeated = sector + sector;
  std::string ct = Encrypt(*c, 0, repeated);
  EXPECT_NE(ct.substr(0, kSector), ct.substr(kSector)) << "no tweak: equal sectors leak";
  EXPECT_NE(Encrypt(*c, 0, sector), Encrypt(*c, 7 * kSector, sector));
  // The tweak covers the high bits of the sector number too.
  EXPECT_NE(Encrypt(*c, 0, sector), Encrypt(*c, (uint64_t{1} << 32) * kSector, sector));
  // Decrypting at the wrong offset does not give the plaintext back.
  std::string wrong = Decrypt(*c, kSector, ct.substr(0, kSector));
  EXPECT_NE(sector, wrong);
  // Another key gives other ciphertext and cannot read this one.
  std::string key2 = TestKey();
  key2[0] ^= 1;
  auto c2 = MakeCipher(key2);
  ASSERT_TRUE(c2);
  EXPECT_NE(Encrypt(*c, 0, sector), Encrypt(*c2, 0, sector));
  EXPECT_NE(sector, Decrypt(*c2, 0, ct.substr(0, kSector)));
}

// The layout dm-crypt's aes-xts-plain64 uses: key = data key || tweak key,
// IV = the 4 KiB sector number, 64-bit little-endian, zero-padded to 16 bytes.
TEST(SectorCipherTest, MatchesAesXtsPlain64) {
  auto c = MakeCipher();
  ASSERT_TRUE(c);
  const std::string key = TestKey();
  const std::string plain = RandomData(kSector, 4);
  for (uint64_t sector : {uint64_t{0}, uint64_t{1}, uint64_t{0x0102030405}, ~uint64_t{0} / kSector}) {
    unsigned char iv[16] = {};
    for (int i = 0; i < 8; ++i) iv[i] = static_cast<unsigned char>(sector >> (8 * i));
    std::string want(kSector, '\0');
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    ASSERT_NE(nullptr, ctx);
    int n = 0;
    ASSERT_EQ(1, EVP_EncryptInit_ex(ctx, EVP_aes_256_xts(), nullptr,
                                    reinterpret_cast<const unsigned char*>(key.data()), iv));
    ASSERT_EQ(1, EVP_EncryptUpdate(ctx, reinterpret_cast<unsigned char*>(want.data()), &n,
                                   reinterpret_cast<const unsigned char*>(plain.data()), static_cast<int>(kSector)));
    EVP_CIPHER_CTX_free(ctx);
    EXPECT_EQ(want, Encrypt(*c, sector * kSector, plain)) << "sector " << sector;
  }
}

TEST(SectorCipherTest, HoleRule) {
  auto c = MakeCipher();
  ASSERT_TRUE(c);
  const std::string zeros(kSector, '\0');
  // An encrypted zero sector is not zero on disk (it is ordinary data)...
  std::string ct = Encrypt(*c, 2 * kSector, zeros);
  EXPECT_FALSE(AllZero(ct)) << "zeros must not be stored as zeros";
  EXPECT_NE(ct, Encrypt(*c, 3 * kSector, zeros));
  // ...and decrypts to zeros.
  EXPECT_EQ(zeros, Decrypt(*c, 2 * kSector, ct));
  // A stored all-zero sector (never written, or trimmed) reads as zeros,
  // at any offset, including in place.
  EXPECT_EQ(zeros, Decrypt(*c, 0, zeros));
  EXPECT_EQ(zeros, Decrypt(*c, 9 * kSector, zeros));
  std::string inplace = zeros;
  ASSERT_TRUE(c->Decrypt(kSector, inplace.data(), inplace.data(), kSector).ok());
  EXPECT_EQ(zeros, inplace);
  // Only the hole sectors of a mixed request: data, hole, data, hole.
  const std::string a = RandomData(kSector, 5);
  const std::string b = RandomData(kSector, 6);
  std::string mixed = Encrypt(*c, 0, a) + zeros + Encrypt(*c, 2 * kSector, b) + zeros;
  std::string out(mixed.size(), 'x');
  ASSERT_TRUE(c->Decrypt(0, mixed.data(), out.data(), mixed.size()).ok());
  EXPECT_EQ(a + zeros + b + zeros, out) << "the output of a hole sector must be zeroed, not left as it was";
  // A sector that is all zero but one byte is ciphertext, not a hole.
  std::string almost = zeros;
  almost[kSector - 1] = 1;
  EXPECT_FALSE(AllZero(Decrypt(*c, 0, almost)));
  EXPECT_NE(zeros, Decrypt(*c, 0, almost));
}

TEST(SectorCipherTest, MisalignedRequestsAreInvalid) {
  auto c = MakeCipher();
  ASSERT_TRUE(c);
  std::string buf(3 * kSector, 'p');
  std::string out(3 * kSector, '\0');
  struct Case {
    uint64_t offset;
    size_t len;
  } cases[] = {{512, kSector}, {1, kSector}, {0, kSector - 1}, {0, kSector + 512}, {kSector, 100}, {4097, 2 * kSector}};
  for (const Case& k : cases) {
    EXPECT_EQ(EINVAL, c->Encrypt(k.offset, buf.data(), out.data(), k.len).code()) << k.offset << "+" << k.len;
    EXPECT_EQ(EINVAL, c->Decrypt(k.offset, buf.data(), out.data(), k.len).code()) << k.offset << "+" << k.len;
  }
  EXPECT_TRUE(AllZero(out)) << "a refused request wrote output";
  // An empty request is aligned and does nothing.
  EXPECT_TRUE(c->Encrypt(kSector, buf.data(), out.data(), 0).ok());
}

TEST(SectorCipherTest, InPlace) {
  auto c = MakeCipher();
  ASSERT_TRUE(c);
  const std::string plain = RandomData(4 * kSector, 7);
  const std::string want = Encrypt(*c, 10 * kSector, plain);
  std::string buf = plain;
  ASSERT_TRUE(c->Encrypt(10 * kSector, buf.data(), buf.data(), buf.size()).ok());
  EXPECT_EQ(want, buf);
  ASSERT_TRUE(c->Decrypt(10 * kSector, buf.data(), buf.data(), buf.size()).ok());
  EXPECT_EQ(plain, buf);
}

TEST(SectorCipherTest, ConcurrentUseGivesCorrectResults) {
  auto c = MakeCipher();
  ASSERT_TRUE(c);
  constexpr int kThreads = 4;
  constexpr int kRounds = 200;
  std::vector<std::string> plain(kThreads), want(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    plain[t] = RandomData(2 * kSector, 100 + t);
    want[t] = Encrypt(*c, t * 2 * kSector, plain[t]);  // computed alone first
  }
  std::vector<int> errors(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::string ct(2 * kSector, '\0');
      std::string back(2 * kSector, '\0');
      for (int i = 0; i < kRounds; ++i) {
        // Each thread alternates between its own offset and a shared one.
        const uint64_t offset = (i % 2 == 0) ? t * 2 * kSector : 0;
        if (!c->Encrypt(offset, plain[t].data(), ct.data(), ct.size()).ok()) ++errors[t];
        if (i % 2 == 0 && ct != want[t]) ++errors[t];
        if (!c->Decrypt(offset, ct.data(), back.data(), back.size()).ok()) ++errors[t];
        if (back != plain[t]) ++errors[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(0, errors[t]) << "thread " << t;
}

}  // namespace
}  // namespace ebs
