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

#include "ebs/engine/chunk_source.h"
#include "ebs/engine/clock.h"
#include "ebs/engine/fault_spec.h"
#include "ebs/engine/image_writer.h"
#include "ebs/engine/key_service.h"
#include "ebs/engine/status.h"
#include "ebs/engine/volume.h"
#include "ebs/engine/volume_record.h"
#include "ebs/engine/volume_type.h"

namespace ebs {

class Catalog;
class ThrottleScheduler;

struct VolumeInfo {
  VolumeRecord record;
  int attachments = 0;
  // Lazy restore progress (record.initialization_state == "loading").
  uint64_t loaded_chunks = 0;
  uint64_t total_chunks = 0;
  // Reads that waited for a chunk to be fetched from the snapshot, and how
  // long in all (this server run, while the volume is open).
  uint64_t fetch_waits = 0;
  uint64_t fetch_wait_ns = 0;
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
  std::unique_ptr<ThrottleScheduler> scheduler_;         // under mu_; started on first attach
  std::unique_ptr<Catalog> catalog_;                     // under mu_
  std::unique_ptr<KeyService> keys_;
  std::map<std::string, std::shared_ptr<Volume>> open_;  // under mu_
  ChunkSourceFactory chunk_sources_;                     // under mu_
};

}  // namespace ebs
