// powercut_fs: a FUSE file system in memory that can lose power (fs_model.h
// states the model). The tests put a whole ebs data directory on it, cut the
// power at a random moment, revive it, and check what ebs promised survived.
//
//   powercut_fs MOUNTPOINT --control SOCKET [--capacity-mib N]
//       Mounts (in the foreground; SIGTERM or an unmount ends it) and answers
//       one-line commands on the Unix socket SOCKET (keep it off the mount):
//         cut [keep=PERCENT] [seed=N]  the power goes: every operation fails
//                                      with EIO from now on; keep= keeps that
//                                      share of the unsynced 4 KiB blocks and
//                                      sizes (torn writeback), chosen by seed
//         revive                       back to the durable state, working again
//         sync                         make everything durable (a clean sync)
//         stats                        counters
//       Each is answered with "ok {JSON counters}" or "error MESSAGE".
//   powercut_fs ctl SOCKET COMMAND...
//       Sends one command, prints the JSON, exits 0 on ok and 1 otherwise.
//
// Every file is opened with direct_io and every entry and attribute is
// answered with a zero timeout: the kernel caches neither data nor names, so
// every write reaches the model and a revived state is what the next reader
// sees. One thread serves FUSE (fuse_session_loop), one the control socket;
// one mutex covers the model.
#define FUSE_USE_VERSION 312
#include <fuse3/fuse_lowlevel.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fs_model.h"
#include "powercut_ioctl.h"

namespace powercut {
namespace {

std::mutex g_mu;
FileSystem* g_fs = nullptr;  // guarded by g_mu

// What fi->fh points to: the inode, the epoch it was opened in (a handle
// from before a revive belongs to a process the power cut killed), and for
// directories the listing readdir serves from (taken at offset 0).
struct Handle {
  uint64_t ino;
  uint64_t epoch;
  int flags;
  std::vector<DirEntry> listing;
};

Handle* HandleOf(fuse_file_info* fi) { return reinterpret_cast<Handle*>(fi->fh); }

// The inode of an open handle, or null (err set) when the handle is from an
// earlier epoch or its inode was freed. REQUIRES: g_mu.
Inode* Open(fuse_file_info* fi, int* err) {
  Handle* h = HandleOf(fi);
  if (!h || h->epoch != g_fs->epoch()) {
    *err = EIO;
    return nullptr;
  }
  Inode* node = g_fs->Get(h->ino);
  if (!node) *err = EIO;
  return node;
}

void ReplyEntry(fuse_req_t req, Inode* node) {
  fuse_entry_param e{};
  e.ino = node->ino;
  e.generation = 1;
  g_fs->Stat(*node, &e.attr);
  e.attr_timeout = 0;
  e.entry_timeout = 0;
  fuse_reply_entry(req, &e);
}

void ReplyAttr(fuse_req_t req, Inode* node) {
  struct stat st;
  g_fs->Stat(*node, &st);
  fuse_reply_attr(req, &st, 0);
}

// Every operation starts here: after a cut it fails with EIO and changes
// nothing. Holds g_mu for the rest of the scope.
#define POWER_OR_EIO(req)                 \
  std::lock_guard<std::mutex> lock(g_mu); \
  if (g_fs->cut()) {                      \
    g_fs->counters().refused++;           \
    fuse_reply_err(req, EIO);             \
    return;                               \
  }

void OpInit(void*, fuse_conn_info* conn) {
  // No writeback cache (writes must reach the model at once), ioctl on
  // directories (the syncfs shim calls it on the store's root).
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  if (conn->capable & FUSE_CAP_IOCTL_DIR) conn->want |= FUSE_CAP_IOCTL_DIR;
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  POWER_OR_EIO(req);
  Inode* node = nullptr;
  if (int e = g_fs->Lookup(parent, name, &node)) return (void)fuse_reply_err(req, e);
  ReplyEntry(req, node);
}

void OpForget(fuse_req_t req, fuse_ino_t ino, uint64_t n) {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    g_fs->Forget(ino, n);
  }
  fuse_reply_none(req);
}

void OpForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    for (size_t i = 0; i < count; i++) g_fs->Forget(forgets[i].ino, forgets[i].nlookup);
  }
  fuse_reply_none(req);
}

void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  POWER_OR_EIO(req);
  Inode* node = g_fs->Get(ino);
  if (!node) return (void)fuse_reply_err(req, ESTALE);
  ReplyAttr(req, node);
}

void OpSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
  POWER_OR_EIO(req);
  int err = 0;
  Inode* node = fi ? Open(fi, &err) : g_fs->Get(ino);
  if (!node) return (void)fuse_reply_err(req, err ? err : ESTALE);
  if (to_set & FUSE_SET_ATTR_SIZE) {
    if (int e = g_fs->Truncate(node, static_cast<uint64_t>(attr->st_size))) return (void)fuse_reply_err(req, e);
  }
  if (to_set & FUSE_SET_ATTR_MODE) node->mode = (node->mode & S_IFMT) | (attr->st_mode & 07777);
  if (to_set & FUSE_SET_ATTR_UID) node->uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID) node->gid = attr->st_gid;
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  if (to_set & FUSE_SET_ATTR_ATIME) node->atime = attr->st_atim;
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) node->atime = now;
  if (to_set & FUSE_SET_ATTR_MTIME) node->mtime = attr->st_mtim;
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) node->mtime = now;
  node->ctime = (to_set & FUSE_SET_ATTR_CTIME) ? attr->st_ctim : now;
  ReplyAttr(req, node);
}

void MakeNode(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  POWER_OR_EIO(req);
  const fuse_ctx* ctx = fuse_req_ctx(req);
  Inode* node = nullptr;
  if (int e = g_fs->MakeNode(parent, name, mode, rdev, ctx->uid, ctx->gid, &node)) {
    return (void)fuse_reply_err(req, e);
  }
  ReplyEntry(req, node);
}

void OpMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  // Sockets (ebs binds nbd.sock and control.sock here), fifos, plain files.
  if (!S_ISREG(mode) && !S_ISSOCK(mode) && !S_ISFIFO(mode)) return (void)fuse_reply_err(req, EPERM);
  MakeNode(req, parent, name, mode, rdev);
}

void OpMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  MakeNode(req, parent, name, S_IFDIR | (mode & 07777), 0);
}

void OpUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  POWER_OR_EIO(req);
  fuse_reply_err(req, g_fs->Unlink(parent, name));
}

void OpRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  POWER_OR_EIO(req);
  fuse_reply_err(req, g_fs->Rmdir(parent, name));
}

void OpRename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent, const char* new_name,
              unsigned int flags) {
  POWER_OR_EIO(req);
  fuse_reply_err(req, g_fs->Rename(parent, name, new_parent, new_name, flags));
}

void OpLink(fuse_req_t req, fuse_ino_t ino, fuse_ino_t new_parent, const char* new_name) {
  POWER_OR_EIO(req);
  Inode* node = nullptr;
  if (int e = g_fs->Link(ino, new_parent, new_name, &node)) return (void)fuse_reply_err(req, e);
  ReplyEntry(req, node);
}

// REQUIRES: g_mu. Gives `fi` a handle on `node`: direct I/O, nothing kept
// in the kernel's cache.
void AttachHandle(Inode* node, fuse_file_info* fi) {
  fi->fh = reinterpret_cast<uint64_t>(new Handle{node->ino, g_fs->epoch(), fi->flags, {}});
  fi->direct_io = 1;
  fi->keep_cache = 0;
  g_fs->Opened(node);
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  POWER_OR_EIO(req);
  Inode* node = g_fs->Get(ino);
  if (!node) return (void)fuse_reply_err(req, ESTALE);
  if (node->is_dir()) return (void)fuse_reply_err(req, EISDIR);
  if ((fi->flags & O_TRUNC) && (fi->flags & O_ACCMODE) != O_RDONLY) {
    if (int e = g_fs->Truncate(node, 0)) return (void)fuse_reply_err(req, e);
  }
  AttachHandle(node, fi);
  if (fuse_reply_open(req, fi) != 0) {  // the open was interrupted: no release follows
    delete HandleOf(fi);
    g_fs->Released(ino);
  }
}

void OpCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
  POWER_OR_EIO(req);
  const fuse_ctx* ctx = fuse_req_ctx(req);
  Inode* node = nullptr;
  int e = g_fs->MakeNode(parent, name, S_IFREG | (mode & 07777), 0, ctx->uid, ctx->gid, &node);
  if (e == EEXIST && !(fi->flags & O_EXCL)) e = g_fs->Lookup(parent, name, &node);
  if (e) return (void)fuse_reply_err(req, e);
  if (!node->is_reg()) {
    g_fs->Forget(node->ino, 1);
    return (void)fuse_reply_err(req, EISDIR);
  }
  AttachHandle(node, fi);
  fuse_entry_param entry{};
  entry.ino = node->ino;
  entry.generation = 1;
  g_fs->Stat(*node, &entry.attr);
  if (fuse_reply_create(req, &entry, fi) != 0) {
    delete HandleOf(fi);
    g_fs->Released(node->ino);
    g_fs->Forget(node->ino, 1);
  }
}

