#include "snapshot_exports.h"

#include <cerrno>

#include <fmt/format.h>

#include "ebs/engine/size.h"
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

SnapshotExports::SnapshotExports(snapshot::SnapshotService* service) : service_(service) {
  service_->SetDeleteObserver([this](const std::string& id) { Deleted(id); });
}

SnapshotExports::~SnapshotExports() { service_->SetDeleteObserver(nullptr); }

std::vector<nbd::ProvidedExport> SnapshotExports::List() {
  std::vector<nbd::ProvidedExport> out;
  auto all = service_->ListCompleted();
  if (!all.ok()) return out;  // a reindex in progress: none this time
  for (const auto& r : *all) out.push_back(ToExport(r));
  return out;
}

std::optional<nbd::ProvidedExport> SnapshotExports::Find(const std::string& name) {
  if (name.rfind("snap-", 0) != 0) return std::nullopt;
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

void SnapshotExports::Deleted(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = open_.find(id);
  if (it == open_.end()) return;
  if (auto device = it->second.lock()) device->Close();
  open_.erase(it);
}

}  // namespace ebs::cli
