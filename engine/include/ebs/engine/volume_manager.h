// Owns a data directory: its lock, the catalog and the open volumes.
// Every volume operation (create, list, describe, delete, modify, attach)
// goes through here, whether the caller is the CLI or the server.
// Thread-safe.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "ebs/engine/block_device.h"
#include "ebs/engine/catalog.h"
#include "ebs/engine/change_tracker.h"
#include "ebs/engine/copy_on_write_layer.h"
#include "ebs/engine/clock.h"
#include "ebs/engine/fault_layer.h"
#include "ebs/engine/file_device.h"
#include "ebs/engine/hydration_layer.h"
#include "ebs/engine/image_writer.h"
#include "ebs/engine/key_service.h"
#include "ebs/engine/sector_cipher.h"
#include "ebs/engine/throttle_layer.h"
#include "ebs/engine/volume_metrics.h"
#include "ebs/engine/status.h"
#include "ebs/engine/volume_type.h"

namespace ebs {

class VolumeManager;

// An open volume: its I/O stack (metrics -> throttle -> [faults] ->
// copy-on-write -> [lazy loading] -> change tracking -> [encryption] ->
// data file), its counters and its
// throttle state. Shared by every attachment (NBD
// connection); stays open while the manager runs, so counters and credit
// balances outlive connections.
class Volume {
 public:
  const std::string& name() const { return name_; }
  BlockDevice& device() { return *device_; }
  VolumeMetrics& metrics() { return *metrics_; }
  ThrottleLayer* throttle() { return throttle_; }  // null with throttling off
  // What snapshots use: the chunks changed since the last cut, and the layer
  // that freezes writes for a cut and copies chunks out before they change.
  ChangeTracker& tracker() { return *tracker_; }
  CopyOnWriteLayer& copy_on_write() { return *copy_on_write_; }
  // Null unless the volume is being restored lazily.
  HydrationLayer* hydration() { return hydration_; }
  // Null unless the volume is encrypted: what its data file holds is this
  // cipher's output, so code that reads or writes the file directly
  // (snapshots, restores) goes through it.
  const std::shared_ptr<SectorCipher>& cipher() const { return cipher_; }
  // Reads `length` bytes at `offset` (4 KiB aligned) of the volume's content
  // as it is beneath the copy-on-write layer: the data file, decrypted for
  // an encrypted volume, and for a chunk a lazy restore has not loaded yet,
  // its content in the source snapshot (the data file still has a hole
  // there). Past the end of the file: zeros. What a snapshot reads. Blocking;
  // any thread but an event loop's. Safe for concurrent use.
  Status ReadStored(uint64_t offset, size_t length, char* buf) const;
  // Makes every write completed so far durable in the data file (fdatasync).
  Status SyncData() const;
  const std::string& id() const { return id_; }
  // Set when the volume was deleted while attached: users must stop using it.
  bool deleted() const { return deleted_.load(std::memory_order_acquire); }
  int attachments() const { return attachments_.load(); }

 private:
  friend class VolumeManager;
  friend class VolumeAttachment;
  std::string name_;
  std::string id_;
  std::unique_ptr<VolumeMetrics> metrics_;
  ThrottleLayer* throttle_ = nullptr;  // owned by the device stack
  std::shared_ptr<ChangeTracker> tracker_;
  CopyOnWriteLayer* copy_on_write_ = nullptr;  // owned by the device stack
  HydrationLayer* hydration_ = nullptr;        // owned by the device stack
  std::shared_ptr<SectorCipher> cipher_;
  std::shared_ptr<FileDevice> file_;  // the bottom of the stack
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
  // Lazy restore progress (record.initialization_state == "loading").
  uint64_t loaded_chunks = 0;
  uint64_t total_chunks = 0;
  std::string initialization_error;
  nlohmann::json ToJson() const;  // the describe document
};

// A lazy restore: the new volume loads its chunks from `snapshot` on demand
// and in the background (hydration_layer.h).
struct LazyRestore {
  uint32_t chunk_size = 0;
  double rate_mibps = 0;  // 0: as fast as it goes
};

// How a new volume comes to be (VolumeManager::Create).
struct CreateOptions {
  // The snapshot it is restored from; empty for a new, empty volume.
  std::string source_snapshot;
  // Restored lazily from source_snapshot (hydration_layer.h).
  std::optional<LazyRestore> lazy;
  // Encrypted at rest under a fresh data key.
  std::optional<EncryptionRequest> encryption;
  // The snapshot cut its change tracker counts from (VolumeRecord::last_cut),
  // written with the record: no crash leaves a restored volume without it.
  std::string last_cut;
  // An eager restore: the volume is created `creating` and nobody may open
  // it until FinishRestore; one whose restore never finished (the process
  // died) is removed by the next Open.
  bool restoring = false;
};

// Makes the chunk source of a lazily restored volume (the snapshot store
// registers one).
using ChunkSourceFactory = std::function<Result<std::shared_ptr<ChunkSource>>(const VolumeRecord& record)>;

struct ManagerOptions {
  // How long a modification stays `optimizing` (EBS takes minutes to hours).
  int64_t optimize_ms = 0;
  // Enforce each volume's IOPS and throughput limits. Off only for
  // benchmarks that measure the raw I/O path (`ebs serve --no-throttle`).
  bool throttle = true;
  // AWS's modification rate rule: at most 4 modifications per rolling 24 h,
  // each only after the previous one completed. Off by default.
  bool modification_rate_limit = false;
  const Clock* clock = SteadyClock::Default();
  // Where master keys live; empty: DATA_DIR/keys.
  std::string key_dir;
  // Test-only fault injection (`ebs serve --inject-fault`), per volume.
  std::vector<FaultSpec> faults;
};

class VolumeManager {
 public:
  // Takes the data directory's lock (EBUSY with the holder's pid if another
  // process has it), creating the directory (mode 0700) if needed. A data
  // directory other users can reach is made 0700, and refused (naming the
  // path and mode) when it cannot be; the entries directly in it, and in the
  // volume directory, the catalog and the key directory, lose group and
  // other access the same way (the store's contents are left to the store).
  static Result<std::unique_ptr<VolumeManager>> Open(const std::string& data_dir,
                                                     ManagerOptions options = {});
  ~VolumeManager();

