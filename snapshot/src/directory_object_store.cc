#include "ebs/snapshot/directory_object_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <optional>
#include <span>

#include "ebs/engine/file_util.h"

namespace ebs::snapshot {
namespace {

// Keeps the errno of a failed syscall until the Status is built, so cleanup
// calls in between cannot clobber it.
Status Errno(const std::string& context) { return Status::FromErrno(errno, context); }

std::string DirName(const std::string& path) { return path.substr(0, path.rfind('/')); }

bool IsKeyPrefixChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '-' || c == '/';
}

// Collects the keys under `dir` (whose key prefix is `rel`, empty or ending
// in '/') that start with `prefix`, pruning subtrees that cannot match.
Status Walk(const std::string& dir, const std::string& rel, std::string_view prefix,
            std::vector<std::string>* out) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    // Vanished or never created: nothing under it.
    if (errno == ENOENT || errno == ENOTDIR) return Status::Ok();
    return Errno("open directory " + dir);
  }
  Status status;
  errno = 0;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.empty() || name[0] == '.') continue;  // ".", "..", temporary files
    std::string key = rel + name;
    bool is_dir = e->d_type == DT_DIR;
    bool is_file = e->d_type == DT_REG;
    if (e->d_type == DT_UNKNOWN) {
      struct stat st;
      if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;
        status = Errno("stat " + dir + "/" + name);
        break;
      }
      is_dir = S_ISDIR(st.st_mode);
      is_file = S_ISREG(st.st_mode);
    }
    if (is_file && key.starts_with(prefix)) {
      out->push_back(std::move(key));
    } else if (is_dir) {
      std::string sub = key + "/";
      if (sub.starts_with(prefix) || prefix.starts_with(sub)) {
        status = Walk(dir + "/" + name, sub, prefix, out);
        if (!status.ok()) break;
      }
    }
    errno = 0;
  }
  if (status.ok() && errno != 0) status = Errno("read directory " + dir);
  ::closedir(d);
  return status;
}

// Removes the files named ".tmp.*" under `dir` whose mtime is before
// `cutoff`, counting them in *removed. Skips top-level directories named
// "index*" (the snapshot index, RocksDB's own files) when `top`.
Status RemoveTemporaries(const std::string& dir, bool top, time_t cutoff, uint64_t* removed) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT || errno == ENOTDIR) return Status::Ok();
    return Errno("open directory " + dir);
  }
  Status status;
  bool unlinked = false;
  errno = 0;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;  // a Put renamed or removed it meanwhile
      status = Errno("stat " + dir + "/" + name);
      break;
    }
    if (S_ISDIR(st.st_mode)) {
      if (name[0] == '.' || (top && name.starts_with("index"))) continue;
      status = RemoveTemporaries(dir + "/" + name, false, cutoff, removed);
      if (!status.ok()) break;
    } else if (S_ISREG(st.st_mode) && name.starts_with(".tmp.") && st.st_mtime <= cutoff) {
      if (::unlinkat(::dirfd(d), e->d_name, 0) == 0) {
        ++*removed;
        unlinked = true;
      } else if (errno != ENOENT) {
        status = Errno("remove " + dir + "/" + name);
        break;
      }
    }
    errno = 0;
  }
  if (status.ok() && errno != 0) status = Errno("read directory " + dir);
  ::closedir(d);
  // Not needed for correctness (a temporary that comes back after a crash
  // is removed again), but keeps the count honest across a power cut.
  if (status.ok() && unlinked) status = SyncDirectory(dir);
  return status;
}

}  // namespace

Result<std::unique_ptr<DirectoryObjectStore>> DirectoryObjectStore::Open(const std::string& root) {
  if (root.empty()) return Status::InvalidArgument("object store root is empty");
  std::string clean = root;
  while (clean.size() > 1 && clean.back() == '/') clean.pop_back();
  Status made = MakeDurableDirectories(clean, 0700);
  if (!made.ok()) return Status::Error(made.code(), "create object store directory: " + made.message());
  struct stat st;
  if (::stat(clean.c_str(), &st) != 0) return Errno("object store " + clean);
  if (!S_ISDIR(st.st_mode)) return Status::Error(ENOTDIR, "object store " + clean + " is not a directory");
  // Older versions made 0755 directories and 0644 objects: a private root
  // shuts other users out of them. Only a root of our own, and best effort (a
  // read-only store still serves restores); what we create is private anyway.
  if (st.st_uid == ::geteuid() && (st.st_mode & 077) != 0) ::chmod(clean.c_str(), st.st_mode & 0700);
  return std::unique_ptr<DirectoryObjectStore>(new DirectoryObjectStore(clean));
}

