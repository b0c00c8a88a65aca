// The cryptographic primitives: AES-256-GCM sealing, HMAC, HKDF-Expand and
// hex, including refusal of every kind of tampering.
#include "ebs/engine/crypto.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

namespace ebs {
namespace {

std::string Key(char fill) { return std::string(crypto::kKeySize, fill); }

std::string Sealed(const std::string& key, const std::string& plain, const std::string& aad) {
  std::string out;
  Status st = crypto::Seal(key, plain, aad, &out);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return out;
}

TEST(CryptoTest, RandomBytesHaveTheRequestedLengthAndDiffer) {
  auto a = crypto::RandomBytes(32);
  auto b = crypto::RandomBytes(32);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(32u, a->size());
  EXPECT_NE(*a, *b);
  auto none = crypto::RandomBytes(0);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST(CryptoTest, SealOpenRoundTrip) {
  const std::string key = Key('k');
  for (const std::string& plain : {std::string(), std::string("hello"), std::string(10000, '\x5a')}) {
    std::string sealed = Sealed(key, plain, "context");
    EXPECT_EQ(plain.size() + crypto::kGcmOverhead, sealed.size());
    if (!plain.empty()) {
      EXPECT_EQ(std::string::npos, sealed.find(plain)) << "the plaintext appears in the sealed bytes";
    }
    std::string out = "garbage that must be replaced";
    Status st = crypto::Open(key, sealed, "context", &out);
    ASSERT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(plain, out);
  }
  // An empty aad is a context too.
  std::string sealed = Sealed(key, "no aad", "");
  std::string out;
  ASSERT_TRUE(crypto::Open(key, sealed, "", &out).ok());
  EXPECT_EQ("no aad", out);
}

TEST(CryptoTest, OutputIsClearedFirst) {
  std::string out = "previous contents";
  ASSERT_TRUE(crypto::Seal(Key('k'), "abc", "", &out).ok());
  EXPECT_EQ(3 + crypto::kGcmOverhead, out.size());
}

TEST(CryptoTest, TwoSealsOfTheSamePlaintextDiffer) {
  const std::string key = Key('k');
  std::set<std::string> seen;
  std::set<std::string> nonces;
  for (int i = 0; i < 16; ++i) {
    std::string s = Sealed(key, "same plaintext", "aad");
    seen.insert(s);
    nonces.insert(s.substr(0, crypto::kGcmNonceSize));
  }
  EXPECT_EQ(16u, seen.size());
  EXPECT_EQ(16u, nonces.size()) << "a nonce was reused";
}

TEST(CryptoTest, OpenFailsWithWrongKeyOrAad) {
  const std::string key = Key('k');
  std::string sealed = Sealed(key, "secret data", "volume-1");
  std::string out;
  Status st = crypto::Open(Key('K'), sealed, "volume-1", &out);
  EXPECT_EQ(EBADMSG, st.code()) << st.ToString();
  EXPECT_TRUE(out.empty()) << "unauthenticated bytes were returned";
  st = crypto::Open(key, sealed, "volume-2", &out);
  EXPECT_EQ(EBADMSG, st.code()) << st.ToString();
  EXPECT_TRUE(out.empty());
  st = crypto::Open(key, sealed, "", &out);
  EXPECT_EQ(EBADMSG, st.code()) << st.ToString();
  // Sealed without aad, opened with one.
  std::string no_aad = Sealed(key, "secret data", "");
  EXPECT_EQ(EBADMSG, crypto::Open(key, no_aad, "x", &out).code());
}

TEST(CryptoTest, OpenFailsForEveryFlippedByte) {
  const std::string key = Key('k');
  const std::string sealed = Sealed(key, "thirty-two bytes of plaintext!!!", "aad");
  ASSERT_EQ(32 + crypto::kGcmOverhead, sealed.size());
  // Nonce, ciphertext and tag: every byte, two masks.
  for (size_t i = 0; i < sealed.size(); ++i) {
    for (unsigned char mask : {0x01, 0x80}) {
      std::string bad = sealed;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      std::string out;
      Status st = crypto::Open(key, bad, "aad", &out);
      EXPECT_EQ(EBADMSG, st.code()) << "flip of byte " << i << " mask " << int(mask) << " accepted";
      EXPECT_TRUE(out.empty()) << i;
    }
  }
}

TEST(CryptoTest, OpenFailsForTruncatedOrExtendedInput) {
  const std::string key = Key('k');
  const std::string sealed = Sealed(key, "some plaintext", "aad");
  for (size_t len = 0; len < sealed.size(); ++len) {
    std::string out;
    Status st = crypto::Open(key, sealed.substr(0, len), "aad", &out);
    EXPECT_EQ(EBADMSG, st.code()) << "truncated to " << len << " accepted";
  }
  std::string out;
  EXPECT_EQ(EBADMSG, crypto::Open(key, sealed + "x", "aad", &out).code());
}

TEST(CryptoTest, WrongKeySizeIsInvalid) {
  std::string out;
  EXPECT_EQ(EINVAL, crypto::Seal(std::string(16, 'k'), "x", "", &out).code());
  EXPECT_EQ(EINVAL, crypto::Open(std::string(31, 'k'), std::string(40, 'x'), "", &out).code());
}

TEST(CryptoTest, MacIsDeterministicKeyedAndComparable) {
  std::string m1 = crypto::Mac("key", "data");
  EXPECT_EQ(crypto::kMacSize, m1.size());
  EXPECT_EQ(m1, crypto::Mac("key", "data"));
  EXPECT_NE(m1, crypto::Mac("key2", "data"));
  EXPECT_NE(m1, crypto::Mac("key", "data2"));
  // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
  EXPECT_EQ("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            crypto::ToHex(crypto::Mac("Jefe", "what do ya want for nothing?")));

  EXPECT_TRUE(crypto::MacEqual(m1, crypto::Mac("key", "data")));
  std::string other = m1;
  other[31] ^= 1;
  EXPECT_FALSE(crypto::MacEqual(m1, other));
  other = m1;
  other[0] ^= 0x80;
  EXPECT_FALSE(crypto::MacEqual(m1, other));
  EXPECT_FALSE(crypto::MacEqual(m1, m1.substr(0, 31)));
  EXPECT_FALSE(crypto::MacEqual(m1, ""));
  EXPECT_TRUE(crypto::MacEqual("", ""));
}

TEST(CryptoTest, DeriveKeyIsDeterministicLabelDependentAndLengthExact) {
  const std::string master = Key('m');
  std::string a = crypto::DeriveKey(master, "label a", 192);
  EXPECT_EQ(192u, a.size());
  EXPECT_EQ(a, crypto::DeriveKey(master, "label a", 192));
  EXPECT_NE(a, crypto::DeriveKey(master, "label b", 192));
  EXPECT_NE(a, crypto::DeriveKey(Key('M'), "label a", 192));
  // Blocks of the output differ from each other (not one block repeated).
  EXPECT_NE(a.substr(0, 32), a.substr(32, 32));
  // HKDF-Expand: a shorter output is a prefix of a longer one.
  for (size_t len : {size_t{1}, size_t{31}, size_t{32}, size_t{33}, size_t{64}, size_t{100}}) {
    std::string k = crypto::DeriveKey(master, "label a", len);
    EXPECT_EQ(len, k.size());
    EXPECT_EQ(a.substr(0, len), k) << len;
  }
  EXPECT_TRUE(crypto::DeriveKey(master, "label a", 0).empty());
}

// RFC 5869 test case 1, the Expand step only (PRK given).
TEST(CryptoTest, DeriveKeyMatchesRfc5869) {
  auto prk = crypto::FromHex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5");
  auto info = crypto::FromHex("f0f1f2f3f4f5f6f7f8f9");
  ASSERT_TRUE(prk.ok());
  ASSERT_TRUE(info.ok());
  EXPECT_EQ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
            crypto::ToHex(crypto::DeriveKey(*prk, *info, 42)));
}

TEST(CryptoTest, HexRoundTripAndRejections) {
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  std::string hex = crypto::ToHex(all);
  EXPECT_EQ(512u, hex.size());
  EXPECT_EQ("000102", hex.substr(0, 6));
  EXPECT_EQ("fdfeff", hex.substr(hex.size() - 6));
  auto back = crypto::FromHex(hex);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(all, *back);
  auto upper = crypto::FromHex("ABCDEF");
  ASSERT_TRUE(upper.ok());
  EXPECT_EQ("\xab\xcd\xef", *upper);
  auto empty = crypto::FromHex("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
  EXPECT_EQ("", crypto::ToHex(""));

  EXPECT_EQ(EINVAL, crypto::FromHex("abc").status().code()) << "odd length";
  EXPECT_EQ(EINVAL, crypto::FromHex("0").status().code()) << "odd length";
  EXPECT_EQ(EINVAL, crypto::FromHex("zz").status().code()) << "not hex";
  EXPECT_EQ(EINVAL, crypto::FromHex("0g").status().code()) << "not hex";
  EXPECT_EQ(EINVAL, crypto::FromHex("g0").status().code()) << "not hex";
  EXPECT_EQ(EINVAL, crypto::FromHex("12 4").status().code()) << "space";
  EXPECT_EQ(EINVAL, crypto::FromHex("0x12").status().code()) << "prefix";
  EXPECT_EQ(EINVAL, crypto::FromHex(std::string("1\0", 2)).status().code()) << "NUL";
}

}  // namespace
}  // namespace ebs
