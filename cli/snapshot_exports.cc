#include "snapshot_exports.h"

#include <cerrno>

#include <fmt/format.h>

#include "ebs/engine/size.h"
#include "dirty_bitmaps.h"
#include "ebs/engine/time.h"

namespace ebs::cli {
namespace {

nbd::ProvidedExport ToExport(const snapshot::SnapshotRecord& r) {
  return nbd::ProvidedExport{nbd::ExportInfo{r.id, DescribeSnapshotExport(r), r.volume_size, /*read_only=*/true},
                             r.volume_name};
}

}  // namespace

std::string DescribeSnapshotExport(const snapshot::SnapshotRecord& r) {
  return fmt::format("snapshot of volume '{}' ({}) at {}, {}", r.volume_name, r.volume_id, FormatTime(r.created_at_ms),
                     FormatSize(r.volume_size));
}

SnapshotExports::SnapshotExports(snapshot::SnapshotService* service, VolumeManager* volumes,
                                 bool export_snapshots)
    : service_(service), volumes_(volumes), export_snapshots_(export_snapshots) {
  service_->SetDeleteObserver([this](const std::string& id) { Deleted(id); });
}

SnapshotExports::~SnapshotExports() { service_->SetDeleteObserver(nullptr); }

std::vector<nbd::ProvidedExport> SnapshotExports::List() {
  std::vector<nbd::ProvidedExport> out;
  if (!export_snapshots_) return out;
  auto all = service_->ListCompleted();
  if (!all.ok()) return out;  // a reindex in progress: none this time
  for (const auto& r : *all) out.push_back(ToExport(r));
  return out;
}

std::optional<nbd::ProvidedExport> SnapshotExports::Find(const std::string& name) {
  if (!export_snapshots_ || name.rfind("snap-", 0) != 0) return std::nullopt;
  auto r = service_->FindCompleted(name);
  if (!r.ok()) return std::nullopt;
  return ToExport(*r);
}

Result<nbd::OpenedExport> SnapshotExports::Open(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  std::shared_ptr<ChunkSourceDevice> device;
  if (auto it = open_.find(name); it != open_.end()) device = it->second.lock();
  if (device == nullptr || device->closed()) {
    auto image = service_->OpenImage(name);
    if (!image.ok()) return image.status();
    ChunkSourceDevice::Options options;
    options.size = image->record.volume_size;
    options.chunk_size = image->record.chunk_size;
    device = std::make_shared<ChunkSourceDevice>(image->chunks, options);
    // Forget the devices no connection holds any more.
    std::erase_if(open_, [](const auto& e) { return e.second.expired(); });
    open_[name] = device;
  }
  std::weak_ptr<ChunkSourceDevice> weak = device;
  return nbd::OpenedExport{device, [weak] {
                             auto d = weak.lock();
                             return d == nullptr || d->closed();
                           }};
}

std::vector<std::string> SnapshotExports::Bitmaps(const std::string& name) {
  auto v = volumes_->Describe(name);
  if (!v.ok() && !export_snapshots_) return {};
  auto ids = v.ok() ? service_->BitmapsOfVolume(v->record) : service_->BitmapsOfSnapshot(name);
  if (!ids.ok()) return {};
  return std::move(*ids);
}

Result<std::unique_ptr<nbd::ChangeMap>> SnapshotExports::OpenBitmap(const std::string& name, Volume* volume,
                                                                    const std::string& bitmap) {
  if (volume != nullptr) return VolumeChangeMap(service_, name, volume, bitmap);
  auto to = service_->FindCompleted(name);
  if (!to.ok()) return to.status();
  auto chunks = service_->ChangedChunks(bitmap, name);
  if (!chunks.ok()) return chunks.status();
  return FixedChangeMap(std::move(*chunks), to->chunk_size, to->volume_size);
}

void SnapshotExports::Deleted(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = open_.find(id);
  if (it == open_.end()) return;
  if (auto device = it->second.lock()) device->Close();
  open_.erase(it);
}

}  // namespace ebs::cli
