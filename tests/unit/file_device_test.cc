// The base I/O layer against an in-memory model: a seeded random mix of
// reads, writes, trims, zeroes and flushes at random (also unaligned)
// offsets and sizes must leave identical contents, before and after reopening.
#include "io/file_device.h"
#include "ebs/engine/file_util.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>

#include <random>
#include <vector>

#include "test_util.h"

namespace ebs {
namespace {

using testing::RunIo;
using testing::TempDir;

// The first `len` bytes of `path` as the page cache holds them: how many
// pages are cached and the largest folio among them, in pages (1: 4 KiB
// pages only). Resident pages are found with mincore and mapped by touching
// them (never faulting in others); their page frames come from
// /proc/self/pagemap and their flags from /proc/kpageflags (a large folio is
// a compound head followed by its tails). Frames are shown only to root:
// {-1, -1} otherwise.
struct CachedPages {
  long resident = -1;
  long largest_folio = -1;
  long dirty = -1;  // pages not yet written back
};
CachedPages CountCachedPages(const std::string& path, size_t len) {
  CachedPages out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* map = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return out;
  madvise(map, len, MADV_RANDOM);
  std::vector<unsigned char> resident((len + page - 1) / page);
  int pagemap = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  int flags = ::open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
  if (mincore(map, len, resident.data()) == 0 && pagemap >= 0 && flags >= 0) {
    out = {0, 0, 0};
    long run = 0;  // pages of the folio the previous page belongs to
    for (size_t i = 0; i < resident.size(); ++i) {
      if (!(resident[i] & 1)) {
        run = 0;
        continue;
      }
      volatile char c = static_cast<const char*>(map)[i * page];
      (void)c;
      uint64_t entry = 0, kflags = 0;
      const off_t at = static_cast<off_t>((reinterpret_cast<uintptr_t>(map) / page + i) * 8);
      if (pread(pagemap, &entry, 8, at) != 8 || !(entry >> 63)) {
        run = 0;  // gone since mincore: the next page starts afresh
        continue;
      }
      const uint64_t pfn = entry & ((uint64_t{1} << 55) - 1);
      if (pfn == 0) {  // frames hidden: not root
        out = {-1, -1, -1};
        break;
      }
      if (pread(flags, &kflags, 8, static_cast<off_t>(pfn * 8)) != 8) {
        run = 0;
        continue;
      }
      ++out.resident;
      if (kflags & (uint64_t{1} << 4)) ++out.dirty;  // KPF_DIRTY
      const bool tail = kflags & (uint64_t{1} << 16);  // KPF_COMPOUND_TAIL
      run = tail && run > 0 ? run + 1 : 1;
      out.largest_folio = std::max(out.largest_folio, run);
    }
  }
  if (pagemap >= 0) ::close(pagemap);
  if (flags >= 0) ::close(flags);
  munmap(map, len);
  return out;
}

// Writes the file back and evicts it from the page cache; false when some
// of it stays cached (tmpfs keeps its pages: it has nowhere else to put them).
bool EvictFromPageCache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = fsync(fd) == 0 && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
  ::close(fd);
  struct stat st {};
  return ok && ::stat(path.c_str(), &st) == 0 && CountCachedPages(path, static_cast<size_t>(st.st_size)).resident <= 0;
}

class FileDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_ = testing::StartLoop("test-loop", 64);
    ASSERT_NE(nullptr, loop_);
  }
  void TearDown() override { loop_->Stop(); }
  std::unique_ptr<EventLoop> loop_;
};

