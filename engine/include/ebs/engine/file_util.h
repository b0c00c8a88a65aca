// Small file-system helpers shared by the engine's durable structures.
#pragma once

#include <string>
#include <string_view>

#include "ebs/engine/status.h"

namespace ebs {

// fsyncs a directory, making creations, renames and removals in it durable.
Status SyncDirectory(const std::string& dir);

// Writes all of `bytes` to `fd`, retrying short writes and EINTR; errors
// name `path`. A short write is not an error: the next write says why it
// stopped (ENOSPC on a full disk).
Status WriteAll(int fd, std::string_view bytes, const std::string& path);

// Names that become file names and URI parts (volumes, keys):
// [A-Za-z0-9][A-Za-z0-9._-]{0,63}. `what` names the kind in the error
// ("volume name", "key name").
Status ValidateName(const std::string& what, const std::string& name);

}  // namespace ebs
