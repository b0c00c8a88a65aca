// Change tracking for incremental snapshots: the set of chunks written since
// the last snapshot cut, kept crash-safe in a small bitmap file beside the
// volume (DATA_DIR/volumes/<id>.changes).
//
// The rule that makes it crash-safe: a chunk's mark is durable (written and
// fdatasync'ed) before any write, trim or write-zeroes touching that chunk
// is passed down to the data file. Whatever moment the process or the
// machine dies, every chunk whose content may differ from the last snapshot
// is marked in the file (or in an uncommitted cut set, merged back on Open).
// Marks may be a superset of the real changes (a request that failed after
// marking, a trim of zeros); a superset only costs the next snapshot some
// reading.
//
// Costs: a write to a chunk already marked pays an atomic bit test, no lock.
// The first write to a chunk after a cut waits for one persist; persists are
// group-committed (all marks requested while one persist runs go out together
// in the next), so a burst of first-touch writes costs a few fdatasyncs. A
// persist writes only the 4 KiB bitmap pages that changed (and the header
// when it changed), never the whole file.
//
// A brand-new, all-zero volume starts with no marks. That is correct because
// the first snapshot of a volume is full (it reads every chunk) and only
// later snapshots read just the marked chunks.
#pragma once

#include "ebs/engine/change_set.h"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ebs/engine/block_device.h"
#include "ebs/engine/status.h"

namespace ebs {

// The persistent set of chunks changed since the last cut, for one volume.
//
// Thread-safety: safe for concurrent use. MarkOrQueue is the hot path and is
// called on event loop threads (several loops share a volume); it never
// blocks on I/O. Mark, Cut, Commit, Abort, Resize and MarkAll do file I/O and
// fdatasync and so block: call them from a control or worker thread, never
// from an event loop thread. Persists for MarkOrQueue run on the tracker's
// own thread ("ebs-changes").
//
// File format (`path`): a 4 KiB header page, then the bitmap in 4 KiB pages
// of little-endian 64-bit words (bit i % 64 of word i / 64 = chunk i). The
// header holds magic "EBSCHANG", version 1, header size, chunk size, chunk
// count, generation, flags and an FNV-1a checksum of itself. A cut set is a
// second file `<path>.<generation>` in the same format, written to a
// temporary name, synced and renamed, so it exists whole or not at all.
class ChangeTracker {
 public:
  enum class IfMissing {
    kFail,              // Open fails with ENOENT
    kCreateEmpty,       // a new volume: nothing written yet
    kCreateAllMarked,   // an existing volume whose tracking file is lost
  };
  struct Options {
    // Power of two, 4 KiB to 1 GiB. An existing file with another chunk
    // size is converted (each old mark marks every new chunk it overlaps).
    uint64_t chunk_size = kDefaultChangeChunkSize;
    IfMissing if_missing = IfMissing::kFail;
  };

  // Opens the tracking file for a volume of `volume_size` bytes (the file
  // grows if the volume is larger than it records). Any cut set left behind
  // (`<path>.<g>`, its snapshot never committed or aborted because the
  // process died) is merged back into the current set and removed: that
  // snapshot did not complete, so the next one must include its changes.
  // Errors: ENOENT (missing and kFail), EBADMSG (a file is damaged: bad
  // magic, version, checksum or truncated; the caller may Remove it and
  // reopen with kCreateAllMarked), or the errno of the failing syscall.
  // REQUIRES: no other tracker (in this or another process) has `path` open.
  static Result<std::shared_ptr<ChangeTracker>> Open(const std::string& path, uint64_t volume_size,
                                                     const Options& options);
  // Waits for persists in progress and any still requested. REQUIRES: no
  // request is queued or being queued.
  ~ChangeTracker();
  ChangeTracker(const ChangeTracker&) = delete;
  ChangeTracker& operator=(const ChangeTracker&) = delete;

