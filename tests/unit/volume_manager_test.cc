// The catalog and the volume operations on a real data directory (RocksDB,
// real files): persistence, the data-directory lock, in-use rules, modify.
#include "ebs/engine/volume_manager.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "ebs/engine/control.h"
#include "ebs/engine/time.h"
#include "catalog/catalog.h"
#include "layers/throttle_layer.h"
#include "test_util.h"

namespace ebs {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

VolumeParams Gp3(uint64_t gib) {
  VolumeParams p;
  p.type = VolumeType::kGp3;
  p.size_bytes = gib * kGiB;
  return p;
}

TEST(VolumeManagerTest, CatalogSurvivesReopen) {
  TempDir dir;
  std::string id;
  {
    auto m = VolumeManager::Open(dir.path());
    ASSERT_TRUE(m.ok()) << m.status().message();
    auto v = (*m)->Create("data-1", Gp3(10));
    ASSERT_TRUE(v.ok()) << v.status().message();
    id = v->record.id;
    VolumeParams io2;
    io2.type = VolumeType::kIo2;
    io2.size_bytes = 100 * kGiB;
    io2.iops = 20000;
    ASSERT_TRUE((*m)->Create("db", io2).ok());
  }
  auto m = VolumeManager::Open(dir.path());
  ASSERT_TRUE(m.ok());
  auto list = (*m)->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(2u, list->size());
  auto v = (*m)->Describe("data-1");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(id, v->record.id);
  EXPECT_EQ(10 * kGiB, v->record.config.size_bytes);
  EXPECT_EQ(3000u, v->record.config.iops);
  EXPECT_EQ(125u, v->record.config.throughput_mibps);
  auto db = (*m)->Describe("db");
  ASSERT_TRUE(db.ok());
  EXPECT_EQ(VolumeType::kIo2, db->record.config.type);
  EXPECT_EQ(20000u, db->record.config.iops);
  struct stat st {};
  ASSERT_EQ(0, stat((*m)->DataFilePath(id).c_str(), &st));
  EXPECT_EQ(static_cast<off_t>(10 * kGiB), st.st_size);
  EXPECT_LT(st.st_blocks, 64) << "the data file must be sparse";
}

TEST(VolumeManagerTest, SecondOpenerGetsClearError) {
  TempDir dir;
  auto m = VolumeManager::Open(dir.path());
  ASSERT_TRUE(m.ok());
  auto second = VolumeManager::Open(dir.path());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(EBUSY, second.status().code());
  EXPECT_THAT(second.status().message(), HasSubstr("in use by another ebs process"));
  EXPECT_THAT(second.status().message(), HasSubstr(std::to_string(getpid())));
  // Still usable by the first, and free once it closes.
  EXPECT_TRUE((*m)->Create("v", Gp3(1)).ok());
  m->reset();
  EXPECT_TRUE(VolumeManager::Open(dir.path()).ok());
}

TEST(VolumeManagerTest, RefusesBadNamesAndDuplicates) {
  TempDir dir;
  auto m = VolumeManager::Open(dir.path());
  ASSERT_TRUE(m.ok());
  for (const std::string& bad : std::vector<std::string>{"", "../x", "a/b", ".hidden", "-x", std::string(65, 'a'), "sp ace"}) {
    auto r = (*m)->Create(bad, Gp3(1));
    EXPECT_FALSE(r.ok()) << "accepted name '" << bad << "'";
  }
  EXPECT_TRUE((*m)->Create(std::string(64, 'a'), Gp3(1)).ok());
  ASSERT_TRUE((*m)->Create("v", Gp3(1)).ok());
  auto dup = (*m)->Create("v", Gp3(1));
  ASSERT_FALSE(dup.ok());
  EXPECT_EQ(EEXIST, dup.status().code());
}

TEST(VolumeManagerTest, DeleteRefusesVolumeInUseUnlessForced) {
  TempDir dir;
  auto m = VolumeManager::Open(dir.path());
  ASSERT_TRUE(m.ok());
  auto v = (*m)->Create("busy", Gp3(1));
  ASSERT_TRUE(v.ok());
  auto att = (*m)->Attach("busy");
  ASSERT_TRUE(att.ok());
  auto info = (*m)->Describe("busy");
  EXPECT_EQ("in-use", info->ToJson()["state"]);
  Status st = (*m)->Delete("busy", false);
  EXPECT_EQ(EBUSY, st.code());
  EXPECT_THAT(st.message(), HasSubstr("VolumeInUse"));
  EXPECT_FALSE((*att)->volume().deleted());
  ASSERT_TRUE((*m)->Delete("busy", true).ok());
  EXPECT_TRUE((*att)->volume().deleted()) << "attachments must learn the volume is gone";
  EXPECT_EQ(ENOENT, (*m)->Describe("busy").status().code());
  EXPECT_FALSE(std::filesystem::exists((*m)->DataFilePath(v->record.id)));
  att->reset();
  // Deleting after detaching needs no force.
  ASSERT_TRUE((*m)->Create("idle", Gp3(1)).ok());
  { auto a = (*m)->Attach("idle"); }
  EXPECT_TRUE((*m)->Delete("idle", false).ok());
}

TEST(VolumeManagerTest, ModifyGrowsAndRecordsStates) {
  TempDir dir;
  ManagerOptions opts;
  opts.optimize_ms = 300;
  auto m = VolumeManager::Open(dir.path(), opts);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE((*m)->Create("v", Gp3(10)).ok());
  auto att = (*m)->Attach("v");
  ASSERT_TRUE(att.ok());

  VolumeParams shrink;
  shrink.size_bytes = 5 * kGiB;
  auto r = (*m)->Modify("v", shrink);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("only grow"));

