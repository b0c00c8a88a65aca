// Snapshot creation over a real data directory (volumes, RocksDB catalog and
// index, directory store): the cases where a completed snapshot could hold
// other bytes than its volume had at the cut. Each test names the defect it
// guards against; on the code before the fix, each fails.
#include "ebs/snapshot/snapshot_service.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>

#include "ebs/engine/volume_type.h"  // kGiB, kMiB
#include "ebs/snapshot/directory_object_store.h"
#include "test_util.h"

namespace ebs::snapshot {
namespace {

using ebs::testing::RandomBytes;
using ebs::testing::RunIo;
using ebs::testing::TempDir;

constexpr uint64_t kChunk = kDefaultChunkSize;
constexpr uint64_t kSpan = 32 * kChunk;  // what the tests write of their 1 GiB volumes

// The directory store, with a hook that runs before each Put and may fail it.
class HookedStore final : public ObjectStore {
 public:
  explicit HookedStore(std::unique_ptr<DirectoryObjectStore> inner) : inner_(std::move(inner)) {}
  std::function<Status(std::string_view key)> before_put;  // set before use; not changed while in use

  Status Put(std::string_view key, std::string_view bytes) override {
    if (before_put) EBS_RETURN_IF_ERROR(before_put(key));
    return inner_->Put(key, bytes);
  }
  Status PutBatched(std::string_view key, std::string_view bytes) override {
    if (before_put) EBS_RETURN_IF_ERROR(before_put(key));
    return inner_->PutBatched(key, bytes);
  }
  Status Flush() override { return inner_->Flush(); }
  Result<std::string> Get(std::string_view key) override { return inner_->Get(key); }
  Status Delete(std::string_view key) override { return inner_->Delete(key); }
  Result<bool> Exists(std::string_view key) override { return inner_->Exists(key); }
  Result<std::vector<std::string>> List(std::string_view prefix) override { return inner_->List(prefix); }

 private:
  const std::unique_ptr<DirectoryObjectStore> inner_;
};

class SnapshotServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = ebs::testing::StartLoop("snap-svc-test");
    ASSERT_NE(nullptr, loop_);
    auto m = VolumeManager::Open(dir_.path() + "/data");
    ASSERT_TRUE(m.ok()) << m.status().message();
    volumes_ = std::move(*m);
  }
  void TearDown() override {
    service_.reset();
    volumes_.reset();
    loop_->Stop();
  }
  void OpenService(std::shared_ptr<ObjectStore> objects = nullptr) {
    auto s = SnapshotService::Open(dir_.path() + "/store", volumes_.get(), 0, 2, std::move(objects));
    ASSERT_TRUE(s.ok()) << s.status().message();
    service_ = std::move(*s);
  }
  std::shared_ptr<HookedStore> HookStore() {
    auto inner = DirectoryObjectStore::Open(dir_.path() + "/store");
    EXPECT_TRUE(inner.ok());
    return std::make_shared<HookedStore>(std::move(*inner));
  }
  void CreateVolume(const std::string& name) {
    VolumeParams p;
    p.type = VolumeType::kGp3;
    p.size_bytes = kGiB;
    auto v = volumes_->Create(name, p);
    ASSERT_TRUE(v.ok()) << v.status().message();
  }
  // Writes through the volume's stack, as a client would.
  void Write(const std::string& volume, uint64_t offset, std::string data) {
    auto att = volumes_->Attach(volume);
    ASSERT_TRUE(att.ok()) << att.status().message();
    ASSERT_EQ(0, RunIo(*loop_, (*att)->volume().device(), IoKind::kWrite, offset, data.size(), data.data()));
  }
  std::string Snapshot(const std::vector<std::string>& names) {
    auto snaps = service_->Create(names, "");
    EXPECT_TRUE(snaps.ok()) << snaps.status().message();
    return snaps.ok() ? (*snaps)[0].id : "";
  }
  std::string Exported(const std::string& id) {
    const std::string file = dir_.path() + "/" + id + ".img";
    auto r = service_->Export(id, file, true);
    EXPECT_TRUE(r.ok()) << r.status().message();
    // The tests write only the first kSpan bytes: beyond them the image
    // must hold no data at all.
    int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    std::string out(kSpan, '\0');
    EXPECT_EQ(static_cast<ssize_t>(kSpan), pread(fd, out.data(), kSpan, 0));
    EXPECT_EQ(static_cast<off_t>(kGiB), lseek(fd, 0, SEEK_END));
    const off_t data = lseek(fd, static_cast<off_t>(kSpan), SEEK_DATA);
    EXPECT_TRUE(data < 0 && errno == ENXIO) << "data past the written span at " << data;
    ::close(fd);
    std::filesystem::remove(file);
    return out;
  }
  // The first index at which two images differ, for the failure message.
  static std::string FirstDifference(const std::string& a, const std::string& b) {
    if (a.size() != b.size()) return "sizes " + std::to_string(a.size()) + " and " + std::to_string(b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i] != b[i]) return "first difference at byte " + std::to_string(i);
    }
    return "equal";
  }
  // 16 chunks of data, every other one a hole.
  void Fill(const std::string& volume) {
    for (uint64_t c = 0; c < 32; c += 2) Write(volume, c * kChunk, RandomBytes(kChunk, static_cast<uint32_t>(c + 1)));
  }
  void ExpectStoreClean() {
    auto check = service_->Check();
    ASSERT_TRUE(check.ok()) << check.status().message();
    EXPECT_TRUE((*check)["ok"].get<bool>()) << check->dump();
  }

  TempDir dir_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<VolumeManager> volumes_;
  std::unique_ptr<SnapshotService> service_;
};

