// Change tracking over a real data file, real event loops and a real
// tracking file: every mark is on disk before its data goes down (checked by
// a layer under the tracker that reads the tracking file), marks are group
// committed, cut/commit/abort survive restarts, a persist failure fails the
// request without touching the data, and a process killed at a random
// moment leaves every changed chunk marked.
#include "layers/change_tracker.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "io/file_device.h"
#include "ebs/engine/volume_type.h"  // kKiB, kMiB
#include "test_util.h"

namespace ebs {
namespace {

using testing::RunIo;
using testing::TempDir;

// Data files live in memory (/dev/shm) where there is one: the tracker is
// under test, not the data file, and on this host's ext4 (mounted with
// `discard`) removing a fragmented data file takes most of a second. The
// tracking files stay on the real file system, so persists are real
// fdatasyncs.
class DataDir {
 public:
  DataDir() {
    std::string tmpl = std::filesystem::is_directory("/dev/shm")
                           ? std::string("/dev/shm/ebs-ct.XXXXXX")
                           : (std::filesystem::temp_directory_path() / "ebs-ct.XXXXXX").string();
    if (mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~DataDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Reads chunk `chunk`'s bit straight from the tracking file (a fresh open
// each time: what a restarted process would find). Format per
// change_tracker.h: 4 KiB header, then 64-bit little-endian words.
bool BitOnDisk(const std::string& path, uint64_t chunk) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  uint64_t word = 0;
  ssize_t n = pread(fd, &word, sizeof(word), static_cast<off_t>(4096 + chunk / 64 * 8));
  ::close(fd);
  return n == static_cast<ssize_t>(sizeof(word)) && ((word >> (chunk % 64)) & 1);
}

// Sits under the change tracking layer: every write, trim and write-zeroes
// that reaches it must already find its chunks marked in the file on disk.
class MarkCheckLayer final : public DeviceLayer {
 public:
  MarkCheckLayer(std::shared_ptr<BlockDevice> next, std::string path, uint64_t chunk_size)
      : DeviceLayer(std::move(next)), path_(std::move(path)), chunk_size_(chunk_size) {}
  void Submit(EventLoop& loop, IoRequest* req) override {
    if (req->kind == IoKind::kWrite || req->kind == IoKind::kTrim || req->kind == IoKind::kWriteZeroes) {
      ++changes_seen;
      for (uint64_t c = req->offset / chunk_size_; c <= (req->offset + req->length - 1) / chunk_size_; ++c) {
        if (!BitOnDisk(path_, c)) ++violations;
      }
    }
    next_->Submit(loop, req);
  }
  std::atomic<uint64_t> changes_seen{0};
  std::atomic<uint64_t> violations{0};

 private:
  const std::string path_;
  const uint64_t chunk_size_;
};

struct Op {
  IoKind kind = IoKind::kWrite;
  uint64_t offset = 0;
  uint64_t length = 0;
  char* buf = nullptr;
};

// Submits every op at once on `loop` (from its thread, so they are all in
// flight together) and waits for all; returns their results.
std::vector<int> RunBatch(EventLoop& loop, BlockDevice& dev, const std::vector<Op>& ops) {
  struct Batch;
  struct Slot {
    IoRequest req;
    Batch* batch;
    size_t index;
  };
  struct Batch {
    std::vector<int> results;
    size_t left;
    std::promise<void> done;
  } batch;
  batch.results.assign(ops.size(), 1);
  batch.left = ops.size();
  if (ops.empty()) return {};
  std::unique_ptr<Slot[]> slots(new Slot[ops.size()]);
  for (size_t i = 0; i < ops.size(); ++i) {
    Slot& s = slots[i];
    s.batch = &batch;
    s.index = i;
    s.req.kind = ops[i].kind;
    s.req.offset = ops[i].offset;
    s.req.length = ops[i].length;
    s.req.buf = ops[i].buf;
    s.req.owner = &s;
    s.req.callback = [](IoRequest* r, int result) {  // loop thread
      Slot* s = static_cast<Slot*>(r->owner);
      s->batch->results[s->index] = result;
      if (--s->batch->left == 0) s->batch->done.set_value();
    };
  }
  auto f = batch.done.get_future();
  loop.Post([&] {
    for (size_t i = 0; i < ops.size(); ++i) dev.Submit(loop, &slots[i].req);
  });
  f.get();
  return batch.results;
}

std::set<uint64_t> ChunkSet(const ChangeSet& s) {
  auto v = s.Chunks();
  return {v.begin(), v.end()};
}

ChangeTracker::Options Opts(uint64_t chunk_size, ChangeTracker::IfMissing m = ChangeTracker::IfMissing::kFail) {
  ChangeTracker::Options o;
  o.chunk_size = chunk_size;
  o.if_missing = m;
  return o;
}

class ChangeTrackerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_a_ = testing::StartLoop("ct-loop-a", 512);
    loop_b_ = testing::StartLoop("ct-loop-b", 512);
    ASSERT_TRUE(loop_a_ && loop_b_);
  }
  void TearDown() override {
    loop_a_->Stop();
    loop_b_->Stop();
  }

