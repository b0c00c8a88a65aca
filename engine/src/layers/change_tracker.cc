#include "layers/change_tracker.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <future>

#include "ebs/engine/file_util.h"
#include "layers/change_set_file.h"

namespace ebs {
using change_file::kHeaderBytes;
using change_file::kPageBytes;
using change_file::kWordsPerPage;
using change_file::kFlagCutSet;
using change_file::WordsFor;
using change_file::PagesFor;
using change_file::FileBytes;
using change_file::ChunksFor;
using change_file::MaskFor;
using change_file::ValidMask;
using change_file::SetFile;
using change_file::FileRole;
using change_file::ForEachCoveringWord;
using change_file::CoveringChunks;
using change_file::EncodeHeader;
using change_file::ReadSetFile;
using change_file::WriteSetFile;
using change_file::RoleOf;
using change_file::DirOf;

// --- ChangeSet ------------------------------------------------------------------

uint64_t ChangeSet::Count() const {
  uint64_t n = 0;
  for (uint64_t w : words) n += static_cast<uint64_t>(std::popcount(w));
  return n;
}

std::vector<uint64_t> ChangeSet::Chunks() const {
  std::vector<uint64_t> out;
  out.reserve(Count());
  for (uint64_t w = 0; w < words.size(); ++w) {
    for (uint64_t bits = words[w]; bits != 0; bits &= bits - 1) {
      out.push_back(w * 64 + static_cast<uint64_t>(std::countr_zero(bits)));
    }
  }
  return out;
}

// --- ChangeTracker --------------------------------------------------------------

struct ChangeTracker::DurableBits {
  explicit DurableBits(uint64_t n) : nwords(n), w(std::make_unique<std::atomic<uint64_t>[]>(n)) {}
  const uint64_t nwords;
  std::unique_ptr<std::atomic<uint64_t>[]> w;
};

// Requests handed back after a persist, one list per loop (so one Post per
// loop, not one per request), each FIFO through `link`.
struct ChangeTracker::Released {
  struct List {
    EventLoop* loop;
    IoRequest* head;
    IoRequest* tail;
  };
  std::vector<List> lists;
  void Add(IoRequest* r, int result) {
    r->inline_result = result;
    r->link = nullptr;
    for (auto& l : lists) {
      if (l.loop == r->loop) {
        l.tail->link = r;
        l.tail = r;
        return;
      }
    }
    lists.push_back({r->loop, r, r});
  }
};

std::string ChangeTracker::CutPath(const std::string& path, uint64_t generation) {
  return path + "." + std::to_string(generation);
}

ChangeTracker::ChangeTracker(std::string path, int fd, uint64_t chunk_size)
    : path_(std::move(path)),
      fd_(fd),
      chunk_size_(chunk_size),
      chunk_shift_(static_cast<unsigned>(std::countr_zero(chunk_size))) {}

Result<std::shared_ptr<ChangeTracker>> ChangeTracker::Open(const std::string& path, uint64_t volume_size,
                                                           const Options& options) {
  const uint64_t cs = options.chunk_size;
  if (!std::has_single_bit(cs) || cs < 4096 || cs > (uint64_t{1} << 30)) {
    return Status::InvalidArgument("change tracking chunk size must be a power of two from 4 KiB to 1 GiB");
  }
  const std::string dir = DirOf(path);
  const std::string base = std::filesystem::path(path).filename().string();

  // Leftovers of an earlier process: temporary files are writes that never
  // completed (remove them); `<base>.<digits>` are uncommitted cut sets.
  std::vector<std::string> cut_paths;
  {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      switch (RoleOf(base, entry.path().filename().string())) {
        case FileRole::kCut:
          cut_paths.push_back(entry.path().string());
          break;
        case FileRole::kTemporary:
          ::unlink(entry.path().c_str());
          break;
        default:
          break;
      }
    }
    if (ec) return Status::FromErrno(ec.value(), "list " + dir);
  }