// Defect: a snapshot of a volume still loading lazily, after a restore that
// changed its key, kept only the chunks already loaded; the rest became
// zeros though the volume reads them from its source.
TEST_F(SnapshotServiceTest, SnapshotOfALazyRestoreUnderAnotherKeyHoldsTheUnloadedChunks) {
  OpenService();
  CreateVolume("a");
  Fill("a");
  const std::string s1 = Snapshot({"a"});
  ASSERT_TRUE(volumes_->keys().Create("k1").ok());
  // So slow that at most the first chunk loads while the test runs.
  auto b = service_->Restore(s1, "b", VolumeParams{}, 0.0001, EncryptionRequest{"k1"});
  ASSERT_TRUE(b.ok()) << b.status().message();
  const std::string s2 = Snapshot({"b"});
  const std::string want = Exported(s1), got = Exported(s2);
  EXPECT_TRUE(want == got) << "the snapshot of b differs from b's source: " << FirstDifference(want, got);
  auto r2 = service_->Describe(s2);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(16 * kChunk, r2->logical_bytes);
  ExpectStoreClean();
}

// Defect: a lazily restored volume whose record names no restore cut (the
// process died between creating it and recording its cut) was snapshotted
// from an empty base with its unloaded chunks left out.
TEST_F(SnapshotServiceTest, SnapshotOfALazyRestoreWithoutItsCutRecordHoldsTheUnloadedChunks) {
  OpenService();
  CreateVolume("a");
  Fill("a");
  const std::string s1 = Snapshot({"a"});
  auto b = service_->Restore(s1, "b", VolumeParams{}, 0.0001);
  ASSERT_TRUE(b.ok()) << b.status().message();
  ASSERT_TRUE(volumes_->SetLastCut("b", b->record.id, "").ok());
  // A write to a chunk the source has, and one to a hole.
  Write("b", 4 * kChunk + 4096, std::string(4096, 'w'));
  Write("b", 5 * kChunk, std::string(4096, 'h'));
  std::string want = Exported(s1);
  want.replace(4 * kChunk + 4096, 4096, std::string(4096, 'w'));
  want.replace(5 * kChunk, 4096, std::string(4096, 'h'));
  const std::string s2 = Snapshot({"b"});
  const std::string got = Exported(s2);
  EXPECT_TRUE(want == got) << "the snapshot of b is not b: " << FirstDifference(want, got);
  ExpectStoreClean();
}