void OpRead(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  POWER_OR_EIO(req);
  int err = 0;
  Inode* node = Open(fi, &err);
  if (!node) return (void)fuse_reply_err(req, err);
  std::string out;
  if (int e = g_fs->Read(node, static_cast<uint64_t>(off), size, &out)) return (void)fuse_reply_err(req, e);
  fuse_reply_buf(req, out.data(), out.size());
}

void OpWrite(fuse_req_t req, fuse_ino_t, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  POWER_OR_EIO(req);
  int err = 0;
  Inode* node = Open(fi, &err);
  if (!node) return (void)fuse_reply_err(req, err);
  // O_APPEND: at the model's end of file, which the kernel may not know yet.
  const uint64_t at = (HandleOf(fi)->flags & O_APPEND) ? node->cur.size : static_cast<uint64_t>(off);
  if (int e = g_fs->Write(node, at, buf, size)) return (void)fuse_reply_err(req, e);
  // The kernel passes a write's O_DSYNC/O_SYNC (of the open, or RWF_DSYNC
  // and RWF_SYNC of this write: how ebs does FUA) for the server to honour.
  if (fi->flags & O_DSYNC) g_fs->Fsync(node, (fi->flags & O_SYNC) != O_SYNC);
  fuse_reply_write(req, size);
}

void OpFlush(fuse_req_t req, fuse_ino_t, fuse_file_info*) {
  POWER_OR_EIO(req);  // close(2) after a cut fails too; otherwise nothing is cached to write
  fuse_reply_err(req, 0);
}

void OpRelease(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    delete HandleOf(fi);
    g_fs->Released(ino);
  }
  fuse_reply_err(req, 0);
}

void OpFsync(fuse_req_t req, fuse_ino_t, int datasync, fuse_file_info* fi) {
  POWER_OR_EIO(req);
  int err = 0;
  Inode* node = Open(fi, &err);
  if (!node) return (void)fuse_reply_err(req, err);
  g_fs->Fsync(node, datasync != 0);
  fuse_reply_err(req, 0);
}

void OpOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  POWER_OR_EIO(req);
  Inode* node = g_fs->Get(ino);
  if (!node) return (void)fuse_reply_err(req, ESTALE);
  if (!node->is_dir()) return (void)fuse_reply_err(req, ENOTDIR);
  fi->fh = reinterpret_cast<uint64_t>(new Handle{node->ino, g_fs->epoch(), fi->flags, {}});
  g_fs->Opened(node);
  if (fuse_reply_open(req, fi) != 0) {
    delete HandleOf(fi);
    g_fs->Released(ino);
  }
}

