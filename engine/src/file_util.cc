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

}  // namespace ebs