  int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    if (options.if_missing == IfMissing::kFail) return Status::NotFound("no change tracking file " + path);
    SetFile init;
    init.generation = 1;
    init.chunk_size = cs;
    init.chunk_count = ChunksFor(volume_size, cs);
    init.words.resize(WordsFor(init.chunk_count));
    if (options.if_missing == IfMissing::kCreateAllMarked) {
      for (uint64_t w = 0; w < init.words.size(); ++w) init.words[w] = ValidMask(w, init.chunk_count);
    }
    EBS_RETURN_IF_ERROR(WriteSetFile(path, init));
    fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  }
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  // From here on the tracker owns fd (its destructor closes it).
  std::shared_ptr<ChangeTracker> t(new ChangeTracker(path, fd, cs));

  // A persist cut short by the death of the process may have left marks in
  // the page cache only; its request never went down, but a later request
  // would trust the mark. Make the file's content durable before trusting it.
  if (fdatasync(fd) != 0) return Status::FromErrno(errno, "fdatasync " + path);
  auto main = ReadSetFile(fd, path);
  if (!main.ok()) return main.status();
  std::vector<SetFile> cuts;
  for (const auto& p : cut_paths) {
    auto s = ReadSetFile(p);
    if (!s.ok()) return s.status();
    cuts.push_back(std::move(*s));
  }

  uint64_t count = std::max(ChunksFor(volume_size, cs), CoveringChunks(main->chunk_count, main->chunk_size, cs));
  uint64_t generation = main->generation;
  for (const auto& c : cuts) {
    count = std::max(count, CoveringChunks(c.chunk_count, c.chunk_size, cs));
    // Never reuse a cut's generation: a snapshot that outlived us may still
    // Commit or Abort it.
    generation = std::max(generation, c.generation + 1);
  }

  {
    std::lock_guard<std::mutex> io(t->io_mu_);
    {
      std::lock_guard<std::mutex> lock(t->mu_);
      t->GrowLocked(count);
      t->generation_ = generation;
      auto set = [&](uint64_t w, uint64_t mask) { t->bits_[w] |= mask; };
      ForEachCoveringWord(*main, cs, count, set);
      // What the file holds needs no rewrite; only what the cut sets add.
      for (const auto& c : cuts) ForEachCoveringWord(c, cs, count, [&](uint64_t w, uint64_t mask) {
        if (main->chunk_size == cs) {
          t->SetBitsLocked(w, mask);
        } else {
          t->bits_[w] |= mask;
        }
      });
      t->header_dirty_ = generation != main->generation || count != main->chunk_count;
    }
    if (main->chunk_size != cs) {
      // A new chunk size changes the meaning of every bit: replace the file
      // atomically rather than rewrite it in place.
      SetFile converted;
      converted.generation = generation;
      converted.chunk_size = cs;
      converted.chunk_count = count;
      converted.words = t->bits_;
      EBS_RETURN_IF_ERROR(WriteSetFile(path, converted));
      int nfd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
      if (nfd < 0) return Status::FromErrno(errno, "open " + path);
      if (dup2(nfd, t->fd_) < 0) {
        int err = errno;
        ::close(nfd);
        return Status::FromErrno(err, "dup2 " + path);
      }
      ::close(nfd);
      std::lock_guard<std::mutex> lock(t->mu_);
      t->dirty_pages_.clear();
      std::fill(t->page_dirty_.begin(), t->page_dirty_.end(), 0);
      t->header_dirty_ = false;
    } else {
      if (count != main->chunk_count && ftruncate(t->fd_, static_cast<off_t>(FileBytes(count))) != 0) {
        return Status::FromErrno(errno, "grow " + path);
      }
      EBS_RETURN_IF_ERROR(t->PersistLocked());
    }
    // Everything in bits_ is on disk and synced now.
    std::lock_guard<std::mutex> lock(t->mu_);
    DurableBits* d = t->durable_.load(std::memory_order_relaxed);
    for (uint64_t w = 0; w < t->bits_.size(); ++w) d->w[w].store(t->bits_[w], std::memory_order_relaxed);
  }
  // The merged cut sets are durable in the current set: forget them. A
  // removal lost in a crash only merges the same marks again.
  for (const auto& p : cut_paths) ::unlink(p.c_str());
  if (!cut_paths.empty()) EBS_RETURN_IF_ERROR(SyncDirectory(dir));

  t->thread_ = std::thread([raw = t.get()] {
    pthread_setname_np(pthread_self(), "ebs-changes");
    raw->Run();
  });
  return t;
}

ChangeTracker::~ChangeTracker() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  ::close(fd_);
}

