#include "ebs/engine/file_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace ebs {

Status SyncDirectory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + dir);
  int rc = fsync(fd);
  int err = errno;
  ::close(fd);
  return rc == 0 ? Status::Ok() : Status::FromErrno(err, "fsync " + dir);
}

Status MakeDurableDirectories(const std::string& path, mode_t mode) {
  if (path.empty()) return Status::InvalidArgument("directory path is empty");
  std::string clean = path;
  while (clean.size() > 1 && clean.back() == '/') clean.pop_back();
  for (size_t pos = 1; pos <= clean.size(); ++pos) {
    if (pos != clean.size() && clean[pos] != '/') continue;
    const std::string dir = clean.substr(0, pos);
    if (::mkdir(dir.c_str(), mode) == 0) {
      const size_t slash = dir.rfind('/');
      const std::string parent = slash == std::string::npos ? "." : slash == 0 ? "/" : dir.substr(0, slash);
      EBS_RETURN_IF_ERROR(SyncDirectory(parent));
    } else if (errno != EEXIST) {
      return Status::FromErrno(errno, "mkdir " + dir);
    }
  }
  struct stat st {};
  if (::stat(clean.c_str(), &st) != 0) return Status::FromErrno(errno, "stat " + clean);
  if (!S_ISDIR(st.st_mode)) return Status::Error(ENOTDIR, clean + " exists and is not a directory");
  return Status::Ok();
}

Status WriteAll(int fd, std::string_view bytes, const std::string& path) {
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "write " + path);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

void AdviseBlockAccess(int fd) { (void)posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM); }

Status PwriteVolumeData(int fd, const void* buf, size_t n, uint64_t off, const std::string& path) {
  const char* p = static_cast<const char*>(buf);
  for (size_t done = 0; done < n;) {
    const size_t piece = std::min(n - done, kDataWritePiece);
    EBS_RETURN_IF_ERROR(PwriteAll(fd, p + done, piece, off + done, path));
    done += piece;
  }
  return Status::Ok();
}

int ReopenDirect(int fd, int flags) {
  return ::open(("/proc/self/fd/" + std::to_string(fd)).c_str(), flags | O_DIRECT | O_CLOEXEC);
}

Status PwriteAll(int fd, const void* buf, size_t n, uint64_t off, const std::string& path) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "write " + path);
    }
    if (w == 0) return Status::IoError("write " + path + ": no progress");
    p += w;
    n -= static_cast<size_t>(w);
    off += static_cast<uint64_t>(w);
  }
  return Status::Ok();
}

namespace {

// The error for a mode that stays open to other users: says what, where, how
// open, whose, and what to do.
Status NotPrivate(const std::string& what, const std::string& path, const struct stat& st, int err) {
  std::string owner = st.st_uid == ::geteuid() ? "" : fmt::format(", owned by uid {}", st.st_uid);
  return Status::Error(err, fmt::format("{} {} is mode {:04o}{}: other users may read it, and ebs cannot make it "
                                        "{:04o} ({}); chmod go-rwx it, or use another path",
                                        what, path, st.st_mode & 07777, owner, st.st_mode & 0700, std::strerror(err)));
}

}  // namespace

Status MakePrivate(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return Status::FromErrno(errno, "stat " + what + " " + path);
  if ((st.st_mode & 077) == 0) return Status::Ok();
  if (::chmod(path.c_str(), st.st_mode & 0700) != 0) return NotPrivate(what, path, st, errno);
  return Status::Ok();
}

Status MakeDirectoryPrivate(const std::string& dir, const std::string& what) {
  EBS_RETURN_IF_ERROR(MakePrivate(dir, what));
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return Status::FromErrno(errno, "open " + what + " " + dir);
  Status status;
  while (struct dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    struct stat st {};
    if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;  // removed meanwhile
      status = Status::FromErrno(errno, "stat " + dir + "/" + e->d_name);
      break;
    }
    if (S_ISLNK(st.st_mode) || (st.st_mode & 077) == 0) continue;
    if (::fchmodat(::dirfd(d), e->d_name, st.st_mode & 0700, 0) != 0 && errno != ENOENT) {
      status = NotPrivate("file in " + what, dir + "/" + e->d_name, st, errno);
      break;
    }
  }
  ::closedir(d);
  return status;
}

Status ValidateName(const std::string& what, const std::string& name) {
  // Safe as a file name and in a URI.
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); };
  bool ok = !name.empty() && name.size() <= 64 && alnum(name[0]);
  for (size_t i = 1; ok && i < name.size(); ++i) {
    ok = alnum(name[i]) || name[i] == '.' || name[i] == '_' || name[i] == '-';
  }
  if (!ok) {
    return Status::InvalidArgument("InvalidParameterValue: " + what + " '" + name +
                                   "' must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}");
  }
  return Status::Ok();
}

}  // namespace ebs