  // Data file + tracker + check layer + tracking layer, a fresh volume.
  void Build(uint64_t size, uint64_t chunk_size, const std::string& changes_path = "") {
    size_ = size;
    chunk_size_ = chunk_size;
    changes_ = changes_path.empty() ? dir_.path() + "/vol.changes" : changes_path;
    auto file = FileDevice::Open(data_dir_.path() + "/vol.img", size, true);
    ASSERT_TRUE(file.ok()) << file.status().message();
    file_ = *file;
    auto tracker = ChangeTracker::Open(changes_, size, Opts(chunk_size, ChangeTracker::IfMissing::kCreateEmpty));
    ASSERT_TRUE(tracker.ok()) << tracker.status().message();
    tracker_ = *tracker;
    check_ = std::make_shared<MarkCheckLayer>(file_, changes_, chunk_size);
    layer_ = std::make_shared<ChangeTrackingLayer>(check_, tracker_);
  }

  // Destroys the tracker (as a clean shutdown) and opens it again.
  void Reopen(uint64_t size) {
    layer_.reset();
    tracker_.reset();
    auto tracker = ChangeTracker::Open(changes_, size, Opts(chunk_size_));
    ASSERT_TRUE(tracker.ok()) << tracker.status().message();
    tracker_ = *tracker;
    layer_ = std::make_shared<ChangeTrackingLayer>(check_, tracker_);
  }

  void ExpectMarkedOnDisk(const std::set<uint64_t>& chunks) {
    for (uint64_t c = 0; c < tracker_->chunk_count(); ++c) {
      EXPECT_EQ(chunks.count(c) > 0, BitOnDisk(changes_, c)) << "chunk " << c;
    }
  }

