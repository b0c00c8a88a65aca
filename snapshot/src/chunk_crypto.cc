#include "ebs/snapshot/chunk_crypto.h"

#include <openssl/crypto.h>
#include <xxhash.h>


#include "ebs/engine/crypto.h"

namespace ebs::snapshot {

ChunkCrypto::ChunkCrypto(const MasterKey& key)
    : key_name_(key.info.name),
      key_id_(key.info.id),
      address_secret_(crypto::DeriveKey(key.secret, "ebs snapshot chunk address v1", 192)),
      chunk_key_(crypto::DeriveKey(key.secret, "ebs snapshot chunk key v1", crypto::kKeySize)),
      manifest_key_(crypto::DeriveKey(key.secret, "ebs snapshot manifest mac v1", crypto::kKeySize)) {
  static_assert(192 >= XXH3_SECRET_SIZE_MIN);
}

ChunkCrypto::~ChunkCrypto() {
  for (std::string* s : {&address_secret_, &chunk_key_, &manifest_key_}) OPENSSL_cleanse(s->data(), s->size());
}

ContentHash ChunkCrypto::Address(const void* data, size_t len) const {
  return ContentHash::OfKeyed(data, len, address_secret_);
}

Status ChunkCrypto::Seal(std::string_view plain, const ContentHash& address, std::string* out) const {
  return crypto::Seal(chunk_key_, plain, address.AsBytes(), out);
}

Status ChunkCrypto::Open(std::string_view sealed, const ContentHash& address, std::string* out) const {
  Status st = crypto::Open(chunk_key_, sealed, address.AsBytes(), out);
  if (!st.ok()) return Status::Error(EACCES, "chunk " + address.ToHex() + " does not open under key '" + key_name_ + "': " + st.message());
  return st;
}

std::string ChunkCrypto::ManifestMac(std::string_view bytes) const { return crypto::Mac(manifest_key_, bytes); }

}  // namespace ebs::snapshot