TEST_F(FileDeviceTest, RandomMixMatchesModelAndSurvivesReopen) {
  TempDir dir;
  const uint64_t kSize = 8 << 20;
  std::string path = dir.path() + "/vol.img";
  std::vector<char> model(kSize, 0);
  {
    auto dev = FileDevice::Open(path, kSize, true);
    ASSERT_TRUE(dev.ok()) << dev.status().message();
    std::mt19937_64 rng(20261125);
    std::vector<char> buf(1 << 20);
    for (int i = 0; i < 2000; ++i) {
      uint64_t len = 1 + rng() % (rng() % 4 == 0 ? (1 << 20) : 16384);
      uint64_t off = rng() % (kSize - len + 1);
      switch (rng() % 6) {
        case 0:
        case 1: {  // write (sometimes FUA)
          for (uint64_t j = 0; j < len; ++j) buf[j] = static_cast<char>(rng());
          uint32_t flags = rng() % 4 == 0 ? kIoFua : 0u;
          ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kWrite, off, len, buf.data(), flags));
          std::copy(buf.begin(), buf.begin() + static_cast<long>(len), model.begin() + static_cast<long>(off));
          break;
        }
        case 2: {  // read and compare
          ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kRead, off, len, buf.data()));
          ASSERT_EQ(0, memcmp(buf.data(), model.data() + off, len)) << "read at " << off << "+" << len;
          break;
        }
        case 3:
          ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kTrim, off, len));
          std::fill(model.begin() + static_cast<long>(off), model.begin() + static_cast<long>(off + len), 0);
          break;
        case 4: {
          uint32_t flags = (rng() % 2 ? kIoNoHole : 0u) | (rng() % 3 == 0 ? kIoFua : 0u);
          ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kWriteZeroes, off, len, nullptr, flags));
          std::fill(model.begin() + static_cast<long>(off), model.begin() + static_cast<long>(off + len), 0);
          break;
        }
        case 5:
          ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kFlush, 0, 0));
          break;
      }
    }
    std::vector<char> all(kSize);
    ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kRead, 0, kSize, all.data()));
    ASSERT_TRUE(all == model) << "contents differ from the model before reopening";
  }
  auto dev = FileDevice::Open(path, kSize, false);
  ASSERT_TRUE(dev.ok());
  std::vector<char> all(kSize);
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kRead, 0, kSize, all.data()));
  EXPECT_TRUE(all == model) << "contents differ from the model after reopening";
}

TEST_F(FileDeviceTest, MapReportsHolesAndData) {
  TempDir dir;
  auto dev = FileDevice::Open(dir.path() + "/v.img", 16 << 20, true);
  ASSERT_TRUE(dev.ok());
  std::vector<char> buf(1 << 20, 'x');
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kWrite, 4 << 20, 1 << 20, buf.data()));
  std::vector<Extent> ext;
  ASSERT_TRUE((*dev)->Map(0, 16 << 20, &ext, BlockDevice::kAllExtents).ok());
  ASSERT_EQ(3u, ext.size());
  EXPECT_TRUE(ext[0].hole);
  EXPECT_EQ(0u, ext[0].offset);
  EXPECT_EQ(4u << 20, ext[0].length);
  EXPECT_FALSE(ext[1].hole);
  EXPECT_EQ(1u << 20, ext[1].length);
  EXPECT_TRUE(ext[2].hole);
  // After a trim the range is a hole again.
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kTrim, 4 << 20, 1 << 20));
  ext.clear();
  ASSERT_TRUE((*dev)->Map(0, 16 << 20, &ext, BlockDevice::kAllExtents).ok());
  ASSERT_EQ(1u, ext.size());
  EXPECT_TRUE(ext[0].hole);
}

TEST_F(FileDeviceTest, MapStopsAtMaxExtentsWithACoveredPrefix) {
  TempDir dir;
  auto dev = FileDevice::Open(dir.path() + "/v.img", 16 << 20, true);
  ASSERT_TRUE(dev.ok());
  // 4 KiB of data every 64 KiB: 512 extents in the first 16 MiB.
  std::vector<char> buf(4096, 'x');
  for (uint64_t off = 0; off < (16u << 20); off += 64 << 10) {
    ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kWrite, off, 4096, buf.data()));
  }
  std::vector<Extent> all;
  ASSERT_TRUE((*dev)->Map(0, 16 << 20, &all, BlockDevice::kAllExtents).ok());
  ASSERT_EQ(512u, all.size());
  for (size_t max : {size_t{1}, size_t{2}, size_t{7}, size_t{511}}) {
    std::vector<Extent> some{{0, 0, false}};  // appended after what is there
    ASSERT_TRUE((*dev)->Map(0, 16 << 20, &some, max).ok());
    ASSERT_EQ(max + 1, some.size()) << max;
    for (size_t i = 0; i < max; ++i) {
      EXPECT_EQ(all[i].offset, some[i + 1].offset);
      EXPECT_EQ(all[i].length, some[i + 1].length);
      EXPECT_EQ(all[i].hole, some[i + 1].hole);
    }
  }
}

