// The encryption layer over a real data file and event loop: what a client
// reads back, what the file holds (ciphertext only), and the unaligned
// paths (read-modify-write, partial write-zeroes and trims).
#include "layers/encryption_layer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "io/file_device.h"
#include "test_util.h"

namespace ebs {
namespace {

constexpr uint64_t kSector = SectorCipher::kSectorSize;
constexpr uint64_t kSize = 64 * kSector;  // 256 KiB

std::string TestKey(char salt = 0) {
  std::string key(SectorCipher::kKeySize, '\0');
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<char>(i * 13 + 5 + salt);
  return key;
}

std::string RandomData(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() | 1);  // never zero: a zero byte is visible
  return s;
}

// A recognisable plaintext: the test searches the file for it.
std::string Pattern(size_t n) {
  static const std::string kWord = "PLAINTEXT-PATTERN-0123456789/";
  std::string s;
  while (s.size() < n) s += kWord;
  s.resize(n);
  return s;
}

// Compares two byte strings, reporting the first difference instead of
// printing hundreds of KiB.
::testing::AssertionResult Same(const std::string& want, const std::string& got) {
  if (want == got) return ::testing::AssertionSuccess();
  if (want.size() != got.size()) {
    return ::testing::AssertionFailure() << "sizes differ: want " << want.size() << ", got " << got.size();
  }
  size_t i = 0;
  while (want[i] == got[i]) ++i;
  size_t j = i;
  while (j < want.size() && want[j] != got[j]) ++j;
  return ::testing::AssertionFailure() << "first difference at byte " << i << " (sector " << i / 4096 << " + "
                                       << i % 4096 << "): want 0x" << std::hex
                                       << int(static_cast<unsigned char>(want[i])) << ", got 0x"
                                       << int(static_cast<unsigned char>(got[i])) << std::dec << "; " << j - i
                                       << " bytes differ from there";
}

// One request of a batch, and what its callback saw.
struct Op {
  IoKind kind = IoKind::kRead;
  uint64_t offset = 0;
  uint64_t length = 0;
  char* buf = nullptr;
  uint32_t flags = 0;
  // Filled in by the callback.
  int result = 1;
  uint64_t seen_offset = 0;
  uint64_t seen_length = 0;
  char* seen_buf = nullptr;
};

class EncryptionLayerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = testing::StartLoop("crypt-test", 256);
    ASSERT_NE(nullptr, loop_);
    path_ = dir_.path() + "/v.img";
    auto file = FileDevice::Open(path_, kSize, true);
    ASSERT_TRUE(file.ok()) << file.status().ToString();
    file_ = *file;
    auto cipher = SectorCipher::Create(TestKey());
    ASSERT_TRUE(cipher.ok());
    cipher_ = *cipher;
    layer_ = std::make_shared<EncryptionLayer>(file_, cipher_, file_->fd());
  }
  void TearDown() override { loop_->Stop(); }

  int Io(IoKind kind, uint64_t offset, uint64_t length, char* buf = nullptr, uint32_t flags = 0) {
    return testing::RunIo(*loop_, *layer_, kind, offset, length, buf, flags);
  }
  std::string Read(uint64_t offset, uint64_t length) {
    std::string s(length, '\x77');
    EXPECT_EQ(0, Io(IoKind::kRead, offset, length, s.data())) << "read " << offset << "+" << length;
    return s;
  }
  void Write(uint64_t offset, std::string data, uint32_t flags = 0) {
    ASSERT_EQ(0, Io(IoKind::kWrite, offset, data.size(), data.data(), flags)) << "write " << offset << "+" << data.size();
  }
  // Writes through the layer and into the model of what the volume holds.
  void WriteBoth(uint64_t offset, const std::string& data) {
    Write(offset, data);
    model_.replace(offset, data.size(), data);
  }
  // Fills the whole volume with random data (aligned writes).
  void FillRandom(uint32_t seed) {
    model_ = RandomData(kSize, seed);
    Write(0, model_);
  }
  // What the data file holds, bypassing the layer.
  std::string FileBytes(uint64_t offset, uint64_t length) {
    std::string s(length, '\0');
    EXPECT_EQ(static_cast<ssize_t>(length), ::pread(file_->fd(), s.data(), length, static_cast<off_t>(offset)));
    return s;
  }

  // Submits every op on the loop thread at once, then waits for all of them.
  void RunBatch(std::vector<Op>& ops) {
    struct Waiter {
      std::vector<IoRequest> reqs;
      std::vector<Op>* ops;
      int left;
      std::promise<void> done;
    };
    auto* w = new Waiter;  // leaked if the requests never complete
    w->reqs.resize(ops.size());
    w->ops = &ops;
    w->left = static_cast<int>(ops.size());
    for (size_t i = 0; i < ops.size(); ++i) {
      IoRequest& r = w->reqs[i];
      r.kind = ops[i].kind;
      r.offset = ops[i].offset;
      r.length = ops[i].length;
      r.buf = ops[i].buf;
      r.flags = ops[i].flags;
      r.owner = w;
      r.callback = [](IoRequest* req, int result) {
        auto* w = static_cast<Waiter*>(req->owner);
        Op& op = (*w->ops)[static_cast<size_t>(req - w->reqs.data())];
        op.result = result;
        op.seen_offset = req->offset;
        op.seen_length = req->length;
        op.seen_buf = req->buf;
        if (--w->left == 0) w->done.set_value();
      };
    }
    auto f = w->done.get_future();
    EncryptionLayer* layer = layer_.get();
    EventLoop* loop = loop_.get();
    loop_->Post([w, layer, loop] {
      for (IoRequest& r : w->reqs) layer->Submit(*loop, &r);
    });
    ASSERT_EQ(std::future_status::ready, f.wait_for(std::chrono::seconds(10))) << "requests never completed";
    delete w;
  }

  testing::TempDir dir_;
  std::string path_;
  std::unique_ptr<EventLoop> loop_;
  std::shared_ptr<FileDevice> file_;
  std::shared_ptr<SectorCipher> cipher_;
  std::shared_ptr<EncryptionLayer> layer_;
  std::string model_ = std::string(kSize, '\0');
};