void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  POWER_OR_EIO(req);
  int err = 0;
  if (!Open(fi, &err)) return (void)fuse_reply_err(req, err);
  Handle* h = HandleOf(fi);
  if (off == 0) {
    if (int e = g_fs->List(ino, &h->listing)) return (void)fuse_reply_err(req, e);
  }
  std::string buf(size, '\0');
  size_t used = 0;
  for (size_t i = static_cast<size_t>(off); i < h->listing.size(); i++) {
    struct stat st {};
    st.st_ino = h->listing[i].ino;
    st.st_mode = h->listing[i].mode;
    const size_t n = fuse_add_direntry(req, buf.data() + used, size - used, h->listing[i].name.c_str(), &st,
                                       static_cast<off_t>(i + 1));
    if (n > size - used) break;
    used += n;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void OpFsyncdir(fuse_req_t req, fuse_ino_t, int, fuse_file_info* fi) {
  POWER_OR_EIO(req);
  int err = 0;
  Inode* node = Open(fi, &err);
  if (!node) return (void)fuse_reply_err(req, err);
  g_fs->FsyncDir(node);
  fuse_reply_err(req, 0);
}

void OpStatfs(fuse_req_t req, fuse_ino_t) {
  POWER_OR_EIO(req);
  struct statvfs st;
  g_fs->StatFs(&st);
  fuse_reply_statfs(req, &st);
}

void OpIoctl(fuse_req_t req, fuse_ino_t, unsigned int cmd, void*, fuse_file_info*, unsigned flags, const void*,
             size_t, size_t) {
  if (flags & FUSE_IOCTL_COMPAT) return (void)fuse_reply_err(req, ENOSYS);
  if (cmd != POWERCUT_IOC_SYNCFS) return (void)fuse_reply_err(req, ENOTTY);
  POWER_OR_EIO(req);
  g_fs->SyncAll();
  fuse_reply_ioctl(req, 0, nullptr, 0);
}

void OpFallocate(fuse_req_t req, fuse_ino_t, int mode, off_t off, off_t len, fuse_file_info* fi) {
  POWER_OR_EIO(req);
  int err = 0;
  Inode* node = Open(fi, &err);
  if (!node) return (void)fuse_reply_err(req, err);
  if (off < 0 || len <= 0) return (void)fuse_reply_err(req, EINVAL);
  fuse_reply_err(req, g_fs->Fallocate(node, mode, static_cast<uint64_t>(off), static_cast<uint64_t>(len)));
}

void OpLseek(fuse_req_t req, fuse_ino_t, off_t off, int whence, fuse_file_info* fi) {
  POWER_OR_EIO(req);
  int err = 0;
  Inode* node = Open(fi, &err);
  if (!node) return (void)fuse_reply_err(req, err);
  if (off < 0) return (void)fuse_reply_err(req, EINVAL);
  uint64_t at = 0;
  if (int e = g_fs->Seek(node, static_cast<uint64_t>(off), whence, &at)) return (void)fuse_reply_err(req, e);
  fuse_reply_lseek(req, static_cast<off_t>(at));
}

fuse_lowlevel_ops Operations() {
  fuse_lowlevel_ops ops{};
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.forget = OpForget;
  ops.forget_multi = OpForgetMulti;
  ops.getattr = OpGetattr;
  ops.setattr = OpSetattr;
  ops.mknod = OpMknod;
  ops.mkdir = OpMkdir;
  ops.unlink = OpUnlink;
  ops.rmdir = OpRmdir;
  ops.rename = OpRename;
  ops.link = OpLink;
  ops.open = OpOpen;
  ops.create = OpCreate;
  ops.read = OpRead;
  ops.write = OpWrite;
  ops.flush = OpFlush;
  ops.release = OpRelease;
  ops.fsync = OpFsync;
  ops.opendir = OpOpendir;
  ops.readdir = OpReaddir;
  ops.releasedir = OpRelease;
  ops.fsyncdir = OpFsyncdir;
  ops.statfs = OpStatfs;
  ops.ioctl = OpIoctl;
  ops.fallocate = OpFallocate;
  ops.lseek = OpLseek;
  // Not implemented, on purpose: flock and POSIX locks stay the kernel's
  // local locking; xattrs, symlinks and copy_file_range are not used by ebs
  // or RocksDB (ENOSYS, which the kernel remembers).
  return ops;
}

// ---- control socket ------------------------------------------------------

std::string CountersJson() {
  const Counters& c = g_fs->counters();
  std::ostringstream o;
  o << "{\"cut\":" << (g_fs->cut() ? "true" : "false") << ",\"epoch\":" << g_fs->epoch()
    << ",\"live_bytes\":" << FileSystem::LiveBlocks() * kBlockSize << ",\"writes\":" << c.writes
    << ",\"bytes_written\":" << c.bytes_written << ",\"reads\":" << c.reads << ",\"fsyncs\":" << c.fsyncs
    << ",\"fdatasyncs\":" << c.fdatasyncs << ",\"fsyncdirs\":" << c.fsyncdirs << ",\"syncfs\":" << c.syncalls
    << ",\"cuts\":" << c.cuts << ",\"revives\":" << c.revives << ",\"refused\":" << c.refused
    << ",\"cut_dropped_bytes\":" << c.cut_dropped_bytes << ",\"cut_dropped_files\":" << c.cut_dropped_files
    << ",\"cut_dropped_dirs\":" << c.cut_dropped_dirs << ",\"cut_kept_blocks\":" << c.cut_kept_blocks
    << ",\"cut_kept_sizes\":" << c.cut_kept_sizes << ",\"revive_freed_inodes\":" << c.revive_freed_inodes << "}";
  return o.str();
}

// Runs one control command; the answer is "ok JSON" or "error MESSAGE".
std::string Command(const std::string& line) {
  std::istringstream in(line);
  std::string verb, arg;
  in >> verb;
  std::lock_guard<std::mutex> lock(g_mu);
  if (verb == "cut") {
    if (g_fs->cut()) return "error already cut";
    unsigned keep = 0;
    uint64_t seed = 0;
    while (in >> arg) {
      if (arg.rfind("keep=", 0) == 0) {
        keep = static_cast<unsigned>(std::strtoul(arg.c_str() + 5, nullptr, 10));
      } else if (arg.rfind("seed=", 0) == 0) {
        seed = std::strtoull(arg.c_str() + 5, nullptr, 10);
      } else {
        return "error unknown argument " + arg;
      }
    }
    if (keep > 100) return "error keep= is a percentage";
    g_fs->Cut(keep, seed);
  } else if (verb == "revive") {
    if (!g_fs->cut()) return "error not cut";
    g_fs->Revive();
  } else if (verb == "sync") {
    if (g_fs->cut()) return "error cut";
    g_fs->SyncAll();
  } else if (verb != "stats") {
    return "error unknown command '" + verb + "' (cut, revive, sync, stats)";
  }
  return "ok " + CountersJson();
}

void ServeControl(int listener) {
  for (;;) {
    int c = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;
    }
    std::string line;
    char ch;
    while (line.size() < 4096 && ::read(c, &ch, 1) == 1 && ch != '\n') line.push_back(ch);
    const std::string reply = Command(line) + "\n";
    (void)!::write(c, reply.data(), reply.size());
    ::close(c);
  }
}

