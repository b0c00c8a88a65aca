#include "fs_model.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

namespace powercut {
namespace {

uint64_t g_live_blocks = 0;  // Block objects alive (under the glue's mutex)

// Two shared all-zero blocks: written zeros (data to SEEK_DATA) and
// fallocated space (a hole to SEEK_DATA, like an unwritten extent). Neither
// costs memory per use.
const BlockRef& ZeroData() {
  static const BlockRef b = std::make_shared<Block>();
  return b;
}
const BlockRef& Unwritten() {
  static const BlockRef b = std::make_shared<Block>();
  return b;
}
bool IsData(const BlockRef& b) { return b && b != Unwritten(); }

timespec Now() {
  timespec t{};
  clock_gettime(CLOCK_REALTIME, &t);
  return t;
}

bool AllZero(const char* p, size_t n) {
  static const char zeros[kBlockSize] = {};
  return std::memcmp(p, zeros, n) == 0;
}

}  // namespace

Block::Block() { g_live_blocks++; }
Block::~Block() { g_live_blocks--; }

uint64_t FileSystem::LiveBlocks() {
  (void)ZeroData();
  (void)Unwritten();
  return g_live_blocks - 2;
}

FileSystem::FileSystem(uint64_t capacity) : capacity_blocks_(capacity / kBlockSize) {
  Inode* root = NewInode(S_IFDIR | 0755, 0, 0, 0);
  root->nlink = root->dlinks = 1;  // named by the mount itself, always durably
}

Inode* FileSystem::NewInode(mode_t mode, uid_t uid, gid_t gid, dev_t rdev) {
  auto node = std::make_unique<Inode>();
  node->ino = next_ino_++;
  node->mode = mode;
  node->uid = uid;
  node->gid = gid;
  node->rdev = rdev;
  node->atime = node->mtime = node->ctime = Now();
  Inode* p = node.get();
  inodes_.emplace(p->ino, std::move(node));
  return p;
}

Inode* FileSystem::Get(uint64_t ino) {
  auto it = inodes_.find(ino);
  if (it == inodes_.end() || it->second->stale) return nullptr;
  return it->second.get();
}

int FileSystem::Dir(uint64_t ino, Inode** out) {
  Inode* d = Get(ino);
  if (!d) return ESTALE;
  if (!d->is_dir()) return ENOTDIR;
  *out = d;
  return 0;
}

int FileSystem::Space(uint64_t blocks) const {
  return LiveBlocks() + blocks > capacity_blocks_ ? ENOSPC : 0;
}

void FileSystem::Touch(Inode* node, bool modified) {
  node->ctime = Now();
  if (modified) node->mtime = node->ctime;
}

void FileSystem::Stat(const Inode& node, struct stat* st) const {
  std::memset(st, 0, sizeof(*st));
  st->st_ino = node.ino;
  st->st_mode = node.mode;
  st->st_nlink = node.is_dir() ? 2 : node.nlink;
  st->st_uid = node.uid;
  st->st_gid = node.gid;
  st->st_rdev = node.rdev;
  st->st_size = static_cast<off_t>(node.is_dir() ? kBlockSize : node.cur.size);
  st->st_blksize = kBlockSize;
  st->st_blocks = static_cast<blkcnt_t>(node.cur.blocks.size() * (kBlockSize / 512));
  st->st_atim = node.atime;
  st->st_mtim = node.mtime;
  st->st_ctim = node.ctime;
}

void FileSystem::StatFs(struct statvfs* st) const {
  std::memset(st, 0, sizeof(*st));
  const uint64_t used = std::min(LiveBlocks(), capacity_blocks_);
  st->f_bsize = st->f_frsize = kBlockSize;
  st->f_blocks = capacity_blocks_;
  st->f_bfree = st->f_bavail = capacity_blocks_ - used;
  st->f_files = 1 << 24;
  st->f_ffree = st->f_favail = st->f_files - std::min<uint64_t>(inodes_.size(), st->f_files);
  st->f_namemax = 255;
}

int FileSystem::Lookup(uint64_t parent, const std::string& name, Inode** out) {
  Inode* d = nullptr;
  if (int e = Dir(parent, &d)) return e;
  auto it = d->entries.find(name);
  if (it == d->entries.end()) return ENOENT;
  Inode* node = Get(it->second);
  if (!node) return EIO;  // an entry names a freed inode: a bug in the model
  node->nlookup++;
  *out = node;
  return 0;
}

int FileSystem::MakeNode(uint64_t parent, const std::string& name, mode_t mode, dev_t rdev, uid_t uid, gid_t gid,
                         Inode** out) {
  Inode* d = nullptr;
  if (int e = Dir(parent, &d)) return e;
  if (name.size() > 255) return ENAMETOOLONG;
  if (d->entries.count(name)) return EEXIST;
  Inode* node = NewInode(mode, uid, gid, rdev);
  d->entries.emplace(name, node->ino);
  node->nlink = 1;
  node->nlookup = 1;
  Touch(d, true);
  *out = node;
  return 0;
}

int FileSystem::Unlink(uint64_t parent, const std::string& name) {
  Inode* d = nullptr;
  if (int e = Dir(parent, &d)) return e;
  auto it = d->entries.find(name);
  if (it == d->entries.end()) return ENOENT;
  Inode* node = Get(it->second);
  if (node && node->is_dir()) return EISDIR;
  const uint64_t ino = it->second;
  d->entries.erase(it);
  if (node) {
    node->nlink--;
    Touch(node, false);
  }
  Touch(d, true);
  MaybeErase(ino);
  return 0;
}

int FileSystem::Rmdir(uint64_t parent, const std::string& name) {
  Inode* d = nullptr;
  if (int e = Dir(parent, &d)) return e;
  auto it = d->entries.find(name);
  if (it == d->entries.end()) return ENOENT;
  Inode* node = Get(it->second);
  if (!node || !node->is_dir()) return ENOTDIR;
  if (!node->entries.empty()) return ENOTEMPTY;
  const uint64_t ino = it->second;
  d->entries.erase(it);
  node->nlink--;
  Touch(d, true);
  MaybeErase(ino);
  return 0;
}

int FileSystem::Rename(uint64_t parent, const std::string& name, uint64_t new_parent, const std::string& new_name,
                       unsigned flags) {
  if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) return EINVAL;
  if ((flags & RENAME_NOREPLACE) && (flags & RENAME_EXCHANGE)) return EINVAL;
  Inode *from = nullptr, *to = nullptr;
  if (int e = Dir(parent, &from)) return e;
  if (int e = Dir(new_parent, &to)) return e;
  if (new_name.size() > 255) return ENAMETOOLONG;
  auto src = from->entries.find(name);
  if (src == from->entries.end()) return ENOENT;
  const uint64_t src_ino = src->second;
  Inode* src_node = Get(src_ino);
  if (!src_node) return EIO;
  auto dst = to->entries.find(new_name);
  if (flags & RENAME_EXCHANGE) {
    if (dst == to->entries.end()) return ENOENT;
    std::swap(src->second, dst->second);
    Touch(from, true);
    Touch(to, true);
    return 0;
  }
  if (dst != to->entries.end()) {
    if (flags & RENAME_NOREPLACE) return EEXIST;
    const uint64_t dst_ino = dst->second;
    if (dst_ino == src_ino) return 0;  // two names of one inode: nothing happens
    Inode* dst_node = Get(dst_ino);
    if (!dst_node) return EIO;
    if (src_node->is_dir() && !dst_node->is_dir()) return ENOTDIR;
    if (!src_node->is_dir() && dst_node->is_dir()) return EISDIR;
    if (dst_node->is_dir() && !dst_node->entries.empty()) return ENOTEMPTY;
    to->entries.erase(dst);
    dst_node->nlink--;
    Touch(dst_node, false);
    from->entries.erase(name);
    to->entries[new_name] = src_ino;
    MaybeErase(dst_ino);
  } else {
    from->entries.erase(src);
    to->entries[new_name] = src_ino;
  }
  Touch(src_node, false);
  Touch(from, true);
  Touch(to, true);
  return 0;
}