TEST_F(FileDeviceTest, OutOfRangeRequestsAreRefusedAndChangeNothing) {
  TempDir dir;
  const uint64_t kSize = 1 << 20;
  auto dev = FileDevice::Open(dir.path() + "/v.img", kSize, true);
  ASSERT_TRUE(dev.ok());
  std::vector<char> buf(8192, 'z');
  EXPECT_EQ(-EINVAL, RunIo(*loop_, **dev, IoKind::kWrite, kSize - 4096, 8192, buf.data()));
  EXPECT_EQ(-EINVAL, RunIo(*loop_, **dev, IoKind::kRead, kSize, 1, buf.data()));
  EXPECT_EQ(-EINVAL, RunIo(*loop_, **dev, IoKind::kTrim, UINT64_MAX - 10, 20));
  EXPECT_EQ(-EINVAL, RunIo(*loop_, **dev, IoKind::kWriteZeroes, kSize + 1, 4096));
  struct stat st {};
  ASSERT_EQ(0, stat((dir.path() + "/v.img").c_str(), &st));
  EXPECT_EQ(static_cast<off_t>(kSize), st.st_size) << "a refused write must not extend the file";
  std::vector<char> out(4096, 1);
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kRead, kSize - 4096, 4096, out.data()));
  EXPECT_EQ(std::vector<char>(4096, 0), out);
}

TEST_F(FileDeviceTest, GrowKeepsDataAndExtendsWithZeros) {
  TempDir dir;
  auto dev = FileDevice::Open(dir.path() + "/v.img", 1 << 20, true);
  ASSERT_TRUE(dev.ok());
  std::vector<char> buf(4096, 'a');
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kWrite, 0, 4096, buf.data()));
  ASSERT_TRUE((*dev)->Resize(2 << 20).ok());
  EXPECT_EQ(2u << 20, (*dev)->size());
  EXPECT_FALSE((*dev)->Resize(1 << 20).ok()) << "a shrink must be refused";
  std::vector<char> out(4096);
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kRead, (2 << 20) - 4096, 4096, out.data()));
  EXPECT_EQ(std::vector<char>(4096, 0), out);
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kRead, 0, 4096, out.data()));
  EXPECT_EQ(buf, out);
}

// Short transfers are resubmitted for the rest. A read that the kernel cuts
// short at the end of the file (here: the file truncated behind the device,
// at an unaligned length) returns what is there, then zeros for the rest.
TEST_F(FileDeviceTest, ShortReadIsResubmittedAndReadsZerosPastTheFileEnd) {
  TempDir dir;
  const std::string path = dir.path() + "/v.img";
  const uint64_t kSize = 1 << 20, kCut = kSize - 3000;
  auto dev = FileDevice::Open(path, kSize, true);
  ASSERT_TRUE(dev.ok());
  std::vector<char> buf(kSize);
  std::mt19937_64 rng(7);
  for (auto& c : buf) c = static_cast<char>(rng() | 1);  // no zero bytes
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kWrite, 0, kSize, buf.data()));
  ASSERT_EQ(0, ::truncate(path.c_str(), static_cast<off_t>(kCut)));
  std::vector<char> out(kSize, 'x');
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kRead, kSize - 65536, 65536, out.data()));
  EXPECT_EQ(0, memcmp(out.data(), buf.data() + kSize - 65536, 65536 - 3000));
  EXPECT_EQ(std::vector<char>(3000, 0), std::vector<char>(out.begin() + 65536 - 3000, out.begin() + 65536));
}

// A write the kernel cuts short (the file size limit, RLIMIT_FSIZE, reached
// part way) is resubmitted for the rest, and the error that stopped it
// (EFBIG) is what the caller gets; the bytes before the limit are written.
TEST_F(FileDeviceTest, ShortWriteIsResubmittedAndReportsWhatStoppedIt) {
  TempDir dir;
  const std::string path = dir.path() + "/v.img";
  const uint64_t kSize = 1 << 20, kLimit = kSize - 5000;
  auto dev = FileDevice::Open(path, kSize, true);
  ASSERT_TRUE(dev.ok());
  std::vector<char> buf(kSize, 'w');
  struct rlimit old {};
  ASSERT_EQ(0, getrlimit(RLIMIT_FSIZE, &old));
  struct sigaction ignore {}, saved {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(0, sigaction(SIGXFSZ, &ignore, &saved));
  struct rlimit lim = old;
  lim.rlim_cur = kLimit;
  ASSERT_EQ(0, setrlimit(RLIMIT_FSIZE, &lim));
  // Both write paths: the inline one (small, not FUA) and the ring's (FUA).
  int small = RunIo(*loop_, **dev, IoKind::kWrite, kLimit - 1000, 4096, buf.data());
  int fua = RunIo(*loop_, **dev, IoKind::kWrite, kLimit - 200000, 204000, buf.data(), kIoFua);
  setrlimit(RLIMIT_FSIZE, &old);
  sigaction(SIGXFSZ, &saved, nullptr);
  EXPECT_EQ(-EFBIG, small);
  EXPECT_EQ(-EFBIG, fua);
  std::vector<char> out(200000);
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kRead, kLimit - 200000, 200000, out.data()));
  EXPECT_EQ(std::vector<char>(200000, 'w'), out);
}