  TempDir dir_;
  DataDir data_dir_;
  std::unique_ptr<EventLoop> loop_a_, loop_b_;
  uint64_t size_ = 0, chunk_size_ = 0;
  std::string changes_;
  std::shared_ptr<FileDevice> file_;
  std::shared_ptr<ChangeTracker> tracker_;
  std::shared_ptr<MarkCheckLayer> check_;
  std::shared_ptr<ChangeTrackingLayer> layer_;
};

TEST_F(ChangeTrackerTest, MarksReachTheDiskBeforeTheData) {
  // Sequential requests: each first touch costs one fdatasync (3-4 ms on
  // this host); 128 chunks keep the test quick.
  Build(32 * kMiB, 256 * kKiB);
  std::vector<char> model(size_, 0);
  std::set<uint64_t> touched;
  std::mt19937_64 rng(7);
  std::vector<char> buf(2 * kMiB);
  auto touch = [&](uint64_t off, uint64_t len) {
    for (uint64_t c = off / chunk_size_; c <= (off + len - 1) / chunk_size_; ++c) touched.insert(c);
  };
  for (int i = 0; i < 150; ++i) {
    const uint64_t len = 1 + rng() % (rng() % 8 == 0 ? 2 * kMiB : 64 * kKiB);  // some span chunks
    const uint64_t off = rng() % (size_ - len + 1);
    switch (rng() % 5) {
      case 0:
      case 1:
        std::memset(buf.data(), static_cast<int>(rng() % 255 + 1), len);
        buf[len / 2] = static_cast<char>(i);  // not one byte throughout
        ASSERT_EQ(0, RunIo(*loop_a_, *layer_, IoKind::kWrite, off, len, buf.data(), rng() % 4 ? 0 : kIoFua));
        std::copy(buf.begin(), buf.begin() + static_cast<long>(len), model.begin() + static_cast<long>(off));
        touch(off, len);
        break;
      case 2:
        ASSERT_EQ(0, RunIo(*loop_a_, *layer_, rng() % 2 ? IoKind::kTrim : IoKind::kWriteZeroes, off, len));
        std::fill(model.begin() + static_cast<long>(off), model.begin() + static_cast<long>(off + len), 0);
        touch(off, len);
        break;
      case 3:  // reads, flushes and cache hints mark nothing
        ASSERT_EQ(0, RunIo(*loop_a_, *layer_, IoKind::kRead, off, len, buf.data()));
        ASSERT_EQ(0, memcmp(buf.data(), model.data() + off, len));
        ASSERT_EQ(0, RunIo(*loop_a_, *layer_, IoKind::kCache, off, len));
        break;
      case 4:
        ASSERT_EQ(0, RunIo(*loop_a_, *layer_, IoKind::kFlush, 0, 0));
        break;
    }
  }
  std::cout << check_->changes_seen.load() << " changes, " << touched.size() << " chunks, "
            << tracker_->stats().persists << " persists\n";
  EXPECT_GT(check_->changes_seen.load(), 100u);
  EXPECT_EQ(0u, check_->violations.load()) << "a change reached the data file before its mark was on disk";
  EXPECT_EQ(touched, ChunkSet(tracker_->Marked()));
  EXPECT_LT(touched.size(), size_ / chunk_size_) << "the test should leave some chunks untouched";
  ExpectMarkedOnDisk(touched);
  // Marked chunks cost no persist: rewrite every touched chunk.
  const auto before = tracker_->stats();
  for (uint64_t c : touched) ASSERT_EQ(0, RunIo(*loop_a_, *layer_, IoKind::kWrite, c * chunk_size_, 512, buf.data()));
  EXPECT_EQ(before.persists, tracker_->stats().persists);
  EXPECT_EQ(before.queued, tracker_->stats().queued);

  Reopen(size_);
  EXPECT_EQ(touched, ChunkSet(tracker_->Marked()));
  std::vector<char> all(size_);
  ASSERT_EQ(0, RunIo(*loop_a_, *layer_, IoKind::kRead, 0, size_, all.data()));
  for (uint64_t c : touched) {
    std::copy(buf.begin(), buf.begin() + 512, model.begin() + static_cast<long>(c * chunk_size_));
  }
  EXPECT_TRUE(all == model);
}

TEST_F(ChangeTrackerTest, TwoLoopsShareAVolume) {
  Build(16 * kMiB, 256 * kKiB);
  // Loop A writes the even 4 KiB blocks, loop B the odd ones: the same
  // chunks, disjoint bytes, many first touches racing on both loops.
  const uint64_t blocks = size_ / 4096;
  std::vector<char> data(size_);
  for (uint64_t b = 0; b < blocks; ++b) std::memset(data.data() + b * 4096, static_cast<int>(b % 251 + 1), 4096);
  std::vector<Op> even, odd;
  std::mt19937_64 rng(11);
  for (uint64_t b = 0; b < blocks; ++b) {
    if (rng() % 4 != 0) continue;  // leave some blocks (and chunks) unwritten
    Op op{IoKind::kWrite, b * 4096, 4096, data.data() + b * 4096};
    (b % 2 ? odd : even).push_back(op);
  }
  std::shuffle(even.begin(), even.end(), rng);
  std::shuffle(odd.begin(), odd.end(), rng);
  std::vector<int> ra, rb;
  std::thread ta([&] { ra = RunBatch(*loop_a_, *layer_, even); });
  std::thread tb([&] { rb = RunBatch(*loop_b_, *layer_, odd); });
  ta.join();
  tb.join();
  for (int r : ra) ASSERT_EQ(0, r);
  for (int r : rb) ASSERT_EQ(0, r);
  EXPECT_EQ(0u, check_->violations.load());

  std::set<uint64_t> expected;
  for (const auto* ops : {&even, &odd}) {
    for (const Op& op : *ops) expected.insert(op.offset / chunk_size_);
  }
  EXPECT_EQ(expected, ChunkSet(tracker_->Marked()));
  std::vector<char> all(size_);
  ASSERT_EQ(0, RunIo(*loop_b_, *layer_, IoKind::kRead, 0, size_, all.data()));
  for (const auto* ops : {&even, &odd}) {
    for (const Op& op : *ops) ASSERT_EQ(0, memcmp(all.data() + op.offset, op.buf, 4096)) << op.offset;
  }
  const auto s = tracker_->stats();
  std::cout << "two loops: " << even.size() + odd.size() << " writes, " << expected.size() << " chunks, "
            << s.queued << " waited, " << s.persists << " persists\n";
}

TEST_F(ChangeTrackerTest, GroupCommitBatchesFirstTouchWrites) {
  const uint64_t kWrites = 1000;
  Build(kWrites * 512 * kKiB, 512 * kKiB);  // sparse: 500 MiB, 1000 chunks
  std::vector<char> buf(4096, 'x');
  std::vector<Op> ops;
  for (uint64_t i = 0; i < kWrites; ++i) ops.push_back({IoKind::kWrite, i * 512 * kKiB + 8192, 4096, buf.data()});
  const auto before = tracker_->stats();
  for (int r : RunBatch(*loop_a_, *layer_, ops)) ASSERT_EQ(0, r);
  const auto after = tracker_->stats();
  const uint64_t persists = after.persists - before.persists;
  std::cout << kWrites << " first-touch writes on one loop: " << persists << " persists, "
            << after.pages_written - before.pages_written << " pages written\n";
  EXPECT_EQ(kWrites, after.queued - before.queued);
  EXPECT_GE(persists, 1u);
  EXPECT_LE(persists, 20u) << "first-touch writes must share persists";
  EXPECT_EQ(0u, check_->violations.load());
  EXPECT_EQ(kWrites, tracker_->Marked().Count());

  // Again from two loops at once, after a cut made every chunk new again.
  auto cut = tracker_->Cut();
  ASSERT_TRUE(cut.ok()) << cut.status().message();
  EXPECT_EQ(kWrites, cut->Count());
  ASSERT_TRUE(tracker_->Commit(cut->generation).ok());
  std::vector<Op> first(ops.begin(), ops.begin() + kWrites / 2), second(ops.begin() + kWrites / 2, ops.end());
  const auto mid = tracker_->stats();
  std::thread ta([&] {
    for (int r : RunBatch(*loop_a_, *layer_, first)) EXPECT_EQ(0, r);
  });
  std::thread tb([&] {
    for (int r : RunBatch(*loop_b_, *layer_, second)) EXPECT_EQ(0, r);
  });
  ta.join();
  tb.join();
  const uint64_t persists2 = tracker_->stats().persists - mid.persists;
  std::cout << kWrites << " first-touch writes on two loops: " << persists2 << " persists\n";
  EXPECT_LE(persists2, 20u);
  EXPECT_EQ(kWrites, tracker_->Marked().Count());
  EXPECT_EQ(0u, check_->violations.load());

  // Marked chunks: no persist, no wait.
  const auto end = tracker_->stats();
  for (int r : RunBatch(*loop_a_, *layer_, ops)) ASSERT_EQ(0, r);
  EXPECT_EQ(end.persists, tracker_->stats().persists);
  EXPECT_EQ(end.queued, tracker_->stats().queued);
}

TEST_F(ChangeTrackerTest, CutCommitAbortAndRestart) {
  Build(8 * kMiB, 512 * kKiB);  // 16 chunks
  std::vector<char> buf(4096, 'a');
  auto write_chunk = [&](uint64_t c) {
    return RunIo(*loop_a_, *layer_, IoKind::kWrite, c * chunk_size_, 4096, buf.data());
  };
  for (uint64_t c : {1, 2, 3}) ASSERT_EQ(0, write_chunk(c));
  const uint64_t g1 = tracker_->generation();

  auto cut1 = tracker_->Cut();
  ASSERT_TRUE(cut1.ok()) << cut1.status().message();
  EXPECT_EQ(g1, cut1->generation);
  EXPECT_EQ((std::vector<uint64_t>{1, 2, 3}), cut1->Chunks());
  EXPECT_EQ(g1 + 1, tracker_->generation());
  EXPECT_EQ(0u, tracker_->Marked().Count()) << "a cut starts an empty epoch";
  ExpectMarkedOnDisk({});
  EXPECT_TRUE(std::filesystem::exists(ChangeTracker::CutPath(changes_, g1)));

  // After the cut, chunk 2 is new again: its mark must reach the disk first.
  for (uint64_t c : {2, 4}) ASSERT_EQ(0, write_chunk(c));
  EXPECT_EQ(0u, check_->violations.load());
  EXPECT_EQ((std::set<uint64_t>{2, 4}), ChunkSet(tracker_->Marked()));

  // The process goes away before the snapshot commits: on restart the cut
  // set is merged back (that snapshot never completed).
  Reopen(size_);
  EXPECT_EQ((std::set<uint64_t>{1, 2, 3, 4}), ChunkSet(tracker_->Marked()));
  ExpectMarkedOnDisk({1, 2, 3, 4});
  EXPECT_FALSE(std::filesystem::exists(ChangeTracker::CutPath(changes_, g1)));
  EXPECT_GT(tracker_->generation(), g1) << "a cut's generation is never reused";
  EXPECT_EQ(ENOENT, tracker_->Commit(g1).code());

  // Committed: gone for good, also across a restart.
  auto cut2 = tracker_->Cut();
  ASSERT_TRUE(cut2.ok());
  EXPECT_EQ((std::vector<uint64_t>{1, 2, 3, 4}), cut2->Chunks());
  ASSERT_TRUE(tracker_->Commit(cut2->generation).ok());
  EXPECT_FALSE(std::filesystem::exists(ChangeTracker::CutPath(changes_, cut2->generation)));
  Reopen(size_);
  EXPECT_EQ(0u, tracker_->Marked().Count());

  // Aborted: merged back at once, with what was written since.
  ASSERT_EQ(0, write_chunk(5));
  auto cut3 = tracker_->Cut();
  ASSERT_TRUE(cut3.ok());
  ASSERT_EQ(0, write_chunk(6));
  ASSERT_TRUE(tracker_->Abort(cut3->generation).ok());
  EXPECT_EQ((std::set<uint64_t>{5, 6}), ChunkSet(tracker_->Marked()));
  ExpectMarkedOnDisk({5, 6});
  EXPECT_EQ(ENOENT, tracker_->Abort(cut3->generation).code());
  EXPECT_EQ(ENOENT, tracker_->Commit(cut3->generation).code());

  // Two cuts pending at once, both lost in a restart: both merged back.
  auto cut4 = tracker_->Cut();
  ASSERT_TRUE(cut4.ok());
  ASSERT_EQ(0, write_chunk(7));
  auto cut5 = tracker_->Cut();
  ASSERT_TRUE(cut5.ok());
  EXPECT_EQ((std::vector<uint64_t>{7}), cut5->Chunks());
  ASSERT_EQ(0, write_chunk(8));
  Reopen(size_);
  EXPECT_EQ((std::set<uint64_t>{5, 6, 7, 8}), ChunkSet(tracker_->Marked()));

  // A cut of nothing is a valid, empty cut.
  ASSERT_TRUE(tracker_->Commit(tracker_->Cut()->generation).ok());
  auto empty = tracker_->Cut();
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(0u, empty->Count());
  ASSERT_TRUE(tracker_->Commit(empty->generation).ok());
  EXPECT_EQ(0u, check_->violations.load());
}

// A request queued for its marks when the cut comes has not reached the
// data file: it belongs to the new epoch, every chunk of it, including a
// chunk that was durable before and went into the cut set.
TEST_F(ChangeTrackerTest, UnsnapshottedKeepsACutsChunksUntilItCommits) {
  Build(8 * kMiB, 512 * kKiB);  // 16 chunks
  std::vector<char> buf(4096, 'u');
  auto write_chunk = [&](uint64_t c) {
    return RunIo(*loop_a_, *layer_, IoKind::kWrite, c * chunk_size_, 4096, buf.data());
  };
  for (uint64_t c : {1, 5}) ASSERT_EQ(0, write_chunk(c));
  EXPECT_EQ((std::set<uint64_t>{1, 5}), ChunkSet(tracker_->Unsnapshotted()));
  auto cut = tracker_->Cut();
  ASSERT_TRUE(cut.ok()) << cut.status().message();
  ASSERT_EQ(0, write_chunk(7));
  // The cut's snapshot has not completed: its chunks still count as changed.
  EXPECT_EQ((std::set<uint64_t>{1, 5, 7}), ChunkSet(tracker_->Unsnapshotted()));
  EXPECT_EQ((std::set<uint64_t>{7}), ChunkSet(tracker_->Marked()));
  ASSERT_TRUE(tracker_->Abort(cut->generation).ok());
  EXPECT_EQ((std::set<uint64_t>{1, 5, 7}), ChunkSet(tracker_->Unsnapshotted())) << "aborted: current marks again";
  auto cut2 = tracker_->Cut();
  ASSERT_TRUE(cut2.ok());
  ASSERT_EQ(0, write_chunk(9));
  EXPECT_EQ((std::set<uint64_t>{1, 5, 7, 9}), ChunkSet(tracker_->Unsnapshotted()));
  ASSERT_TRUE(tracker_->Commit(cut2->generation).ok());
  EXPECT_EQ((std::set<uint64_t>{9}), ChunkSet(tracker_->Unsnapshotted())) << "committed: only what came after";
}

TEST_F(ChangeTrackerTest, RequestsQueuedAtACutLandInTheNewEpoch) {
  Build(8 * kMiB, 512 * kKiB);
  ASSERT_TRUE(tracker_->Mark(512 * kKiB, 1).ok());  // chunk 1 durable
  tracker_->TEST_HoldPersists(true);
  std::vector<char> buf(8192, 'q');
  std::vector<Op> ops{{IoKind::kWrite, 1024 * kKiB - 4096, 8192, buf.data()},  // chunks 1 and 2
                      {IoKind::kWrite, 5 * 512 * kKiB, 4096, buf.data()}};     // chunk 5
  auto done = std::async(std::launch::async, [&] { return RunBatch(*loop_a_, *layer_, ops); });
  while (tracker_->stats().queued < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(0u, check_->changes_seen.load()) << "held: nothing may go down";

  auto cut = tracker_->Cut();  // persists itself, so it releases the queued requests
  ASSERT_TRUE(cut.ok());
  // The cut takes every mark requested: the queued requests' chunks too (a
  // superset: they had not reached the data file, so the snapshot reads
  // them unchanged), and they are marked again in the new epoch.
  EXPECT_EQ((std::vector<uint64_t>{1, 2, 5}), cut->Chunks());
  ASSERT_EQ(std::future_status::ready, done.wait_for(std::chrono::seconds(5))) << "queued requests hang";
  for (int r : done.get()) EXPECT_EQ(0, r);
  EXPECT_EQ((std::set<uint64_t>{1, 2, 5}), ChunkSet(tracker_->Marked()));
  ExpectMarkedOnDisk({1, 2, 5});
  EXPECT_EQ(0u, check_->violations.load());
  tracker_->TEST_HoldPersists(false);
  ASSERT_TRUE(tracker_->Commit(cut->generation).ok());
}

TEST_F(ChangeTrackerTest, RemoveDeletesEveryFileOfAVolume) {
  Build(8 * kMiB, 512 * kKiB);
  ASSERT_TRUE(tracker_->Mark(0, 1).ok());
  ASSERT_TRUE(tracker_->Cut().ok());
  ASSERT_TRUE(tracker_->Mark(0, 1).ok());
  ASSERT_TRUE(tracker_->Cut().ok());
  const std::string other = dir_.path() + "/vol.changes-not-ours";
  { std::ofstream(other) << "x"; }
  layer_.reset();
  tracker_.reset();
  ASSERT_TRUE(ChangeTracker::Remove(changes_).ok());
  std::vector<std::string> left;
  for (const auto& e : std::filesystem::directory_iterator(dir_.path())) left.push_back(e.path().filename());
  EXPECT_EQ((std::vector<std::string>{"vol.changes-not-ours"}), left);
}

TEST_F(ChangeTrackerTest, OpenRemovesUnfinishedTemporaryFiles) {
  Build(8 * kMiB, 512 * kKiB);
  ASSERT_TRUE(tracker_->Mark(0, 1).ok());
  layer_.reset();
  tracker_.reset();
  // What a crash inside an atomic write leaves: never merged, just removed.
  for (const char* leftover : {".tmp", ".7.tmp"}) {
    std::ofstream(changes_ + leftover) << "half written";
  }
  Reopen(size_);
  EXPECT_FALSE(std::filesystem::exists(changes_ + ".tmp"));
  EXPECT_FALSE(std::filesystem::exists(changes_ + ".7.tmp"));
  EXPECT_EQ((std::vector<uint64_t>{0}), tracker_->Marked().Chunks());
}

TEST_F(ChangeTrackerTest, MarkBlockingFormAndOutOfRange) {
  Build(4 * kMiB, 1 * kMiB);
  ASSERT_TRUE(tracker_->Mark(3 * kMiB - 1, 2).ok());  // spans chunks 2 and 3
  EXPECT_EQ((std::set<uint64_t>{2, 3}), ChunkSet(tracker_->Marked()));
  ExpectMarkedOnDisk({2, 3});
  EXPECT_EQ(EINVAL, tracker_->Mark(4 * kMiB, 1).code());
  // Through the layer a request past the tracked size fails, and not
  // inside Submit.
  std::vector<char> buf(4096);
  EXPECT_EQ(-EINVAL, RunIo(*loop_a_, *layer_, IoKind::kWrite, 5 * kMiB, 4096, buf.data()));
  EXPECT_EQ(0u, check_->changes_seen.load());
}

TEST_F(ChangeTrackerTest, ResizeGrowsTheTrackedRange) {
  Build(4 * kMiB + 100, 512 * kKiB);  // 9 chunks, the last partial
  EXPECT_EQ(9u, tracker_->chunk_count());
  std::vector<char> buf(4096, 'g');
  ASSERT_EQ(0, RunIo(*loop_a_, *layer_, IoKind::kWrite, 4 * kMiB, 100, buf.data()));
  ASSERT_TRUE(layer_->Resize(64 * kMiB).ok());
  EXPECT_EQ(128u, tracker_->chunk_count());
  EXPECT_EQ(64 * kMiB, file_->size());
  ASSERT_EQ(0, RunIo(*loop_a_, *layer_, IoKind::kWrite, 40 * kMiB, 4096, buf.data()));
  ASSERT_EQ(0, RunIo(*loop_b_, *layer_, IoKind::kWrite, 64 * kMiB - 4096, 4096, buf.data()));
  EXPECT_EQ((std::set<uint64_t>{8, 80, 127}), ChunkSet(tracker_->Marked()));
  EXPECT_EQ(0u, check_->violations.load());
  EXPECT_EQ(EINVAL, tracker_->Resize(32 * kMiB).code()) << "volumes never shrink";
  ASSERT_TRUE(tracker_->Resize(64 * kMiB).ok());

  Reopen(64 * kMiB);
  EXPECT_EQ(128u, tracker_->chunk_count());
  EXPECT_EQ((std::set<uint64_t>{8, 80, 127}), ChunkSet(tracker_->Marked()));
  // A volume grown while the tracker was closed: the file follows.
  Reopen(128 * kMiB);
  EXPECT_EQ(256u, tracker_->chunk_count());
  ASSERT_TRUE(tracker_->Mark(200 * 512 * kKiB, 1).ok());
  Reopen(128 * kMiB);
  EXPECT_EQ((std::set<uint64_t>{8, 80, 127, 200}), ChunkSet(tracker_->Marked()));
}

TEST_F(ChangeTrackerTest, MarkAllAndCreateAllMarked) {
  Build(5 * kMiB + 100, 1 * kMiB);  // 6 chunks
  ASSERT_TRUE(tracker_->MarkAll().ok());
  EXPECT_EQ((std::vector<uint64_t>{0, 1, 2, 3, 4, 5}), tracker_->Marked().Chunks());
  ExpectMarkedOnDisk({0, 1, 2, 3, 4, 5});

  const std::string other = dir_.path() + "/other.changes";
  EXPECT_EQ(ENOENT, ChangeTracker::Open(other, 5 * kMiB, Opts(kMiB)).status().code());
  auto all = ChangeTracker::Open(other, 200 * kMiB, Opts(kMiB, ChangeTracker::IfMissing::kCreateAllMarked));
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(200u, (*all)->Marked().Count());
}

TEST_F(ChangeTrackerTest, ChunkSizeChangeKeepsEveryMark) {
  Build(8 * kMiB, 512 * kKiB);
  ASSERT_TRUE(tracker_->Mark(3 * 512 * kKiB, 1).ok());  // bytes [1.5, 2) MiB
  tracker_.reset();
  layer_.reset();
  {
    auto t = ChangeTracker::Open(changes_, size_, Opts(1 * kMiB));
    ASSERT_TRUE(t.ok()) << t.status().message();
    EXPECT_EQ((std::vector<uint64_t>{1}), (*t)->Marked().Chunks());
  }
  auto t = ChangeTracker::Open(changes_, size_, Opts(256 * kKiB));
  ASSERT_TRUE(t.ok());
  // Coarsened to [1, 2) MiB on the way: a superset, never a loss.
  EXPECT_EQ((std::vector<uint64_t>{4, 5, 6, 7}), (*t)->Marked().Chunks());
}

TEST_F(ChangeTrackerTest, DamagedFileIsReported) {
  Build(8 * kMiB, 512 * kKiB);
  ASSERT_TRUE(tracker_->Mark(0, 1).ok());
  tracker_.reset();
  layer_.reset();
  {
    int fd = ::open(changes_.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char c = 0x7f;
    ASSERT_EQ(1, pwrite(fd, &c, 1, 33));  // inside the generation field
    ::close(fd);
  }
  auto t = ChangeTracker::Open(changes_, size_, Opts(512 * kKiB));
  EXPECT_EQ(EBADMSG, t.status().code()) << t.status().message();
  // Truncated bitmap.
  ASSERT_EQ(0, truncate(changes_.c_str(), 100));
  EXPECT_EQ(EBADMSG, ChangeTracker::Open(changes_, size_, Opts(512 * kKiB)).status().code());
  EXPECT_EQ(EINVAL, ChangeTracker::Open(changes_, size_, Opts(3000)).status().code());
}

// A persist that fails inside Abort, or inside Cut after the current set was
// cleared, leaves the marks it was writing in memory only. The next cut in the
// same process must still hand them to its snapshot: those chunks did change
// since the last completed snapshot.
TEST_F(ChangeTrackerTest, MarksAFailedPersistKeptInMemoryReachTheNextCut) {
  Build(8 * kMiB, 512 * kKiB);  // 16 chunks
  std::vector<char> buf(4096, 'a');
  auto write_chunk = [&](uint64_t c) {
    return RunIo(*loop_a_, *layer_, IoKind::kWrite, c * chunk_size_, 4096, buf.data());
  };

  // Abort cannot make the returned marks durable.
  ASSERT_EQ(0, write_chunk(3));
  auto cut1 = tracker_->Cut();
  ASSERT_TRUE(cut1.ok()) << cut1.status().message();
  tracker_->TEST_FailPersists(EIO);
  EXPECT_EQ(EIO, tracker_->Abort(cut1->generation).code());
  tracker_->TEST_FailPersists(0);
  auto cut2 = tracker_->Cut();
  ASSERT_TRUE(cut2.ok()) << cut2.status().message();
  EXPECT_TRUE(cut2->Contains(3)) << "the aborted snapshot's chunk 3 must reach the next snapshot";
  ASSERT_TRUE(tracker_->Commit(cut2->generation).ok());

  // Cut cannot persist the cleared set, nor put the marks back durably.
  ASSERT_EQ(0, write_chunk(5));
  tracker_->TEST_FailPersists(EIO);
  EXPECT_EQ(EIO, tracker_->Cut().status().code());
  tracker_->TEST_FailPersists(0);
  auto cut3 = tracker_->Cut();
  ASSERT_TRUE(cut3.ok()) << cut3.status().message();
  EXPECT_TRUE(cut3->Contains(5)) << "chunk 5, cut by the failed Cut, must reach the next snapshot";
  ASSERT_TRUE(tracker_->Commit(cut3->generation).ok());
  // Whatever files the failures left merge back on a restart: a superset.
  Reopen(size_);
  EXPECT_EQ(0u, check_->violations.load());
}

// The tracking file on a full file system: a first touch cannot persist its
// mark, so the write fails with ENOSPC and never reaches the data file. Marks
// already durable keep working, and all works again once space is freed.
TEST_F(ChangeTrackerTest, PersistFailureFailsTheRequestAndLeavesDataUntouched) {
  std::string mnt = dir_.path() + "/small";
  ASSERT_EQ(0, mkdir(mnt.c_str(), 0700));
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64k") != 0) {
    EBS_CANNOT_RUN("cannot mount a small tmpfs here (needs root): " << strerror(errno));
  }
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};

  // 64 GiB (sparse data file) in 512 KiB chunks: a 16 KiB bitmap, 4 pages
  // of which only written ones take space.
  Build(64ull << 30, 512 * kKiB, mnt + "/vol.changes");
  std::vector<char> buf(4096, 'd');
  ASSERT_EQ(0, RunIo(*loop_a_, *layer_, IoKind::kWrite, 0, 4096, buf.data()));  // chunk 0, page 0

  const std::string filler = mnt + "/filler";
  {
    int fd = ::open(filler.c_str(), O_WRONLY | O_CREAT, 0600);
    ASSERT_GE(fd, 0);
    std::vector<char> block(4096, 'f');
    while (write(fd, block.data(), block.size()) > 0) {
    }
    ::close(fd);
  }
  const uint64_t far = 40000 * 512 * kKiB;  // chunk 40000: bitmap page 1, never written
  const uint64_t seen = check_->changes_seen.load();
  EXPECT_EQ(-ENOSPC, RunIo(*loop_a_, *layer_, IoKind::kWrite, far, 4096, buf.data()));
  EXPECT_EQ(-ENOSPC, RunIo(*loop_b_, *layer_, IoKind::kWriteZeroes, far + 4096, 4096, nullptr, kIoNoHole));
  EXPECT_EQ(seen, check_->changes_seen.load()) << "a request without a durable mark must not go down";
  EXPECT_GE(tracker_->stats().failed_persists, 2u);
  std::vector<char> out(4096, 1);
  ASSERT_EQ(0, RunIo(*loop_a_, *file_, IoKind::kRead, far, 4096, out.data()));
  EXPECT_EQ(std::vector<char>(4096, 0), out) << "the data file must be untouched";
  std::vector<Extent> ext;
  ASSERT_TRUE(file_->Map(far, 8192, &ext, BlockDevice::kAllExtents).ok());
  EXPECT_TRUE(ext.size() == 1 && ext[0].hole);
  EXPECT_FALSE(tracker_->Marked().Contains(40000));
  // A chunk whose mark is durable needs no persist: still writable.
  EXPECT_EQ(0, RunIo(*loop_a_, *layer_, IoKind::kWrite, 8192, 4096, buf.data()));

  ASSERT_EQ(0, unlink(filler.c_str()));
  EXPECT_EQ(0, RunIo(*loop_a_, *layer_, IoKind::kWrite, far, 4096, buf.data()));
  EXPECT_TRUE(tracker_->Marked().Contains(40000));
  EXPECT_TRUE(BitOnDisk(changes_, 40000));
  EXPECT_EQ(0u, check_->violations.load());
}

// --- Crash test -----------------------------------------------------------------

constexpr uint64_t kCrashSize = 32 * kMiB;
constexpr uint64_t kCrashChunk = 128 * kKiB;  // 256 chunks

// The child: random writes, trims and zeroes through the layer, batches of
// 16 in flight at once; every few batches a cut (sometimes aborted later,
// never committed). Tells the parent on `ready_fd` after each batch. Runs
// until killed. No gtest here: an error is an exit code.
[[noreturn]] void CrashChild(const std::string& data, const std::string& changes, uint64_t seed, int ready_fd) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  auto loop = EventLoop::Create(256);
  if (!loop.ok()) _exit(10);
  (*loop)->Start("crash-child");
  auto file = FileDevice::Open(data, kCrashSize, false);
  if (!file.ok()) _exit(11);
  auto tracker = ChangeTracker::Open(changes, kCrashSize, Opts(kCrashChunk));
  if (!tracker.ok()) _exit(12);
  ChangeTrackingLayer layer(*file, *tracker);
  std::mt19937_64 rng(seed);
  std::vector<std::vector<char>> bufs(16, std::vector<char>(256 * kKiB));
  std::vector<uint64_t> cuts;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (int batch = 0;; ++batch) {
    std::vector<Op> ops(16);
    for (size_t i = 0; i < ops.size(); ++i) {
      Op& op = ops[i];
      op.length = 1 + rng() % (256 * kKiB);
      op.offset = rng() % (kCrashSize - op.length + 1);
      const unsigned k = rng() % 10;
      op.kind = k < 8 ? IoKind::kWrite : k == 8 ? IoKind::kTrim : IoKind::kWriteZeroes;
      if (op.kind == IoKind::kWrite) {
        const char byte = static_cast<char>(rng() | 1);  // never zero: a change is visible
        std::memset(bufs[i].data(), byte, op.length);
        op.buf = bufs[i].data();
      }
    }
    for (int r : RunBatch(**loop, layer, ops)) {
      if (r != 0) _exit(13);
    }
    // The batch has completed: nothing is in flight, as Cut requires.
    if (batch % 2 == 1) {
      auto cut = (*tracker)->Cut();
      if (!cut.ok()) _exit(14);
      cuts.push_back(cut->generation);
      if (cuts.size() > 2 && rng() % 2) {
        if (!(*tracker)->Abort(cuts.front()).ok()) _exit(15);
        cuts.erase(cuts.begin());
      }
    }
    if (write(ready_fd, "x", 1) != 1) _exit(16);
    if (std::chrono::steady_clock::now() > deadline) _exit(17);
  }
}

// A process killed at a random moment (SIGKILL: page cache kept, no
// cleanup) leaves every chunk whose data changed marked, once the tracker
// is reopened and has merged the cuts no snapshot committed.
TEST(ChangeTrackerCrashTest, EveryChangedChunkIsMarkedAfterAKill) {
  uint64_t changed_total = 0;
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    TempDir dir;
    DataDir data_dir;
    const std::string data = data_dir.path() + "/vol.img";
    const std::string changes = dir.path() + "/vol.changes";
    {
      auto f = FileDevice::Open(data, kCrashSize, true);
      ASSERT_TRUE(f.ok());
      auto t = ChangeTracker::Open(changes, kCrashSize, Opts(kCrashChunk, ChangeTracker::IfMissing::kCreateEmpty));
      ASSERT_TRUE(t.ok());
    }  // no thread of ours runs when we fork
    int pipefd[2];
    ASSERT_EQ(0, pipe2(pipefd, O_CLOEXEC));
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(pipefd[0]);
      CrashChild(data, changes, seed, pipefd[1]);
    }
    ::close(pipefd[1]);
    struct Reaper {  // never leaves the child behind when an assertion returns early
      pid_t pid;
      ~Reaper() {
        if (pid > 0) {
          kill(pid, SIGKILL);
          waitpid(pid, nullptr, 0);
        }
      }
    } reaper{pid};
    std::mt19937_64 rng(seed * 7919);
    // Wait for the child to get going (at least one batch done), then kill
    // it at a random moment.
    const int batches_first = 1 + static_cast<int>(rng() % 8);
    char c;
    for (int i = 0; i < batches_first; ++i) {
      pollfd p{pipefd[0], POLLIN, 0};
      ASSERT_EQ(1, poll(&p, 1, 5000)) << "child made no progress";
      ASSERT_EQ(1, read(pipefd[0], &c, 1)) << "child died early";
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 30000));
    ASSERT_EQ(0, kill(pid, SIGKILL));
    int status = 0;
    ASSERT_EQ(pid, waitpid(pid, &status, 0));
    reaper.pid = 0;
    int batches = batches_first;
    while (read(pipefd[0], &c, 1) == 1) ++batches;  // the write end is closed now
    ::close(pipefd[0]);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "child exited by itself, code " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1);

    auto t = ChangeTracker::Open(changes, kCrashSize, Opts(kCrashChunk));
    ASSERT_TRUE(t.ok()) << t.status().message();
    const ChangeSet marked = (*t)->Marked();
    int fd = ::open(data.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    std::vector<char> chunk(kCrashChunk);
    const std::vector<char> zeros(kCrashChunk, 0);
    uint64_t changed = 0;
    for (uint64_t i = 0; i < kCrashSize / kCrashChunk; ++i) {
      ASSERT_EQ(static_cast<ssize_t>(kCrashChunk), pread(fd, chunk.data(), kCrashChunk, i * kCrashChunk));
      if (chunk == zeros) continue;
      ++changed;
      EXPECT_TRUE(marked.Contains(i)) << "seed " << seed << ": chunk " << i << " changed but is not marked";
    }
    ::close(fd);
    changed_total += changed;
    std::cout << "seed " << seed << ": killed after " << batches << " batches, " << changed
              << " chunks changed, " << marked.Count() << " marked\n";
    for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
      EXPECT_TRUE(e.path().filename() == "vol.changes")
          << "left behind: " << e.path();
    }
  }
  EXPECT_GT(changed_total, 0u);
}

}  // namespace
}  // namespace ebs