TEST_F(EncryptionLayerTest, AlignedWriteReadsBackAndTheFileHoldsNoPlaintext) {
  const std::string data = Pattern(4 * kSector);
  Write(2 * kSector, data);
  EXPECT_TRUE(Same(data, Read(2 * kSector, data.size())));
  EXPECT_TRUE(Same(data.substr(kSector, kSector), Read(3 * kSector, kSector)));

  const std::string file = FileBytes(0, kSize);
  EXPECT_EQ(std::string::npos, file.find("PLAINTEXT-PATTERN")) << "plaintext reached the data file";
  const std::string stored = file.substr(2 * kSector, data.size());
  EXPECT_NE(data, stored);
  EXPECT_NE(std::string::npos, stored.find_first_not_of('\0')) << "nothing was written";
  // The file holds exactly XTS of the data at its volume offset.
  std::string decrypted(stored.size(), '\0');
  ASSERT_TRUE(cipher_->Decrypt(2 * kSector, stored.data(), decrypted.data(), stored.size()).ok());
  EXPECT_TRUE(Same(data, decrypted));
  // Sectors around it are untouched holes.
  EXPECT_TRUE(Same(std::string(2 * kSector, '\0'), file.substr(0, 2 * kSector)));
  EXPECT_TRUE(Same(std::string(kSector, '\0'), file.substr(6 * kSector, kSector)));
}

TEST_F(EncryptionLayerTest, LargeAlignedWritesAndReads) {
  // Larger than FileDevice's inline-write limit (goes through the ring
  // asynchronously) and not a power of two.
  const std::string data = RandomData(48 * kSector, 1);
  Write(8 * kSector, data);
  EXPECT_TRUE(Same(data, Read(8 * kSector, data.size())));
  EXPECT_TRUE(Same(data.substr(kSector * 5, kSector * 33), Read(13 * kSector, kSector * 33)));
  EXPECT_EQ(std::string::npos, FileBytes(0, kSize).find(data.substr(100, 64)));
  // With FUA too.
  const std::string more = RandomData(40 * kSector, 2);
  Write(0, more, kIoFua);
  EXPECT_TRUE(Same(more, Read(0, more.size())));
}