void ChangeTracker::GrowLocked(uint64_t chunk_count) {
  const uint64_t words = WordsFor(chunk_count);
  chunk_count_ = chunk_count;
  if (words <= bits_.size() && durable_.load(std::memory_order_relaxed) != nullptr) return;
  bits_.resize(words, 0);
  page_dirty_.resize(PagesFor(words), 0);
  auto fresh = std::make_unique<DurableBits>(words);
  DurableBits* old = durable_.load(std::memory_order_relaxed);
  if (old != nullptr) {
    for (uint64_t w = 0; w < old->nwords; ++w) fresh->w[w].store(old->w[w].load(std::memory_order_relaxed));
  }
  durable_.store(fresh.get(), std::memory_order_release);
  // A hot-path reader may still hold `old`: zeros send it to the slow path,
  // which reads the new array under mu_. Never freed while we live.
  if (old != nullptr) {
    for (uint64_t w = 0; w < old->nwords; ++w) old->w[w].store(0, std::memory_order_release);
  }
  durable_arrays_.push_back(std::move(fresh));
}

void ChangeTracker::SetBitsLocked(uint64_t w, uint64_t mask) {
  if ((bits_[w] | mask) == bits_[w]) return;
  bits_[w] |= mask;
  const uint64_t page = w / kWordsPerPage;
  if (!page_dirty_[page]) {
    page_dirty_[page] = 1;
    dirty_pages_.push_back(static_cast<uint32_t>(page));
  }
}

bool ChangeTracker::AllDurable(const DurableBits* d, uint64_t first, uint64_t last) const {
  if (last / 64 >= d->nwords) return false;
  for (uint64_t w = first / 64; w <= last / 64; ++w) {
    const uint64_t mask = MaskFor(w, first, last);
    // Acquire: the fdatasync that made this bit durable happened before.
    if ((d->w[w].load(std::memory_order_acquire) & mask) != mask) return false;
  }
  return true;
}

ChangeTracker::MarkOutcome ChangeTracker::MarkOrQueue(IoRequest* req) {
  const uint64_t first = req->offset >> chunk_shift_;
  const uint64_t last = (req->offset + req->length - 1) >> chunk_shift_;
  // Hot path: the marks are durable already.
  if (AllDurable(durable_.load(std::memory_order_acquire), first, last)) return MarkOutcome::kDurable;

  std::lock_guard<std::mutex> lock(mu_);
  if (last >= chunk_count_) return MarkOutcome::kOutOfRange;
  // A persist may have completed since the test above.
  if (AllDurable(durable_.load(std::memory_order_relaxed), first, last)) return MarkOutcome::kDurable;
  for (uint64_t w = first / 64; w <= last / 64; ++w) SetBitsLocked(w, MaskFor(w, first, last));
  // Bits set before the persist in progress started are written by it and
  // release this request when it completes; new bits need the next one.
  req->done = started_seq_ + 1;
  waiters_.Push(req);
  wanted_seq_ = std::max(wanted_seq_, req->done);
  ++stats_.queued;
  if (idle_) cv_.notify_one();
  return MarkOutcome::kQueued;
}

Status ChangeTracker::Mark(uint64_t offset, uint64_t length) {
  if (length == 0) return Status::Ok();
  IoRequest req;
  req.kind = IoKind::kWrite;
  req.offset = offset;
  req.length = length;
  std::promise<int> done;
  req.owner = &done;
  req.loop = nullptr;  // continue on the persisting thread
  req.on_cqe = [](IoRequest* r, int result) { static_cast<std::promise<int>*>(r->owner)->set_value(result); };
  switch (MarkOrQueue(&req)) {
    case MarkOutcome::kDurable:
      return Status::Ok();
    case MarkOutcome::kOutOfRange:
      return Status::InvalidArgument("mark beyond the end of the volume");
    case MarkOutcome::kQueued:
      break;
  }
  return Status::FromErrno(done.get_future().get(), "persist change marks " + path_);
}

void ChangeTracker::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (wanted_seq_ > started_seq_ && !hold_persists_) {
      lock.unlock();
      {
        std::lock_guard<std::mutex> io(io_mu_);
        (void)PersistLocked();  // a failure reaches the waiting requests
      }
      lock.lock();
      continue;
    }
    if (stop_) return;
    idle_ = true;
    cv_.wait(lock);
    idle_ = false;
  }
}

