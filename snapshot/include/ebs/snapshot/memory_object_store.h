// An ObjectStore in memory: the contract of object_store.h without a disk.
// For tests of what sits above the store (the lineage rules) and for
// counting what an operation reads and writes. Thread-safe.
#pragma once

#include <map>
#include <mutex>
#include <string>

#include "ebs/snapshot/object_store.h"

namespace ebs::snapshot {

class MemoryObjectStore final : public ObjectStore {
 public:
  Status Put(std::string_view key, std::string_view bytes) override;
  Result<std::string> Get(std::string_view key) override;
  Status Delete(std::string_view key) override;
  Result<bool> Exists(std::string_view key) override;
  Result<std::vector<std::string>> List(std::string_view prefix) override;

  size_t size() const;  // objects held

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::string, std::less<>> objects_;  // under mu_
};

}  // namespace ebs::snapshot
