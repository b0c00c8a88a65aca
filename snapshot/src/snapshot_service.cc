// The facade: opens a store and runs one operation at a time through the
// units that do the work (snapshot/src: store_context, snapshot_create,
// lineage, images, store_audit, reindex, snapshot_commands).
#include "ebs/snapshot/snapshot_service.h"

#include <algorithm>

#include <fmt/format.h>

#include "ebs/engine/size.h"
#include "ebs/snapshot/directory_object_store.h"
#include "change_queries.h"
#include "images.h"
#include "lineage.h"
#include "records.h"
#include "snapshot_create.h"
#include "store_audit.h"
#include "store_context.h"

namespace ebs::snapshot {
namespace {

constexpr char kStoreConfigKey[] = "store.json";

}  // namespace

SnapshotService::SnapshotService()
    : ctx_(std::make_unique<StoreContext>()),
      lineages_(std::make_unique<Lineages>(*ctx_)),
      creator_(std::make_unique<SnapshotCreator>(*ctx_, *lineages_)),
      images_(std::make_unique<Images>(*ctx_)),
      audit_(std::make_unique<StoreAudit>(*ctx_, *lineages_)),
      changes_(std::make_unique<ChangeQueries>(*ctx_)) {}

Result<std::unique_ptr<SnapshotService>> SnapshotService::Open(const std::string& root, VolumeManager* volumes,
                                                               uint32_t chunk_size, int workers,
                                                               std::shared_ptr<ObjectStore> objects) {
  if (chunk_size != 0) EBS_RETURN_IF_ERROR(ValidateChunkSize(chunk_size));
  std::unique_ptr<SnapshotService> s(new SnapshotService());
  StoreContext& ctx = *s->ctx_;
  ctx.volumes = volumes;
  ctx.root = root;
  ctx.workers = std::max(1, workers);
  if (objects) {
    ctx.store = std::move(objects);
  } else {
    auto store = DirectoryObjectStore::Open(root);
    if (!store.ok()) return store.status();
    ctx.store = std::move(*store);
  }
  auto config = ctx.store->Get(kStoreConfigKey);
  if (config.ok()) {
    auto j = nlohmann::json::parse(*config, nullptr, false);
    if (j.is_discarded() || !j.contains("chunk_size")) return Status::IoError("corrupt store config in " + root);
    ctx.chunk_size = j["chunk_size"].get<uint32_t>();
    if (j.contains("id") && j["id"].is_string()) {
      ctx.store_id = j["id"].get<std::string>();
    } else {  // a store made before stores had ids
      ctx.store_id = "store-" + NewSnapshotId().substr(5);
      j["id"] = ctx.store_id;
      EBS_RETURN_IF_ERROR(ctx.store->Put(kStoreConfigKey, j.dump()));
    }
    if (chunk_size != 0 && chunk_size != ctx.chunk_size) {
      return Status::InvalidArgument(fmt::format("the snapshot store {} has chunk size {}, not {}: a store keeps the "
                                                 "chunk size it was created with",
                                                 root, FormatSize(ctx.chunk_size), FormatSize(chunk_size)));
    }
  } else if (config.status().code() == ENOENT) {
    ctx.chunk_size = chunk_size != 0 ? chunk_size : kDefaultChunkSize;
    ctx.store_id = "store-" + NewSnapshotId().substr(5);
    EBS_RETURN_IF_ERROR(ctx.store->Put(
        kStoreConfigKey,
        nlohmann::json{{"format", 1}, {"chunk_size", ctx.chunk_size}, {"id", ctx.store_id}}.dump()));
  } else {
    return config.status();
  }
  auto index = SnapshotIndex::Open(root + "/index");
  if (!index.ok()) return index.status();
  ctx.index = std::move(*index);
  EBS_RETURN_IF_ERROR(s->audit_->RecoverInterrupted());
  Images* images = s->images_.get();
  volumes->SetChunkSourceFactory([images](const VolumeRecord& v) { return images->ChunkSourceFor(v); });
  return s;
}

SnapshotService::~SnapshotService() {
  if (ctx_->volumes != nullptr) ctx_->volumes->SetChunkSourceFactory(nullptr);
}

uint32_t SnapshotService::chunk_size() const { return ctx_->chunk_size; }

Status SnapshotService::ResumeLoading() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    images_->set_serving(true);
  }
  return ctx_->volumes->OpenLoadingVolumes();
}

Result<std::vector<SnapshotRecord>> SnapshotService::Create(const std::vector<std::string>& volumes,
                                                            const std::string& description) {
  std::lock_guard<std::mutex> lock(mu_);
  return creator_->Create(volumes, description);
}

Result<std::vector<SnapshotRecord>> SnapshotService::List() {
  std::lock_guard<std::mutex> lock(mu_);
  return ctx_->index->ListSnapshots();
}