TEST_F(EncryptionLayerTest, TheCallersWriteBufferIsNotModified) {
  for (uint64_t offset : {uint64_t{0}, 3 * kSector, 5 * kSector + 17}) {
    for (size_t len : {size_t{kSector}, size_t{2 * kSector}, size_t{40 * kSector}, size_t{100}, size_t{513}}) {
      if (offset + len > kSize) continue;
      std::string buf = Pattern(len);
      const std::string copy = buf;
      ASSERT_EQ(0, Io(IoKind::kWrite, offset, len, buf.data())) << offset << "+" << len;
      EXPECT_TRUE(Same(copy, buf)) << "the write at " << offset << "+" << len << " changed the caller's buffer";
      EXPECT_TRUE(Same(copy, Read(offset, len)));
    }
  }
}

TEST_F(EncryptionLayerTest, RequestFieldsAreTheCallersWhenItCompletes) {
  FillRandom(3);
  std::string a(kSector, 'a'), b(100, 'b'), r1(kSector, 0), r2(513, 0);
  std::vector<Op> ops = {
      {IoKind::kWrite, 4 * kSector, kSector, a.data()},
      {IoKind::kWrite, 9 * kSector + 17, 100, b.data()},
      {IoKind::kRead, 20 * kSector, kSector, r1.data()},
      {IoKind::kRead, 21 * kSector - 200, 513, r2.data()},
      {IoKind::kTrim, 30 * kSector + 512, 3 * kSector},
      {IoKind::kWriteZeroes, 40 * kSector + 100, 2 * kSector},
      {IoKind::kWriteZeroes, 44 * kSector, kSector},
      {IoKind::kFlush, 0, 0},
  };
  RunBatch(ops);
  for (size_t i = 0; i < ops.size(); ++i) {
    EXPECT_EQ(0, ops[i].result) << i;
    EXPECT_EQ(ops[i].offset, ops[i].seen_offset) << "op " << i << ": layers above see the request as they sent it";
    EXPECT_EQ(ops[i].length, ops[i].seen_length) << i;
    EXPECT_EQ(ops[i].buf, ops[i].seen_buf) << i;
  }
  EXPECT_TRUE(Same(model_.substr(20 * kSector, kSector), r1));
  EXPECT_TRUE(Same(model_.substr(21 * kSector - 200, 513), r2));
}

TEST_F(EncryptionLayerTest, UnalignedWritesKeepTheirNeighbours) {
  FillRandom(4);
  WriteBoth(512 * 3, Pattern(1024));                     // 512-byte granularity, inside sector 0
  WriteBoth(kSector + 512 * 7, Pattern(512));            // the last 512 bytes of sector 1
  WriteBoth(kSector * 3 + 17, Pattern(100));             // odd offset and length
  WriteBoth(kSector * 5 - 200, Pattern(513));            // straddles a sector boundary
  WriteBoth(kSector * 8 - 1, Pattern(2));                // one byte on each side of a boundary
  WriteBoth(kSector * 10 + 1, Pattern(3 * kSector));     // partial head, whole sectors, partial tail
  WriteBoth(kSector * 20 + 4095, std::string(1, 'Z'));  // the last byte of a sector
  WriteBoth(kSize - 7, Pattern(7));                      // the very end of the volume
  EXPECT_TRUE(Same(model_, Read(0, kSize)));
  EXPECT_EQ(std::string::npos, FileBytes(0, kSize).find("PLAINTEXT-PATTERN")) << "plaintext reached the data file";
}

TEST_F(EncryptionLayerTest, UnalignedWritesIntoNeverWrittenSectorsLeaveZeros) {
  WriteBoth(kSector * 2 + 100, Pattern(100));
  WriteBoth(kSector * 6 - 10, Pattern(20));
  EXPECT_TRUE(Same(model_.substr(0, 16 * kSector), Read(0, 16 * kSector)));
  EXPECT_TRUE(Same(std::string(kSector, '\0'), Read(kSector * 3, kSector)));
}

