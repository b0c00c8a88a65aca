// The local key service on a real key directory: key files and their
// permissions, names, listing, envelope encryption of data keys and the
// clear errors for a missing, re-created or damaged key.
#include "ebs/engine/key_service.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "ebs/engine/crypto.h"
#include "test_util.h"

namespace ebs {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteAll(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(0, ::stat(path.c_str(), &st)) << path;
  return st.st_mode & 07777;
}

bool IsKeyId(const std::string& id) {
  if (id.size() != 4 + 16 || id.rfind("key-", 0) != 0) return false;
  for (char c : id.substr(4)) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

TEST(KeyServiceTest, CreateWritesAPrivateKeyFileInAPrivateDirectory) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/missing/parents/keys";
  KeyService keys(dir);
  EXPECT_EQ(dir, keys.dir());
  auto info = keys.Create("k1");
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ("k1", info->name);
  EXPECT_TRUE(IsKeyId(info->id)) << info->id;
  EXPECT_GT(info->created_at_ms, 0);

  const std::string path = dir + "/k1.key";
  ASSERT_TRUE(std::filesystem::exists(path));
  EXPECT_EQ(0600u, ModeOf(path)) << std::oct << ModeOf(path);
  EXPECT_EQ(0700u, ModeOf(dir)) << std::oct << ModeOf(dir);
  // Nothing else is left behind (no temporary file).
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) files.push_back(e.path().filename().string());
  EXPECT_EQ(std::vector<std::string>{"k1.key"}, files);

  // The file is what Load reads back: same id, a 32-byte secret.
  auto key = keys.Load("k1");
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  EXPECT_EQ(info->id, key->info.id);
  EXPECT_EQ("k1", key->info.name);
  EXPECT_EQ(info->created_at_ms, key->info.created_at_ms);
  EXPECT_EQ(crypto::kKeySize, key->secret.size());
  EXPECT_THAT(ReadAll(path), HasSubstr(crypto::ToHex(key->secret)));

  // Two keys get different ids and secrets.
  auto info2 = keys.Create("k2");
  ASSERT_TRUE(info2.ok());
  EXPECT_NE(info->id, info2->id);
  auto key2 = keys.Load("k2");
  ASSERT_TRUE(key2.ok());
  EXPECT_NE(key->secret, key2->secret);
}

TEST(KeyServiceTest, CreateMakesAnExistingDirectoryPrivate) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/keys";
  ASSERT_TRUE(std::filesystem::create_directory(dir));
  ASSERT_EQ(0, ::chmod(dir.c_str(), 0755));
  KeyService keys(dir);
  ASSERT_TRUE(keys.Create("k").ok());
  EXPECT_EQ(0700u, ModeOf(dir)) << std::oct << ModeOf(dir);
}

TEST(KeyServiceTest, DuplicateNameIsRefusedAndTheKeyKept) {
  TempDir tmp;
  KeyService keys(tmp.path() + "/keys");
  auto first = keys.Create("k1");
  ASSERT_TRUE(first.ok());
  auto second = keys.Create("k1");
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(EEXIST, second.status().code()) << second.status().ToString();
  auto key = keys.Load("k1");
  ASSERT_TRUE(key.ok());
  EXPECT_EQ(first->id, key->info.id) << "a refused create replaced the existing key";
}

TEST(KeyServiceTest, BadNamesAreRefused) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/keys";
  KeyService keys(dir);
  for (const std::string& name : {std::string("../x"), std::string(""), std::string("a/b"), std::string(".hidden"),
                                  std::string("-x"), std::string("a b"), std::string(65, 'a')}) {
    auto info = keys.Create(name);
    ASSERT_FALSE(info.ok()) << "'" << name << "'";
    EXPECT_EQ(EINVAL, info.status().code()) << "'" << name << "': " << info.status().ToString();
    EXPECT_EQ(EINVAL, keys.Load(name).status().code()) << "'" << name << "'";
  }
  EXPECT_FALSE(std::filesystem::exists(tmp.path() + "/x.key")) << "a key escaped its directory";
  EXPECT_TRUE(keys.Create(std::string(64, 'a')).ok()) << "64 characters is allowed";
  EXPECT_TRUE(keys.Create("A1._-z").ok());
}

TEST(KeyServiceTest, ListIsSortedWithIds) {
  TempDir tmp;
  KeyService keys(tmp.path() + "/keys");
  auto none = keys.List();
  ASSERT_TRUE(none.ok()) << "a missing directory lists as empty: " << none.status().ToString();
  EXPECT_TRUE(none->empty());

  std::map<std::string, std::string> ids;
  for (const char* name : {"zeta", "alpha", "mid", "Beta"}) {
    auto info = keys.Create(name);
    ASSERT_TRUE(info.ok());
    ids[name] = info->id;
  }
  // Not a key: ignored.
  WriteAll(tmp.path() + "/keys/notes.txt", "hello");
  auto list = keys.List();
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  std::vector<std::string> names;
  for (const auto& k : *list) {
    names.push_back(k.name);
    EXPECT_EQ(ids[k.name], k.id) << k.name;
    EXPECT_GT(k.created_at_ms, 0) << k.name;
  }
  EXPECT_EQ((std::vector<std::string>{"Beta", "alpha", "mid", "zeta"}), names);
}

