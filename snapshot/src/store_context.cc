#include "store_context.h"

#include <fmt/format.h>

#include "records.h"

namespace ebs::snapshot {

void ObjectPins::BeginPut(const ContentHash& hash) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !putting_.contains(hash); });
  putting_.insert(hash);
  ++pinned_[hash];
}

void ObjectPins::EndPut(const ContentHash& hash) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    putting_.erase(hash);
  }
  cv_.notify_all();
}

void ObjectPins::Pin(const ContentHash& hash) {
  std::lock_guard<std::mutex> lock(mu_);
  ++pinned_[hash];
}

void ObjectPins::Unpin(const ContentHash& hash) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pinned_.find(hash);
  if (it != pinned_.end() && --it->second == 0) pinned_.erase(it);
}

Status ObjectPins::DeleteUnused(ObjectStore& store, SnapshotIndex* index, const ContentHash& hash) {
  // Under mu_: a worker pins before it looks, so it either sees the object
  // gone (and stores it again) or has pinned it before this check.
  std::lock_guard<std::mutex> lock(mu_);
  if (pinned_.count(hash) || putting_.count(hash)) return Status::Ok();
  if (index != nullptr) {
    auto refs = index->RefCount(hash);
    if (!refs.ok()) return refs.status();
    if (*refs > 0) return Status::Ok();
  }
  return store.Delete(ChunkKey(hash));
}

Result<std::shared_ptr<const ChunkCrypto>> StoreContext::CryptoFor(const SnapshotRecord& r) const {
  if (r.key_id.empty()) return std::shared_ptr<const ChunkCrypto>();
  auto key = volumes->keys().LoadExpected(r.key_name, r.key_id);
  if (!key.ok()) {
    return Status::Error(key.status().code(),
                         "snapshot " + r.id + " is encrypted with key '" + r.key_name + "': " + key.status().message());
  }
  return std::shared_ptr<const ChunkCrypto>(std::make_shared<ChunkCrypto>(*key));
}

Status StoreContext::CheckManifest(const SnapshotRecord& r, const ChunkCrypto* crypto) {
  auto bytes = store->Get(ManifestKey(r.id));
  if (!bytes.ok()) return bytes.status();
  auto m = DecodeManifest(*bytes);
  if (!m.ok()) return m.status();
  if (m->snapshot_id != r.id || m->key_id != r.key_id) {
    return Status::IoError("manifest " + ManifestKey(r.id) + " is not snapshot " + r.id + "'s");
  }
  if (crypto != nullptr) return VerifyManifestMac(*bytes, *crypto);
  return Status::Ok();
}

Result<std::vector<DeltaEntry>> StoreContext::FullMap(const SnapshotRecord& r) {
  if (r.state != SnapshotState::kCompleted) {
    return Status::InvalidArgument("snapshot " + r.id + " is " + std::string(SnapshotStateName(r.state)) +
                                   ", not completed");
  }
  auto map = index->ChangedChunks(r.lineage, 0, r.seq);
  if (!map.ok()) return map.status();
  std::vector<DeltaEntry> out;
  for (const auto& e : *map) {
    if (!e.hash.IsZeroChunk()) out.push_back(e);
  }
  return out;
}

Result<std::pair<uint64_t, std::string>> StoreContext::Predecessor(const std::string& lineage, uint64_t seq) {
  auto members = index->ListLineage(lineage);
  if (!members.ok()) return members.status();
  const LineageMember* prev = nullptr;
  for (const auto& mbr : *members) {
    if (mbr.seq < seq && !mbr.retired) prev = &mbr;
  }
  if (prev == nullptr) return std::pair<uint64_t, std::string>(0, "");
  if (prev->base()) return std::pair<uint64_t, std::string>(prev->seq, prev->base_of);
  auto all = index->ListSnapshots();
  if (!all.ok()) return all.status();
  for (const auto& s : *all) {
    if (s.lineage == lineage && s.seq == prev->seq && s.state == SnapshotState::kCompleted) {
      return std::pair<uint64_t, std::string>(prev->seq, s.id);
    }
  }
  return std::pair<uint64_t, std::string>(prev->seq, "");
}

std::string StoreContext::CutName(const std::string& lineage, uint64_t seq, const std::string& snapshot) const {
  return snapshot.empty() ? fmt::format("{}/{}/{}", store_id, lineage, seq)
                          : fmt::format("{}/{}/{}", store_id, lineage, snapshot);
}

Result<std::set<std::string>> StoreContext::VolumeIds() {
  auto vols = volumes->List();
  if (!vols.ok()) return vols.status();
  std::set<std::string> ids;
  for (const auto& v : *vols) ids.insert(v.record.id);
  return ids;
}

Status StoreContext::DropUncommittedManifests(const SnapshotRecord& r) {
  EBS_RETURN_IF_ERROR(store->Delete(ManifestKey(r.id)));
  // A fork's base is written with its lineage's first snapshot and
  // committed in the same batch: with no member, it was not.
  auto members = index->ListLineage(r.lineage);
  if (!members.ok()) return members.status();
  if (members->empty()) EBS_RETURN_IF_ERROR(store->Delete(ManifestKey(BaseId(r.lineage))));
  return Status::Ok();
}

}  // namespace ebs::snapshot
