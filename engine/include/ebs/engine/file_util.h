// Small file-system helpers shared by the engine's durable structures.
#pragma once

#include <string>

#include "ebs/engine/status.h"

namespace ebs {

// fsyncs a directory, making creations, renames and removals in it durable.
Status SyncDirectory(const std::string& dir);

}  // namespace ebs
