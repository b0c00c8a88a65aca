#include <cerrno>

#include "ebs/nbd/protocol.h"

namespace ebs::nbd {

uint32_t ToWireError(int err) {
  switch (err) {
    case 0:
      return 0;
    case EPERM:
    case EROFS:
      return kEperm;
    case ENOMEM:
      return kEnomem;
    case EINVAL:
      return kEinval;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return kEnospc;
    case EOVERFLOW:
      return kEoverflow;
    case EOPNOTSUPP:
      return kEnotsup;
    case ESHUTDOWN:
      return kEshutdown;
    default:
      return kEio;
  }
}

}  // namespace ebs::nbd