// Defect: in a snapshot of two volumes, the second skipped storing a chunk
// the first had just stored; the first then failed and removed its objects,
// so the second's completed snapshot named a missing object.
TEST_F(SnapshotServiceTest, SharedChunkSurvivesTheOtherVolumesFailedSnapshot) {
  auto store = HookStore();
  OpenService(store);
  CreateVolume("a");
  CreateVolume("b");
  const std::string shared = RandomBytes(kChunk, 42);
  Write("a", 0, shared);
  Write("b", 0, shared);
  Write("b", 3 * kChunk, RandomBytes(kChunk, 43));
  // When a's manifest is written (its chunk stored and flushed), a client
  // overwrites b's chunk 0: the copy-out hands b's old content (the same
  // object) to b's snapshot first. Then a's manifest fails.
  bool failed = false;
  store->before_put = [&](std::string_view key) -> Status {
    if (failed || !key.starts_with(kManifestKeyPrefix)) return Status::Ok();
    failed = true;
    Write("b", 0, std::string(4096, 'z'));
    return Status::Error(ENOSPC, "store full (injected)");
  };
  auto snaps = service_->Create({"a", "b"}, "");
  ASSERT_TRUE(failed) << "the injection did not run";
  EXPECT_EQ(ENOSPC, snaps.status().code()) << snaps.status().message();
  std::string b_snap;
  auto all = service_->List();
  ASSERT_TRUE(all.ok());
  for (const auto& r : *all) {
    if (r.volume_name == "b" && r.state == SnapshotState::kCompleted) b_snap = r.id;
    if (r.volume_name == "a") {
      EXPECT_EQ(SnapshotState::kError, r.state);
    }
  }
  ASSERT_FALSE(b_snap.empty()) << "b's snapshot did not complete";
  auto verify = service_->Verify(b_snap);
  ASSERT_TRUE(verify.ok()) << verify.status().message();
  EXPECT_TRUE((*verify)["ok"].get<bool>()) << verify->dump();
  const std::string image = Exported(b_snap);
  EXPECT_TRUE(image.substr(0, kChunk) == shared) << "b's chunk 0 as of the cut";
  ExpectStoreClean();
}

// Defect: an eager restore recorded its volume `available` before writing
// it; a crash part way left a half-written volume that was served.
TEST_F(SnapshotServiceTest, AVolumeWhoseRestoreNeverFinishedIsNeverOpenedAndIsRemoved) {
  VolumeParams p;
  p.type = VolumeType::kGp3;
  p.size_bytes = kGiB;
  CreateOptions options;
  options.source_snapshot = "snap-0123456789abcdef0";
  options.restoring = true;
  auto v = volumes_->Create("half", p, options);
  ASSERT_TRUE(v.ok()) << v.status().message();
  EXPECT_EQ("creating", v->ToJson()["state"].get<std::string>());
  EXPECT_EQ(EBUSY, volumes_->Attach("half").status().code());
  EXPECT_EQ(EBUSY, volumes_->OpenVolume("half").status().code());
  const std::string data_file = volumes_->DataFilePath(v->record.id);
  ASSERT_TRUE(std::filesystem::exists(data_file));
  // The process dies here; the next one to open the directory removes it.
  volumes_.reset();
  auto m = VolumeManager::Open(dir_.path() + "/data");
  ASSERT_TRUE(m.ok()) << m.status().message();
  volumes_ = std::move(*m);
  EXPECT_EQ(ENOENT, volumes_->Describe("half").status().code());
  EXPECT_FALSE(std::filesystem::exists(data_file));
  // A finished one is an ordinary volume.
  auto done = volumes_->Create("whole", p, options);
  ASSERT_TRUE(done.ok());
  ASSERT_TRUE(volumes_->FinishRestore("whole", done->record.id).ok());
  EXPECT_TRUE(volumes_->Attach("whole").ok());
}

// An export into a directory others can write: symbolic links planted at the
// name asked for, or at the temporary name earlier versions used, are never
// followed, and the files they point at are untouched.
TEST_F(SnapshotServiceTest, ExportFollowsNoPlantedSymlink) {
  OpenService();
  CreateVolume("a");
  Write("a", 0, RandomBytes(kChunk, 5));
  const std::string id = Snapshot({"a"});
  const std::string victim = dir_.path() + "/victim";
  { std::ofstream(victim) << "precious"; }
  const std::string file = dir_.path() + "/out.img";
  ASSERT_EQ(0, symlink(victim.c_str(), (file + ".ebs-export-tmp").c_str()));
  ASSERT_EQ(0, symlink(victim.c_str(), file.c_str()));
  EXPECT_EQ(EEXIST, service_->Export(id, file, false).status().code()) << "a symlink at the name is a file that exists";
  auto r = service_->Export(id, file, true);
  ASSERT_TRUE(r.ok()) << r.status().message();
  struct stat st {};
  ASSERT_EQ(0, lstat(file.c_str(), &st));
  EXPECT_TRUE(S_ISREG(st.st_mode)) << "the export replaced the link with the image";
  EXPECT_EQ(static_cast<off_t>(kGiB), st.st_size);
  std::ifstream in(victim);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ("precious", content);
  for (const auto& e : std::filesystem::directory_iterator(dir_.path())) {
    if (e.path() == file + ".ebs-export-tmp") continue;  // the planted link, left alone
    EXPECT_EQ(std::string::npos, e.path().filename().string().find(".ebs-export-")) << "temporary left: " << e.path();
  }
}

}  // namespace
}  // namespace ebs::snapshot