TEST_F(EncryptionLayerTest, UnalignedReadsReturnTheRightBytes) {
  FillRandom(5);
  struct Range {
    uint64_t offset, length;
  } ranges[] = {{17, 100},           {kSector - 1, 2},        {kSector * 3 + 17, 100}, {kSector * 5 - 200, 513},
                {512, 512},          {kSector * 4 + 1, kSector * 3}, {kSector - 1, kSector * 3 + 2},
                {0, 1},              {kSize - 1, 1},          {kSize - 513, 513},      {1, kSize - 1}};
  for (const Range& r : ranges) {
    EXPECT_TRUE(Same(model_.substr(r.offset, r.length), Read(r.offset, r.length))) << r.offset << "+" << r.length;
  }
}

TEST_F(EncryptionLayerTest, NeverWrittenRangesReadZeros) {
  Write(4 * kSector, Pattern(kSector));
  EXPECT_TRUE(Same(std::string(4 * kSector, '\0'), Read(0, 4 * kSector)));
  EXPECT_TRUE(Same(std::string(kSector * 2, '\0'), Read(10 * kSector, kSector * 2)));
  EXPECT_TRUE(Same(std::string(100, '\0'), Read(kSector * 7 + 17, 100)));
  EXPECT_TRUE(Same(std::string(513, '\0'), Read(kSector * 9 - 200, 513)));
  // A read straddling written and unwritten sectors.
  EXPECT_TRUE(Same(std::string(10, '\0') + Pattern(10), Read(4 * kSector - 10, 20)));
}

TEST_F(EncryptionLayerTest, UnalignedWriteZeroesZeroesExactlyItsRange) {
  for (uint32_t flags : {uint32_t{0}, kIoNoHole, kIoFua}) {
    SCOPED_TRACE(flags);
    FillRandom(6 + flags);
    struct Range {
      uint64_t offset, length;
    } ranges[] = {
        {kSector + 100, 3 * kSector},   // partial head, two whole sectors, partial tail
        {kSector * 6 + 10, 20},         // inside one sector
        {kSector * 8 - 50, 100},        // across a boundary, no whole sector
        {kSector * 12, kSector + 1},    // aligned start, partial tail
        {kSector * 15 - 1, kSector + 1},  // partial head, aligned end
        {512 * 41, 512 * 3},            // 512-byte granularity
    };
    for (const Range& r : ranges) {
      ASSERT_EQ(0, Io(IoKind::kWriteZeroes, r.offset, r.length, nullptr, flags)) << r.offset << "+" << r.length;
      model_.replace(r.offset, r.length, std::string(r.length, '\0'));
    }
    EXPECT_TRUE(Same(model_, Read(0, kSize)));
  }
}

TEST_F(EncryptionLayerTest, AlignedWriteZeroes) {
  FillRandom(7);
  ASSERT_EQ(0, Io(IoKind::kWriteZeroes, 2 * kSector, 3 * kSector));
  ASSERT_EQ(0, Io(IoKind::kWriteZeroes, 10 * kSector, kSector, nullptr, kIoFastZero));
  ASSERT_EQ(0, Io(IoKind::kWriteZeroes, 12 * kSector, kSector, nullptr, kIoNoHole));
  model_.replace(2 * kSector, 3 * kSector, std::string(3 * kSector, '\0'));
  model_.replace(10 * kSector, kSector, std::string(kSector, '\0'));
  model_.replace(12 * kSector, kSector, std::string(kSector, '\0'));
  EXPECT_TRUE(Same(model_, Read(0, kSize)));
}

