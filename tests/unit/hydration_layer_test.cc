// The lazy-restore layer over a real data file and event loop, with an
// in-memory chunk source standing in for the snapshot store (the real one is
// exercised end to end in tests/e2e/test-snapshot-lazy.sh).
#include "layers/hydration_layer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "io/file_device.h"
#include "memory_chunk_source.h"
#include "test_util.h"

namespace ebs {
namespace {

constexpr uint64_t kChunk = 64 * 1024;
constexpr uint64_t kSize = 32 * kChunk;

using MemorySource = testing::MemoryChunkSource;

class HydrationLayerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = testing::StartLoop("hydrate-test", 256);
    ASSERT_NE(nullptr, loop_);
    data_ = dir_.path() + "/v.img";
    bitmap_ = dir_.path() + "/v.loaded";
    auto file = FileDevice::Open(data_, kSize, true);
    ASSERT_TRUE(file.ok());
    file->reset();
    ASSERT_TRUE(HydrationLayer::CreateBitmap(bitmap_, kSize, kChunk).ok());
    source_ = std::make_shared<MemorySource>();
    // Chunks 1, 5 and 9 hold data; the rest are zeros.
    for (uint64_t c : {1, 5, 9}) source_->chunks[c] = std::string(kChunk, static_cast<char>('A' + c));
  }
  void TearDown() override { loop_->Stop(); }

  std::shared_ptr<HydrationLayer> Open(double rate = 0) {
    auto file = FileDevice::Open(data_, kSize, false);
    EXPECT_TRUE(file.ok());
    HydrationLayer::Options opts;
    opts.chunk_size = kChunk;
    opts.rate_mibps = rate;
    auto h = HydrationLayer::Open(*file, data_, bitmap_, source_, opts);
    EXPECT_TRUE(h.ok()) << h.status().message();
    return *h;
  }
  std::string Read(BlockDevice& dev, uint64_t offset, uint64_t length, int* rc = nullptr) {
    std::string s(length, '\0');
    int r = testing::RunIo(*loop_, dev, IoKind::kRead, offset, length, s.data());
    if (rc) *rc = r;
    else EXPECT_EQ(0, r);
    return s;
  }

  testing::TempDir dir_;
  std::string data_, bitmap_;
  std::unique_ptr<EventLoop> loop_;
  std::shared_ptr<MemorySource> source_;
};

TEST_F(HydrationLayerTest, ReadsAndPartialWritesLoadFirstAndLoadedChunksSurviveReopen) {
  {
    auto h = Open();
    EXPECT_EQ(32u, h->total_chunks());
    EXPECT_EQ(std::string(4096, 'B'), Read(*h, kChunk + 8192, 4096)) << "a read of a chunk not loaded yet";
    // A partial write into chunk 5: the rest of the chunk keeps the source's content.
    std::string w(1000, 'w');
    ASSERT_EQ(0, testing::RunIo(*loop_, *h, IoKind::kWrite, 5 * kChunk + 10, w.size(), w.data()));
    std::string got = Read(*h, 5 * kChunk, kChunk);
    std::string want(kChunk, 'F');
    want.replace(10, 1000, w);
    EXPECT_EQ(want, got);
    EXPECT_TRUE(h->Loaded(1));
    EXPECT_TRUE(h->Loaded(5));
    EXPECT_FALSE(h->Loaded(9));
    EXPECT_EQ(2u, h->loaded_chunks());
  }
  // Reopened: chunks 1 and 5 are loaded and never fetched again (which
  // would overwrite the write).
  source_->fetches = 0;
  auto h = Open();
  EXPECT_EQ(2u, h->loaded_chunks());
  std::string got = Read(*h, 5 * kChunk + 10, 1000);
  EXPECT_EQ(std::string(1000, 'w'), got);
  EXPECT_EQ(0, source_->fetches.load());
}