int FileSystem::Link(uint64_t ino, uint64_t new_parent, const std::string& new_name, Inode** out) {
  Inode* d = nullptr;
  if (int e = Dir(new_parent, &d)) return e;
  Inode* node = Get(ino);
  if (!node) return ESTALE;
  if (node->is_dir()) return EPERM;
  if (d->entries.count(new_name)) return EEXIST;
  d->entries.emplace(new_name, ino);
  node->nlink++;
  node->nlookup++;
  Touch(node, false);
  Touch(d, true);
  *out = node;
  return 0;
}

int FileSystem::List(uint64_t ino, std::vector<DirEntry>* out) {
  Inode* d = nullptr;
  if (int e = Dir(ino, &d)) return e;
  out->clear();
  out->push_back({".", d->ino, d->mode});
  out->push_back({"..", d->ino, d->mode});  // the kernel answers ".." itself
  for (const auto& [name, child] : d->entries) {
    Inode* c = Get(child);
    out->push_back({name, child, c ? c->mode : mode_t{S_IFREG}});
  }
  return 0;
}

void FileSystem::Forget(uint64_t ino, uint64_t n) {
  auto it = inodes_.find(ino);
  if (it == inodes_.end()) return;
  Inode* node = it->second.get();
  node->nlookup -= std::min(n, node->nlookup);
  MaybeErase(ino);
}