  VolumeParams grow;
  grow.size_bytes = 20 * kGiB;
  grow.iops = 6000;
  r = (*m)->Modify("v", grow);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(20 * kGiB, r->record.config.size_bytes);
  EXPECT_EQ(6000u, r->record.config.iops);
  ASSERT_EQ(1u, r->record.modifications.size());
  EXPECT_EQ(ModificationState::kOptimizing, r->record.modifications[0].state);
  EXPECT_EQ(20 * kGiB, (*att)->volume().device().size()) << "the open device sees the new size";
  usleep(400 * 1000);
  auto d = (*m)->Describe("v");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(ModificationState::kCompleted, d->record.modifications[0].state);
  EXPECT_GE(d->record.modifications[0].completed_at_ms, d->record.modifications[0].optimizing_at_ms);

  VolumeParams to_io1;
  to_io1.type = VolumeType::kIo1;
  r = (*m)->Modify("v", to_io1);
  ASSERT_FALSE(r.ok()) << "the default 3000 IOPS exceed 50 per GiB on 20 GiB io1";
  EXPECT_THAT(r.status().message(), HasSubstr("Iops to volume size ratio of 150.000000 is too high; maximum is 50"));
  to_io1.iops = 1000;
  r = (*m)->Modify("v", to_io1);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(VolumeType::kIo1, r->record.config.type);

  att->reset();
  m->reset();
  auto again = VolumeManager::Open(dir.path());
  ASSERT_TRUE(again.ok());
  auto after = (*again)->Describe("v");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(2u, after->record.modifications.size()) << "history survives a restart";
  EXPECT_EQ(VolumeType::kIo1, after->record.config.type);
}

TEST(VolumeManagerTest, OrphanDataFilesAreRemovedOnOpen) {
  TempDir dir;
  { ASSERT_TRUE(VolumeManager::Open(dir.path()).ok()); }
  std::string orphan = dir.path() + "/volumes/vol-0123456789abcdef0.img";
  std::ofstream(orphan) << "left by a crash between file and catalog";
  auto m = VolumeManager::Open(dir.path());
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(std::filesystem::exists(orphan));
}

// Every entry under `dir` (symbolic links aside) that grants group or other
// any access.
std::vector<std::string> OpenToOthers(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    struct stat st {};
    if (::lstat(e.path().c_str(), &st) == 0 && !S_ISLNK(st.st_mode) && (st.st_mode & 077) != 0) {
      out.push_back(e.path().string());
    }
  }
  return out;
}

