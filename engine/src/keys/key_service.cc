#include "ebs/engine/key_service.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <string_view>

#include <openssl/crypto.h>

#include "ebs/engine/time.h"
#include "ebs/engine/crypto.h"
#include "ebs/engine/file_util.h"

namespace ebs {
namespace {

constexpr std::string_view kSuffix = ".key";

Result<std::string> ReadFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return Status::FromErrno(err, "read " + path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > 65536) break;
  }
  ::close(fd);
  return out;
}

}  // namespace

nlohmann::json MasterKeyInfo::ToJson() const {
  nlohmann::json j = {{"name", name}, {"id", id}, {"created", FormatTime(created_at_ms)}};
  if (!error.empty()) j["error"] = error;
  return j;
}

std::string KeyService::PathOf(const std::string& name) const { return dir_ + "/" + name + std::string(kSuffix); }

Result<MasterKeyInfo> KeyService::Create(const std::string& name) {
  EBS_RETURN_IF_ERROR(ValidateName("key name", name));
  Status made = MakeDurableDirectories(dir_, 0700);
  if (!made.ok()) return Status::Error(made.code(), "create key directory " + dir_ + ": " + made.message());
  ::chmod(dir_.c_str(), 0700);  // keys are readable by their owner only
  auto secret = crypto::RandomBytes(crypto::kKeySize);
  if (!secret.ok()) return secret.status();
  auto id = crypto::RandomBytes(8);
  if (!id.ok()) return id.status();
  MasterKeyInfo info{name, "key-" + crypto::ToHex(*id), NowMs(), ""};
  nlohmann::json j = info.ToJson();
  j["created_at_ms"] = info.created_at_ms;
  j["secret"] = crypto::ToHex(*secret);
  OPENSSL_cleanse(secret->data(), secret->size());
  std::string text = j.dump(2) + "\n";
  // Written whole under a temporary name, then linked into place: a crash
  // never leaves a half-written key, and link() refuses an existing name.
  const std::string path = PathOf(name);
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, "create " + tmp);
  Status st = WriteAll(fd, text, tmp);
  OPENSSL_cleanse(text.data(), text.size());
  if (st.ok() && ::fsync(fd) != 0) st = Status::FromErrno(errno, "sync " + tmp);
  ::close(fd);
  if (st.ok() && ::link(tmp.c_str(), path.c_str()) != 0) {
    st = errno == EEXIST ? Status::AlreadyExists("key '" + name + "' already exists in " + dir_)
                         : Status::FromErrno(errno, "link " + path);
  }
  ::unlink(tmp.c_str());
  if (!st.ok()) return st;
  EBS_RETURN_IF_ERROR(SyncDirectory(dir_));
  return info;
}

Result<std::vector<MasterKeyInfo>> KeyService::List() const {
  std::vector<MasterKeyInfo> out;
  DIR* d = ::opendir(dir_.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return out;
    return Status::FromErrno(errno, "open key directory " + dir_);
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string_view f = e->d_name;
    if (f.size() > kSuffix.size() && f.ends_with(kSuffix)) names.emplace_back(f.substr(0, f.size() - kSuffix.size()));
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    auto k = Load(n);
    if (k.ok()) {
      out.push_back(k->info);
    } else {
      MasterKeyInfo bad;
      bad.name = n;
      bad.error = k.status().message();
      out.push_back(bad);
    }
  }
  return out;
}

Result<MasterKey> KeyService::Load(const std::string& name) const {
  EBS_RETURN_IF_ERROR(ValidateName("key name", name));
  const std::string path = PathOf(name);
  auto text = ReadFile(path);
  if (!text.ok()) {
    if (text.status().code() == ENOENT) {
      return Status::NotFound("key '" + name + "' not found in " + dir_ + " (ebs key list shows the keys there)");
    }
    return text.status();
  }
  auto bad = [&](const std::string& why) { return Status::Error(EBADMSG, "key file " + path + " is damaged: " + why); };
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  OPENSSL_cleanse(text->data(), text->size());
  if (!j.is_object() || !j.contains("secret") || !j["secret"].is_string() || !j.contains("id") || !j["id"].is_string()) {
    return bad("not a key document");
  }
  auto secret = crypto::FromHex(j["secret"].get<std::string>());
  if (!secret.ok() || secret->size() != crypto::kKeySize) return bad("the secret is not 32 bytes of hex");
  MasterKey key;
  key.info.name = name;
  key.info.id = j["id"].get<std::string>();
  key.info.created_at_ms = j.value("created_at_ms", int64_t{0});
  key.secret = std::move(*secret);
  return key;
}

Result<MasterKey> KeyService::LoadExpected(const std::string& name, const std::string& id) const {
  auto key = Load(name);
  if (!key.ok()) return key.status();
  if (key->info.id != id) {
    return Status::Error(EACCES, "key '" + name + "' in " + dir_ + " is not the key this data was encrypted with (it has id " +
                                     key->info.id + ", the data needs " + id + "): was it deleted and created again?");
  }
  return key;
}

Result<MasterKey> KeyService::LoadOrCreate(const std::string& name) {
  auto key = Load(name);
  if (key.ok() || key.status().code() != ENOENT) return key;
  auto made = Create(name);
  if (!made.ok() && made.status().code() != EEXIST) return made.status();  // EEXIST: created meanwhile
  return Load(name);
}

Result<WrappedKey> KeyService::NewDataKey(const MasterKey& master, size_t len, const std::string& context,
                                          std::string* plaintext) const {
  auto key = crypto::RandomBytes(len);
  if (!key.ok()) return key.status();
  std::string sealed;
  EBS_RETURN_IF_ERROR(crypto::Seal(master.secret, *key, "ebs data key:" + master.info.id + ":" + context, &sealed));
  *plaintext = std::move(*key);
  return WrappedKey{master.info.name, master.info.id, crypto::ToHex(sealed)};
}

Result<std::string> KeyService::Unwrap(const WrappedKey& wrapped, const std::string& context) const {
  auto master = LoadExpected(wrapped.key_name, wrapped.key_id);
  if (!master.ok()) return master.status();
  auto sealed = crypto::FromHex(wrapped.sealed_hex);
  if (!sealed.ok()) return Status::Error(EBADMSG, "the wrapped data key is not hex");
  std::string key;
  Status st = crypto::Open(master->secret, *sealed, "ebs data key:" + wrapped.key_id + ":" + context, &key);
  if (!st.ok()) {
    return Status::Error(EACCES, "key '" + wrapped.key_name + "' does not open this data key: " + st.message());
  }
  return key;
}

}  // namespace ebs