void FileSystem::Released(uint64_t ino) {
  auto it = inodes_.find(ino);
  if (it == inodes_.end()) return;
  if (it->second->open > 0) it->second->open--;
  MaybeErase(ino);
}

void FileSystem::MaybeErase(uint64_t ino) {
  auto it = inodes_.find(ino);
  if (it == inodes_.end() || ino == kRootIno) return;
  const Inode& n = *it->second;
  if (n.nlink == 0 && n.dlinks == 0 && n.nlookup == 0 && n.open == 0) inodes_.erase(it);
}

int FileSystem::Read(Inode* node, uint64_t off, size_t len, std::string* out) {
  if (!node->is_reg()) return EISDIR;
  counters_.reads++;
  out->clear();
  if (off >= node->cur.size) return 0;
  len = static_cast<size_t>(std::min<uint64_t>(len, node->cur.size - off));
  out->assign(len, '\0');
  const auto& blocks = node->cur.blocks;
  for (auto it = blocks.lower_bound(off / kBlockSize); it != blocks.end(); ++it) {
    const uint64_t start = it->first * kBlockSize;
    if (start >= off + len) break;
    const uint64_t from = std::max(start, off), to = std::min(start + kBlockSize, off + len);
    std::memcpy(out->data() + (from - off), it->second->bytes.data() + (from - start), to - from);
  }
  return 0;
}

void FileSystem::SetBlock(Inode* node, uint64_t idx, BlockRef block) {
  if (block) {
    node->cur.blocks[idx] = std::move(block);
  } else {
    node->cur.blocks.erase(idx);
  }
  node->dirty.insert(idx);
}

void FileSystem::ZeroPart(Inode* node, uint64_t idx, uint64_t from, uint64_t to) {
  auto it = node->cur.blocks.find(idx);
  if (it == node->cur.blocks.end() || !IsData(it->second) || it->second == ZeroData()) return;
  if (AllZero(it->second->bytes.data() + from, to - from)) return;
  auto b = std::make_shared<Block>();
  b->bytes = it->second->bytes;
  std::memset(b->bytes.data() + from, 0, to - from);
  SetBlock(node, idx, std::move(b));
}

int FileSystem::Write(Inode* node, uint64_t off, const char* data, size_t len) {
  if (!node->is_reg()) return EISDIR;
  if (len == 0) return 0;
  const uint64_t first = off / kBlockSize, last = (off + len - 1) / kBlockSize;
  if (int e = Space(last - first + 1)) return e;
  for (uint64_t idx = first; idx <= last; idx++) {
    const uint64_t start = idx * kBlockSize;
    const uint64_t from = std::max(start, off), to = std::min(start + kBlockSize, off + len);
    const char* src = data + (from - off);
    if (from == start && to == start + kBlockSize && AllZero(src, kBlockSize)) {
      SetBlock(node, idx, ZeroData());
      continue;
    }
    auto b = std::make_shared<Block>();
    auto old = node->cur.blocks.find(idx);
    if (old != node->cur.blocks.end()) b->bytes = old->second->bytes;
    std::memcpy(b->bytes.data() + (from - start), src, to - from);
    SetBlock(node, idx, std::move(b));
  }
  node->cur.size = std::max<uint64_t>(node->cur.size, off + len);
  counters_.writes++;
  counters_.bytes_written += len;
  Touch(node, true);
  return 0;
}

int FileSystem::Truncate(Inode* node, uint64_t size) {
  if (node->is_dir()) return EISDIR;
  if (!node->is_reg()) return EINVAL;
  if (size < node->cur.size) {
    // Every byte past the new size reads as zero from now on.
    auto& blocks = node->cur.blocks;
    const uint64_t keep = (size + kBlockSize - 1) / kBlockSize;
    std::vector<uint64_t> gone;
    for (auto it = blocks.lower_bound(keep); it != blocks.end(); ++it) gone.push_back(it->first);
    for (uint64_t idx : gone) SetBlock(node, idx, nullptr);
    if (size % kBlockSize) ZeroPart(node, size / kBlockSize, size % kBlockSize, kBlockSize);
  }
  node->cur.size = size;
  Touch(node, true);
  return 0;
}

