// The copy-on-write layer over a real data file and event loop: Freeze holds
// new writes and waits for those in flight; Thaw releases them; while a
// CopyOutSession is attached, a write to a guarded chunk first hands the
// chunk's old content over; each chunk is handed over exactly once; a failing
// hand-over fails the session, never the write.
#include "layers/copy_on_write_layer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <thread>
#include <vector>

#include "io/file_device.h"
#include "test_util.h"

namespace ebs {
namespace {

constexpr uint64_t kChunk = 64 * 1024;
constexpr uint64_t kSize = 16 * kChunk;

// Holds every request until Release(), as a slow disk would, so a test can
// keep a write in flight below the layer under test.
class HoldingLayer final : public DeviceLayer {
 public:
  using DeviceLayer::DeviceLayer;
  void Submit(EventLoop& loop, IoRequest* req) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!holding_) {
      next_->Submit(loop, req);
      return;
    }
    held_.push_back({&loop, req});
  }
  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    holding_ = true;
  }
  void Release() {
    std::vector<std::pair<EventLoop*, IoRequest*>> held;
    {
      std::lock_guard<std::mutex> lock(mu_);
      holding_ = false;
      held.swap(held_);
    }
    for (auto [loop, req] : held) loop->Post([this, loop, req] { next_->Submit(*loop, req); });
  }
  size_t held() {
    std::lock_guard<std::mutex> lock(mu_);
    return held_.size();
  }

 private:
  std::mutex mu_;
  bool holding_ = false;
  std::vector<std::pair<EventLoop*, IoRequest*>> held_;
};

// One asynchronous request whose completion can be awaited.
struct Pending {
  IoRequest req;
  std::promise<int> done;
  std::future<int> future = done.get_future();
  std::string data;
  Pending(IoKind kind, uint64_t offset, std::string content) : data(std::move(content)) {
    req.kind = kind;
    req.offset = offset;
    req.length = data.size();
    req.buf = data.data();
    req.owner = this;
    req.callback = [](IoRequest* r, int result) { static_cast<Pending*>(r->owner)->done.set_value(result); };
  }
  bool finished() { return future.wait_for(std::chrono::milliseconds(0)) == std::future_status::ready; }
};

class CopyOnWriteLayerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = testing::StartLoop("cow-test", 256);
    ASSERT_NE(nullptr, loop_);
    path_ = dir_.path() + "/v.img";
    auto file = FileDevice::Open(path_, kSize, true);
    ASSERT_TRUE(file.ok());
    holding_ = std::make_shared<HoldingLayer>(*file);
    cow_ = std::make_shared<CopyOnWriteLayer>(holding_);
    // Chunk c starts filled with the byte 'a' + c.
    for (uint64_t c = 0; c < kSize / kChunk; ++c) {
      std::string s(kChunk, static_cast<char>('a' + c));
      ASSERT_EQ(0, testing::RunIo(*loop_, *cow_, IoKind::kWrite, c * kChunk, kChunk, s.data()));
    }
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd_, 0);
  }
  void TearDown() override {
    cow_.reset();
    loop_->Stop();
    ::close(fd_);
  }
  void Submit(Pending& p) {
    loop_->Post([&] { cow_->Submit(*loop_, &p.req); });
  }
  // What a snapshot reads the volume through: the data file beneath the layer.
  CopyOutSession::Reader FileReader() {
    return [fd = fd_](uint64_t offset, size_t length, char* buf) -> Status {
      ssize_t n = pread(fd, buf, length, static_cast<off_t>(offset));
      if (n != static_cast<ssize_t>(length)) return Status::IoError("short read");
      return Status::Ok();
    };
  }
  std::string ReadBack(uint64_t offset, uint64_t length) {
    std::string s(length, '\0');
    EXPECT_EQ(0, testing::RunIo(*loop_, *cow_, IoKind::kRead, offset, length, s.data()));
    return s;
  }

  testing::TempDir dir_;
  std::string path_;
  std::unique_ptr<EventLoop> loop_;
  std::shared_ptr<HoldingLayer> holding_;
  std::shared_ptr<CopyOnWriteLayer> cow_;
  int fd_ = -1;
};