  enum class MarkOutcome {
    kDurable,     // every chunk the request touches is durably marked: pass it down now
    kQueued,      // the request waits for a persist (see below)
    kOutOfRange,  // the range lies beyond the tracked volume size; nothing queued
  };
  // Marks the chunks of [req->offset, req->offset + req->length). REQUIRES:
  // length > 0; req->on_cqe is set, and req->loop is the loop to continue on
  // (nullptr: continue on the persisting thread). When queued, the tracker
  // owns req->link, req->done and req->inline_result until it calls
  // `req->on_cqe(req, result)` exactly once, on req->loop's thread (posted),
  // after the persist that covers the request: result 0 means the marks are
  // durable; -errno means the persist failed and the request must fail
  // without being passed down. Never calls on_cqe inside this call.
  MarkOutcome MarkOrQueue(IoRequest* req);

  // Blocking form for callers that write the data file outside the layer
  // stack (and for tests): returns once the marks are durable.
  Status Mark(uint64_t offset, uint64_t length);

  // Takes the current set of marked chunks (every mark requested: durable
  // ones, those of requests still queued, and those a failed persist, Abort
  // or Cut recovery left in memory only) and starts a new, empty epoch. Before it returns, the set is durable in `<path>.<generation>`
  // and the current set on disk is cleared; the returned set's `generation`
  // is the key for Commit or Abort. Until then the set survives restarts
  // (Open merges it back). Requests still queued for their marks have not
  // reached the data file, so they belong to the new epoch: their chunks
  // are marked in it (even chunks that were durable and are in the cut
  // set) and this cut's persist releases them.
  // REQUIRES: no write, trim or write-zeroes that has passed the tracker
  // (kDurable, or released) is still in flight: the snapshot holds new
  // writes and drains those in flight for the instant of the cut. Otherwise
  // such a write could land after the cut while recorded only in the cut
  // set. On failure nothing is cut (marks are at worst kept twice).
  Result<ChangeSet> Cut();
  // The snapshot of cut `generation` is durably complete: forget its set.
  // ENOENT when no such cut is pending.
  Status Commit(uint64_t generation);
  // The snapshot of cut `generation` failed: merge its set back into the
  // current one (durably), then forget it. ENOENT when no such cut is pending.
  Status Abort(uint64_t generation);

  // Volume growth. Shrinking is refused (EINVAL); the same size is a no-op.
  Status Resize(uint64_t new_volume_size);
  // Marks every chunk (a volume restored from elsewhere, an unclean shutdown
  // the caller cannot otherwise account for), durably.
  Status MarkAll();

  // Deletes the tracking file of `path` and every cut set and temporary file
  // of it (volume deletion), so a later volume of the same name inherits
  // nothing. REQUIRES: no tracker is open on `path`.
  static Status Remove(const std::string& path);

  // The durably marked chunks of the current epoch (for tests and stats).
  ChangeSet Marked() const;
  // Every chunk changed since the last committed cut: every mark of the
  // current epoch (requested, durable or not) and those of cuts not yet
  // committed or aborted. A snapshot's dirty bitmap counts on it covering
  // every write acknowledged since the committed cut.
  ChangeSet Unsnapshotted() const;
  uint64_t generation() const;
  uint64_t chunk_size() const { return chunk_size_; }
  uint64_t chunk_count() const;
  const std::string& path() const { return path_; }
  static std::string CutPath(const std::string& path, uint64_t generation);

  struct Stats {
    uint64_t persists = 0;       // fdatasyncs of the tracking file
    uint64_t pages_written = 0;  // 4 KiB bitmap pages written (header excluded)
    uint64_t queued = 0;         // requests that waited for a persist
    uint64_t failed_persists = 0;
  };
  Stats stats() const;

  // Tests: while held, the tracker's thread starts no persist, so requests
  // stay queued (Cut, Abort, MarkAll, Resize still persist themselves).
  void TEST_HoldPersists(bool hold);
  // Tests: while set, every persist fails with `error` (an errno) before it
  // writes anything, as on a failing disk; 0 clears it.
  void TEST_FailPersists(int error);

