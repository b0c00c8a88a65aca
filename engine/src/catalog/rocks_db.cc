#include "ebs/engine/rocks_db.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>

namespace ebs {

Result<std::unique_ptr<rocksdb::DB>> OpenRocksDb(const std::string& path, const std::string& what,
                                                 int max_open_files) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.max_open_files = max_open_files;
  options.keep_log_file_num = 2;
  // Two cores shared with the data path and the upload pipeline.
  options.max_background_jobs = 1;
  options.IncreaseParallelism(1);
  // Open table files on this thread: the default starts 16 threads at every
  // open, which a short command pays for again each time it runs.
  options.max_file_opening_threads = 1;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(options, path, &db);
  if (!s.ok()) {
    if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
      return Status::Busy(what + " " + path + " is open in another process: " + s.ToString());
    }
    return Status::IoError("open " + what + " " + path + ": " + s.ToString());
  }
  return std::unique_ptr<rocksdb::DB>(db);
}

}  // namespace ebs