int UnixSocket(const std::string& path, bool listen) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    std::fprintf(stderr, "powercut_fs: socket path too long: %s\n", path.c_str());
    return -1;
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (listen) {
    ::unlink(path.c_str());
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 && ::listen(fd, 16) == 0) return fd;
  } else if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    return fd;
  }
  std::fprintf(stderr, "powercut_fs: %s %s: %s\n", listen ? "listen on" : "connect to", path.c_str(),
               std::strerror(errno));
  ::close(fd);
  return -1;
}

int Control(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: powercut_fs ctl SOCKET cut|revive|sync|stats [ARGS...]\n");
    return 2;
  }
  std::string line = argv[3];
  for (int i = 4; i < argc; i++) line += std::string(" ") + argv[i];
  line += "\n";
  int fd = UnixSocket(argv[2], false);
  if (fd < 0) return 1;
  std::string reply;
  if (::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size())) {
    char buf[4096];
    for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) reply.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  if (reply.rfind("ok ", 0) == 0) {
    std::fputs(reply.c_str() + 3, stdout);
    return 0;
  }
  std::fprintf(stderr, "powercut_fs: %s\n", reply.empty() ? "no answer" : reply.c_str());
  return 1;
}

int Usage() {
  std::fprintf(stderr,
               "usage: powercut_fs MOUNTPOINT --control SOCKET [--capacity-mib N] [--debug]\n"
               "       powercut_fs ctl SOCKET cut [keep=PERCENT] [seed=N] | revive | sync | stats\n");
  return 2;
}

int Serve(int argc, char** argv) {
  std::string mountpoint, control;
  uint64_t capacity_mib = 8192;
  bool debug = false;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--control" && i + 1 < argc) {
      control = argv[++i];
    } else if (a == "--capacity-mib" && i + 1 < argc) {
      capacity_mib = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--debug") {
      debug = true;
    } else if (!a.empty() && a[0] != '-' && mountpoint.empty()) {
      mountpoint = a;
    } else {
      return Usage();
    }
  }
  if (mountpoint.empty() || control.empty() || capacity_mib == 0) return Usage();

  FileSystem fs(capacity_mib << 20);
  g_fs = &fs;
  const int listener = UnixSocket(control, true);
  if (listener < 0) return 1;

  fuse_args args = FUSE_ARGS_INIT(0, nullptr);
  const char* fuse_argv[] = {argv[0], "-o", "fsname=powercut,subtype=powercut", "-d"};
  for (int i = 0; i < (debug ? 4 : 3); i++) fuse_opt_add_arg(&args, fuse_argv[i]);
  const fuse_lowlevel_ops ops = Operations();
  fuse_session* se = fuse_session_new(&args, &ops, sizeof(ops), nullptr);
  fuse_opt_free_args(&args);
  if (!se) return 1;
  int rc = 1;
  if (fuse_set_signal_handlers(se) == 0) {
    if (fuse_session_mount(se, mountpoint.c_str()) == 0) {
      std::thread(ServeControl, listener).detach();
      std::printf("powercut_fs: ready on %s (control %s)\n", mountpoint.c_str(), control.c_str());
      std::fflush(stdout);
      rc = fuse_session_loop(se) == 0 ? 0 : 1;
      fuse_session_unmount(se);
    }
    fuse_remove_signal_handlers(se);
  }
  fuse_session_destroy(se);
  ::unlink(control.c_str());
  // The control thread may still hold g_mu: leave without destroying the
  // model under it.
  std::fflush(stdout);
  std::_Exit(rc);
}

}  // namespace
}  // namespace powercut

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "ctl") return powercut::Control(argc, argv);
  return powercut::Serve(argc, argv);
}
