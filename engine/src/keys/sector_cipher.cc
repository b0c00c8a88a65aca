#include "keys/sector_cipher.h"

#include <gcrypt.h>
#include <openssl/crypto.h>

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

// libgcrypt wants to be set up once per process before use; without secure
// memory (keys live in ordinary memory here, as with OpenSSL, and are wiped
// when a cipher goes).
bool InitLibgcrypt() {
  static const bool ok = [] {
    if (gcry_control(GCRYCTL_INITIALIZATION_FINISHED_P)) return true;  // someone else did
    if (gcry_check_version(GCRYPT_VERSION) == nullptr) return false;
    gcry_control(GCRYCTL_DISABLE_SECMEM, 0);
    gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
    return true;
  }();
  return ok;
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
  for (gcry_cipher_handle* h : free_) gcry_cipher_close(h);
  OPENSSL_cleanse(const_cast<char*>(key_.data()), key_.size());
}

gcry_cipher_handle* SectorCipher::Take() const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!free_.empty()) {
      gcry_cipher_handle* h = free_.back();
      free_.pop_back();
      return h;
    }
  }
  if (!InitLibgcrypt()) return nullptr;
  gcry_cipher_hd_t h = nullptr;
  if (gcry_cipher_open(&h, GCRY_CIPHER_AES256, GCRY_CIPHER_MODE_XTS, 0) != 0) return nullptr;
  if (gcry_cipher_setkey(h, key_.data(), key_.size()) != 0) {
    gcry_cipher_close(h);
    return nullptr;
  }
  return h;
}

void SectorCipher::Give(gcry_cipher_handle* h) const {
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(h);
}

Status SectorCipher::Run(bool encrypt, uint64_t offset, const char* in, char* out, size_t len) const {
  if (!Aligned(offset, len)) return Status::InvalidArgument("XTS works on whole 4 KiB sectors");
  gcry_cipher_handle* h = Take();
  if (h == nullptr) return Status::Error(ENOMEM, "cannot set up AES-XTS (libgcrypt)");
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
    // In place when the buffers are one (libgcrypt's convention: no input).
    const void* from = src == dst ? nullptr : src;
    const size_t from_len = src == dst ? 0 : kSectorSize;
    ok = gcry_cipher_setiv(h, iv, sizeof iv) == 0 &&
         (encrypt ? gcry_cipher_encrypt(h, dst, kSectorSize, from, from_len)
                  : gcry_cipher_decrypt(h, dst, kSectorSize, from, from_len)) == 0;
  }
  Give(h);
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
