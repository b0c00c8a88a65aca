// A volume's whole I/O stack, as the server drives it, against an in-memory
// model: a seeded random mix of reads, writes, trims, write-zeroes and
// flushes, many in flight at once on one event loop, at random (often
// unaligned) offsets and sizes. Reads are checked as they complete; the
// whole contents are compared at the end, and again after the manager and
// the volume are closed and opened again. For a plain and an encrypted volume.
//
// Requests in flight together never share a byte (their order is undefined
// where they overlap, as in NBD), but they may share a 4 KiB sector, which
// is what the encryption layer's read-modify-write has to get right.
//
// The op sequence depends on the order completions arrive in, so a run is
// seeded but not exactly repeatable; a failure names the request.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <random>
#include <string>
#include <vector>

#include "ebs/engine/volume_manager.h"
#include "keys/sector_cipher.h"
#include "test_util.h"

namespace ebs {
namespace {

using testing::RunIo;
using testing::TempDir;

constexpr uint64_t kSector = SectorCipher::kSectorSize;
constexpr uint64_t kVolumeSize = 1 * kGiB;
// The I/O lands in two windows: the start of the volume and its end (so
// requests that end exactly at the device size are part of the mix). The
// model holds the head window followed by the tail window.
constexpr uint64_t kHeadSize = 12 * kMiB;
constexpr uint64_t kTailSize = 4 * kMiB;
constexpr uint64_t kTailStart = kVolumeSize - kTailSize;
constexpr uint64_t kMaxRequest = 1 * kMiB;

const char* KindName(IoKind kind) {
  switch (kind) {
    case IoKind::kRead: return "read";
    case IoKind::kWrite: return "write";
    case IoKind::kFlush: return "flush";
    case IoKind::kTrim: return "trim";
    case IoKind::kWriteZeroes: return "write-zeroes";
    case IoKind::kCache: return "cache";
  }
  return "?";
}

// What the volume should hold, and what each kind of request does to it.
struct Model {
  explicit Model(bool encrypted) : encrypted(encrypted), bytes(kHeadSize + kTailSize, 0) {}
  // The model's bytes for device offset `offset` (a range never straddles
  // the two windows).
  char* At(uint64_t offset) {
    return bytes.data() + (offset < kHeadSize ? offset : kHeadSize + (offset - kTailStart));
  }
  void Zero(uint64_t offset, uint64_t length) { std::memset(At(offset), 0, length); }
  // A trim reads back as zeros on a plain volume. An encrypted volume keeps
  // the bytes of sectors the trim covers only in part (encryption_layer.h).
  void Trim(uint64_t offset, uint64_t length) {
    if (!encrypted) return Zero(offset, length);
    const uint64_t start = (offset + kSector - 1) / kSector * kSector;
    const uint64_t end = (offset + length) / kSector * kSector;
    if (start < end) Zero(start, end - start);
  }
  // Write-zeroes with FAST_ZERO: an encrypted volume refuses it when it
  // would rewrite part of a sector.
  int FastZeroResult(uint64_t offset, uint64_t length) const {
    return encrypted && !SectorCipher::Aligned(offset, length) ? -EOPNOTSUPP : 0;
  }

  const bool encrypted;
  std::vector<char> bytes;
};

// Keeps `depth` requests in flight on `loop` until `total` have been issued.
// Everything but Run's caller runs on the loop's thread.
class MixDriver {
 public:
  MixDriver(EventLoop& loop, BlockDevice& dev, Model& model, uint64_t seed, int total, int depth)
      : loop_(loop), dev_(dev), model_(model), rng_(seed), total_(total), slots_(depth) {
    for (Slot& s : slots_) {
      s.driver = this;
      s.buf.resize(kMaxRequest);
    }
  }

  // Returns "" when every request completed as the model says, else what
  // went wrong first.
  std::string Run() {
    auto finished = done_.get_future();
    loop_.Post([this] {
      for (Slot& s : slots_) StartNext(s);
    });
    if (finished.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
      // The requests still reference this driver: going on would be a use after free.
      std::fprintf(stderr, "volume_io_mix_test: %d of %d requests issued, %d in flight after 60 s\n", issued_,
                   total_, in_flight_);
      std::abort();
    }
    return finished.get();
  }

  int flushes() const { return flushes_; }

 private:
  struct Slot {
    MixDriver* driver = nullptr;
    IoRequest req;  // reused, as the server's connection slots are
    std::vector<char> buf;
    bool busy = false;
    // What was submitted: layers may change the request's range while it
    // runs, and must have put it back when it completes.
    IoKind kind = IoKind::kRead;
    uint64_t offset = 0;
    uint64_t length = 0;
    char* data = nullptr;
    int expect = 0;
  };