  static Status ValidateName(const std::string& name);

  Result<VolumeInfo> Create(const std::string& name, const VolumeParams& params, const CreateOptions& options = {});
  // The eager restore into volume `name` (with this id; Create with
  // `restoring`) has written and synced all of its data: it becomes
  // available.
  Status FinishRestore(const std::string& name, const std::string& id);
  // The writer an eager restore fills volume `name` (this id, still
  // `creating`) with: its data file, through its cipher when encrypted.
  Result<std::unique_ptr<ImageWriter>> OpenRestoreWriter(const std::string& name, const std::string& id);
  Result<std::vector<VolumeInfo>> List();
  Result<VolumeInfo> Describe(const std::string& name);
  // Refuses a volume in use unless `force`; forced, its attachments see deleted().
  Status Delete(const std::string& name, bool force);
  Result<VolumeInfo> Modify(const std::string& name, const VolumeParams& params);
  // Opens the volume for I/O. EBUSY while an eager restore writes it.
  Result<std::unique_ptr<VolumeAttachment>> Attach(const std::string& name);
  // Opens the volume's I/O stack without attaching (no connection counted):
  // for snapshots, which cut and read a volume whether or not it is served.
  Result<std::shared_ptr<Volume>> OpenVolume(const std::string& name);
  // Opens every volume still loading from its snapshot, so loading goes on
  // in the background (the server calls it at start). Returns the first
  // failure after trying them all.
  Status OpenLoadingVolumes();
  void SetChunkSourceFactory(ChunkSourceFactory factory);
  // Records the snapshot cut the volume's tracker now counts from (for the
  // volume with this id: a volume deleted and re-created meanwhile is not
  // touched).
  Status SetLastCut(const std::string& name, const std::string& id, const std::string& cut);
  // The CloudWatch-style counters and the throttle's state (zeros for a
  // volume not opened since the manager started).
  Result<nlohmann::json> Stats(const std::string& name);
  // Every volume's stats, for the metrics endpoint.
  Result<std::vector<nlohmann::json>> AllStats();

  const std::string& data_dir() const { return data_dir_; }
  KeyService& keys() { return *keys_; }
  // An encrypted volume's cipher, its data key unsealed by its master key
  // (null for a plain volume); errors name the volume and the key.
  Result<std::shared_ptr<SectorCipher>> OpenCipher(const VolumeRecord& record);
  std::string DataFilePath(const std::string& id) const;
  // The change-tracking file beside the data file (change_tracker.h).
  std::string ChangesFilePath(const std::string& id) const;
  // The record of chunks loaded by a lazy restore (hydration_layer.h).
  std::string LoadedFilePath(const std::string& id) const;

 private:
  friend class VolumeAttachment;
  VolumeManager(std::string data_dir, int lock_fd, std::unique_ptr<Catalog> catalog,
                ManagerOptions options);
  void Detach(Volume* volume);
  Result<std::shared_ptr<Volume>> OpenLocked(const std::string& name);  // REQUIRES: mu_ held
  Status CleanOrphanFiles();
  // Removes volumes whose eager restore never finished (a crash): their data
  // is partial. REQUIRES: mu_ held or the manager not yet shared.
  Status RemoveInterruptedRestores();
  // Deletes the record and files of volume `r`. REQUIRES: mu_ held.
  Status RemoveLocked(const VolumeRecord& r);
  Status FinishInterruptedModifications();
  // Moves finished optimizations to completed. REQUIRES: mu_ held.
  Status AdvanceModifications(VolumeRecord* record);
  VolumeInfo InfoLocked(VolumeRecord record);
  // Applies a configuration change to an open volume's throttle.
  void ApplyLimits(Volume* volume, const Modification& m);
  nlohmann::json StatsLocked(const VolumeRecord& record);

  const std::string data_dir_;
  const int lock_fd_;
  const ManagerOptions options_;
  std::mutex mu_;
  std::unique_ptr<ThrottleScheduler> scheduler_;         // GUARDED_BY(mu_); started on first attach
  std::unique_ptr<Catalog> catalog_;                     // GUARDED_BY(mu_)
  std::unique_ptr<KeyService> keys_;
  std::map<std::string, std::shared_ptr<Volume>> open_;  // GUARDED_BY(mu_)
  ChunkSourceFactory chunk_sources_;                     // GUARDED_BY(mu_)
};

}  // namespace ebs