 private:
  struct DurableBits;  // the lock-free view the hot path tests
  struct Released;     // requests to hand back after a persist
  ChangeTracker(std::string path, int fd, uint64_t chunk_size);
  void Run();
  // Writes the dirty pages (and header if changed), fdatasyncs, publishes the
  // new durable bits and hands back the requests waiting for them.
  // REQUIRES: io_mu_ held; mu_ not held.
  Status PersistLocked();
  bool AllDurable(const DurableBits* d, uint64_t first, uint64_t last) const;
  // REQUIRES: mu_. OR `mask` into bits_ word `w`; dirties its page if it changed.
  void SetBitsLocked(uint64_t w, uint64_t mask);
  void GrowLocked(uint64_t chunk_count);  // REQUIRES: mu_
  ChangeSet EmptySetLocked() const;       // REQUIRES: mu_. This epoch's, no chunk marked.
  void Dispatch(Released& released);

  const std::string path_;
  const int fd_;
  const uint64_t chunk_size_;
  const unsigned chunk_shift_;

  // Serializes everything that writes the tracking file or changes the
  // epoch: persists, cut, abort, resize, mark-all. Taken before mu_.
  // Never taken on an event loop thread.
  std::mutex io_mu_;

  // The durable bits as the hot path sees them. Replaced on growth (the old
  // array is zeroed, so a reader still holding it falls to the slow path,
  // and kept until destruction so it never dangles). Written only with
  // io_mu_ and mu_ held; read anywhere.
  std::atomic<DurableBits*> durable_{nullptr};
  std::vector<std::unique_ptr<DurableBits>> durable_arrays_;  // under mu_

  mutable std::mutex mu_;
  std::condition_variable cv_;
  // Invariants: durable_ ⊆ bits_; every bit of bits_ not in durable_ lies in
  // a dirty page or in the pages of the persist in progress.
  std::vector<uint64_t> bits_;        // under mu_: marks requested (in memory)
  // under mu_: the sets of cuts neither committed nor aborted, by generation.
  std::map<uint64_t, std::vector<uint64_t>> pending_cuts_;
  uint64_t chunk_count_ = 0;          // under mu_
  uint64_t generation_ = 1;           // under mu_
  std::vector<uint8_t> page_dirty_;   // under mu_
  std::vector<uint32_t> dirty_pages_; // under mu_
  bool header_dirty_ = false;         // under mu_
  // Persists are numbered; a queued request waits for persist `done` (the
  // first to start after it was queued) or an earlier one that covered it.
  uint64_t started_seq_ = 0;    // under mu_
  uint64_t wanted_seq_ = 0;     // under mu_: highest persist a waiter needs
  IoQueue waiters_;  // under mu_; the persist releases any of them, not only the head
  bool idle_ = false;           // under mu_: the thread waits on cv_
  bool stop_ = false;           // under mu_
  bool hold_persists_ = false;  // under mu_
  int fail_persists_ = 0;       // under mu_: TEST_FailPersists
  Stats stats_;                 // under mu_
  std::thread thread_;
};

// The layer in front of a volume's data file that marks chunks before they
// change: write, trim and write-zeroes wait until their chunks' marks are
// durable; read, flush and cache pass straight through. A request whose
// persist fails completes with that errno and never reaches the next device.
// A request that waited continues on its own loop. Requests to a chunk that
// are in flight together may reach the next device in either order (as with
// any concurrent NBD requests).
class ChangeTrackingLayer final : public DeviceLayer {
 public:
  ChangeTrackingLayer(std::shared_ptr<BlockDevice> next, std::shared_ptr<ChangeTracker> tracker)
      : DeviceLayer(std::move(next)), tracker_(std::move(tracker)) {}

  void Submit(EventLoop& loop, IoRequest* req) override;
  // Grows the tracker first, so a write to the new range is never untracked.
  Status Resize(uint64_t new_size) override;
  ChangeTracker& tracker() { return *tracker_; }

 private:
  // Continues a request that waited, on its loop's thread.
  static void Resume(IoRequest* req, int result);
  const std::shared_ptr<ChangeTracker> tracker_;
};

}  // namespace ebs