Status ChangeTracker::PersistLocked() {
  uint64_t seq;
  std::vector<uint32_t> pages;
  std::vector<uint64_t> copy;
  bool header = false;
  char header_page[kHeaderBytes];
  int injected = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    injected = fail_persists_;
    seq = ++started_seq_;
    pages.swap(dirty_pages_);
    std::sort(pages.begin(), pages.end());
    copy.resize(pages.size() * kWordsPerPage, 0);
    for (size_t i = 0; i < pages.size(); ++i) {
      page_dirty_[pages[i]] = 0;
      const uint64_t begin = uint64_t{pages[i]} * kWordsPerPage;
      const uint64_t end = std::min<uint64_t>(begin + kWordsPerPage, bits_.size());
      std::copy(bits_.begin() + begin, bits_.begin() + end, copy.begin() + i * kWordsPerPage);
    }
    if (header_dirty_) {
      header = true;
      header_dirty_ = false;
      SetFile s;
      s.generation = generation_;
      s.chunk_size = chunk_size_;
      s.chunk_count = chunk_count_;
      EncodeHeader(s, header_page);
    }
  }

  // The file I/O runs with only io_mu_ held: requests keep marking (and
  // queueing for the next persist) meanwhile.
  Status st;
  const bool io = header || !pages.empty();
  if (io && injected != 0) {
    st = Status::FromErrno(injected, "persist " + path_ + " (injected)");
  } else if (io) {
    if (header) st = PwriteAll(fd_, header_page, kHeaderBytes, 0, path_);
    for (size_t i = 0; st.ok() && i < pages.size();) {
      size_t j = i + 1;
      while (j < pages.size() && pages[j] == pages[j - 1] + 1) ++j;  // one write per run of pages
      st = PwriteAll(fd_, copy.data() + i * kWordsPerPage, (j - i) * kPageBytes,
                     kHeaderBytes + uint64_t{pages[i]} * kPageBytes, path_);
      i = j;
    }
    if (st.ok() && fdatasync(fd_) != 0) st = Status::FromErrno(errno, "fdatasync " + path_);
  }

  Released released;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (io && st.ok()) {
      ++stats_.persists;
      stats_.pages_written += pages.size();
    }
    IoRequest** link = &waiters_.head;
    IoRequest* prev = nullptr;
    if (st.ok()) {
      DurableBits* d = durable_.load(std::memory_order_relaxed);
      for (size_t i = 0; i < pages.size(); ++i) {
        const uint64_t begin = uint64_t{pages[i]} * kWordsPerPage;
        for (uint64_t k = 0; k < kWordsPerPage && begin + k < d->nwords; ++k) {
          // copy ⊇ the durable word: bits only clear in Cut, under io_mu_.
          d->w[begin + k].store(copy[i * kWordsPerPage + k], std::memory_order_release);
        }
      }
      while (*link != nullptr) {
        IoRequest* r = *link;
        const uint64_t first = r->offset >> chunk_shift_;
        const uint64_t last = (r->offset + r->length - 1) >> chunk_shift_;
        if (AllDurable(d, first, last)) {
          *link = r->link;
          released.Add(r, 0);
        } else {
          prev = r;
          link = &r->link;
        }
      }
    } else {
      ++stats_.failed_persists;
      // Write the same pages again next time; fail the requests this persist
      // was for (later ones get their own attempt).
      for (uint32_t p : pages) {
        if (!page_dirty_[p]) {
          page_dirty_[p] = 1;
          dirty_pages_.push_back(p);
        }
      }
      header_dirty_ = header_dirty_ || header;
      while (*link != nullptr) {
        IoRequest* r = *link;
        if (r->done <= seq) {
          *link = r->link;
          released.Add(r, -st.code());
        } else {
          prev = r;
          link = &r->link;
        }
      }
    }
    waiters_.tail = prev;
  }
  Dispatch(released);
  return st;
}

