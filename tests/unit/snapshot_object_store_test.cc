// The directory object store against the ObjectStore contract: atomic,
// durable puts that leave nothing behind, ENOENT, key rules, listing, and a
// full disk.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "ebs/snapshot/directory_object_store.h"
#include "test_util.h"

namespace ebs::snapshot {
namespace {

using ebs::testing::TempDir;
namespace fs = std::filesystem;

// Every file under `root`, relative, including dot-files.
std::vector<std::string> FilesUnder(const std::string& root) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (e.is_regular_file()) out.push_back(fs::relative(e.path(), root).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

class DirectoryObjectStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = DirectoryObjectStore::Open(dir_.path() + "/store");
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
  }
  TempDir dir_;
  std::unique_ptr<DirectoryObjectStore> store_;
};

TEST(ObjectKeyTest, RulesAndLayout) {
  for (const char* good : {"a", "chunks/ab/cd/0123", "snapshots/snap-1.manifest", "A_b-c.d/e"}) {
    EXPECT_TRUE(ValidateObjectKey(good).ok()) << good;
  }
  for (const char* bad : {"", "/abs", "a//b", "a/", "..", "a/../b", "./a", "a/.hidden", "sp ace", "a\\b",
                          "caf\xc3\xa9", "nul\n"}) {
    EXPECT_EQ(EINVAL, ValidateObjectKey(bad).code()) << bad;
  }
  EXPECT_EQ(EINVAL, ValidateObjectKey(std::string(kMaxKeySegmentLength + 1, 'a')).code());
  EXPECT_EQ(EINVAL, ValidateObjectKey(std::string(kMaxObjectKeyLength + 1, 'a')).code());
  ContentHash h = *ContentHash::FromHex("abcdef0123456789abcdef0123456789");
  EXPECT_EQ("chunks/ab/cd/abcdef0123456789abcdef0123456789", ChunkKey(h));
  EXPECT_EQ("snapshots/snap-0a.manifest", ManifestKey("snap-0a"));
  EXPECT_TRUE(ValidateObjectKey(ChunkKey(h)).ok());
}

TEST_F(DirectoryObjectStoreTest, PutGetExistsDelete) {
  const std::string key = "chunks/ab/cd/abcd0000";
  auto missing = store_->Get(key);
  EXPECT_EQ(ENOENT, missing.status().code());
  EXPECT_FALSE(*store_->Exists(key));

  ASSERT_TRUE(store_->Put(key, "hello").ok());
  EXPECT_EQ("hello", *store_->Get(key));
  EXPECT_TRUE(*store_->Exists(key));
  // The file is where the layout says, and nothing else was left behind.
  EXPECT_EQ(std::vector<std::string>{key}, FilesUnder(store_->root()));

  ASSERT_TRUE(store_->Put(key, std::string(100000, 'x')).ok());  // replace
  EXPECT_EQ(std::string(100000, 'x'), *store_->Get(key));
  ASSERT_TRUE(store_->Put(key, "").ok());  // empty objects are objects
  EXPECT_EQ("", *store_->Get(key));
  EXPECT_TRUE(*store_->Exists(key));

  ASSERT_TRUE(store_->Delete(key).ok());
  EXPECT_EQ(ENOENT, store_->Get(key).status().code());
  EXPECT_FALSE(*store_->Exists(key));
  EXPECT_TRUE(store_->Delete(key).ok()) << "deleting a missing object is OK, as in S3";
  EXPECT_TRUE(FilesUnder(store_->root()).empty());
}

// A Put killed between creating its temporary and the rename leaves a
// dot-file no listing shows: RemoveStaleTemporaries removes those old
// enough, keeps fresh ones (another process may be writing them) and never
// touches objects or the index directories beside them.
TEST_F(DirectoryObjectStoreTest, RemovesStaleTemporariesOnly) {
  const std::string root = store_->root();
  ASSERT_TRUE(store_->Put("chunks/ab/cd/abcd0001", "object").ok());
  ASSERT_TRUE(store_->Put("snapshots/snap-1.manifest", "manifest").ok());
  auto write = [](const std::string& path) { std::ofstream(path) << "partial"; };
  const std::string old_chunk = root + "/chunks/ab/cd/.tmp.abcd0002.999.1";
  const std::string old_manifest = root + "/snapshots/.tmp.snap-2.manifest.999.2";
  const std::string old_top = root + "/.tmp.store.json.999.3";
  const std::string fresh = root + "/chunks/ab/cd/.tmp.abcd0003.999.4";
  fs::create_directories(root + "/index");
  const std::string in_index = root + "/index/.tmp.rocksdb";
  for (const auto& p : {old_chunk, old_manifest, old_top, fresh, in_index}) write(p);
  const auto two_hours_ago = fs::file_time_type::clock::now() - std::chrono::hours(2);
  for (const auto& p : {old_chunk, old_manifest, old_top, in_index}) fs::last_write_time(p, two_hours_ago);

  auto removed = store_->RemoveStaleTemporaries();
  ASSERT_TRUE(removed.ok()) << removed.status().ToString();
  EXPECT_EQ(3u, *removed);
  EXPECT_FALSE(fs::exists(old_chunk));
  EXPECT_FALSE(fs::exists(old_manifest));
  EXPECT_FALSE(fs::exists(old_top));
  EXPECT_TRUE(fs::exists(fresh)) << "a temporary younger than an hour may belong to a Put in flight";
  EXPECT_TRUE(fs::exists(in_index)) << "the index is not the object store's";
  EXPECT_EQ("object", *store_->Get("chunks/ab/cd/abcd0001"));
  EXPECT_EQ("manifest", *store_->Get("snapshots/snap-1.manifest"));

  // With no minimum age, the fresh one goes too; a second run finds nothing.
  EXPECT_EQ(1u, *store_->RemoveStaleTemporaries(0));
  EXPECT_EQ(0u, *store_->RemoveStaleTemporaries(0));
  EXPECT_EQ((std::vector<std::string>{"chunks/ab/cd/abcd0001", "snapshots/snap-1.manifest"}), *store_->List(""));
}

TEST_F(DirectoryObjectStoreTest, BatchedPutsAreAtomicAndVisibleThenFlushed) {
  // Whether bytes reached the disk cannot be seen without a power cut; what
  // can: a batched put is whole under its key at once, replaces like Put,
  // leaves no temporary file, creates the fan-out directories, and Flush
  // succeeds (and fails on a store whose root is gone).
  const std::string big(300000, 'b');
  ASSERT_TRUE(store_->PutBatched("chunks/ab/cd/one", big).ok());
  ASSERT_TRUE(store_->PutBatched("chunks/ab/ce/two", "two").ok());
  ASSERT_TRUE(store_->PutBatched("chunks/ab/ce/two", "2").ok());
  EXPECT_EQ(big, *store_->Get("chunks/ab/cd/one"));
  EXPECT_EQ("2", *store_->Get("chunks/ab/ce/two"));
  EXPECT_EQ((std::vector<std::string>{"chunks/ab/cd/one", "chunks/ab/ce/two"}), FilesUnder(store_->root()));
  EXPECT_TRUE(store_->Flush().ok());
  EXPECT_EQ(EINVAL, store_->PutBatched("../escape", "x").code());
  fs::remove_all(store_->root());
  EXPECT_FALSE(store_->Flush().ok());
}

// Large batched objects are written with direct I/O where the file system
// allows (whole blocks direct, the tail buffered): every size around the
// block and threshold edges reads back whole, replaces, and leaves no
// temporary file.
TEST_F(DirectoryObjectStoreTest, BatchedObjectsOfEverySizeReadBackWhole) {
  std::mt19937_64 rng(7);
  const size_t block = 4096, min = 64 << 10;
  std::vector<size_t> sizes = {min - 1, min, min + 1, min + block - 1, 300000, 512 << 10, (512 << 10) + 1,
                               (512 << 10) + block - 1, (1 << 20) + 17};
  std::vector<std::pair<std::string, std::string>> put;
  for (size_t i = 0; i < sizes.size(); ++i) {
    std::string bytes(sizes[i], '\0');
    for (auto& c : bytes) c = static_cast<char>(rng());
    std::string key = "chunks/" + std::to_string(10 + i) + "/xx/obj";
    ASSERT_TRUE(store_->PutBatched(key, bytes).ok()) << sizes[i];
    put.emplace_back(key, std::move(bytes));
  }
  // Replacing a direct-written object with a shorter one leaves no stale tail.
  std::string shorter(min + 3, 's');
  ASSERT_TRUE(store_->PutBatched(put.back().first, shorter).ok());
  put.back().second = shorter;
  ASSERT_TRUE(store_->Flush().ok());
  for (const auto& [key, bytes] : put) {
    auto got = store_->Get(key);
    ASSERT_TRUE(got.ok()) << key << ": " << got.status().ToString();
    EXPECT_EQ(bytes.size(), got->size()) << key;
    EXPECT_TRUE(bytes == *got) << key << ": content differs";
    EXPECT_EQ(static_cast<off_t>(bytes.size()), fs::file_size(store_->root() + "/" + key)) << key;
  }
  for (const auto& f : FilesUnder(store_->root())) {
    EXPECT_EQ(std::string::npos, f.find(".tmp.")) << "temporary file left behind: " << f;
  }
}

TEST_F(DirectoryObjectStoreTest, PrefixesAreNotObjects) {
  ASSERT_TRUE(store_->Put("a/b/c", "1").ok());
  EXPECT_EQ(ENOENT, store_->Get("a/b").status().code());
  EXPECT_FALSE(*store_->Exists("a/b"));
  EXPECT_TRUE(store_->Delete("a/b").ok());
  EXPECT_EQ("1", *store_->Get("a/b/c"));
  EXPECT_EQ(ENOENT, store_->Get("a/b/c/d").status().code());
}

TEST_F(DirectoryObjectStoreTest, BadKeysAreRefusedBeforeAnyIo) {
  for (const char* bad : {"../escape", "/etc/passwd", "a//b", "", "a/./b", ".tmp.x"}) {
    EXPECT_EQ(EINVAL, store_->Put(bad, "x").code()) << bad;
    EXPECT_EQ(EINVAL, store_->Get(bad).status().code()) << bad;
    EXPECT_EQ(EINVAL, store_->Exists(bad).status().code()) << bad;
    EXPECT_EQ(EINVAL, store_->Delete(bad).code()) << bad;
  }
  EXPECT_EQ(EINVAL, store_->List("a b").status().code());
  EXPECT_FALSE(fs::exists(dir_.path() + "/escape"));
  EXPECT_TRUE(FilesUnder(store_->root()).empty());
}

TEST_F(DirectoryObjectStoreTest, ListIsSortedPrefixFilteredAndSkipsTemporaries) {
  std::vector<std::string> keys = {"chunks/ab/cd/abcd01", "chunks/ab/cd/abcd02", "chunks/ab/ef/abef01",
                                   "chunks/ff/00/ff0001", "snapshots/s-1.manifest", "snapshots/s-2.manifest"};
  for (auto it = keys.rbegin(); it != keys.rend(); ++it) ASSERT_TRUE(store_->Put(*it, *it).ok());
  // A crashed writer's temporary file is never listed or returned.
  {
    std::ofstream(store_->root() + "/chunks/ab/cd/.tmp.abcd03.123.0") << "partial";
  }
  EXPECT_EQ(keys, *store_->List(""));
  EXPECT_EQ(std::vector<std::string>(keys.begin(), keys.begin() + 4), *store_->List("chunks/"));
  EXPECT_EQ(std::vector<std::string>(keys.begin(), keys.begin() + 3), *store_->List("chunks/ab"));
  EXPECT_EQ(std::vector<std::string>(keys.begin(), keys.begin() + 2), *store_->List("chunks/ab/cd/"));
  EXPECT_EQ(std::vector<std::string>{keys[1]}, *store_->List("chunks/ab/cd/abcd02"));
  EXPECT_EQ(std::vector<std::string>(keys.begin() + 4, keys.end()), *store_->List("snap"));
  EXPECT_TRUE(store_->List("nothing/here")->empty());
  EXPECT_TRUE(store_->List("chunks/zz/")->empty());
}

TEST_F(DirectoryObjectStoreTest, ConcurrentPutsOfTheSameAndDifferentKeys) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        // Same content under the same key from every thread (what dedup of
        // identical chunks does), plus a key of its own.
        EXPECT_TRUE(store_->Put("chunks/00/00/same" + std::to_string(i), "identical").ok());
        EXPECT_TRUE(store_->Put("chunks/0" + std::to_string(t) + "/aa/own" + std::to_string(i), "mine").ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  auto all = store_->List("");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(10u + 40u, all->size());
  for (const auto& f : FilesUnder(store_->root())) {
    EXPECT_EQ(std::string::npos, f.find("/.tmp.")) << "temporary file left behind: " << f;
  }
  EXPECT_EQ("identical", *store_->Get("chunks/00/00/same3"));
}

TEST_F(DirectoryObjectStoreTest, ReopenSeesObjectsAndRootMustBeADirectory) {
  ASSERT_TRUE(store_->Put("snapshots/a.manifest", "m").ok());
  store_.reset();
  auto again = DirectoryObjectStore::Open(dir_.path() + "/store/");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ("m", *(*again)->Get("snapshots/a.manifest"));
  { std::ofstream(dir_.path() + "/file") << "x"; }
  EXPECT_EQ(ENOTDIR, DirectoryObjectStore::Open(dir_.path() + "/file").status().code());
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(0, ::stat(path.c_str(), &st)) << path;
  return st.st_mode & 07777;
}

// Directories 0700 and objects 0600 whatever the umask; a store an older
// version left open (0755, 0644) gets a private root and still reads.
TEST(DirectoryObjectStorePermissionsTest, PrivateWhateverTheUmaskAndOldObjectsStillRead) {
  TempDir dir;
  mode_t old_umask = ::umask(022);
  auto fresh = DirectoryObjectStore::Open(dir.path() + "/a/b/store");
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  ASSERT_TRUE((*fresh)->Put("chunks/ab/cd/x", "new").ok());
  ASSERT_TRUE((*fresh)->PutBatched("chunks/ef/y", "new").ok());
  for (const char* d : {"/a", "/a/b", "/a/b/store", "/a/b/store/chunks", "/a/b/store/chunks/ab",
                        "/a/b/store/chunks/ab/cd", "/a/b/store/chunks/ef"}) {
    EXPECT_EQ(0700u, ModeOf(dir.path() + d)) << d;
  }
  EXPECT_EQ(0600u, ModeOf(dir.path() + "/a/b/store/chunks/ab/cd/x"));
  EXPECT_EQ(0600u, ModeOf(dir.path() + "/a/b/store/chunks/ef/y"));

  const std::string old = dir.path() + "/old";
  fs::create_directories(old + "/snapshots");
  { std::ofstream(old + "/snapshots/s.manifest") << "written by an older version"; }
  ASSERT_EQ(0755u, ModeOf(old));
  ASSERT_EQ(0644u, ModeOf(old + "/snapshots/s.manifest"));
  auto reopened = DirectoryObjectStore::Open(old);
  ::umask(old_umask);
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  EXPECT_EQ(0700u, ModeOf(old));
  EXPECT_EQ("written by an older version", *(*reopened)->Get("snapshots/s.manifest"));
}

// A full disk fails the Put with ENOSPC, leaves no partial object and no
// temporary file, keeps earlier objects intact, and Put works again once
// space is freed.
TEST(DirectoryObjectStoreFullDiskTest, EnospcLeavesNoPartialObject) {
  TempDir dir;
  std::string mnt = dir.path() + "/small";
  ASSERT_EQ(0, mkdir(mnt.c_str(), 0700));
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=1m") != 0) {
    EBS_CANNOT_RUN("cannot mount a small tmpfs here (needs root): " << strerror(errno));
  }
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};

  auto opened = DirectoryObjectStore::Open(mnt + "/store");
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  auto& store = **opened;
  const std::string first(300 * 1024, 'A');
  ASSERT_TRUE(store.Put("chunks/aa/aa/first", first).ok());
  const std::string big(400 * 1024, 'B');
  Status s;
  int stored = 0;
  for (; stored < 10; ++stored) {
    s = store.Put("chunks/bb/bb/big" + std::to_string(stored), big);
    if (!s.ok()) break;
  }
  ASSERT_FALSE(s.ok()) << "1 MiB cannot hold 10 x 400 KiB";
  EXPECT_EQ(ENOSPC, s.code()) << s.ToString();
  const std::string failed = "chunks/bb/bb/big" + std::to_string(stored);
  EXPECT_EQ(ENOENT, store.Get(failed).status().code()) << "no partial object";
  EXPECT_FALSE(*store.Exists(failed));
  for (const auto& f : FilesUnder(store.root())) {
    EXPECT_EQ(std::string::npos, f.find(".tmp.")) << "temporary file left behind: " << f;
  }
  EXPECT_EQ(first, *store.Get("chunks/aa/aa/first"));
  for (int i = 0; i < stored; ++i) EXPECT_EQ(big, *store.Get("chunks/bb/bb/big" + std::to_string(i)));

  ASSERT_TRUE(store.Delete("chunks/aa/aa/first").ok());
  EXPECT_TRUE(store.Put(failed, big).ok()) << "space freed: Put works again";
  EXPECT_EQ(big, *store.Get(failed));

  // The same for batched puts, which large objects take with direct I/O.
  const std::string odd(400 * 1024 + 5, 'C');
  int batched = 0;
  for (; batched < 10; ++batched) {
    s = store.PutBatched("chunks/cc/cc/odd" + std::to_string(batched), odd);
    if (!s.ok()) break;
  }
  ASSERT_FALSE(s.ok()) << "1 MiB cannot hold 10 x 400 KiB";
  EXPECT_EQ(ENOSPC, s.code()) << s.ToString();
  EXPECT_EQ(ENOENT, store.Get("chunks/cc/cc/odd" + std::to_string(batched)).status().code()) << "no partial object";
  for (const auto& f : FilesUnder(store.root())) {
    EXPECT_EQ(std::string::npos, f.find(".tmp.")) << "temporary file left behind: " << f;
  }
  for (int i = 0; i < batched; ++i) EXPECT_EQ(odd, *store.Get("chunks/cc/cc/odd" + std::to_string(i)));
  EXPECT_TRUE(store.Flush().ok());
}

}  // namespace
}  // namespace ebs::snapshot
