// LD_PRELOAD shim for programs under the power-cut simulation: syncfs(fd) on
// a powercut_fs mount becomes its POWERCUT_IOC_SYNCFS ioctl (which makes the
// whole file system durable, as syncfs does on a local file system); on any
// other file system it is the real syncfs. After a cut the ioctl fails with
// EIO, and so does syncfs, as it would on a dead disk.
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "powercut_ioctl.h"

extern "C" int syncfs(int fd) {
  struct statfs st {};
  if (fstatfs(fd, &st) == 0 && static_cast<unsigned long>(st.f_type) == POWERCUT_FUSE_SUPER_MAGIC) {
    if (ioctl(fd, POWERCUT_IOC_SYNCFS) == 0) return 0;
    // Another FUSE file system does not know the ioctl: the real syncfs.
    if (errno != ENOTTY && errno != ENOSYS && errno != EINVAL && errno != EOPNOTSUPP) return -1;
  }
  return static_cast<int>(syscall(SYS_syncfs, fd));
}
