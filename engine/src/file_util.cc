#include "ebs/engine/file_util.h"

#include <fcntl.h>
#include <unistd.h>

namespace ebs {

Status SyncDirectory(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + dir);
  int rc = fsync(fd);
  int err = errno;
  ::close(fd);
  return rc == 0 ? Status::Ok() : Status::FromErrno(err, "fsync " + dir);
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
