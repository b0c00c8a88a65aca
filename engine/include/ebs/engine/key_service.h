// The local key service: envelope encryption in the spirit of AWS KMS.
//
// A master key is a named file in the key directory (DATA_DIR/keys by
// default, or --key-dir), mode 0600 in a 0700 directory, holding a random
// 256-bit secret and a random id. Master keys never encrypt data: each
// encrypted volume gets its own random data key, which is stored only sealed
// (AES-256-GCM) under its master key, bound to the volume's id; snapshots
// derive their chunk and manifest keys from the master key (see
// snapshot/chunk_crypto.h). Losing a key file loses the data it protects.
//
// The id lets a volume tell "the key named k1" from "the key it was made
// with": a key deleted and re-created under the same name is refused with an
// error that says so, never used to read garbage.
//
// Thread-safe (every call works on the files).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ebs/engine/status.h"

namespace ebs {

inline constexpr const char* kDefaultKeyName = "default";

struct MasterKeyInfo {
  std::string name;
  std::string id;  // "key-" + 16 hex digits
  int64_t created_at_ms = 0;
  std::string error;  // List: why the key file could not be read
  nlohmann::json ToJson() const;
};

struct MasterKey {
  MasterKeyInfo info;
  std::string secret;  // 32 raw bytes
};

// A data key as a volume record stores it: sealed under a master key.
struct WrappedKey {
  std::string key_name;
  std::string key_id;
  std::string sealed_hex;  // nonce || ciphertext || tag
};

// A new volume encrypted at rest under a master key.
struct EncryptionRequest {
  std::string key_name;  // empty: "default", created on first use
};

class KeyService {
 public:
  explicit KeyService(std::string dir) : dir_(std::move(dir)) {}
  const std::string& dir() const { return dir_; }

  // EEXIST when a key of that name exists; EINVAL for a bad name (the
  // volume name rules).
  Result<MasterKeyInfo> Create(const std::string& name);
  // Every key, sorted by name; a key file that cannot be read is listed
  // with its error. Empty when the directory does not exist.
  Result<std::vector<MasterKeyInfo>> List() const;
  // ENOENT with a message naming the directory when there is no such key.
  Result<MasterKey> Load(const std::string& name) const;
  // Load, and refuse a key whose id is not `id` (re-created under the name).
  Result<MasterKey> LoadExpected(const std::string& name, const std::string& id) const;
  // The key `name`, created first if it does not exist (the default key).
  Result<MasterKey> LoadOrCreate(const std::string& name);

  // A fresh random data key of `len` bytes, returned in the clear in
  // *plaintext and sealed under `master`, bound to `context` (a volume id).
  Result<WrappedKey> NewDataKey(const MasterKey& master, size_t len, const std::string& context,
                                std::string* plaintext) const;
  // Opens a data key sealed by NewDataKey. Clear errors for a missing key
  // (ENOENT), a key re-created under the same name and a key that does not
  // open it (EACCES).
  Result<std::string> Unwrap(const WrappedKey& wrapped, const std::string& context) const;

 private:
  std::string PathOf(const std::string& name) const;
  const std::string dir_;
};

}  // namespace ebs
