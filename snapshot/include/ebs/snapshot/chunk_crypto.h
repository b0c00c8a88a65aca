// The keys of encrypted snapshots, derived from one master key
// (engine/key_service.h) with HKDF, one label per purpose:
//
// - the chunk key, AES-256-GCM: each chunk object of an encrypted snapshot
//   is sealed with a fresh random nonce, its content address as associated
//   data (an object moved under another name does not open);
// - the address secret: chunk objects are named by XXH3-128 keyed with a
//   192-byte secret, so the store's object names say nothing about content
//   to anyone without the key, and identical plaintext deduplicates only
//   among snapshots under the same master key;
// - the manifest key, HMAC-SHA256: an encrypted snapshot's manifest carries
//   a MAC, so a manifest altered by anyone without the key is refused.
//
// Snapshots of every volume under one master key share these keys (that is
// what lets them deduplicate); a volume's own data key (XTS) never leaves
// its volume record. Immutable after construction; thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "ebs/engine/key_service.h"
#include "ebs/engine/status.h"
#include "ebs/snapshot/content_hash.h"

namespace ebs::snapshot {

class ChunkCrypto {
 public:
  explicit ChunkCrypto(const MasterKey& key);
  ~ChunkCrypto();
  ChunkCrypto(const ChunkCrypto&) = delete;
  ChunkCrypto& operator=(const ChunkCrypto&) = delete;

  const std::string& key_name() const { return key_name_; }
  const std::string& key_id() const { return key_id_; }

  // The keyed content address of `len` bytes.
  ContentHash Address(const void* data, size_t len) const;
  // AES-256-GCM of a chunk object's stored bytes, bound to its address.
  Status Seal(std::string_view plain, const ContentHash& address, std::string* out) const;
  // EACCES when the object does not authenticate under this key.
  Status Open(std::string_view sealed, const ContentHash& address, std::string* out) const;
  // HMAC-SHA256 over an encoded manifest.
  std::string ManifestMac(std::string_view bytes) const;

 private:
  std::string key_name_;
  std::string key_id_;
  std::string address_secret_;  // 192 bytes
  std::string chunk_key_;       // 32 bytes
  std::string manifest_key_;    // 32 bytes
};

}  // namespace ebs::snapshot
