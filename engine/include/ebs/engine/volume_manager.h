// Owns a data directory: its lock, the catalog and the open volumes.
// Every volume operation (create, list, describe, delete, modify, attach)
// goes through here, whether the caller is the CLI or the server.
// Thread-safe.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ebs/engine/block_device.h"
#include "ebs/engine/catalog.h"
#include "ebs/engine/status.h"
#include "ebs/engine/volume_type.h"

namespace ebs {

class VolumeManager;

// An open volume: its I/O stack and its live configuration. Shared by every
// attachment (NBD connection) of the volume.
class Volume {
 public:
  const std::string& name() const { return name_; }
  BlockDevice& device() { return *device_; }
  // Set when the volume was deleted while attached: users must stop using it.
  bool deleted() const { return deleted_.load(std::memory_order_acquire); }
  int attachments() const { return attachments_.load(); }

 private:
  friend class VolumeManager;
  friend class VolumeAttachment;
  std::string name_;
  std::shared_ptr<BlockDevice> device_;
  std::atomic<bool> deleted_{false};
  std::atomic<int> attachments_{0};
};

// One user of a volume. Destroying it detaches.
class VolumeAttachment {
 public:
  VolumeAttachment(VolumeManager* manager, std::shared_ptr<Volume> volume);
  ~VolumeAttachment();
  VolumeAttachment(const VolumeAttachment&) = delete;
  VolumeAttachment& operator=(const VolumeAttachment&) = delete;
  Volume& volume() { return *volume_; }

 private:
  VolumeManager* manager_;
  std::shared_ptr<Volume> volume_;
};

struct VolumeInfo {
  VolumeRecord record;
  int attachments = 0;
  nlohmann::json ToJson() const;  // the describe document
};

struct ManagerOptions {
  // How long a modification stays `optimizing` (EBS takes minutes to hours).
  int64_t optimize_ms = 0;
};

class VolumeManager {
 public:
  // Takes the data directory's lock (EBUSY with the holder's pid if another
  // process has it), creating the directory (mode 0700) if needed.
  static Result<std::unique_ptr<VolumeManager>> Open(const std::string& data_dir,
                                                     ManagerOptions options = {});
  ~VolumeManager();

  static Status ValidateName(const std::string& name);

  Result<VolumeInfo> Create(const std::string& name, const VolumeParams& params,
                            const std::string& source_snapshot = "");
  Result<std::vector<VolumeInfo>> List();
  Result<VolumeInfo> Describe(const std::string& name);
  // Refuses a volume in use unless `force`; forced, its attachments see deleted().
  Status Delete(const std::string& name, bool force);
  Result<VolumeInfo> Modify(const std::string& name, const VolumeParams& params);
  // Opens the volume for I/O.
  Result<std::unique_ptr<VolumeAttachment>> Attach(const std::string& name);

  const std::string& data_dir() const { return data_dir_; }
  std::string DataFilePath(const std::string& id) const;

 private:
  friend class VolumeAttachment;
  VolumeManager(std::string data_dir, int lock_fd, std::unique_ptr<Catalog> catalog,
                ManagerOptions options);
  void Detach(Volume* volume);
  Status CleanOrphanFiles();
  // Moves finished optimizations to completed. REQUIRES: mu_ held.
  Status AdvanceModifications(VolumeRecord* record);
  VolumeInfo InfoLocked(VolumeRecord record);

  const std::string data_dir_;
  const int lock_fd_;
  const ManagerOptions options_;
  std::mutex mu_;
  std::unique_ptr<Catalog> catalog_;                     // GUARDED_BY(mu_)
  std::map<std::string, std::shared_ptr<Volume>> open_;  // GUARDED_BY(mu_)
};

}  // namespace ebs
