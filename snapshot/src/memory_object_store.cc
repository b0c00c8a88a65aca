#include "ebs/snapshot/memory_object_store.h"

#include <cctype>

namespace ebs::snapshot {

Status MemoryObjectStore::Put(std::string_view key, std::string_view bytes) {
  EBS_RETURN_IF_ERROR(ValidateObjectKey(key));
  std::lock_guard<std::mutex> lock(mu_);
  objects_[std::string(key)] = std::string(bytes);
  return Status::Ok();
}

Result<std::string> MemoryObjectStore::Get(std::string_view key) {
  EBS_RETURN_IF_ERROR(ValidateObjectKey(key));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = objects_.find(key);
  if (it == objects_.end()) return Status::NotFound("no object " + std::string(key));
  return it->second;
}

Status MemoryObjectStore::Delete(std::string_view key) {
  EBS_RETURN_IF_ERROR(ValidateObjectKey(key));
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = objects_.find(key); it != objects_.end()) objects_.erase(it);
  return Status::Ok();
}

Result<bool> MemoryObjectStore::Exists(std::string_view key) {
  EBS_RETURN_IF_ERROR(ValidateObjectKey(key));
  std::lock_guard<std::mutex> lock(mu_);
  return objects_.find(key) != objects_.end();
}

Result<std::vector<std::string>> MemoryObjectStore::List(std::string_view prefix) {
  for (char c : prefix) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-' && c != '/') {
      return Status::InvalidArgument("invalid object key prefix '" + std::string(prefix) + "'");
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (auto it = objects_.lower_bound(prefix); it != objects_.end() && it->first.starts_with(prefix); ++it) {
    out.push_back(it->first);
  }
  return out;
}

size_t MemoryObjectStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return objects_.size();
}

}  // namespace ebs::snapshot