TEST_F(EncryptionLayerTest, FastZeroOfAPartialSectorIsNotSupported) {
  FillRandom(8);
  EXPECT_EQ(-EOPNOTSUPP, Io(IoKind::kWriteZeroes, kSector + 100, 200, nullptr, kIoFastZero));
  EXPECT_EQ(-EOPNOTSUPP, Io(IoKind::kWriteZeroes, kSector * 3 + 512, kSector * 2, nullptr, kIoFastZero));
  EXPECT_EQ(-EOPNOTSUPP, Io(IoKind::kWriteZeroes, kSector * 6, kSector + 512, nullptr, kIoFastZero | kIoNoHole));
  EXPECT_TRUE(Same(model_, Read(0, kSize))) << "a refused fast zero changed data";
}

TEST_F(EncryptionLayerTest, TrimOfWholeSectorsReadsZeros) {
  FillRandom(9);
  ASSERT_EQ(0, Io(IoKind::kTrim, 4 * kSector, 3 * kSector));
  model_.replace(4 * kSector, 3 * kSector, std::string(3 * kSector, '\0'));
  EXPECT_TRUE(Same(model_, Read(0, kSize)));
  EXPECT_TRUE(Same(std::string(3 * kSector, '\0'), FileBytes(4 * kSector, 3 * kSector))) << "a trimmed range is a hole";
  // Written again after the trim: data, not zeros.
  WriteBoth(5 * kSector + 10, Pattern(10));
  EXPECT_TRUE(Same(model_, Read(0, kSize)));
}

TEST_F(EncryptionLayerTest, TrimOfPartialSectorsKeepsTheRestOfTheirData) {
  FillRandom(10);
  // Sector 2 from byte 512, all of sector 3, sector 4 up to byte 512.
  ASSERT_EQ(0, Io(IoKind::kTrim, 2 * kSector + 512, 2 * kSector));
  // Inside one sector: nothing whole to drop.
  ASSERT_EQ(0, Io(IoKind::kTrim, 8 * kSector + 100, 1000));
  const std::string got = Read(0, kSize);
  // The whole sector reads as zeros.
  EXPECT_TRUE(Same(std::string(kSector, '\0'), got.substr(3 * kSector, kSector)));
  // Bytes outside the trimmed range are intact (within the partially
  // trimmed sectors too); the trimmed bytes of partial sectors may read as
  // anything, but never as garbage for the rest of the sector.
  EXPECT_TRUE(Same(model_.substr(0, 2 * kSector + 512), got.substr(0, 2 * kSector + 512)));
  EXPECT_TRUE(Same(model_.substr(4 * kSector + 512), got.substr(4 * kSector + 512)));
  for (uint64_t s : {uint64_t{2}, uint64_t{4}, uint64_t{8}}) {
    const std::string sector = got.substr(s * kSector, kSector);
    const std::string want = model_.substr(s * kSector, kSector);
    // Each 512-byte block is either the old data or zeros.
    for (uint64_t b = 0; b < kSector; b += 512) {
      std::string blk = sector.substr(b, 512);
      EXPECT_TRUE(blk == want.substr(b, 512) || blk == std::string(512, '\0')) << "sector " << s << " block " << b;
    }
  }
}

TEST_F(EncryptionLayerTest, ConcurrentUnalignedWritesToOneSectorAllSurvive) {
  FillRandom(11);
  // Eight 512-byte blocks of sector 10, plus odd-sized pieces of sectors 20
  // and 21 that share sectors, all submitted before any completes.
  std::vector<std::string> bufs;
  std::vector<Op> ops;
  for (uint64_t b = 0; b < 8; ++b) bufs.push_back(std::string(512, static_cast<char>('A' + b)));
  for (uint64_t b = 0; b < 8; ++b) bufs.push_back(std::string(100 + b, static_cast<char>('a' + b)));
  for (uint64_t b = 0; b < 8; ++b) {
    const uint64_t blk = (b * 5) % 8;
    ops.push_back({IoKind::kWrite, 10 * kSector + blk * 512, 512, bufs[blk].data()});
    model_.replace(10 * kSector + blk * 512, 512, bufs[blk]);
  }
  uint64_t pos = 20 * kSector + 3;
  for (uint64_t b = 0; b < 8; ++b) {
    std::string& s = bufs[8 + b];
    ops.push_back({IoKind::kWrite, pos, s.size(), s.data()});
    model_.replace(pos, s.size(), s);
    pos += s.size() + 900;  // some of these straddle the boundary into sector 21
  }
  ASSERT_GT(pos, 21 * kSector);
  RunBatch(ops);
  for (size_t i = 0; i < ops.size(); ++i) EXPECT_EQ(0, ops[i].result) << i;
  EXPECT_TRUE(Same(model_.substr(10 * kSector, kSector), Read(10 * kSector, kSector)));
  EXPECT_TRUE(Same(model_, Read(0, kSize)));
}