std::string DirectoryObjectStore::PathOf(std::string_view key) const {
  std::string path = root_;
  path += '/';
  path.append(key);
  return path;
}

Status DirectoryObjectStore::CreateParents(std::string_view key, bool durable) {
  std::string parent = root_;
  for (size_t slash = key.find('/'); slash != std::string_view::npos; slash = key.find('/', slash + 1)) {
    std::string dir = PathOf(key.substr(0, slash));
    if (::mkdir(dir.c_str(), 0700) == 0) {
      if (durable) EBS_RETURN_IF_ERROR(SyncDirectory(parent));
    } else if (errno != EEXIST) {  // EEXIST: already there, or a concurrent Put made it
      return Errno("create directory " + dir);
    }
    parent = std::move(dir);
  }
  return Status::Ok();
}

Status DirectoryObjectStore::Put(std::string_view key, std::string_view bytes) { return Write(key, bytes, true); }

Status DirectoryObjectStore::PutBatched(std::string_view key, std::string_view bytes) {
  return Write(key, bytes, false);
}

Status DirectoryObjectStore::Flush() {
  int fd = ::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Errno("open " + root_);
  int rc = ::syncfs(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return Status::FromErrno(err, "sync the file system of " + root_);
  return Status::Ok();
}

Status DirectoryObjectStore::Write(std::string_view key, std::string_view bytes, bool durable) {
  EBS_RETURN_IF_ERROR(ValidateObjectKey(key));
  const std::string path = PathOf(key);
  const std::string dir = DirName(path);
  const std::string temp = dir + "/.tmp." + path.substr(dir.size() + 1) + "." + std::to_string(::getpid()) + "." +
                           std::to_string(temp_counter_.fetch_add(1, std::memory_order_relaxed));

  // Batched objects (chunks) are written once and seldom read back soon:
  // they skip the page cache where the file system allows. Copying them into
  // it, then writing that back at Flush, took three times as long as
  // writing them directly.
  const bool direct = !durable && bytes.size() >= kDirectIoMin && direct_ok_.load(std::memory_order_relaxed);
  const int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | (direct ? O_DIRECT : 0);
  int fd = ::open(temp.c_str(), flags, 0600);
  if (fd < 0 && errno == ENOENT) {
    // First object under this prefix: create the directories and retry. Not
    // done up front because it costs a mkdir per level on every Put.
    EBS_RETURN_IF_ERROR(CreateParents(key, durable));
    fd = ::open(temp.c_str(), flags, 0600);
  }
  if (fd < 0 && direct && errno == EINVAL) {  // no O_DIRECT here (tmpfs): buffered from now on
    direct_ok_ = false;
    fd = ::open(temp.c_str(), flags & ~O_DIRECT, 0600);
  }
  if (fd < 0) return Errno("create " + temp);

  Status s = direct ? WriteDirect(fd, bytes, temp) : WriteAll(fd, bytes, temp);
  if (s.ok() && durable && ::fsync(fd) != 0) s = Errno("fsync " + temp);
  if (::close(fd) != 0 && s.ok()) s = Errno("close " + temp);
  if (s.ok() && ::rename(temp.c_str(), path.c_str()) != 0) s = Errno("rename " + temp + " to " + path);
  if (!s.ok()) {
    ::unlink(temp.c_str());  // best effort; List never shows dot-names anyway
    return s;
  }
  return durable ? SyncDirectory(dir) : Status::Ok();
}

Status DirectoryObjectStore::WriteDirect(int fd, std::string_view bytes, const std::string& temp) {
  auto buffered = [&](size_t from) {
    int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0 || ::fcntl(fd, F_SETFL, fl & ~O_DIRECT) != 0) return Errno("fcntl " + temp);
    return PwriteAll(fd, bytes.data() + from, bytes.size() - from, from, temp);
  };
  // Whole blocks from an aligned copy, direct; the last partial block
  // through the page cache.
  const size_t body = bytes.size() & ~(kDirectIoAlign - 1);
  thread_local AlignedBuffer aligned;
  std::span<char> buf = aligned.Get(body);
  if (buf.empty()) return buffered(0);
  std::memcpy(buf.data(), bytes.data(), body);
  Status s = PwriteAll(fd, buf.data(), body, 0, temp);
  if (s.code() == EINVAL) {  // the file system wants another alignment: buffered from now on
    direct_ok_ = false;
    return buffered(0);
  }
  if (!s.ok()) return s;
  return body == bytes.size() ? Status::Ok() : buffered(body);
}

