// Small file-system helpers shared by the engine's durable structures.
#pragma once

#include <string>

#include "ebs/engine/status.h"

namespace ebs {

// fsyncs a directory, making creations, renames and removals in it durable.
Status SyncDirectory(const std::string& dir);

// Names that become file names and URI parts (volumes, keys):
// [A-Za-z0-9][A-Za-z0-9._-]{0,63}. `what` names the kind in the error
// ("volume name", "key name").
Status ValidateName(const std::string& what, const std::string& name);

}  // namespace ebs
