// The fault layer over a real data file and event loop: `ops` chooses which
// kinds of request fail (reads and caches; writes, trims and zeroes;
// flushes), `rate` what share of them (the same share for the same seed),
// `trigger` makes faults depend on a file existing; a failed request gets
// the chosen errno and never reaches the device below. And the spec parser.
#include "layers/fault_layer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "io/file_device.h"
#include "test_util.h"

namespace ebs {
namespace {

constexpr uint64_t kSize = 1 << 20;
constexpr uint64_t kBlock = 4096;

// Counts the requests that get past the fault layer.
class PassedCounter final : public DeviceLayer {
 public:
  using DeviceLayer::DeviceLayer;
  void Submit(EventLoop& loop, IoRequest* req) override {
    passed.fetch_add(1);
    next_->Submit(loop, req);
  }
  std::atomic<int> passed{0};
};

constexpr IoKind kAllKinds[] = {IoKind::kRead,  IoKind::kCache,       IoKind::kWrite,
                                IoKind::kTrim,  IoKind::kWriteZeroes, IoKind::kFlush};

class FaultLayerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = testing::StartLoop("fault-test", 64);
    ASSERT_NE(nullptr, loop_);
    auto file = FileDevice::Open(dir_.path() + "/v.img", kSize, true);
    ASSERT_TRUE(file.ok());
    counter_ = std::make_shared<PassedCounter>(*file);
  }
  void TearDown() override { loop_->Stop(); }

  std::unique_ptr<FaultLayer> Layer(const std::string& text) {
    auto spec = FaultSpec::Parse(text);
    EXPECT_TRUE(spec.ok()) << spec.status().message();
    return std::make_unique<FaultLayer>(counter_, *spec);
  }
  // One request of `kind` on the first block; 0 or -errno.
  int Run(BlockDevice& dev, IoKind kind, uint64_t block = 0) {
    bool has_data = kind == IoKind::kRead || kind == IoKind::kWrite;
    return testing::RunIo(*loop_, dev, kind, block * kBlock, kind == IoKind::kFlush ? 0 : kBlock,
                          has_data ? buf_.data() : nullptr);
  }

  testing::TempDir dir_;
  std::unique_ptr<EventLoop> loop_;
  std::shared_ptr<PassedCounter> counter_;
  std::string buf_ = std::string(kBlock, 'x');
};

TEST_F(FaultLayerTest, OpsChooseWhichKindsFail) {
  struct Case {
    std::string ops;
    std::vector<IoKind> failing;
  };
  const Case cases[] = {
      {"read", {IoKind::kRead, IoKind::kCache}},
      {"write", {IoKind::kWrite, IoKind::kTrim, IoKind::kWriteZeroes}},
      {"flush", {IoKind::kFlush}},
      {"read+flush", {IoKind::kRead, IoKind::kCache, IoKind::kFlush}},
      {"read+write+flush", {std::begin(kAllKinds), std::end(kAllKinds)}},
  };
  for (const auto& c : cases) {
    auto layer = Layer("volume=v,error=EIO,ops=" + c.ops);
    for (IoKind kind : kAllKinds) {
      bool fails = std::find(c.failing.begin(), c.failing.end(), kind) != c.failing.end();
      int before = counter_->passed.load();
      EXPECT_EQ(fails ? -EIO : 0, Run(*layer, kind)) << "ops=" << c.ops << " kind " << static_cast<int>(kind);
      EXPECT_EQ(fails ? before : before + 1, counter_->passed.load())
          << "ops=" << c.ops << " kind " << static_cast<int>(kind) << ": a failed request must not reach the device";
    }
    EXPECT_EQ(c.failing.size(), layer->injected()) << "ops=" << c.ops;
  }
}

TEST_F(FaultLayerTest, DefaultOpsAreReadsAndWritesNotFlushes) {
  auto layer = Layer("volume=v");
  EXPECT_EQ(-EIO, Run(*layer, IoKind::kRead));
  EXPECT_EQ(-EIO, Run(*layer, IoKind::kWrite));
  EXPECT_EQ(0, Run(*layer, IoKind::kFlush));
}

TEST_F(FaultLayerTest, FailsWithTheChosenErrno) {
  for (auto [name, value] : std::map<std::string, int>{{"ENOSPC", ENOSPC}, {"EPERM", EPERM}, {"ESHUTDOWN", ESHUTDOWN}}) {
    auto layer = Layer("volume=v,ops=write+flush,error=" + name);
    EXPECT_EQ(-value, Run(*layer, IoKind::kWrite)) << name;
    EXPECT_EQ(-value, Run(*layer, IoKind::kFlush)) << name;
  }
}