TEST_F(HydrationLayerTest, ReadsGoOnBeforeTheChunkIsRecordedAndWritesWaitForTheRecord) {
  auto h = Open();
  h->TEST_HoldCommits(true);  // nothing becomes durably loaded
  EXPECT_EQ(std::string(4096, 'B'), Read(*h, kChunk, 4096)) << "read-through before the record";
  EXPECT_EQ(std::string(kChunk, 'J'), Read(*h, 9 * kChunk, kChunk));
  EXPECT_FALSE(h->Loaded(1));
  EXPECT_FALSE(h->Loaded(9));
  // A write must not reach the data file before its chunk is recorded: a
  // crash would load the snapshot's bytes over it.
  std::string w(512, 'w');
  std::atomic<bool> written{false};
  std::thread writer([&] {
    EXPECT_EQ(0, testing::RunIo(*loop_, *h, IoKind::kWrite, kChunk + 512, w.size(), w.data()));
    written = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(written.load()) << "the write went on before its chunk was recorded as loaded";
  h->TEST_HoldCommits(false);
  writer.join();
  EXPECT_TRUE(h->Loaded(1));
  EXPECT_TRUE(h->Loaded(9)) << "both recorded, in one batch or two";
  std::string want(4096, 'B');
  want.replace(512, 512, w);
  EXPECT_EQ(want, Read(*h, kChunk, 4096));
}

TEST_F(HydrationLayerTest, ChunksWrittenButNotRecordedAreLoadedAgainAfterACrash) {
  {
    auto h = Open();
    h->TEST_HoldCommits(true);
    EXPECT_EQ(std::string(4096, 'F'), Read(*h, 5 * kChunk, 4096));
    // Gone before the record: as after kill -9, nothing says chunk 5 is loaded.
    // (The destructor records what is pending; take the record from before.)
    std::filesystem::copy_file(bitmap_, bitmap_ + ".before", std::filesystem::copy_options::overwrite_existing);
  }
  std::filesystem::rename(bitmap_ + ".before", bitmap_);
  source_->fetches = 0;
  auto h = Open();
  EXPECT_FALSE(h->Loaded(5));
  EXPECT_EQ(std::string(kChunk, 'F'), Read(*h, 5 * kChunk, kChunk)) << "loaded again, the same bytes";
  EXPECT_EQ(1, source_->fetches.load());
}

TEST_F(HydrationLayerTest, ConcurrentFirstReadsOfOneChunkShareOneFetch) {
  source_->delay_ms = 50;
  auto h = Open();
  std::vector<std::thread> readers;
  std::atomic<int> bad{0};
  for (int i = 0; i < 6; ++i) {
    readers.emplace_back([&, i] {
      if (Read(*h, 9 * kChunk + i * 4096, 4096) != std::string(4096, 'J')) bad.fetch_add(1);
    });
  }
  for (auto& t : readers) t.join();
  EXPECT_EQ(0, bad.load());
  EXPECT_EQ(1, source_->FetchesOf(9));
  EXPECT_GE(h->fetch_waits(), 1u);
}

TEST_F(HydrationLayerTest, MapDescribesChunksNotLoadedFromTheSource) {
  auto h = Open();
  std::vector<Extent> map;
  ASSERT_TRUE(h->Map(0, 12 * kChunk, &map, BlockDevice::kAllExtents).ok());
  // hole [0,1), data [1,2), hole [2,5), data [5,6), hole [6,9), data [9,10), hole [10,12)
  std::vector<std::tuple<uint64_t, uint64_t, bool>> want = {
      {0, 1, true}, {1, 2, false}, {2, 5, true}, {5, 6, false}, {6, 9, true}, {9, 10, false}, {10, 12, true}};
  ASSERT_EQ(want.size(), map.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(std::get<0>(want[i]) * kChunk, map[i].offset) << i;
    EXPECT_EQ((std::get<1>(want[i]) - std::get<0>(want[i])) * kChunk, map[i].length) << i;
    EXPECT_EQ(std::get<2>(want[i]), map[i].hole) << i;
  }
}

TEST_F(HydrationLayerTest, MapStopsAtMaxExtentsWithACoveredPrefix) {
  auto h = Open();
  // Chunk 5 loaded with a write in its middle: the layer below maps it as
  // data, hole, data, hole.
  std::string w(1000, 'w');
  ASSERT_EQ(0, testing::RunIo(*loop_, *h, IoKind::kWrite, 5 * kChunk + 10, w.size(), w.data()));
  std::vector<Extent> all;
  ASSERT_TRUE(h->Map(0, 12 * kChunk, &all, BlockDevice::kAllExtents).ok());
  ASSERT_GT(all.size(), 6u);
  for (size_t max = 1; max < all.size(); ++max) {
    std::vector<Extent> some;
    ASSERT_TRUE(h->Map(0, 12 * kChunk, &some, max).ok());
    ASSERT_LE(some.size(), max) << max;
    ASSERT_FALSE(some.empty());
    // A prefix of the full map: the same extents, the last one possibly shorter.
    for (size_t i = 0; i + 1 < some.size(); ++i) {
      EXPECT_EQ(all[i].offset, some[i].offset) << max << " " << i;
      EXPECT_EQ(all[i].length, some[i].length) << max << " " << i;
      EXPECT_EQ(all[i].hole, some[i].hole) << max << " " << i;
    }
    const Extent& last = some.back();
    EXPECT_EQ(all[some.size() - 1].offset, last.offset) << max;
    EXPECT_EQ(all[some.size() - 1].hole, last.hole) << max;
    EXPECT_LE(last.length, all[some.size() - 1].length) << max;
  }
}

TEST_F(HydrationLayerTest, BackgroundLoadsEverythingThenPassesThrough) {
  auto h = Open();
  h->StartBackground();
  for (int i = 0; i < 500 && !h->complete(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(h->complete());
  EXPECT_EQ(32u, h->loaded_chunks());
  for (uint64_t c : {1, 5, 9}) EXPECT_EQ(std::string(kChunk, static_cast<char>('A' + c)), Read(*h, c * kChunk, kChunk));
  EXPECT_EQ(std::string(kChunk, '\0'), Read(*h, 3 * kChunk, kChunk));
}

TEST_F(HydrationLayerTest, BackgroundHonoursTheRate) {
  // 1 MiB/s and 3 chunks of 64 KiB with data: about 0.19 s; zero chunks are free.
  auto start = std::chrono::steady_clock::now();
  auto h = Open(1.0);
  h->StartBackground();
  for (int i = 0; i < 500 && !h->complete(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(h->complete());
  EXPECT_GE(secs, 0.15) << "loaded 192 KiB faster than 1 MiB/s allows";
}

TEST_F(HydrationLayerTest, AnUnloadableChunkFailsOnlyItsRequests) {
  source_->broken.insert(5);
  auto h = Open();
  int rc = 0;
  Read(*h, 5 * kChunk, 4096, &rc);
  EXPECT_EQ(-EIO, rc) << "garbage must never be served for a chunk that cannot be loaded";
  EXPECT_EQ(std::string(4096, 'J'), Read(*h, 9 * kChunk, 4096)) << "other chunks are unaffected";
  EXPECT_FALSE(h->Loaded(5));
  h->StartBackground();
  for (int i = 0; i < 300 && h->error().ok(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(h->error().ok()) << "background loading reports the unloadable chunk";
  EXPECT_NE(std::string::npos, h->error().message().find("chunk 5"));
}

}  // namespace
}  // namespace ebs