TEST_F(EncryptionLayerTest, MixedBatchOfReadsAndWrites) {
  FillRandom(12);
  std::vector<std::string> reads;
  std::vector<std::string> writes;
  std::vector<Op> ops;
  reads.reserve(16);
  writes.reserve(16);
  // Reads of sectors 0..15 and writes to sectors 32..47, interleaved.
  for (uint64_t i = 0; i < 16; ++i) {
    reads.emplace_back(300 + i, '\0');
    ops.push_back({IoKind::kRead, i * kSector + i * 7, reads.back().size(), reads.back().data()});
    writes.push_back(RandomData(i % 2 ? kSector : 700, 50 + i));
    const uint64_t off = (32 + i) * kSector + (i % 2 ? 0 : 33);
    ops.push_back({IoKind::kWrite, off, writes.back().size(), writes.back().data()});
    model_.replace(off, writes.back().size(), writes.back());
  }
  const std::string before = model_;
  RunBatch(ops);
  for (size_t i = 0; i < ops.size(); ++i) EXPECT_EQ(0, ops[i].result) << i;
  for (uint64_t i = 0; i < 16; ++i) EXPECT_TRUE(Same(before.substr(i * kSector + i * 7, 300 + i), reads[i])) << i;
  EXPECT_TRUE(Same(model_, Read(0, kSize)));
}