  // A random range in one of the windows: at any byte, or 512-byte or 4 KiB
  // aligned, mostly small, now and then up to kMaxRequest.
  void PickRange(uint64_t* offset, uint64_t* length) {
    const bool tail = rng_() % 4 == 0;
    const uint64_t base = tail ? kTailStart : 0;
    const uint64_t window = tail ? kTailSize : kHeadSize;
    const unsigned a = rng_() % 10;
    const uint64_t align = a < 4 ? 1 : a < 6 ? 512 : kSector;  // any byte, 512 (kernel client), 4 KiB
    const unsigned s = rng_() % 20;
    const uint64_t max = s == 0 ? kMaxRequest : s < 4 ? 256 * kKiB : 16 * kKiB;
    uint64_t len = 1 + rng_() % max;
    len = std::min(kMaxRequest, (len + align - 1) / align * align);
    uint64_t off = rng_() % 8 == 0 ? window - len : rng_() % (window - len + 1) / align * align;
    *offset = base + off;
    *length = len;
  }

  bool Overlaps(uint64_t offset, uint64_t length) const {
    for (const Slot& s : slots_) {
      if (!s.busy || s.length == 0) continue;
      if (offset < s.offset + s.length && s.offset < offset + length) return true;
    }
    return false;
  }

  void StartNext(Slot& s) {
    if (issued_ == total_ || !failure_.empty()) return;
    ++issued_;
    ++in_flight_;
    s.busy = true;
    IoRequest& r = s.req;
    r.callback = &MixDriver::Done;
    r.owner = &s;
    r.flags = 0;
    r.buf = nullptr;
    s.expect = 0;
    const unsigned k = rng_() % 20;
    uint64_t offset = 0, length = 0;
    bool found = false;
    for (int tries = 0; tries < 50 && !found; ++tries) {
      PickRange(&offset, &length);
      found = !Overlaps(offset, length);
    }
    if (k == 19 || !found) {  // a flush has no range, so it always fits
      r.kind = IoKind::kFlush;
      r.offset = 0;
      r.length = 0;
      ++flushes_;
    } else {
      r.offset = offset;
      r.length = length;
      if (k < 6) {
        r.kind = IoKind::kWrite;
        r.buf = s.buf.data();
        for (uint64_t i = 0; i < length; i += 8) {
          const uint64_t v = rng_();
          std::memcpy(r.buf + i, &v, std::min<uint64_t>(8, length - i));
        }
        if (rng_() % 4 == 0) r.flags |= kIoFua;
      } else if (k < 11) {
        r.kind = IoKind::kRead;
        r.buf = s.buf.data();
        std::memset(r.buf, 0xA5, length);  // a read that leaves bytes unset shows
      } else if (k < 14) {
        r.kind = IoKind::kTrim;
        if (rng_() % 4 == 0) r.flags |= kIoFua;
      } else {
        r.kind = IoKind::kWriteZeroes;
        if (rng_() % 2 == 0) r.flags |= kIoNoHole;
        if (rng_() % 4 == 0) r.flags |= kIoFua;
        if (rng_() % 8 == 0) {
          r.flags |= kIoFastZero;
          s.expect = model_.FastZeroResult(offset, length);
        }
      }
    }
    s.kind = r.kind;
    s.offset = r.offset;
    s.length = r.length;
    s.data = r.buf;
    dev_.Submit(loop_, &r);
  }

  // Loop thread. Checks the result, updates the model, starts the slot's next request.
  static void Done(IoRequest* r, int result) {
    Slot& s = *static_cast<Slot*>(r->owner);
    MixDriver& d = *s.driver;
    s.busy = false;
    --d.in_flight_;
    if (d.failure_.empty()) d.Check(s, result);
    d.StartNext(s);
    if (d.in_flight_ == 0) d.done_.set_value(d.failure_);
  }

  void Check(Slot& s, int result) {
    const IoRequest& r = s.req;
    const std::string what = std::string(KindName(s.kind)) + " at " + std::to_string(s.offset) + "+" +
                             std::to_string(s.length) + " flags " + std::to_string(r.flags);
    if (r.kind != s.kind || r.offset != s.offset || r.length != s.length || r.buf != s.data) {
      failure_ = what + ": completed with its kind, range or buffer changed";
      return;
    }
    if (result != s.expect) {
      failure_ = what + ": result " + std::to_string(result) + ", expected " + std::to_string(s.expect);
      return;
    }
    switch (s.kind) {
      case IoKind::kWrite:
        std::memcpy(model_.At(s.offset), s.data, s.length);
        break;
      case IoKind::kRead:
        if (std::memcmp(s.data, model_.At(s.offset), s.length) != 0) {
          uint64_t i = 0;
          while (s.data[i] == model_.At(s.offset)[i]) ++i;
          failure_ = what + ": differs from the model first at offset " + std::to_string(s.offset + i);
        }
        break;
      case IoKind::kTrim:
        model_.Trim(s.offset, s.length);
        break;
      case IoKind::kWriteZeroes:
        if (result == 0) model_.Zero(s.offset, s.length);
        break;
      case IoKind::kFlush:
      case IoKind::kCache:
        break;
    }
  }

