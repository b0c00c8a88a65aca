// The read-only device of snapshot exports over an in-memory chunk source
// (the snapshot store's own source is exercised end to end in
// tests/e2e/test-snapshot-export.sh).
#include "ebs/engine/chunk_source_device.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "memory_chunk_source.h"
#include "test_util.h"

namespace ebs {
namespace {

constexpr uint64_t kChunk = 64 * 1024;

using MemorySource = testing::MemoryChunkSource;

class ChunkSourceDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = testing::StartLoop("csd-test", 256);
    ASSERT_NE(nullptr, loop_);
    source_ = std::make_shared<MemorySource>();
    for (uint64_t c : {1, 2, 3, 4, 5, 6, 7, 9}) source_->chunks[c] = testing::RandomBytes(kChunk, static_cast<uint32_t>(c));
    // The last chunk (10) is partial and shorter in the store than the volume's tail.
    source_->chunks[10] = std::string(1000, 'z');
  }
  void TearDown() override { loop_->Stop(); }

  std::shared_ptr<ChunkSourceDevice> Open(size_t cache_chunks = 64, int readahead = 4) {
    ChunkSourceDevice::Options o;
    o.size = 10 * kChunk + 4096;
    o.chunk_size = kChunk;
    o.cache_chunks = cache_chunks;
    o.readahead_chunks = readahead;
    return std::make_shared<ChunkSourceDevice>(source_, o);
  }
  std::string Expected(uint64_t offset, uint64_t length) {
    std::string want;
    for (uint64_t pos = offset; pos < offset + length; ++pos) {
      const uint64_t c = pos / kChunk;
      auto it = source_->chunks.find(c);
      const uint64_t in = pos % kChunk;
      want.push_back(it != source_->chunks.end() && in < it->second.size() ? it->second[in] : '\0');
    }
    return want;
  }
  std::string Read(BlockDevice& dev, uint64_t offset, uint64_t length, int* rc = nullptr) {
    std::string s(length, 'x');
    int r = testing::RunIo(*loop_, dev, IoKind::kRead, offset, length, s.data());
    if (rc != nullptr) {
      *rc = r;
    } else {
      EXPECT_EQ(0, r);
    }
    return s;
  }

  std::unique_ptr<EventLoop> loop_;
  std::shared_ptr<MemorySource> source_;
};

TEST_F(ChunkSourceDeviceTest, ReadsEqualTheSourceAcrossChunksHolesAndThePartialTail) {
  auto dev = Open();
  EXPECT_EQ(10 * kChunk + 4096, dev->size());
  EXPECT_EQ(Expected(0, dev->size()), Read(*dev, 0, dev->size()));
  EXPECT_EQ(Expected(kChunk - 100, 300), Read(*dev, kChunk - 100, 300)) << "a read across a chunk boundary";
  EXPECT_EQ(std::string(kChunk, '\0'), Read(*dev, 8 * kChunk, kChunk)) << "a chunk the source has no data for";
  EXPECT_EQ(Expected(10 * kChunk, 4096), Read(*dev, 10 * kChunk, 4096)) << "the tail past the stored bytes is zeros";
  EXPECT_EQ(0, source_->FetchesOf(0)) << "a hole is never fetched";
  EXPECT_EQ(0, source_->FetchesOf(8));
}

TEST_F(ChunkSourceDeviceTest, WritesTrimsAndZeroesAreRefusedAndChangeNothing) {
  auto dev = Open();
  std::string w(4096, 'w');
  EXPECT_EQ(-EPERM, testing::RunIo(*loop_, *dev, IoKind::kWrite, kChunk, w.size(), w.data()));
  EXPECT_EQ(-EPERM, testing::RunIo(*loop_, *dev, IoKind::kTrim, kChunk, 4096));
  EXPECT_EQ(-EPERM, testing::RunIo(*loop_, *dev, IoKind::kWriteZeroes, kChunk, 4096));
  EXPECT_EQ(0, testing::RunIo(*loop_, *dev, IoKind::kFlush, 0, 0));
  EXPECT_EQ(0, testing::RunIo(*loop_, *dev, IoKind::kCache, 0, 4096));
  EXPECT_EQ(Expected(kChunk, 4096), Read(*dev, kChunk, 4096));
  EXPECT_EQ(EROFS, dev->Resize(dev->size() * 2).code());
}

