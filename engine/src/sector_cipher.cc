#include "ebs/engine/sector_cipher.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cstring>
#include <string>

namespace ebs {
namespace {

bool AllZero(const char* p, size_t len) {
  // Ciphertext almost never starts with a zero word: this returns early.
  uint64_t w;
  for (size_t i = 0; i < len; i += sizeof w) {
    std::memcpy(&w, p + i, sizeof w);
    if (w != 0) return false;
  }
  return true;
}

}  // namespace

Result<std::shared_ptr<SectorCipher>> SectorCipher::Create(std::string_view key) {
  if (key.size() != kKeySize) return Status::InvalidArgument("an XTS key is 64 bytes");
  if (CRYPTO_memcmp(key.data(), key.data() + 32, 32) == 0) {
    return Status::InvalidArgument("the two halves of an XTS key must differ");
  }
  return std::shared_ptr<SectorCipher>(new SectorCipher(std::string(key)));
}

SectorCipher::~SectorCipher() {
  for (auto& list : free_) {
    for (EVP_CIPHER_CTX* c : list) EVP_CIPHER_CTX_free(c);
  }
  OPENSSL_cleanse(const_cast<char*>(key_.data()), key_.size());
}

EVP_CIPHER_CTX* SectorCipher::Take(bool encrypt) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& list = free_[encrypt];
    if (!list.empty()) {
      EVP_CIPHER_CTX* c = list.back();
      list.pop_back();
      return c;
    }
  }
  EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
  if (c == nullptr) return nullptr;
  const auto* k = reinterpret_cast<const unsigned char*>(key_.data());
  if (EVP_CipherInit_ex(c, EVP_aes_256_xts(), nullptr, k, nullptr, encrypt ? 1 : 0) != 1) {
    EVP_CIPHER_CTX_free(c);
    return nullptr;
  }
  return c;
}

void SectorCipher::Give(bool encrypt, EVP_CIPHER_CTX* ctx) const {
  std::lock_guard<std::mutex> lock(mu_);
  free_[encrypt].push_back(ctx);
}

Status SectorCipher::Run(bool encrypt, uint64_t offset, const char* in, char* out, size_t len) const {
  if (!Aligned(offset, len)) return Status::InvalidArgument("XTS works on whole 4 KiB sectors");
  EVP_CIPHER_CTX* ctx = Take(encrypt);
  if (ctx == nullptr) return Status::Error(ENOMEM, "cannot set up AES-XTS (OpenSSL)");
  bool ok = true;
  for (size_t done = 0; done < len && ok; done += kSectorSize) {
    const char* src = in + done;
    char* dst = out + done;
    if (!encrypt && AllZero(src, kSectorSize)) {  // a hole: never written, or trimmed
      if (dst != src) std::memset(dst, 0, kSectorSize);
      continue;
    }
    unsigned char iv[16] = {};
    const uint64_t sector = (offset + done) / kSectorSize;
    for (int i = 0; i < 8; ++i) iv[i] = static_cast<unsigned char>(sector >> (8 * i));
    int n = 0;
    ok = EVP_CipherInit_ex(ctx, nullptr, nullptr, nullptr, iv, -1) == 1 &&
         EVP_CipherUpdate(ctx, reinterpret_cast<unsigned char*>(dst), &n,
                          reinterpret_cast<const unsigned char*>(src), static_cast<int>(kSectorSize)) == 1 &&
         n == static_cast<int>(kSectorSize);
  }
  Give(encrypt, ctx);
  if (!ok) return Status::IoError(encrypt ? "AES-XTS encryption failed" : "AES-XTS decryption failed");
  return Status::Ok();
}

Status SectorCipher::Encrypt(uint64_t offset, const char* in, char* out, size_t len) const {
  return Run(true, offset, in, out, len);
}

Status SectorCipher::EncryptPadded(uint64_t offset, std::string* data) const {
  data->resize((data->size() + kSectorSize - 1) / kSectorSize * kSectorSize);
  return Encrypt(offset, data->data(), data->data(), data->size());
}

Status SectorCipher::Decrypt(uint64_t offset, const char* in, char* out, size_t len) const {
  return Run(false, offset, in, out, len);
}

}  // namespace ebs