Result<SnapshotRecord> SnapshotService::Describe(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return ctx_->index->GetSnapshot(id);  // ENOENT names the missing snapshot
}

Result<VolumeInfo> SnapshotService::Restore(const std::string& id, const std::string& volume, VolumeParams params,
                                            std::optional<double> lazy_rate_mibps,
                                            std::optional<EncryptionRequest> encryption) {
  std::lock_guard<std::mutex> lock(mu_);
  return images_->Restore(id, volume, std::move(params), lazy_rate_mibps, std::move(encryption));
}

Result<nlohmann::json> SnapshotService::Export(const std::string& id, const std::string& file, bool force) {
  std::lock_guard<std::mutex> lock(mu_);
  return images_->Export(id, file, force);
}

Result<SnapshotRecord> SnapshotService::Import(const std::string& file, const std::string& name,
                                               const std::string& description) {
  std::lock_guard<std::mutex> lock(mu_);
  return creator_->Import(file, name, description);
}

Result<nlohmann::json> SnapshotService::Diff(const std::string& from, const std::string& to, bool with_ranges) {
  std::lock_guard<std::mutex> lock(mu_);
  return lineages_->Diff(from, to, with_ranges);
}

Result<nlohmann::json> SnapshotService::Verify(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return audit_->Verify(id);
}

Result<nlohmann::json> SnapshotService::Delete(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (delete_observer_) {
    auto r = ctx_->index->GetSnapshot(id);
    if (r.ok() && r->state == SnapshotState::kCompleted) delete_observer_(id);
  }
  return lineages_->Delete(id);
}

Result<nlohmann::json> SnapshotService::Reindex(bool force) {
  std::lock_guard<std::mutex> lock(mu_);
  std::unique_lock<std::shared_mutex> swap(index_swap_);
  return audit_->Reindex(force);
}

namespace {

// Runs `read` under a shared hold of `swap` if one can be had at once, else
// fails with EAGAIN: the readers for event loops never wait for a reindex.
template <typename F>
auto NowOrBusy(std::shared_mutex& swap, F&& read) -> decltype(read()) {
  std::shared_lock<std::shared_mutex> hold(swap, std::try_to_lock);
  if (!hold.owns_lock()) return Status::Error(EAGAIN, "the snapshot index is being rebuilt (store reindex); try again");
  return read();
}

}  // namespace

Result<std::vector<SnapshotRecord>> SnapshotService::ListCompleted() {
  return NowOrBusy(index_swap_, [&]() -> Result<std::vector<SnapshotRecord>> {
    auto all = ctx_->index->ListSnapshots();
    if (!all.ok()) return all.status();
    std::vector<SnapshotRecord> out;
    for (auto& r : *all) {
      if (r.state == SnapshotState::kCompleted) out.push_back(std::move(r));
    }
    return out;
  });
}

Result<SnapshotRecord> SnapshotService::FindCompleted(const std::string& id) {
  return NowOrBusy(index_swap_, [&]() -> Result<SnapshotRecord> {
    auto r = ctx_->index->GetSnapshot(id);
    if (!r.ok()) return r.status();
    if (r->state != SnapshotState::kCompleted) return Status::NotFound("snapshot " + id + " is not completed");
    return r;
  });
}

Result<SnapshotImage> SnapshotService::OpenImage(const std::string& id) {
  return NowOrBusy(index_swap_, [&] { return images_->OpenImage(id); });
}

Result<std::vector<std::string>> SnapshotService::BitmapsOfSnapshot(const std::string& id) {
  return NowOrBusy(index_swap_, [&] { return changes_->BitmapsOfSnapshot(id); });
}

Result<std::vector<std::string>> SnapshotService::BitmapsOfVolume(const VolumeRecord& v) {
  return NowOrBusy(index_swap_, [&] { return changes_->BitmapsOfVolume(v); });
}

Result<std::vector<uint64_t>> SnapshotService::ChangedChunks(const std::string& from, const std::string& to) {
  return NowOrBusy(index_swap_, [&] { return changes_->Changed(from, to); });
}

Result<std::optional<std::vector<uint64_t>>> SnapshotService::ChangedSinceLastCut(const VolumeRecord& v,
                                                                                  const std::string& from) {
  return NowOrBusy(index_swap_, [&] { return changes_->ChangedSinceCut(v, from); });
}

void SnapshotService::SetDeleteObserver(std::function<void(const std::string& id)> observer) {
  std::lock_guard<std::mutex> lock(mu_);
  delete_observer_ = std::move(observer);
}

Result<nlohmann::json> SnapshotService::Gc() {
  std::lock_guard<std::mutex> lock(mu_);
  return audit_->Gc();
}

Result<nlohmann::json> SnapshotService::Check() {
  std::lock_guard<std::mutex> lock(mu_);
  return audit_->Check();
}

}  // namespace ebs::snapshot