// Two connections of one export run on two event loops (the server advertises
// multi-conn). One rewrites bytes [2048, 2560) of a sector again and again
// (read-modify-write of the whole sector); the other reads bytes [0, 512)
// of the same sector, which nobody writes. Every read must return them
// unchanged: a read that sees the sector half rewritten would decrypt the
// whole sector to garbage.
TEST_F(EncryptionLayerTest, ReadsOfUntouchedBytesDuringAnotherLoopsReadModifyWrite) {
  FillRandom(14);
  constexpr uint64_t kTarget = 7 * kSector;
  const std::string want = model_.substr(kTarget, 512);
  auto other = EventLoop::Create(64);
  ASSERT_TRUE(other.ok());
  (*other)->Start("crypt-test-2");

  struct Stress {
    EncryptionLayer* layer;
    EventLoop* wloop;
    EventLoop* rloop;
    IoRequest wreq, rreq;
    std::string wbuf[2] = {std::string(512, 'x'), std::string(512, 'y')};
    std::string rbuf = std::string(512, '\0');
    std::string want;
    uint64_t target = 0;
    std::atomic<bool> stop{false};
    std::atomic<int> writes{0}, reads{0}, bad_reads{0}, errors{0};
    std::promise<void> wdone, rdone;
  } st;
  st.layer = layer_.get();
  st.wloop = loop_.get();
  st.rloop = other->get();
  st.want = want;
  st.target = kTarget;
  st.wreq.kind = IoKind::kWrite;
  st.wreq.offset = kTarget + 2048;
  st.wreq.length = 512;
  st.wreq.owner = &st;
  st.wreq.callback = [](IoRequest* r, int res) {
    auto* s = static_cast<Stress*>(r->owner);
    if (res != 0) s->errors++;
    int n = ++s->writes;
    if (s->stop.load()) {
      s->wdone.set_value();
      return;
    }
    r->buf = s->wbuf[n % 2].data();
    r->offset = s->target + 2048;
    r->length = 512;
    s->layer->Submit(*s->wloop, r);
  };
  st.rreq.kind = IoKind::kRead;
  st.rreq.offset = kTarget;
  st.rreq.length = 512;
  st.rreq.owner = &st;
  st.rreq.callback = [](IoRequest* r, int res) {
    auto* s = static_cast<Stress*>(r->owner);
    if (res != 0) s->errors++;
    if (res == 0 && s->rbuf != s->want) s->bad_reads++;
    ++s->reads;
    if (s->stop.load()) {
      s->rdone.set_value();
      return;
    }
    r->buf = s->rbuf.data();
    r->offset = s->target;
    r->length = 512;
    s->layer->Submit(*s->rloop, r);
  };
  st.wreq.buf = st.wbuf[0].data();
  st.rreq.buf = st.rbuf.data();
  auto wf = st.wdone.get_future();
  auto rf = st.rdone.get_future();
  loop_->Post([&st] { st.layer->Submit(*st.wloop, &st.wreq); });
  (*other)->Post([&st] { st.layer->Submit(*st.rloop, &st.rreq); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  st.stop = true;
  ASSERT_EQ(std::future_status::ready, wf.wait_for(std::chrono::seconds(10)));
  ASSERT_EQ(std::future_status::ready, rf.wait_for(std::chrono::seconds(10)));
  (*other)->Stop();
  RecordProperty("writes", st.writes.load());
  RecordProperty("reads", st.reads.load());
  EXPECT_EQ(0, st.errors.load());
  EXPECT_GT(st.writes.load(), 100);
  EXPECT_GT(st.reads.load(), 100);
  EXPECT_EQ(0, st.bad_reads.load()) << "of " << st.reads.load() << " reads of bytes no request wrote, during "
                                    << st.writes.load() << " read-modify-writes of their sector";
}

TEST_F(EncryptionLayerTest, DataNeedsTheKeyAfterReopen) {
  FillRandom(13);
  WriteBoth(kSector + 5, Pattern(5000));
  // The same key over a new FileDevice reads it all back.
  auto file = FileDevice::Open(path_, kSize, false);
  ASSERT_TRUE(file.ok());
  EncryptionLayer same(*file, cipher_, (*file)->fd());
  std::string got(kSize, '\0');
  ASSERT_EQ(0, testing::RunIo(*loop_, same, IoKind::kRead, 0, kSize, got.data()));
  EXPECT_TRUE(Same(model_, got));
  // Another key reads garbage, not the data.
  auto other = SectorCipher::Create(TestKey(1));
  ASSERT_TRUE(other.ok());
  EncryptionLayer wrong(*file, *other, (*file)->fd());
  ASSERT_EQ(0, testing::RunIo(*loop_, wrong, IoKind::kRead, 0, kSize, got.data()));
  EXPECT_NE(model_.substr(0, kSector), got.substr(0, kSector));
  EXPECT_EQ(std::string::npos, got.find("PLAINTEXT-PATTERN"));
}

TEST_F(EncryptionLayerTest, FlushAndEmptyRequestsPassThrough) {
  EXPECT_EQ(0, Io(IoKind::kFlush, 0, 0));
  EXPECT_EQ(0, Io(IoKind::kCache, 0, kSector));
  // Empty requests (the NBD server refuses them before they get here): a
  // read or write succeeds and does nothing; a trim or write-zeroes gets
  // what the plain device gives it (fallocate refuses a 0-byte range).
  for (IoKind kind : {IoKind::kRead, IoKind::kWrite}) {
    EXPECT_EQ(0, testing::RunIo(*loop_, *file_, kind, kSector + 1, 0, nullptr)) << static_cast<int>(kind);
    EXPECT_EQ(0, Io(kind, kSector + 1, 0, nullptr)) << static_cast<int>(kind);
  }
  for (IoKind kind : {IoKind::kTrim, IoKind::kWriteZeroes}) {
    EXPECT_EQ(testing::RunIo(*loop_, *file_, kind, kSector + 1, 0, nullptr), Io(kind, kSector + 1, 0, nullptr))
        << static_cast<int>(kind);
  }
  EXPECT_EQ(std::string(kSector, '\0'), FileBytes(kSector, kSector));
}

}  // namespace
}  // namespace ebs