TEST_F(ChunkSourceDeviceTest, MapTellsHolesFromDataAndMergesNeighbours) {
  auto dev = Open();
  std::vector<Extent> map;
  ASSERT_TRUE(dev->Map(0, dev->size(), &map, BlockDevice::kAllExtents).ok());
  ASSERT_EQ(4u, map.size());
  EXPECT_TRUE(map[0].hole);  // chunk 0
  EXPECT_EQ(kChunk, map[0].length);
  EXPECT_FALSE(map[1].hole);  // chunks 1..7
  EXPECT_EQ(kChunk, map[1].offset);
  EXPECT_EQ(7 * kChunk, map[1].length);
  EXPECT_TRUE(map[2].hole);  // chunk 8
  EXPECT_FALSE(map[3].hole);  // chunks 9 and 10, the partial tail: ends at the size
  EXPECT_EQ(9 * kChunk, map[3].offset);
  EXPECT_EQ(kChunk + 4096, map[3].length);
  map.clear();
  ASSERT_TRUE(dev->Map(0, dev->size(), &map, 2).ok());
  ASSERT_EQ(2u, map.size()) << "stops at max_extents";
  EXPECT_EQ(8 * kChunk, map[1].offset + map[1].length);
}

TEST_F(ChunkSourceDeviceTest, ConcurrentReadersOfOneChunkFetchItOnceAndTheCacheIsBounded) {
  source_->delay_ms = 50;
  auto dev = Open(/*cache_chunks=*/2, /*readahead=*/0);
  std::vector<std::thread> readers;
  std::atomic<int> bad{0};
  for (int i = 0; i < 4; ++i) {
    readers.emplace_back([&, i] {
      if (Read(*dev, 3 * kChunk + i * 512, 512) != Expected(3 * kChunk + i * 512, 512)) bad.fetch_add(1);
    });
  }
  for (auto& t : readers) t.join();
  EXPECT_EQ(0, bad.load());
  EXPECT_EQ(1, source_->FetchesOf(3)) << "four readers of one chunk share one fetch";
  source_->delay_ms = 0;
  // Chunks 1, 2 then 4 through a cache of two: chunk 3 was evicted and is fetched again.
  Read(*dev, 1 * kChunk, 512);
  Read(*dev, 2 * kChunk, 512);
  Read(*dev, 3 * kChunk, 512);
  EXPECT_EQ(2, source_->FetchesOf(3));
  Read(*dev, 3 * kChunk + 4096, 512);
  EXPECT_EQ(2, source_->FetchesOf(3)) << "a cached chunk is not fetched again";
}

TEST_F(ChunkSourceDeviceTest, SequentialReadsFetchAhead) {
  auto dev = Open(64, /*readahead=*/3);
  Read(*dev, 1 * kChunk, kChunk);
  Read(*dev, 2 * kChunk, kChunk);  // sequential: chunks 3..5 are fetched ahead
  for (int i = 0; i < 200 && (source_->FetchesOf(3) == 0 || source_->FetchesOf(5) == 0); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(1, source_->FetchesOf(3));
  EXPECT_EQ(1, source_->FetchesOf(5));
  EXPECT_EQ(0, source_->FetchesOf(7)) << "only readahead_chunks ahead";
  const int before = source_->fetches.load();
  EXPECT_EQ(Expected(3 * kChunk, 3 * kChunk), Read(*dev, 3 * kChunk, 3 * kChunk));
  EXPECT_GE(before + 3, source_->fetches.load()) << "the chunks read ahead are served from the cache";
  EXPECT_EQ(1, source_->FetchesOf(4));
}

TEST_F(ChunkSourceDeviceTest, AFailedFetchIsAnIoErrorAndTheNextReadTriesAgain) {
  auto dev = Open();
  source_->broken.insert(4);
  int rc = 0;
  Read(*dev, 4 * kChunk, 4096, &rc);
  EXPECT_EQ(-EIO, rc);
  EXPECT_EQ(Expected(5 * kChunk, 4096), Read(*dev, 5 * kChunk, 4096)) << "other chunks still read";
  source_->broken.clear();
  EXPECT_EQ(Expected(4 * kChunk, 4096), Read(*dev, 4 * kChunk, 4096)) << "a failure is not cached";
}

TEST_F(ChunkSourceDeviceTest, ClosedEveryRequestFailsWithEshutdown) {
  auto dev = Open();
  EXPECT_EQ(Expected(kChunk, 4096), Read(*dev, kChunk, 4096));
  dev->Close();
  EXPECT_TRUE(dev->closed());
  int rc = 0;
  Read(*dev, kChunk, 4096, &rc);
  EXPECT_EQ(-ESHUTDOWN, rc) << "not even a cached chunk is served";
  EXPECT_EQ(-ESHUTDOWN, testing::RunIo(*loop_, *dev, IoKind::kFlush, 0, 0));
}

}  // namespace
}  // namespace ebs
