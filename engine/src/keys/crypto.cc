#include "ebs/engine/crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <memory>

namespace ebs::crypto {
namespace {

struct CtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CtxFree>;

const unsigned char* U(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }

}  // namespace

Result<std::string> RandomBytes(size_t len) {
  std::string out(len, '\0');
  if (len > 0 && RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(len)) != 1) {
    return Status::IoError("the random number generator failed (OpenSSL RAND_bytes)");
  }
  return out;
}

Status Seal(std::string_view key, std::string_view plaintext, std::string_view aad, std::string* out) {
  if (key.size() != kKeySize) return Status::InvalidArgument("AES-256-GCM needs a 32-byte key");
  auto nonce = RandomBytes(kGcmNonceSize);
  if (!nonce.ok()) return nonce.status();
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return Status::Error(ENOMEM, "EVP_CIPHER_CTX_new");
  out->assign(*nonce);
  out->resize(kGcmNonceSize + plaintext.size() + kGcmTagSize);
  auto* ct = reinterpret_cast<unsigned char*>(out->data()) + kGcmNonceSize;
  int n = 0;
  int fin = 0;
  bool ok = EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, U(key), U(*nonce)) == 1 &&
            (aad.empty() || EVP_EncryptUpdate(ctx.get(), nullptr, &n, U(aad), static_cast<int>(aad.size())) == 1) &&
            EVP_EncryptUpdate(ctx.get(), ct, &n, U(plaintext), static_cast<int>(plaintext.size())) == 1 &&
            EVP_EncryptFinal_ex(ctx.get(), ct + n, &fin) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kGcmTagSize, ct + plaintext.size()) == 1;
  if (!ok) return Status::IoError("AES-256-GCM encryption failed");
  return Status::Ok();
}

Status Open(std::string_view key, std::string_view sealed, std::string_view aad, std::string* out) {
  if (key.size() != kKeySize) return Status::InvalidArgument("AES-256-GCM needs a 32-byte key");
  if (sealed.size() < kGcmOverhead) return Status::Error(EBADMSG, "sealed data is truncated");
  const size_t len = sealed.size() - kGcmOverhead;
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return Status::Error(ENOMEM, "EVP_CIPHER_CTX_new");
  out->resize(len);
  auto* pt = reinterpret_cast<unsigned char*>(out->data());
  const unsigned char* ct = U(sealed) + kGcmNonceSize;
  std::string tag(sealed.substr(kGcmNonceSize + len));
  int n = 0;
  int fin = 0;
  bool ok = EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, U(key), U(sealed)) == 1 &&
            (aad.empty() || EVP_DecryptUpdate(ctx.get(), nullptr, &n, U(aad), static_cast<int>(aad.size())) == 1) &&
            EVP_DecryptUpdate(ctx.get(), pt, &n, ct, static_cast<int>(len)) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kGcmTagSize, tag.data()) == 1 &&
            EVP_DecryptFinal_ex(ctx.get(), pt + n, &fin) == 1;
  if (!ok) {
    OPENSSL_cleanse(out->data(), out->size());
    out->clear();
    return Status::Error(EBADMSG, "authentication failed (wrong key, or the data was altered)");
  }
  return Status::Ok();
}

std::string Mac(std::string_view key, std::string_view data) {
  unsigned char md[kMacSize];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), U(data), data.size(), md, &len);
  return std::string(reinterpret_cast<char*>(md), len);
}

bool MacEqual(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string DeriveKey(std::string_view master, std::string_view label, size_t len) {
  std::string out;
  std::string t;
  for (uint8_t i = 1; out.size() < len; ++i) {
    std::string block = t;
    block.append(label);
    block.push_back(static_cast<char>(i));
    t = Mac(master, block);
    out.append(t);
  }
  out.resize(len);
  return out;
}

std::string ToHex(std::string_view raw) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char c : raw) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

Result<std::string> FromHex(std::string_view hex) {
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (hex.size() % 2 != 0) return Status::InvalidArgument("odd number of hex digits");
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = digit(hex[2 * i]);
    int lo = digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return Status::InvalidArgument("not a hex digit");
    out[i] = static_cast<char>(hi << 4 | lo);
  }
  return out;
}

}  // namespace ebs::crypto