// A write on a full file system fails with ENOSPC, earlier data stays intact,
// and writes succeed again once space is freed.
TEST_F(FileDeviceTest, FullFileSystemGivesEnospcAndLosesNothing) {
  TempDir dir;
  std::string mnt = dir.path() + "/small";
  ASSERT_EQ(0, mkdir(mnt.c_str(), 0700));
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=4m") != 0) {
    EBS_CANNOT_RUN("cannot mount a small tmpfs here (needs root): " << strerror(errno));
  }
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};

  const uint64_t kSize = 64 << 20;  // sparse: far larger than the file system
  auto dev = FileDevice::Open(mnt + "/v.img", kSize, true);
  ASSERT_TRUE(dev.ok());
  std::vector<char> first(1 << 20, 'A');
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kWrite, 0, first.size(), first.data()));
  std::vector<char> chunk(1 << 20, 'B');
  int rc = 0;
  uint64_t off = 8 << 20;
  for (; off < kSize && rc == 0; off += chunk.size()) {
    rc = RunIo(*loop_, **dev, IoKind::kWrite, off, chunk.size(), chunk.data());
  }
  EXPECT_EQ(-ENOSPC, rc) << "filling the file system must end in ENOSPC";
  std::vector<char> out(first.size());
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kRead, 0, out.size(), out.data()));
  EXPECT_EQ(first, out) << "data written before the disk filled must be intact";
  // Free space by trimming what we wrote, then writing works again.
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kTrim, 8 << 20, off - (8 << 20)));
  EXPECT_EQ(0, RunIo(*loop_, **dev, IoKind::kWrite, 8 << 20, chunk.size(), chunk.data()));
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kRead, 8 << 20, out.size(), out.data()));
  EXPECT_EQ(chunk, out);
}

// The durability contract, seen in the page cache: a write without FUA may
// stay dirty in memory; once a flush completes no page of it is dirty (it
// is on the disk), and a FUA write is on the disk when it completes.
TEST_F(FileDeviceTest, FlushAndFuaLeaveNoDirtyPages) {
  TempDir dir;
  constexpr uint64_t kSize = 4 << 20;
  const std::string path = dir.path() + "/vol.img";
  auto dev = FileDevice::Open(path, kSize, true);
  ASSERT_TRUE(dev.ok()) << dev.status().message();
  std::string data = testing::RandomBytes(1 << 20, 7);
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kWrite, 0, data.size(), data.data()));
  const CachedPages written = CountCachedPages(path, kSize);
  if (written.dirty < 0) EBS_CANNOT_RUN("page flags are hidden here (/proc/kpageflags needs root)");
  if (written.dirty == 0) EBS_CANNOT_RUN("this file system left no page of a plain write dirty (tmpfs?)");
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kFlush, 0, 0));
  const CachedPages flushed = CountCachedPages(path, kSize);
  EXPECT_GT(flushed.resident, 0);
  EXPECT_EQ(0, flushed.dirty) << "dirty pages after a flush (" << written.dirty << " before it)";

  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kWrite, 1 << 20, data.size(), data.data(), kIoFua));
  EXPECT_EQ(0, CountCachedPages(path, kSize).dirty) << "dirty pages after a FUA write completed";
  // Large FUA writes go down whole, small ones too.
  ASSERT_EQ(0, RunIo(*loop_, **dev, IoKind::kWrite, 2 << 20, 4096, data.data(), kIoFua));
  EXPECT_EQ(0, CountCachedPages(path, kSize).dirty) << "dirty pages after a 4 KiB FUA write completed";
}