void ChangeTracker::Dispatch(Released& released) {
  for (auto& l : released.lists) {
    auto run = [head = l.head] {
      for (IoRequest* r = head; r != nullptr;) {
        IoRequest* next = r->link;
        r->link = nullptr;
        r->on_cqe(r, r->inline_result);
        r = next;
      }
    };
    if (l.loop != nullptr) {
      l.loop->Post(run);  // requests continue on their own loop's thread
    } else {
      run();
    }
  }
}

Result<ChangeSet> ChangeTracker::Cut() {
  std::lock_guard<std::mutex> io(io_mu_);
  ChangeSet cut;
  cut.chunk_size = chunk_size_;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cut.generation = generation_;
    cut.chunk_count = chunk_count_;
  }
  // Every mark requested, durable or not: bits_ ⊇ the durable bits. The
  // ones not durable belong to requests still queued (they have not reached
  // the data file, so cutting them only costs the snapshot a read; they are
  // marked again in the new epoch below) or were kept in memory when a
  // persist, an Abort or an earlier Cut's recovery failed. Those may be the
  // only record of a change that did reach the data file: cutting only the
  // durable bits would lose them for the snapshot. Durable bits change only
  // under io_mu_, which we hold.
  DurableBits* d = durable_.load(std::memory_order_acquire);
  {
    std::lock_guard<std::mutex> lock(mu_);
    cut.words = bits_;
  }

  const std::string cut_path = CutPath(path_, cut.generation);
  SetFile file;
  file.generation = cut.generation;
  file.chunk_size = cut.chunk_size;
  file.chunk_count = cut.chunk_count;
  file.flags = kFlagCutSet;
  file.words = cut.words;
  // First the cut set durable on its own, then clear the current set: a
  // crash in between finds both and merges them.
  EBS_RETURN_IF_ERROR(WriteSetFile(cut_path, file));
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t w = 0; w < cut.words.size(); ++w) {
      if (cut.words[w] == 0) continue;
      bits_[w] &= ~cut.words[w];
      if (w < d->nwords) d->w[w].store(0, std::memory_order_release);  // every durable bit was cut
      const uint64_t page = w / kWordsPerPage;
      if (!page_dirty_[page]) {
        page_dirty_[page] = 1;
        dirty_pages_.push_back(static_cast<uint32_t>(page));
      }
    }
    // A queued request has not reached the data file: it belongs to the new
    // epoch, all of it, including chunks that were durable (and so just cut).
    // Re-mark those; this cut's persist releases the request.
    for (IoRequest* r = waiters_.head; r != nullptr; r = r->link) {
      const uint64_t first = r->offset >> chunk_shift_;
      const uint64_t last = (r->offset + r->length - 1) >> chunk_shift_;
      for (uint64_t w = first / 64; w <= last / 64; ++w) SetBitsLocked(w, MaskFor(w, first, last));
      r->done = started_seq_ + 1;
    }
    generation_ = cut.generation + 1;
    header_dirty_ = true;
    // In the same step as they leave bits_: a reader of Unsnapshotted()
    // never finds the cut's chunks in neither.
    pending_cuts_[cut.generation] = cut.words;
  }
  Status st = PersistLocked();
  if (!st.ok()) {
    // The current file may be half cleared, so <path>.<generation> may hold
    // the only durable copy of these marks. Put them back in memory and keep
    // the file unless they become durable again. The generation stays
    // advanced so the file's name is never reused.
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (uint64_t w = 0; w < cut.words.size(); ++w) SetBitsLocked(w, cut.words[w]);
      pending_cuts_.erase(cut.generation);  // current marks again
    }
    if (PersistLocked().ok()) {
      ::unlink(cut_path.c_str());
      (void)SyncDirectory(DirOf(path_));
    }
    return st;
  }
  return cut;
}

Status ChangeTracker::Commit(uint64_t generation) {
  std::lock_guard<std::mutex> io(io_mu_);
  const std::string cut_path = CutPath(path_, generation);
  if (::unlink(cut_path.c_str()) != 0) {
    if (errno == ENOENT) return Status::NotFound("no pending change set " + cut_path);
    return Status::FromErrno(errno, "remove " + cut_path);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_cuts_.erase(generation);
  }
  return SyncDirectory(DirOf(path_));
}