// A data directory that exists open (mkdir under umask 022, or left so by
// an older version) is made private on open, with what is in it.
TEST(VolumeManagerTest, OpenMakesTheDataDirectoryPrivate) {
  TempDir dir;
  mode_t old_umask = ::umask(022);
  const std::string data = dir.path() + "/data";
  ASSERT_EQ(0, ::mkdir(data.c_str(), 0755));
  {
    auto m = VolumeManager::Open(data);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    ASSERT_TRUE((*m)->Create("v", Gp3(1)).ok());
  }
  struct stat st {};
  ASSERT_EQ(0, ::stat(data.c_str(), &st));
  EXPECT_EQ(0700u, st.st_mode & 07777);
  // Loosen everything, as an older version or a careless chmod would.
  for (const auto& e : std::filesystem::recursive_directory_iterator(data)) {
    std::filesystem::permissions(e.path(), std::filesystem::perms::group_read | std::filesystem::perms::others_read,
                                 std::filesystem::perm_options::add);
  }
  std::filesystem::permissions(data, std::filesystem::perms::group_all | std::filesystem::perms::others_all,
                               std::filesystem::perm_options::add);
  ASSERT_FALSE(OpenToOthers(data).empty());
  auto m = VolumeManager::Open(data);
  ::umask(old_umask);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_EQ(0, ::stat(data.c_str(), &st));
  EXPECT_EQ(0700u, st.st_mode & 07777);
  EXPECT_THAT(OpenToOthers(data), ::testing::IsEmpty());
}

TEST(ControlTest, RegistryTurnsBadRequestsIntoErrors) {
  TempDir dir;
  auto m = VolumeManager::Open(dir.path());
  ASSERT_TRUE(m.ok());
  CommandRegistry reg;
  RegisterVolumeCommands(&reg, m->get());
  EXPECT_FALSE(reg.Handle(nlohmann::json::array())["ok"].get<bool>());
  EXPECT_FALSE(reg.Handle({{"cmd", "volume.nope"}})["ok"].get<bool>());
  auto wrong_type = reg.Handle({{"cmd", "volume.create"}, {"args", {{"name", 5}, {"size_bytes", kGiB}}}});
  EXPECT_FALSE(wrong_type["ok"].get<bool>());
  EXPECT_EQ(EINVAL, wrong_type["code"].get<int>());
  auto ok = reg.Handle({{"cmd", "volume.create"}, {"args", {{"name", "v"}, {"size_bytes", kGiB}}}});
  ASSERT_TRUE(ok["ok"].get<bool>()) << ok.dump();
  EXPECT_EQ("gp3", ok["result"]["type"]);

  // Over the socket, the same answers.
  auto server = ControlServer::Start(dir.path() + "/control.sock", &reg);
  ASSERT_TRUE(server.ok()) << server.status().message();
  auto reply = ControlCall(dir.path() + "/control.sock", {{"cmd", "volume.describe"}, {"args", {{"name", "v"}}}});
  ASSERT_TRUE(reply.ok());
  auto result = ReplyToResult(*reply);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(kGiB, (*result)["size_bytes"].get<uint64_t>());
  struct stat st {};
  ASSERT_EQ(0, stat((dir.path() + "/control.sock").c_str(), &st));
  EXPECT_EQ(0600u, st.st_mode & 0777);
}

}  // namespace
}  // namespace ebs