int FileSystem::Fallocate(Inode* node, int mode, uint64_t off, uint64_t len) {
  if (!node->is_reg()) return ENODEV;
  if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) return EOPNOTSUPP;
  const bool punch = mode & FALLOC_FL_PUNCH_HOLE, zero = mode & FALLOC_FL_ZERO_RANGE;
  if (punch && zero) return EINVAL;
  if (punch && !(mode & FALLOC_FL_KEEP_SIZE)) return EOPNOTSUPP;
  if (len == 0) return EINVAL;
  const uint64_t end = off + len;
  const uint64_t first_full = (off + kBlockSize - 1) / kBlockSize, end_full = end / kBlockSize;
  // Partial blocks at either edge: their bytes in range become zero.
  for (uint64_t idx : {off / kBlockSize, (end - 1) / kBlockSize}) {
    const uint64_t start = idx * kBlockSize;
    if (idx >= first_full && idx < end_full) continue;  // a whole block, below
    if (punch || zero) ZeroPart(node, idx, std::max(start, off) - start, std::min(start + kBlockSize, end) - start);
    if (!punch && !node->cur.blocks.count(idx)) SetBlock(node, idx, Unwritten());
  }
  for (uint64_t idx = first_full; idx < end_full; idx++) {
    auto it = node->cur.blocks.find(idx);
    if (punch) {
      if (it != node->cur.blocks.end()) SetBlock(node, idx, nullptr);
    } else if (zero || it == node->cur.blocks.end()) {
      if (it == node->cur.blocks.end() || it->second != Unwritten()) SetBlock(node, idx, Unwritten());
    }
    if (punch && it == node->cur.blocks.end()) {
      // Jump over a long hole instead of visiting every index in it.
      auto next = node->cur.blocks.lower_bound(idx);
      if (next == node->cur.blocks.end() || next->first >= end_full) break;
      idx = next->first - 1;
    }
  }
  if (!(mode & FALLOC_FL_KEEP_SIZE)) node->cur.size = std::max(node->cur.size, end);
  Touch(node, true);
  return 0;
}

int FileSystem::Seek(Inode* node, uint64_t off, int whence, uint64_t* out) {
  const uint64_t size = node->cur.size;
  if (off >= size) return ENXIO;
  const auto& blocks = node->cur.blocks;
  auto it = blocks.lower_bound(off / kBlockSize);
  if (whence == SEEK_DATA) {
    while (it != blocks.end() && !IsData(it->second)) ++it;
    if (it == blocks.end() || it->first * kBlockSize >= size) return ENXIO;
    *out = std::max(off, it->first * kBlockSize);
    return 0;
  }
  if (whence != SEEK_HOLE) return EINVAL;
  uint64_t idx = off / kBlockSize;
  while (it != blocks.end() && it->first == idx && IsData(it->second)) {
    ++it;
    ++idx;
  }
  *out = std::min(size, std::max(off, idx * kBlockSize));
  return 0;
}

void FileSystem::Fsync(Inode* node, bool datasync) {
  (datasync ? counters_.fdatasyncs : counters_.fsyncs)++;
  if (node->is_dir()) {
    SyncEntries(node);
  } else {
    SyncContent(node);
  }
}

void FileSystem::FsyncDir(Inode* d) {
  counters_.fsyncdirs++;
  SyncEntries(d);
}

void FileSystem::SyncContent(Inode* node) {
  for (uint64_t idx : node->dirty) {
    auto it = node->cur.blocks.find(idx);
    if (it == node->cur.blocks.end()) {
      node->dur.blocks.erase(idx);
    } else {
      node->dur.blocks[idx] = it->second;
    }
  }
  node->dirty.clear();
  node->dur.size = node->cur.size;
}

void FileSystem::SyncEntries(Inode* d) {
  std::vector<uint64_t> dropped;
  for (const auto& [name, ino] : d->durable_entries) {
    auto it = inodes_.find(ino);
    if (it != inodes_.end()) {
      it->second->dlinks--;
      dropped.push_back(ino);
    }
  }
  d->durable_entries = d->entries;
  for (const auto& [name, ino] : d->durable_entries) {
    auto it = inodes_.find(ino);
    if (it != inodes_.end()) it->second->dlinks++;
  }
  for (uint64_t ino : dropped) MaybeErase(ino);
}

