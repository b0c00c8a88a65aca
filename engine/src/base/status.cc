#include "ebs/engine/status.h"

#include <cstring>

namespace ebs {

Status Status::FromErrno(int err, const std::string& context) {
  if (err < 0) err = -err;
  if (err == 0) return Status::Ok();
  return Status(err, context + ": " + std::strerror(err));
}

}  // namespace ebs