namespace ebs {
namespace {

// While a modification is optimizing the volume never performs below its old
// configuration; once optimized it has the new one.
TEST(VolumeManagerTest, OptimizingNeverBelowOldConfiguration) {
  testing::TempDir dir;
  ManagerOptions opts;
  opts.optimize_ms = 400;
  auto m = VolumeManager::Open(dir.path(), opts);
  ASSERT_TRUE(m.ok());
  VolumeParams p = Gp3(100);
  p.iops = 8000;
  p.throughput_mibps = 500;
  ASSERT_TRUE((*m)->Create("v", p).ok());
  auto att = (*m)->Attach("v");
  ASSERT_TRUE(att.ok());
  ThrottleLayer* t = (*att)->volume().throttle();
  ASSERT_NE(nullptr, t);
  EXPECT_EQ(8000u, t->Read().limits.baseline_iops);
  // Down to 4000 IOPS but up to 600 MiB/s.
  VolumeParams change;
  change.iops = 4000;
  change.throughput_mibps = 600;
  auto r = (*m)->Modify("v", change);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(ModificationState::kOptimizing, r->record.modifications.back().state);
  auto during = t->Read().limits;
  EXPECT_EQ(8000u, during.baseline_iops) << "IOPS must not drop while optimizing";
  EXPECT_DOUBLE_EQ(600, during.baseline_throughput_mibps) << "the raise applies at once";
  usleep(500 * 1000);
  auto after = t->Read().limits;
  EXPECT_EQ(4000u, after.baseline_iops);
  EXPECT_DOUBLE_EQ(600, after.baseline_throughput_mibps);
  EXPECT_EQ(ModificationState::kCompleted, (*m)->Describe("v")->record.modifications.back().state);
}

TEST(VolumeManagerTest, ModificationRateRuleWhenEnabled) {
  testing::TempDir dir;
  ManagerOptions opts;
  opts.modification_rate_limit = true;
  opts.optimize_ms = 200;
  auto m = VolumeManager::Open(dir.path(), opts);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE((*m)->Create("v", Gp3(10)).ok());
  VolumeParams grow;
  grow.size_bytes = 11 * kGiB;
  ASSERT_TRUE((*m)->Modify("v", grow).ok());
  grow.size_bytes = 12 * kGiB;
  auto busy = (*m)->Modify("v", grow);
  ASSERT_FALSE(busy.ok());
  EXPECT_THAT(busy.status().message(), ::testing::HasSubstr("IncorrectModificationState"));
  for (uint64_t gib = 12; gib <= 14; ++gib) {
    usleep(250 * 1000);
    grow.size_bytes = gib * kGiB;
    ASSERT_TRUE((*m)->Modify("v", grow).ok()) << gib;
  }
  usleep(250 * 1000);
  grow.size_bytes = 15 * kGiB;
  auto fifth = (*m)->Modify("v", grow);
  ASSERT_FALSE(fifth.ok());
  EXPECT_THAT(fifth.status().message(), ::testing::HasSubstr("VolumeModificationRateExceeded"));
}

}  // namespace
}  // namespace ebs

namespace ebs {
namespace {

// A process killed inside Modify leaves the record `modifying` (written
// before the data file grows). The next Open rolls it forward.
TEST(VolumeManagerTest, ModificationInterruptedByACrashIsFinishedOnOpen) {
  testing::TempDir dir;
  std::string id;
  {
    auto m = VolumeManager::Open(dir.path());
    ASSERT_TRUE(m.ok());
    VolumeParams p;
    p.type = VolumeType::kGp3;
    p.size_bytes = 1 * kGiB;
    auto v = (*m)->Create("v", p);
    ASSERT_TRUE(v.ok());
    id = v->record.id;
  }
  {
    // What the dying process had written: the change, not yet applied.
    auto catalog = Catalog::Open(dir.path() + "/catalog");
    ASSERT_TRUE(catalog.ok());
    auto r = (*catalog)->Get("v");
    ASSERT_TRUE(r.ok());
    Modification mod;
    mod.state = ModificationState::kModifying;
    mod.started_at_ms = NowMs();
    mod.from = r->config;
    mod.to = r->config;
    mod.to.size_bytes = 2 * kGiB;
    r->modifications.push_back(mod);
    ASSERT_TRUE((*catalog)->Put(*r).ok());
  }
  auto m = VolumeManager::Open(dir.path());
  ASSERT_TRUE(m.ok());
  auto v = (*m)->Describe("v");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(2 * kGiB, v->record.config.size_bytes);
  EXPECT_EQ(ModificationState::kCompleted, v->record.modifications.back().state);
  struct stat st;
  ASSERT_EQ(0, stat((*m)->DataFilePath(id).c_str(), &st));
  EXPECT_EQ(static_cast<off_t>(2 * kGiB), st.st_size);
  // And the volume can be modified again, even under the rate rule.
  VolumeParams grow;
  grow.size_bytes = 3 * kGiB;
  EXPECT_TRUE((*m)->Modify("v", grow).ok());
}

}  // namespace
}  // namespace ebs