Status ChangeTracker::Abort(uint64_t generation) {
  std::lock_guard<std::mutex> io(io_mu_);
  const std::string cut_path = CutPath(path_, generation);
  auto set = ReadSetFile(cut_path);
  if (!set.ok()) {
    if (set.status().code() == ENOENT) return Status::NotFound("no pending change set " + cut_path);
    return set.status();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    ForEachCoveringWord(*set, chunk_size_, chunk_count_, [&](uint64_t w, uint64_t mask) { SetBitsLocked(w, mask); });
    pending_cuts_.erase(generation);  // its marks are current ones again
  }
  // Only once the marks are durable in the current set may the cut set go.
  EBS_RETURN_IF_ERROR(PersistLocked());
  if (::unlink(cut_path.c_str()) != 0) return Status::FromErrno(errno, "remove " + cut_path);
  return SyncDirectory(DirOf(path_));
}

Status ChangeTracker::Resize(uint64_t new_volume_size) {
  std::lock_guard<std::mutex> io(io_mu_);
  const uint64_t count = ChunksFor(new_volume_size, chunk_size_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (count < chunk_count_) return Status::InvalidArgument("a volume cannot shrink");
    if (count == chunk_count_) return Status::Ok();
  }
  // The file grows (with zeros) before the header claims the new size, so a
  // crash in between leaves a consistent, older file.
  if (ftruncate(fd_, static_cast<off_t>(FileBytes(count))) != 0) {
    return Status::FromErrno(errno, "grow " + path_);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    GrowLocked(count);
    header_dirty_ = true;
  }
  return PersistLocked();
}

Status ChangeTracker::MarkAll() {
  std::lock_guard<std::mutex> io(io_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t w = 0; w < bits_.size(); ++w) SetBitsLocked(w, ValidMask(w, chunk_count_));
  }
  return PersistLocked();
}

ChangeSet ChangeTracker::EmptySetLocked() const {
  ChangeSet s;
  s.generation = generation_;
  s.chunk_size = chunk_size_;
  s.chunk_count = chunk_count_;
  return s;
}

ChangeSet ChangeTracker::Marked() const {
  std::lock_guard<std::mutex> lock(mu_);
  ChangeSet s = EmptySetLocked();
  const DurableBits* d = durable_.load(std::memory_order_relaxed);
  s.words.resize(d->nwords);
  for (uint64_t w = 0; w < d->nwords; ++w) s.words[w] = d->w[w].load(std::memory_order_relaxed);
  return s;
}

ChangeSet ChangeTracker::Unsnapshotted() const {
  std::lock_guard<std::mutex> lock(mu_);
  ChangeSet s = EmptySetLocked();
  s.words = bits_;
  for (const auto& [generation, words] : pending_cuts_) {
    if (words.size() > s.words.size()) s.words.resize(words.size(), 0);
    for (size_t w = 0; w < words.size(); ++w) s.words[w] |= words[w];
  }
  return s;
}

uint64_t ChangeTracker::generation() const {
  std::lock_guard<std::mutex> lock(mu_);
  return generation_;
}

uint64_t ChangeTracker::chunk_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return chunk_count_;
}

void ChangeTracker::TEST_FailPersists(int error) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_persists_ = error;
}

void ChangeTracker::TEST_HoldPersists(bool hold) {
  std::lock_guard<std::mutex> lock(mu_);
  hold_persists_ = hold;
  cv_.notify_all();
}

Status ChangeTracker::Remove(const std::string& path) {
  const std::string dir = DirOf(path);
  const std::string base = std::filesystem::path(path).filename().string();
  std::error_code ec;
  std::vector<std::string> doomed;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (RoleOf(base, entry.path().filename().string()) != FileRole::kOther) doomed.push_back(entry.path().string());
  }
  if (ec) return Status::FromErrno(ec.value(), "list " + dir);
  // Cut sets first: a crash part way leaves no cut set without its main file
  // to be merged into a later, unrelated volume of the same name.
  auto is_main = [&](const std::string& p) { return std::filesystem::path(p).filename() == base; };
  std::sort(doomed.begin(), doomed.end(),
            [&](const std::string& a, const std::string& b) { return is_main(a) < is_main(b); });
  for (const auto& p : doomed) {
    if (::unlink(p.c_str()) != 0 && errno != ENOENT) return Status::FromErrno(errno, "remove " + p);
  }
  return SyncDirectory(dir);
}

ChangeTracker::Stats ChangeTracker::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace ebs
