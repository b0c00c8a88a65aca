// The in-memory file system behind powercut_fs, with a durable state beside
// the current one, so that a simulated power cut can be taken and revived.
//
// Model (LevelDB's fault_injection_test, strict POSIX):
// - A file's content and size become durable at fsync/fdatasync of that file
//   (both: size is what fdatasync must keep for the data to be read back).
// - A directory's entries (creations, renames, unlinks, links) become durable
//   at an fsync of that directory; nothing else makes them durable. A file
//   created and fsynced in a directory never synced is lost at a cut.
// - SyncAll (the syncfs the preload shim forwards, and `sync` on the control
//   socket) makes everything durable, as syncfs on a journaling file system.
// - Cut: from that instant every operation fails (EIO) and nothing changes.
//   Optionally a seeded subset of the unsynced 4 KiB blocks (and of the
//   unsynced sizes) is kept, as a disk that had written back some of its
//   cache would: torn writeback. Directory entries are never kept unsynced
//   (a journal commits metadata as a prefix; a random subset of it would be
//   states no real file system shows).
// - Revive: every file's content and every directory's entries revert to the
//   durable state; inodes no durable entry reaches from the root are freed
//   (kept only as stale numbers until the kernel forgets them).
// Attributes other than size (mode, owner, times) are not modeled as
// volatile: they change at once and stay.
//
// Errors are errno values: each operation returns 0 or a positive errno, the
// currency of a FUSE reply. Inode numbers are never reused, so a number the
// kernel still holds from before a revive never names another inode.
//
// Thread-safety: none inside; the FUSE glue holds one mutex around every call.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace powercut {

inline constexpr uint64_t kBlockSize = 4096;

// Immutable once built; shared between the current and the durable content.
struct Block {
  std::array<char, kBlockSize> bytes{};
  Block();
  ~Block();
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
};
using BlockRef = std::shared_ptr<const Block>;

struct Content {
  uint64_t size = 0;
  // Block index -> content; absent is a hole. Invariant: every byte at or
  // past `size` reads as zero (so growing a file never shows old bytes).
  std::map<uint64_t, BlockRef> blocks;
};

struct Inode {
  uint64_t ino = 0;
  mode_t mode = 0;  // type and permission bits
  uid_t uid = 0;
  gid_t gid = 0;
  dev_t rdev = 0;
  timespec atime{}, mtime{}, ctime{};
  // Regular files.
  Content cur, dur;
  std::set<uint64_t> dirty;  // blocks where cur may differ from dur; elsewhere they share
  // Directories: name -> inode number, now and as of the last fsync.
  std::map<std::string, uint64_t> entries, durable_entries;
  uint32_t nlink = 0;    // current entries naming it
  uint32_t dlinks = 0;   // durable entries naming it
  uint64_t nlookup = 0;  // the kernel's references (lookup replies minus forgets)
  uint32_t open = 0;     // open handles
  bool stale = false;    // freed by a revive; waits for the kernel to forget it

  bool is_dir() const { return S_ISDIR(mode); }
  bool is_reg() const { return S_ISREG(mode); }
};

struct Counters {
  uint64_t writes = 0, bytes_written = 0, reads = 0;
  uint64_t fsyncs = 0, fdatasyncs = 0, fsyncdirs = 0, syncalls = 0;
  uint64_t cuts = 0, revives = 0;
  uint64_t refused = 0;  // operations failed with EIO while cut
  // The last cut: what it dropped, and (torn writeback) what it kept.
  uint64_t cut_dropped_bytes = 0, cut_dropped_files = 0, cut_dropped_dirs = 0;
  uint64_t cut_kept_blocks = 0, cut_kept_sizes = 0;
  // The last revive: inodes freed because no durable entry reached them.
  uint64_t revive_freed_inodes = 0;
};

struct DirEntry {
  std::string name;
  uint64_t ino;
  mode_t mode;
};

class FileSystem {
 public:
  // `capacity` bytes of blocks before writes fail with ENOSPC.
  explicit FileSystem(uint64_t capacity);