namespace ebs {
namespace {

// BurstBalance is a CloudWatch metric of gp2, st1 and sc1 only.
TEST(VolumeManagerTest, BurstBalanceOnlyForGp2St1Sc1) {
  testing::TempDir dir;
  auto m = VolumeManager::Open(dir.path());
  ASSERT_TRUE(m.ok());
  struct Case {
    const char* name;
    VolumeType type;
    uint64_t gib;
    bool reported;
  };
  for (const Case& c : {Case{"g2", VolumeType::kGp2, 10, true}, Case{"s1", VolumeType::kSt1, 125, true},
                        Case{"c1", VolumeType::kSc1, 125, true}, Case{"std", VolumeType::kStandard, 10, false},
                        Case{"g3", VolumeType::kGp3, 10, false}}) {
    VolumeParams p;
    p.type = c.type;
    p.size_bytes = c.gib * kGiB;
    ASSERT_TRUE((*m)->Create(c.name, p).ok()) << c.name;
    auto att = (*m)->Attach(c.name);
    ASSERT_TRUE(att.ok());
    auto stats = (*m)->Stats(c.name);
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ(c.reported, stats->contains("BurstBalance")) << c.name;
  }
}

}  // namespace
}  // namespace ebs

namespace ebs {
namespace {

// CloudWatch's type rules (using_cloudwatch_ebs): VolumeConsumedReadWriteOps
// and VolumeThroughputPercentage for io1/io2 only (100% on an idle volume),
// the exceeded checks for every type but standard.
TEST(VolumeManagerTest, CloudWatchMetricsReportedForTheirTypes) {
  testing::TempDir dir;
  auto m = VolumeManager::Open(dir.path());
  ASSERT_TRUE(m.ok());
  struct Case {
    const char* name;
    VolumeType type;
    uint64_t gib;
    uint32_t iops;
    bool provisioned_iops;
    bool exceeded_checks;
  };
  for (const Case& c : {Case{"i1", VolumeType::kIo1, 100, 1000, true, true},
                        Case{"i2", VolumeType::kIo2, 100, 1000, true, true},
                        Case{"g2", VolumeType::kGp2, 10, 0, false, true},
                        Case{"g3", VolumeType::kGp3, 10, 0, false, true},
                        Case{"s1", VolumeType::kSt1, 125, 0, false, true},
                        Case{"c1", VolumeType::kSc1, 125, 0, false, true},
                        Case{"std", VolumeType::kStandard, 10, 0, false, false}}) {
    VolumeParams p;
    p.type = c.type;
    p.size_bytes = c.gib * kGiB;
    if (c.iops) p.iops = c.iops;
    ASSERT_TRUE((*m)->Create(c.name, p).ok()) << c.name;
    auto att = (*m)->Attach(c.name);
    ASSERT_TRUE(att.ok());
    auto stats = (*m)->Stats(c.name);
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ(c.provisioned_iops, stats->contains("VolumeThroughputPercentage")) << c.name;
    EXPECT_EQ(c.provisioned_iops, stats->contains("VolumeConsumedReadWriteOps")) << c.name;
    EXPECT_EQ(c.exceeded_checks, stats->contains("VolumeIOPSExceededCheck")) << c.name;
    EXPECT_EQ(c.exceeded_checks, stats->contains("VolumeThroughputExceededCheck")) << c.name;
    if (c.provisioned_iops) {
      EXPECT_EQ(100, (*stats)["VolumeThroughputPercentage"].get<double>()) << c.name << ": idle is 100%";
    }
    EXPECT_TRUE((*stats)["Throttle"].contains("iops_limited_seconds")) << c.name;
  }
}

}  // namespace
}  // namespace ebs