TEST(KeyServiceTest, LoadOfAMissingKeyNamesTheDirectory) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/keys";
  KeyService keys(dir);
  auto k = keys.Load("nope");
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(ENOENT, k.status().code());
  EXPECT_THAT(k.status().message(), HasSubstr(dir));
  EXPECT_THAT(k.status().message(), HasSubstr("nope"));
  ASSERT_TRUE(keys.Create("other").ok());
  k = keys.Load("nope");
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(ENOENT, k.status().code());
  EXPECT_THAT(k.status().message(), HasSubstr(dir));
}

TEST(KeyServiceTest, LoadOrCreateCreatesOnce) {
  TempDir tmp;
  KeyService keys(tmp.path() + "/keys");
  auto first = keys.LoadOrCreate(kDefaultKeyName);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(kDefaultKeyName, first->info.name);
  EXPECT_TRUE(std::filesystem::exists(tmp.path() + "/keys/default.key"));
  auto second = keys.LoadOrCreate(kDefaultKeyName);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(first->info.id, second->info.id);
  EXPECT_EQ(first->secret, second->secret);
  auto list = keys.List();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(1u, list->size());
  EXPECT_EQ(EINVAL, keys.LoadOrCreate("../up").status().code());
}

TEST(KeyServiceTest, LoadExpectedRefusesAnotherId) {
  TempDir tmp;
  KeyService keys(tmp.path() + "/keys");
  auto info = keys.Create("k");
  ASSERT_TRUE(info.ok());
  EXPECT_TRUE(keys.LoadExpected("k", info->id).ok());
  auto wrong = keys.LoadExpected("k", "key-0000000000000000");
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(EACCES, wrong.status().code());
}

class KeyServiceDataKeyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto k = keys_.LoadOrCreate("master");
    ASSERT_TRUE(k.ok()) << k.status().ToString();
    master_ = *k;
    auto w = keys_.NewDataKey(master_, 64, "vol-1", &plain_);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    wrapped_ = *w;
  }
  std::string KeyPath() const { return dir_.path() + "/keys/master.key"; }

  TempDir dir_;
  KeyService keys_{dir_.path() + "/keys"};
  MasterKey master_;
  std::string plain_;
  WrappedKey wrapped_;
};

TEST_F(KeyServiceDataKeyTest, NewDataKeyAndUnwrapRoundTrip) {
  EXPECT_EQ(64u, plain_.size());
  EXPECT_EQ("master", wrapped_.key_name);
  EXPECT_EQ(master_.info.id, wrapped_.key_id);
  auto sealed = crypto::FromHex(wrapped_.sealed_hex);
  ASSERT_TRUE(sealed.ok());
  EXPECT_EQ(64 + crypto::kGcmOverhead, sealed->size());
  EXPECT_EQ(std::string::npos, sealed->find(plain_)) << "the data key is stored in the clear";
  EXPECT_EQ(std::string::npos, wrapped_.sealed_hex.find(crypto::ToHex(plain_)));

  auto back = keys_.Unwrap(wrapped_, "vol-1");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(plain_, *back);
  // Again (nothing consumed), and from another KeyService on the same directory.
  KeyService again(dir_.path() + "/keys");
  auto back2 = again.Unwrap(wrapped_, "vol-1");
  ASSERT_TRUE(back2.ok());
  EXPECT_EQ(plain_, *back2);

  // Every data key is fresh.
  std::string plain2;
  auto w2 = keys_.NewDataKey(master_, 64, "vol-1", &plain2);
  ASSERT_TRUE(w2.ok());
  EXPECT_NE(plain_, plain2);
  EXPECT_NE(wrapped_.sealed_hex, w2->sealed_hex);
}

TEST_F(KeyServiceDataKeyTest, UnwrapWithAnotherContextFails) {
  auto other = keys_.Unwrap(wrapped_, "vol-2");
  ASSERT_FALSE(other.ok()) << "a data key opened for another volume";
  EXPECT_EQ(EACCES, other.status().code()) << other.status().ToString();
  EXPECT_FALSE(keys_.Unwrap(wrapped_, "").ok());
}

TEST_F(KeyServiceDataKeyTest, UnwrapOfAlteredWrappedKeyFails) {
  WrappedKey bad = wrapped_;
  bad.sealed_hex[30] = bad.sealed_hex[30] == '0' ? '1' : '0';
  auto r = keys_.Unwrap(bad, "vol-1");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(EACCES, r.status().code()) << r.status().ToString();
  bad = wrapped_;
  bad.sealed_hex += "z";
  r = keys_.Unwrap(bad, "vol-1");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(EBADMSG, r.status().code()) << r.status().ToString();
}

