// The store's completed snapshots as read-only NBD exports of `ebs serve`,
// each named by its id and read in place through a ChunkSourceDevice (no
// volume is created). Connections to one snapshot share one device, so they
// share its cache. A snapshot being deleted closes its device first: its
// connections end with ESHUTDOWN, and it is gone from LIST. It also gives
// volume and snapshot exports their dirty bitmaps.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "ebs/engine/chunk_source_device.h"
#include "ebs/nbd/export_provider.h"
#include "ebs/snapshot/snapshot_service.h"

namespace ebs::cli {

class SnapshotExports final : public nbd::ExportProvider {
 public:
  // Registers itself as `service`'s delete observer; `service` must outlive
  // it, and it must outlive the server it is given to.
  // `export_snapshots` false (--no-snapshot-exports): no snapshot is an
  // export, but volume exports keep their dirty bitmaps.
  SnapshotExports(snapshot::SnapshotService* service, VolumeManager* volumes, bool export_snapshots);
  ~SnapshotExports() override;

  std::vector<nbd::ProvidedExport> List() override;
  std::optional<nbd::ProvidedExport> Find(const std::string& name) override;
  Result<nbd::OpenedExport> Open(const std::string& name) override;
  // qemu:dirty-bitmap:SNAP-ID on volume and snapshot exports (dirty_bitmaps.h).
  std::vector<std::string> Bitmaps(const std::string& name) override;
  Result<std::unique_ptr<nbd::ChangeMap>> OpenBitmap(const std::string& name, Volume* volume,
                                                     const std::string& bitmap) override;

 private:
  void Deleted(const std::string& id);

  snapshot::SnapshotService* const service_;
  VolumeManager* const volumes_;
  const bool export_snapshots_;
  std::mutex mu_;
  // Devices open now, by snapshot id; expired once no connection holds one.
  std::unordered_map<std::string, std::weak_ptr<ChunkSourceDevice>> open_;  // under mu_
};

// "snapshot of volume 'db' (vol-...) at 2026-12-07T21:04:00.000Z, 1 GiB"
std::string DescribeSnapshotExport(const snapshot::SnapshotRecord& r);

}  // namespace ebs::cli