  static constexpr uint64_t kRootIno = 1;

  bool cut() const { return cut_; }
  // Bumped by every revive: a file handle from an earlier epoch was opened
  // before the power went and fails with EIO for ever.
  uint64_t epoch() const { return epoch_; }
  Counters& counters() { return counters_; }

  // The inode, or null when it does not exist or is stale (ESTALE).
  Inode* Get(uint64_t ino);
  void Stat(const Inode& node, struct stat* st) const;
  void StatFs(struct statvfs* st) const;

  // Name operations. Those returning an inode count one kernel reference.
  [[nodiscard]] int Lookup(uint64_t parent, const std::string& name, Inode** out);
  [[nodiscard]] int MakeNode(uint64_t parent, const std::string& name, mode_t mode, dev_t rdev, uid_t uid,
                             gid_t gid, Inode** out);
  [[nodiscard]] int Unlink(uint64_t parent, const std::string& name);
  [[nodiscard]] int Rmdir(uint64_t parent, const std::string& name);
  // flags: 0, RENAME_NOREPLACE or RENAME_EXCHANGE (RENAME_WHITEOUT: EINVAL).
  [[nodiscard]] int Rename(uint64_t parent, const std::string& name, uint64_t new_parent,
                           const std::string& new_name, unsigned flags);
  [[nodiscard]] int Link(uint64_t ino, uint64_t new_parent, const std::string& new_name, Inode** out);
  [[nodiscard]] int List(uint64_t ino, std::vector<DirEntry>* out);
  void Forget(uint64_t ino, uint64_t n);
  void Opened(Inode* node) { node->open++; }
  void Released(uint64_t ino);

  // Content operations on a regular file.
  [[nodiscard]] int Read(Inode* node, uint64_t off, size_t len, std::string* out);
  [[nodiscard]] int Write(Inode* node, uint64_t off, const char* data, size_t len);
  [[nodiscard]] int Truncate(Inode* node, uint64_t size);
  [[nodiscard]] int Fallocate(Inode* node, int mode, uint64_t off, uint64_t len);
  // SEEK_DATA or SEEK_HOLE from `off`; ENXIO past the end or when no data follows.
  [[nodiscard]] int Seek(Inode* node, uint64_t off, int whence, uint64_t* out);

  // Durability.
  void Fsync(Inode* node, bool datasync);
  void FsyncDir(Inode* node);
  void SyncAll();
  // Takes the cut. keep_percent: the share of unsynced blocks and sizes kept
  // (torn writeback), chosen from `seed`; 0 drops everything unsynced.
  void Cut(unsigned keep_percent, uint64_t seed);
  // Reverts to the durable state and resumes. REQUIRES: cut().
  void Revive();

  // Blocks allocated now (current and durable-only content together).
  static uint64_t LiveBlocks();

 private:
  Inode* NewInode(mode_t mode, uid_t uid, gid_t gid, dev_t rdev);
  [[nodiscard]] int Dir(uint64_t ino, Inode** out);
  [[nodiscard]] int Space(uint64_t blocks) const;
  void Touch(Inode* node, bool modified);
  // Frees the inode when nothing names it, now or durably, and the kernel
  // neither references it nor has it open.
  void MaybeErase(uint64_t ino);
  // Replaces block `idx` of the current content (null: a hole); marks it dirty.
  void SetBlock(Inode* node, uint64_t idx, BlockRef block);
  // Zeroes [from, to) inside block `idx` (which may be a hole).
  void ZeroPart(Inode* node, uint64_t idx, uint64_t from, uint64_t to);
  void SyncContent(Inode* node);
  void SyncEntries(Inode* dir);
  // Restores Content's invariant after a torn cut mixed sizes and blocks.
  static void ClipToSize(Content* c);

  const uint64_t capacity_blocks_;
  std::map<uint64_t, std::unique_ptr<Inode>> inodes_;  // ordered: a seeded cut is repeatable
  uint64_t next_ino_ = kRootIno;
  bool cut_ = false;
  uint64_t epoch_ = 1;
  Counters counters_;
};

}  // namespace powercut
