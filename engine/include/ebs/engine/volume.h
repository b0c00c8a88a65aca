// An open volume: its I/O stack (engine/src/catalog/volume_stack.cc has the
// layers and their order), its counters and its throttle state. Shared by
// every attachment (NBD connection); stays open while the volume manager
// runs, so counters and credit balances outlive connections.
//
// The volume stack is the only way to a volume's bytes: clients go through
// device(); a snapshot takes its cut and reads what it needs through the
// methods below, which apply the volume's cipher and a lazy restore's source
// so no caller has to.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "ebs/engine/block_device.h"
#include "ebs/engine/change_set.h"
#include "ebs/engine/copy_out_session.h"
#include "ebs/engine/status.h"
#include "ebs/engine/volume_metrics.h"

namespace ebs {

class ChangeTracker;
class CopyOnWriteLayer;
class FileDevice;
class HydrationLayer;
class SectorCipher;
class ThrottleLayer;
class VolumeManager;

class Volume {
 public:
  const std::string& name() const { return name_; }
  const std::string& id() const { return id_; }
  BlockDevice& device() { return *device_; }
  VolumeMetrics& metrics() { return *metrics_; }
  // Set when the volume was deleted while attached: users must stop using it.
  bool deleted() const { return deleted_.load(std::memory_order_acquire); }
  int attachments() const { return attachments_.load(); }

  // --- Snapshots (blocking: control or worker threads, never a loop's) ---
  // Holds new writes, trims and write-zeroes and returns once none is in
  // flight below: the instant of a cut. REQUIRES: not frozen.
  void FreezeWrites();
  // Lets them go; with `session`, writes to chunks it still guards hand the
  // old content over first, until DetachCopyOut. REQUIRES: frozen.
  void ThawWrites(std::shared_ptr<CopyOutSession> session);
  void DetachCopyOut();
  // The chunks changed since the last cut (change tracking), and starting
  // a new epoch; CommitCut once the snapshot is durable, AbortCut if it
  // failed (its marks come back). REQUIRES: writes frozen for CutChanges.
  Result<ChangeSet> CutChanges();
  Status CommitCut(uint64_t generation);
  Status AbortCut(uint64_t generation);
  // Every chunk changed since the last committed cut (cuts still pending
  // included), at the tracker's chunk size. Safe on any thread; a copy.
  ChangeSet UnsnapshottedChanges() const;
  // The record's last_cut as of now (VolumeManager keeps it in step), read
  // without the manager's lock: for an event loop. Safe on any thread.
  std::string last_cut() const {
    std::lock_guard<std::mutex> lock(last_cut_mu_);
    return last_cut_;
  }
  // The snapshot the volume was restored from ("" if none), fixed.
  const std::string& source_snapshot() const { return source_snapshot_; }
  // A lazy restore still loading: a chunk not loaded yet holds the source's
  // content (and has not been written since the restore).
  bool Loading() const;
  // The volume is loading and no chunk overlapping the range is loaded yet:
  // the range holds its source's content, and nothing has written it since
  // the restore (a write loads its chunks first).
  bool Untouched(uint64_t offset, uint64_t length) const;
  // Reads `length` bytes at `offset` (4 KiB aligned) of the volume's content
  // as it is beneath the copy-on-write layer: the data file, decrypted for
  // an encrypted volume, and for a chunk a lazy restore has not loaded yet,
  // its content in the source snapshot (the data file still has a hole
  // there). Past the end of the file: zeros. Safe for concurrent use.
  Status ReadStored(uint64_t offset, size_t length, char* buf) const;
  // Makes every write completed so far durable in the data file (fdatasync).
  Status SyncData() const;

  // --- The layers, for the engine and its tests (internal headers) ---
  ThrottleLayer* throttle() { return throttle_; }  // null with throttling off
  ChangeTracker& tracker() { return *tracker_; }
  CopyOnWriteLayer& copy_on_write() { return *copy_on_write_; }
  HydrationLayer* hydration() { return hydration_; }  // null unless loading lazily
  const std::shared_ptr<SectorCipher>& cipher() const { return cipher_; }  // null unless encrypted

 private:
  friend class VolumeManager;
  friend class VolumeAttachment;
  friend class VolumeStackBuilder;
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
  std::string source_snapshot_;
  mutable std::mutex last_cut_mu_;
  std::string last_cut_;  // under last_cut_mu_
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

}  // namespace ebs