  EventLoop& loop_;
  BlockDevice& dev_;
  Model& model_;
  std::mt19937_64 rng_;
  const int total_;
  std::vector<Slot> slots_;
  int issued_ = 0;
  int in_flight_ = 0;
  int flushes_ = 0;
  std::string failure_;  // the first failure
  std::promise<std::string> done_;
};

class VolumeIoMixTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    loop_ = testing::StartLoop("test-loop", 256);
    ASSERT_NE(nullptr, loop_);
  }
  void TearDown() override { loop_->Stop(); }

  // Reads both windows and compares them with the model, then checks that a
  // range between them, never written, reads as zeros.
  void ExpectContents(BlockDevice& dev, const Model& model, const char* when) {
    std::vector<char> all(kHeadSize + kTailSize);
    ASSERT_EQ(0, RunIo(*loop_, dev, IoKind::kRead, 0, kHeadSize, all.data()));
    ASSERT_EQ(0, RunIo(*loop_, dev, IoKind::kRead, kTailStart, kTailSize, all.data() + kHeadSize));
    if (all != model.bytes) {
      size_t i = 0;
      while (all[i] == model.bytes[i]) ++i;
      const uint64_t offset = i < kHeadSize ? i : kTailStart + (i - kHeadSize);
      ADD_FAILURE() << "contents differ from the model " << when << ", first at offset " << offset;
    }
    std::vector<char> middle(64 * kKiB, 1);
    ASSERT_EQ(0, RunIo(*loop_, dev, IoKind::kRead, kVolumeSize / 2 + 1000, middle.size(), middle.data()));
    EXPECT_EQ(std::vector<char>(middle.size(), 0), middle) << "unwritten range " << when;
  }

  std::unique_ptr<EventLoop> loop_;
};

// The server's defaults: throttled at gp3's 3000 IOPS and 125 MiB/s (the
// mix runs near that rate, so in some runs requests wait in the throttle's
// queue), change tracking and copy-on-write in the stack, a connection's
// worth of requests in flight.
TEST_P(VolumeIoMixTest, ConcurrentRandomMixMatchesModelAndSurvivesReopen) {
  const bool encrypted = GetParam();
  const uint64_t seed = encrypted ? 20261202 : 20261201;
  SCOPED_TRACE("seed " + std::to_string(seed));
  TempDir dir;
  Model model(encrypted);
  {
    auto m = VolumeManager::Open(dir.path());
    ASSERT_TRUE(m.ok()) << m.status().message();
    VolumeParams params;
    params.type = VolumeType::kGp3;
    params.size_bytes = kVolumeSize;
    CreateOptions options;
    if (encrypted) options.encryption = EncryptionRequest{};
    auto created = (*m)->Create("mix", params, options);
    ASSERT_TRUE(created.ok()) << created.status().message();
    auto att = (*m)->Attach("mix");
    ASSERT_TRUE(att.ok()) << att.status().message();
    ASSERT_EQ(encrypted, (*att)->volume().cipher() != nullptr);
    BlockDevice& dev = (*att)->volume().device();
    ASSERT_EQ(kVolumeSize, dev.size());

    MixDriver driver(*loop_, dev, model, seed, /*total=*/1500, /*depth=*/12);
    const std::string failure = driver.Run();
    ASSERT_EQ("", failure);
    EXPECT_GT(driver.flushes(), 0);
    ExpectContents(dev, model, "before reopening");
  }
  auto m = VolumeManager::Open(dir.path());
  ASSERT_TRUE(m.ok()) << m.status().message();
  auto att = (*m)->Attach("mix");
  ASSERT_TRUE(att.ok()) << att.status().message();
  ASSERT_EQ(encrypted, (*att)->volume().cipher() != nullptr);
  ExpectContents((*att)->volume().device(), model, "after reopening");
}

INSTANTIATE_TEST_SUITE_P(PlainAndEncrypted, VolumeIoMixTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Encrypted" : "Plain";
                         });

}  // namespace
}  // namespace ebs
