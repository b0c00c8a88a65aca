// The volume catalog: one RocksDB database in the data directory holding a
// record per volume. Writes are synced before they return.
// Thread-safe: RocksDB serialises concurrent use.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ebs/engine/status.h"
#include "ebs/engine/volume_record.h"

namespace rocksdb {
class DB;
}

namespace ebs {

class Catalog {
 public:
  // Opens or creates the database at `path`. A second opener gets EBUSY.
  static Result<std::unique_ptr<Catalog>> Open(const std::string& path);
  ~Catalog();

  Status Put(const VolumeRecord& record);
  // NotFound (ENOENT) when absent.
  Result<VolumeRecord> Get(const std::string& name);
  Result<std::vector<VolumeRecord>> List();
  Status Delete(const std::string& name);

 private:
  explicit Catalog(rocksdb::DB* db) : db_(db) {}
  rocksdb::DB* db_;
};

}  // namespace ebs