Result<std::optional<std::string>> DirectoryObjectStore::ReadDirect(int fd, size_t size,
                                                                      const std::string& path) {
  // Large objects are read as they were written, around the page cache:
  // filling it with objects that a restore reads once cost more than the
  // reads themselves.
  thread_local AlignedBuffer aligned;
  const size_t want = (size + kDirectIoAlign - 1) & ~(kDirectIoAlign - 1);
  std::span<char> buf = aligned.Get(want);
  int dfd = buf.empty() ? -1 : ReopenDirect(fd, O_RDONLY);
  if (dfd < 0) {
    if (errno == EINVAL) direct_ok_ = false;
    return std::optional<std::string>();
  }
  size_t done = 0;
  // Whole blocks until a short one: the end of the file.
  while (done < want && done % kDirectIoAlign == 0) {
    ssize_t n = ::pread(dfd, buf.data() + done, want - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Status s = Errno("read " + path);
      ::close(dfd);
      if (s.code() != EINVAL) return s;
      direct_ok_ = false;  // the file system wants another alignment
      return std::optional<std::string>();
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(dfd);
  return std::optional<std::string>(std::in_place, buf.data(), std::min(done, size));
}

Result<std::string> DirectoryObjectStore::Read(std::string_view key, bool direct) {
  EBS_RETURN_IF_ERROR(ValidateObjectKey(key));
  const std::string path = PathOf(key);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT || errno == ENOTDIR) return Status::NotFound("object '" + std::string(key) + "' not found");
    return Errno("open " + path);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    Status s = Errno("stat " + path);
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::NotFound("object '" + std::string(key) + "' not found (a prefix, not an object)");
  }
  if (direct && static_cast<size_t>(st.st_size) >= kDirectIoMin && direct_ok_.load(std::memory_order_relaxed)) {
    auto direct = ReadDirect(fd, static_cast<size_t>(st.st_size), path);
    if (!direct.ok() || direct->has_value()) {
      ::close(fd);
      if (!direct.ok()) return direct.status();
      return std::move(**direct);
    }
    // direct I/O is not possible here: read through the page cache
  }
  // Objects are immutable once renamed into place, so st_size is exact; the
  // loop still stops at EOF rather than trusting it.
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::read(fd, out.data() + done, out.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      Status s = Errno("read " + path);
      ::close(fd);
      return s;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  out.resize(done);
  return out;
}

Status DirectoryObjectStore::Delete(std::string_view key) {
  EBS_RETURN_IF_ERROR(ValidateObjectKey(key));
  const std::string path = PathOf(key);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT || errno == ENOTDIR || errno == EISDIR) return Status::Ok();  // no such object
    return Errno("delete " + path);
  }
  return SyncDirectory(DirName(path));
}

Result<uint64_t> DirectoryObjectStore::RemoveStaleTemporaries(int64_t min_age_seconds) {
  uint64_t removed = 0;
  EBS_RETURN_IF_ERROR(RemoveTemporaries(root_, true, ::time(nullptr) - min_age_seconds, &removed));
  return removed;
}

Result<bool> DirectoryObjectStore::Exists(std::string_view key) {
  EBS_RETURN_IF_ERROR(ValidateObjectKey(key));
  const std::string path = PathOf(key);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return false;
    return Errno("stat " + path);
  }
  return S_ISREG(st.st_mode);
}

Result<std::vector<std::string>> DirectoryObjectStore::List(std::string_view prefix) {
  if (!std::all_of(prefix.begin(), prefix.end(), IsKeyPrefixChar)) {
    return Status::InvalidArgument("invalid object key prefix '" + std::string(prefix) + "'");
  }
  // Start at the deepest directory the prefix names completely.
  size_t slash = prefix.rfind('/');
  std::string rel = slash == std::string_view::npos ? "" : std::string(prefix.substr(0, slash + 1));
  if (rel.find("/.") != std::string::npos || rel.starts_with(".") || rel.find("//") != std::string::npos ||
      rel.starts_with("/")) {
    return std::vector<std::string>{};  // no valid key has such a prefix
  }
  std::vector<std::string> keys;
  std::string start = rel.empty() ? root_ : root_ + "/" + rel.substr(0, rel.size() - 1);
  EBS_RETURN_IF_ERROR(Walk(start, rel, prefix, &keys));
  std::sort(keys.begin(), keys.end());
  return keys;
}

}  // namespace ebs::snapshot