TEST_F(CopyOnWriteLayerTest, FreezeWaitsForWritesInFlightAndHoldsNewOnes) {
  holding_->Hold();
  Pending w1(IoKind::kWrite, 0, std::string(4096, 'x'));
  Submit(w1);
  while (holding_->held() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));

  std::atomic<bool> frozen{false};
  std::thread freezer([&] {
    cow_->Freeze();
    frozen = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(frozen) << "Freeze returned while a write was still in flight below";
  holding_->Release();
  freezer.join();
  EXPECT_EQ(0, w1.future.get());

  // Frozen: a new write waits in the layer; a read passes.
  Pending w2(IoKind::kWrite, kChunk, std::string(4096, 'y'));
  Submit(w2);
  Pending r(IoKind::kRead, 0, std::string(4096, '\0'));
  Submit(r);
  EXPECT_EQ(0, r.future.get());
  EXPECT_EQ(std::string(4096, 'x'), r.data);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(w2.finished()) << "a write went through a frozen layer";
  EXPECT_EQ(1u, cow_->waiting());

  cow_->Thaw();
  EXPECT_EQ(0, w2.future.get());
  EXPECT_EQ(std::string(4096, 'y'), ReadBack(kChunk, 4096));
  EXPECT_EQ(0u, cow_->waiting());
}

TEST_F(CopyOnWriteLayerTest, WriteToGuardedChunkHandsOverOldContentFirst) {
  std::mutex mu;
  std::map<uint64_t, std::string> handed;  // chunk -> content handed over
  std::vector<uint64_t> chunks = {2, 3, 5};
  auto session = std::make_shared<CopyOutSession>(
      FileReader(), kSize, kChunk, chunks, [&](size_t position, const std::string& data) {
        std::lock_guard<std::mutex> lock(mu);
        EXPECT_EQ(0u, handed.count(chunks[position])) << "chunk handed over twice";
        handed[chunks[position]] = data;
        return Status::Ok();
      });
  cow_->Freeze();
  cow_->Thaw(session);

  // A write straddling chunks 2 and 3 (both guarded) and one to chunk 4 (not).
  Pending w(IoKind::kWrite, 3 * kChunk - 4096, std::string(8192, 'z'));
  Submit(w);
  ASSERT_EQ(0, w.future.get());
  Pending w4(IoKind::kWrite, 4 * kChunk, std::string(4096, 'q'));
  Submit(w4);
  ASSERT_EQ(0, w4.future.get());
  {
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_EQ(2u, handed.size());
    EXPECT_EQ(std::string(kChunk, 'c'), handed[2]) << "chunk 2's content from before the write";
    EXPECT_EQ(std::string(kChunk, 'd'), handed[3]);
  }
  EXPECT_EQ(2u, session->preserved_by_writes());
  EXPECT_EQ(std::string(8192, 'z'), ReadBack(3 * kChunk - 4096, 8192)) << "the write itself landed";

  // The snapshot's workers take the rest; chunks writers took are skipped.
  std::string buf;
  for (size_t i = 0; i < session->size(); ++i) ASSERT_TRUE(session->Process(i, &buf).ok());
  ASSERT_TRUE(session->Wait().ok());
  cow_->Detach();
  EXPECT_EQ(3u, handed.size());
  EXPECT_EQ(std::string(kChunk, 'f'), handed[5]);

  // Detached: writes to chunk 5 no longer hand anything over.
  Pending w5(IoKind::kWriteZeroes, 5 * kChunk, std::string(4096, '\0'));
  Submit(w5);
  ASSERT_EQ(0, w5.future.get());
  EXPECT_EQ(2u, session->preserved_by_writes());
}

TEST_F(CopyOnWriteLayerTest, FailingHandOverFailsTheSessionNotTheWrite) {
  auto session = std::make_shared<CopyOutSession>(
      FileReader(), kSize, kChunk, std::vector<uint64_t>{0, 1},
      [](size_t, const std::string&) { return Status::Error(ENOSPC, "store full"); });
  cow_->Freeze();
  cow_->Thaw(session);
  Pending w(IoKind::kWrite, 0, std::string(4096, 'w'));
  Submit(w);
  EXPECT_EQ(0, w.future.get()) << "a snapshot's failure must never fail a write";
  Status st = session->Wait();  // chunk 1 is released unread
  EXPECT_EQ(ENOSPC, st.code());
  cow_->Detach();
  EXPECT_EQ(std::string(4096, 'w'), ReadBack(0, 4096));
}

TEST_F(CopyOnWriteLayerTest, RacingWritersAndWorkersHandOverEachChunkOnceWithItsOldContent) {
  const uint64_t chunks = kSize / kChunk;
  std::vector<uint64_t> all;
  for (uint64_t c = 0; c < chunks; ++c) all.push_back(c);
  std::mutex mu;
  std::map<uint64_t, std::string> handed;
  std::atomic<int> duplicates{0};
  auto session = std::make_shared<CopyOutSession>(FileReader(), kSize, kChunk, all, [&](size_t p, const std::string& data) {
    std::lock_guard<std::mutex> lock(mu);
    if (handed.count(p)) ++duplicates;
    handed[p] = data;
    return Status::Ok();
  });
  cow_->Freeze();
  cow_->Thaw(session);
  // Writers overwrite every chunk while two workers walk them.
  std::vector<std::unique_ptr<Pending>> writes;
  for (uint64_t c = 0; c < chunks; ++c) {
    writes.push_back(std::make_unique<Pending>(IoKind::kWrite, c * kChunk + 512 * (c % 7), std::string(4096, '#')));
  }
  for (auto& w : writes) Submit(*w);
  std::thread worker([&] {
    std::string buf;
    for (size_t i = 0; i < session->size(); ++i) EXPECT_TRUE(session->Process(i, &buf).ok());
  });
  std::string buf;
  for (size_t i = session->size(); i-- > 0;) EXPECT_TRUE(session->Process(i, &buf).ok());
  worker.join();
  for (auto& w : writes) EXPECT_EQ(0, w->future.get());
  ASSERT_TRUE(session->Wait().ok());
  cow_->Detach();
  EXPECT_EQ(0, duplicates.load());
  ASSERT_EQ(chunks, handed.size());
  for (uint64_t c = 0; c < chunks; ++c) {
    EXPECT_EQ(std::string(kChunk, static_cast<char>('a' + c)), handed[c]) << "chunk " << c << " changed before it was handed over";
  }
}

}  // namespace
}  // namespace ebs