TEST_F(KeyServiceDataKeyTest, UnwrapAfterTheKeyFileIsDeletedIsNotFound) {
  ASSERT_TRUE(std::filesystem::remove(KeyPath()));
  auto r = keys_.Unwrap(wrapped_, "vol-1");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(ENOENT, r.status().code()) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("master"));
  EXPECT_THAT(r.status().message(), HasSubstr(dir_.path() + "/keys"));
}

TEST_F(KeyServiceDataKeyTest, UnwrapWithAKeyRecreatedUnderTheSameNameIsRefused) {
  ASSERT_TRUE(std::filesystem::remove(KeyPath()));
  auto again = keys_.Create("master");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  ASSERT_NE(master_.info.id, again->id);
  auto r = keys_.Unwrap(wrapped_, "vol-1");
  ASSERT_FALSE(r.ok()) << "a re-created key opened the old data key";
  EXPECT_EQ(EACCES, r.status().code()) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr(master_.info.id));
  EXPECT_THAT(r.status().message(), HasSubstr(again->id));
  EXPECT_THAT(r.status().message(), HasSubstr("created again"));
}

TEST_F(KeyServiceDataKeyTest, UnwrapWithAnotherSecretUnderTheSameIdFails) {
  // A key file whose id matches but whose secret is not the one that sealed
  // the data key (a hand-edited or restored-from-elsewhere file).
  auto other = keys_.Create("other");
  ASSERT_TRUE(other.ok());
  std::string text = ReadAll(dir_.path() + "/keys/other.key");
  size_t pos = text.find(other->id);
  ASSERT_NE(std::string::npos, pos);
  text.replace(pos, other->id.size(), master_.info.id);
  WriteAll(KeyPath(), text);
  auto r = keys_.Unwrap(wrapped_, "vol-1");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(EACCES, r.status().code()) << r.status().ToString();
}

TEST_F(KeyServiceDataKeyTest, ADamagedKeyFileIsReportedAsSuch) {
  const std::string good = ReadAll(KeyPath());
  const std::string secret_hex = crypto::ToHex(master_.secret);
  ASSERT_NE(std::string::npos, good.find(secret_hex));
  struct Case {
    const char* what;
    std::string text;
  };
  std::string short_secret = good;
  short_secret.replace(short_secret.find(secret_hex), secret_hex.size(), secret_hex.substr(0, 62));
  std::string not_hex = good;
  not_hex.replace(not_hex.find(secret_hex), 2, "zz");
  std::string no_secret = good;
  no_secret.replace(no_secret.find("\"secret\""), 8, "\"secreT\"");
  const Case cases[] = {{"bad JSON", good.substr(0, good.size() / 2)},
                        {"empty file", ""},
                        {"a JSON array", "[1, 2, 3]"},
                        {"short secret", short_secret},
                        {"non-hex secret", not_hex},
                        {"no secret", no_secret}};
  for (const Case& c : cases) {
    WriteAll(KeyPath(), c.text);
    auto k = keys_.Load("master");
    ASSERT_FALSE(k.ok()) << c.what;
    EXPECT_EQ(EBADMSG, k.status().code()) << c.what << ": " << k.status().ToString();
    EXPECT_THAT(k.status().message(), HasSubstr(KeyPath())) << c.what;
    auto r = keys_.Unwrap(wrapped_, "vol-1");
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(EBADMSG, r.status().code()) << c.what << ": " << r.status().ToString();
    // Listing still works: the damaged key is listed with its error.
    auto list = keys_.List();
    ASSERT_TRUE(list.ok()) << c.what << ": " << list.status().ToString();
    ASSERT_EQ(1u, list->size()) << c.what;
    EXPECT_EQ("master", (*list)[0].name);
    EXPECT_THAT((*list)[0].error, HasSubstr("damaged")) << c.what;
  }
  WriteAll(KeyPath(), good);
  EXPECT_TRUE(keys_.Unwrap(wrapped_, "vol-1").ok()) << "the restored file works again";
}

TEST_F(KeyServiceDataKeyTest, NoFileInTheKeyDirectoryHoldsTheDataKey) {
  const std::string hex = crypto::ToHex(plain_);
  std::string upper = hex;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const auto& e : std::filesystem::directory_iterator(dir_.path() + "/keys")) {
    std::string text = ReadAll(e.path().string());
    EXPECT_EQ(std::string::npos, text.find(hex)) << e.path();
    EXPECT_EQ(std::string::npos, text.find(upper)) << e.path();
    EXPECT_EQ(std::string::npos, text.find(plain_)) << e.path();
    EXPECT_EQ(std::string::npos, text.find(wrapped_.sealed_hex)) << e.path() << ": the key file is per key, not per volume";
  }
}

}  // namespace
}  // namespace ebs
