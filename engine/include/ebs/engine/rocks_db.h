// Opening the project's small RocksDB databases (the volume catalog, the
// snapshot index) with one set of options: a footprint fit for a two-core
// host that shares its CPU with the data path, and a lock held by another
// process reported as Busy.
#pragma once

#include <memory>
#include <string>

#include "ebs/engine/status.h"

namespace rocksdb {
class DB;
}

namespace ebs {

// Opens (creating if missing) the database at `path`; `what` names it in
// errors ("catalog", "snapshot index"). `max_open_files` bounds its table
// files kept open.
Result<std::unique_ptr<rocksdb::DB>> OpenRocksDb(const std::string& path, const std::string& what,
                                                 int max_open_files);

}  // namespace ebs