TEST_F(FaultLayerTest, RateFailsThatShareTheSameForTheSameSeed) {
  constexpr int kRequests = 1000;
  auto pattern = [&](const std::string& spec) {
    auto layer = Layer(spec);
    std::string failed;
    for (int i = 0; i < kRequests; ++i) failed += Run(*layer, IoKind::kRead, i % (kSize / kBlock)) == 0 ? '.' : 'x';
    EXPECT_EQ(static_cast<uint64_t>(std::count(failed.begin(), failed.end(), 'x')), layer->injected());
    return failed;
  };
  std::string a = pattern("volume=v,ops=read,rate=0.3,seed=7");
  auto failures = std::count(a.begin(), a.end(), 'x');
  EXPECT_GE(failures, 240) << "rate=0.3 of " << kRequests;
  EXPECT_LE(failures, 360) << "rate=0.3 of " << kRequests;
  EXPECT_EQ(a, pattern("volume=v,ops=read,rate=0.3,seed=7")) << "same seed, same requests fail";
  EXPECT_NE(a, pattern("volume=v,ops=read,rate=0.3,seed=8"));
  EXPECT_EQ(std::string(kRequests, '.'), pattern("volume=v,ops=read,rate=0"));
  EXPECT_EQ(std::string(kRequests, 'x'), pattern("volume=v,ops=read,rate=1"));
}

TEST_F(FaultLayerTest, TriggerFileTurnsFaultsOnAndOff) {
  const std::string trigger = dir_.path() + "/disk-full";
  auto layer = Layer("volume=v,error=ENOSPC,ops=write+flush,trigger=" + trigger);
  EXPECT_EQ(0, Run(*layer, IoKind::kWrite));
  EXPECT_EQ(0, Run(*layer, IoKind::kFlush));
  std::ofstream(trigger).close();
  EXPECT_EQ(-ENOSPC, Run(*layer, IoKind::kWrite));
  EXPECT_EQ(-ENOSPC, Run(*layer, IoKind::kFlush));
  EXPECT_EQ(0, Run(*layer, IoKind::kRead)) << "reads were not chosen";
  ASSERT_EQ(0, ::unlink(trigger.c_str()));
  EXPECT_EQ(0, Run(*layer, IoKind::kWrite));
  EXPECT_EQ(0, Run(*layer, IoKind::kFlush));
  EXPECT_EQ(2u, layer->injected());
}

TEST_F(FaultLayerTest, FailedWritesLeaveTheDataAlone) {
  auto pass = Layer("volume=v,ops=flush");
  std::string old(kBlock, 'A');
  ASSERT_EQ(0, testing::RunIo(*loop_, *pass, IoKind::kWrite, 0, kBlock, old.data()));
  auto layer = Layer("volume=v,ops=write");
  std::string fresh(kBlock, 'B');
  EXPECT_EQ(-EIO, testing::RunIo(*loop_, *layer, IoKind::kWrite, 0, kBlock, fresh.data()));
  EXPECT_EQ(-EIO, testing::RunIo(*loop_, *layer, IoKind::kWriteZeroes, 0, kBlock));
  EXPECT_EQ(-EIO, testing::RunIo(*loop_, *layer, IoKind::kTrim, 0, kBlock));
  std::string back(kBlock, '\0');
  ASSERT_EQ(0, testing::RunIo(*loop_, *layer, IoKind::kRead, 0, kBlock, back.data()));
  EXPECT_EQ(old, back);
}

TEST(FaultSpecTest, ParsesEveryKey) {
  auto s = FaultSpec::Parse("volume=v1,error=ENOSPC,rate=0.25,ops=write+flush,seed=9,trigger=/tmp/t");
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ("v1", s->volume);
  EXPECT_EQ(ENOSPC, s->error);
  EXPECT_DOUBLE_EQ(0.25, s->rate);
  EXPECT_FALSE(s->reads);
  EXPECT_TRUE(s->writes);
  EXPECT_TRUE(s->flushes);
  EXPECT_EQ(9u, s->seed);
  EXPECT_EQ("/tmp/t", s->trigger_file);

  auto d = FaultSpec::Parse("volume=v");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(EIO, d->error);
  EXPECT_DOUBLE_EQ(1.0, d->rate);
  EXPECT_TRUE(d->reads);
  EXPECT_TRUE(d->writes);
  EXPECT_FALSE(d->flushes);
  EXPECT_TRUE(d->trigger_file.empty());
}

TEST(FaultSpecTest, RefusesBadSpecs) {
  for (const char* bad : {"error=EIO", "volume=v,error=EWHAT", "volume=v,rate=1.5", "volume=v,rate=-0.1",
                          "volume=v,rate=x", "volume=v,ops=sync", "volume=v,colour=red", "volume=v,rate"}) {
    auto s = FaultSpec::Parse(bad);
    EXPECT_FALSE(s.ok()) << bad;
    if (!s.ok()) {
      EXPECT_EQ(EINVAL, s.status().code()) << bad;
      EXPECT_NE(std::string::npos, s.status().message().find("--inject-fault")) << bad;
    }
  }
}

}  // namespace
}  // namespace ebs