void FileSystem::SyncAll() {
  counters_.syncalls++;
  std::vector<uint64_t> dirs;
  for (auto& [ino, node] : inodes_) {
    if (node->stale) continue;
    if (node->is_reg()) SyncContent(node.get());
    if (node->is_dir()) dirs.push_back(ino);
  }
  // Syncing entries may free inodes (one unlinked and no longer durably
  // named): look each directory up again.
  for (uint64_t ino : dirs) {
    if (Inode* d = Get(ino)) SyncEntries(d);
  }
}

void FileSystem::ClipToSize(Content* c) {
  const uint64_t keep = (c->size + kBlockSize - 1) / kBlockSize;
  c->blocks.erase(c->blocks.lower_bound(keep), c->blocks.end());
  const uint64_t tail = c->size % kBlockSize;
  auto it = c->blocks.find(c->size / kBlockSize);
  if (tail && it != c->blocks.end() && IsData(it->second) && !AllZero(it->second->bytes.data() + tail, kBlockSize - tail)) {
    auto b = std::make_shared<Block>();
    b->bytes = it->second->bytes;
    std::memset(b->bytes.data() + tail, 0, kBlockSize - tail);
    it->second = std::move(b);
  }
}

void FileSystem::Cut(unsigned keep_percent, uint64_t seed) {
  cut_ = true;
  counters_.cuts++;
  counters_.cut_dropped_bytes = counters_.cut_dropped_files = counters_.cut_dropped_dirs = 0;
  counters_.cut_kept_blocks = counters_.cut_kept_sizes = 0;
  std::mt19937_64 rng(seed);
  auto keep = [&] { return keep_percent > 0 && rng() % 100 < keep_percent; };
  for (auto& [ino, node] : inodes_) {
    if (node->stale) continue;
    if (node->is_dir() && node->entries != node->durable_entries) counters_.cut_dropped_dirs++;
    if (!node->is_reg()) continue;
    bool dropped = false;
    // Torn writeback: these blocks reached the disk before the power went.
    for (uint64_t idx : node->dirty) {
      auto cur = node->cur.blocks.find(idx);
      auto dur = node->dur.blocks.find(idx);
      const BlockRef c = cur == node->cur.blocks.end() ? nullptr : cur->second;
      const BlockRef d = dur == node->dur.blocks.end() ? nullptr : dur->second;
      if (c == d) continue;
      // Fallocated space and a hole read the same: nothing to lose.
      if (!IsData(c) && !IsData(d)) continue;
      if (keep()) {
        if (c) {
          node->dur.blocks[idx] = c;
        } else {
          node->dur.blocks.erase(idx);
        }
        counters_.cut_kept_blocks++;
      } else {
        counters_.cut_dropped_bytes += kBlockSize;
        dropped = true;
      }
    }
    if (node->cur.size != node->dur.size) {
      if (keep()) {
        node->dur.size = node->cur.size;
        counters_.cut_kept_sizes++;
      } else {
        dropped = true;
      }
    }
    ClipToSize(&node->dur);
    counters_.cut_dropped_files += dropped;
  }
}

void FileSystem::Revive() {
  counters_.revives++;
  for (auto& [ino, node] : inodes_) {
    if (node->is_reg()) {
      node->cur = node->dur;
      node->dirty.clear();
    }
    node->entries = node->durable_entries;
    node->nlink = node->dlinks = 0;
  }
  // Whatever the durable entries reach from the root survives; its link
  // count is how many of them name it.
  std::set<uint64_t> seen{kRootIno};
  std::vector<uint64_t> todo{kRootIno};
  while (!todo.empty()) {
    Inode* d = inodes_.at(todo.back()).get();
    todo.pop_back();
    for (const auto& [name, ino] : d->entries) {
      Inode* child = inodes_.at(ino).get();
      child->nlink++;
      child->dlinks++;
      if (seen.insert(ino).second && child->is_dir()) todo.push_back(ino);
    }
  }
  Inode* root = inodes_.at(kRootIno).get();
  root->nlink = root->dlinks = 1;
  counters_.revive_freed_inodes = 0;
  std::vector<uint64_t> freed;
  for (auto& [ino, node] : inodes_) {
    if (seen.count(ino) || node->stale) continue;
    node->cur = node->dur = Content{};
    node->entries.clear();
    node->durable_entries.clear();
    node->stale = true;
    freed.push_back(ino);
  }
  counters_.revive_freed_inodes = freed.size();
  for (uint64_t ino : freed) MaybeErase(ino);
  cut_ = false;
  epoch_++;
}

}  // namespace powercut