// Reads through a volume's data file bring its pages into the page cache as
// 4 KiB pages, and writes as folios of at most 128 KiB, never the large
// folios (up to 2 MiB) readahead and large writes make: on ext4 (Linux 6.16
// and later) every small write into a folio walks all of its buffer heads,
// which made 4 KiB random writes 2-4x slower after a sequential read or a
// large write of the same range.
class FileDeviceFolioTest : public FileDeviceTest {
 protected:
  static constexpr uint64_t kSize = 32 << 20;
  const long kMaxWriteFolioPages = static_cast<long>(kDataWritePiece / static_cast<size_t>(sysconf(_SC_PAGESIZE)));

  void SetUp() override {
    FileDeviceTest::SetUp();
    path_ = dir_.path() + "/vol.img";
    auto dev = FileDevice::Open(path_, kSize, true);
    ASSERT_TRUE(dev.ok()) << dev.status().message();
    dev_ = *dev;
    data_ = testing::RandomBytes(1 << 20, 11);
  }
  // Large I/O through a plain descriptor, the file system's own behaviour:
  // it must cache large folios here, or there is nothing to avoid.
  void ExpectPlainIoMakesFoliosLargerThan(bool write, long pages) {
    if (!EvictFromPageCache(path_)) EBS_CANNOT_RUN("this file system keeps the file cached (tmpfs?)");
    int fd = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    std::vector<char> buf(data_.begin(), data_.end());
    for (uint64_t off = 0; off < kSize; off += buf.size()) {
      const ssize_t n = write ? pwrite(fd, buf.data(), buf.size(), static_cast<off_t>(off))
                              : pread(fd, buf.data(), buf.size(), static_cast<off_t>(off));
      ASSERT_EQ(static_cast<ssize_t>(buf.size()), n);
    }
    ::close(fd);
    plain_ = CountCachedPages(path_, kSize);
    if (plain_.resident < 0) EBS_CANNOT_RUN("page frames are hidden here (/proc/self/pagemap needs root)");
    if (plain_.largest_folio <= pages) {
      EBS_CANNOT_RUN("this file system caches no folios larger than " << pages << " pages (largest "
                   << plain_.largest_folio << ")");
    }
    ASSERT_TRUE(EvictFromPageCache(path_)) << "the file stays cached";
  }
  void WriteAll() {
    for (uint64_t off = 0; off < kSize; off += data_.size()) {
      ASSERT_EQ(0, RunIo(*loop_, *dev_, IoKind::kWrite, off, data_.size(), data_.data()));
    }
  }
  // Reads the whole volume through the device and checks what WriteAll wrote.
  void ReadAllAndCheck() {
    std::vector<char> buf(data_.size());
    for (uint64_t off = 0; off < kSize; off += buf.size()) {
      ASSERT_EQ(0, RunIo(*loop_, *dev_, IoKind::kRead, off, buf.size(), buf.data()));
      ASSERT_EQ(0, memcmp(buf.data(), data_.data(), buf.size())) << "at " << off;
    }
  }

  TempDir dir_;
  std::string path_;
  std::shared_ptr<FileDevice> dev_;
  std::string data_;
  CachedPages plain_;
};

TEST_F(FileDeviceFolioTest, ReadsCacheFourKibPages) {
  WriteAll();
  ExpectPlainIoMakesFoliosLargerThan(/*write=*/false, 1);
  if (IsSkipped() || HasFatalFailure()) return;
  ReadAllAndCheck();
  const CachedPages served = CountCachedPages(path_, kSize);
  EXPECT_GT(served.resident, 0) << "the reads cached nothing";
  EXPECT_EQ(1, served.largest_folio) << "pages in the largest folio (a plain read: " << plain_.largest_folio << ")";
}

TEST_F(FileDeviceFolioTest, LargeWritesCacheFoliosOfAtMost128Kib) {
  ExpectPlainIoMakesFoliosLargerThan(/*write=*/true, kMaxWriteFolioPages);
  if (IsSkipped() || HasFatalFailure()) return;
  WriteAll();
  const CachedPages served = CountCachedPages(path_, kSize);
  EXPECT_GT(served.resident, 0) << "the writes cached nothing";
  EXPECT_LE(served.largest_folio, kMaxWriteFolioPages)
      << "pages in the largest folio (a plain 1 MiB write: " << plain_.largest_folio << ")";
  ReadAllAndCheck();
}

}  // namespace
}  // namespace ebs
