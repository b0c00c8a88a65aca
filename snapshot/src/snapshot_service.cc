#include "ebs/snapshot/snapshot_service.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <random>
#include <span>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>

#include "ebs/engine/catalog.h"
#include "ebs/engine/file_util.h"
#include "ebs/engine/progress.h"
#include "ebs/engine/size.h"
#include "ebs/snapshot/chunk_codec.h"
#include "ebs/snapshot/directory_object_store.h"
#include "ebs/snapshot/manifest.h"

namespace ebs::snapshot {
namespace {

constexpr char kStoreConfigKey[] = "store.json";

std::string NewSnapshotId() {
  std::random_device rd;
  std::mt19937_64 gen((static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(NowMs()));
  uint64_t high = gen() & 0xf;
  return fmt::format("snap-{:01x}{:016x}", high, gen());
}

// Runs fn(i) for i in [0, n) on `workers` threads; the first error wins.
template <typename Fn>
Status ParallelFor(size_t n, int workers, Fn fn) {
  std::atomic<size_t> next{0};
  std::mutex mu;
  Status first = Status::Ok();
  std::atomic<bool> failed{false};
  auto run = [&] {
    while (!failed.load()) {
      size_t i = next.fetch_add(1);
      if (i >= n) return;
      Status st = fn(i);
      if (!st.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (first.ok()) first = st;
        failed = true;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 1; t < workers; ++t) threads.emplace_back(run);
  run();
  for (auto& t : threads) t.join();
  return first;
}

// Chunks holding allocated data, from the file system's map of the file.
Result<std::vector<uint64_t>> AllocatedChunks(int fd, uint64_t size, uint32_t chunk_size) {
  std::vector<uint64_t> out;
  uint64_t pos = 0;
  while (pos < size) {
    off_t data = lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;
      return Status::FromErrno(errno, "lseek SEEK_DATA");
    }
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return Status::FromErrno(errno, "lseek SEEK_HOLE");
    uint64_t first = static_cast<uint64_t>(data) / chunk_size;
    uint64_t last = (std::min<uint64_t>(static_cast<uint64_t>(hole), size) + chunk_size - 1) / chunk_size;
    for (uint64_t c = first; c < last; ++c) {
      if (out.empty() || out.back() < c) out.push_back(c);
    }
    pos = static_cast<uint64_t>(hole);
  }
  return out;
}

// Chunks holding data in a volume, as its stack maps them (a lazily
// restored volume's chunks not loaded yet count by the source's map).
Result<std::vector<uint64_t>> AllocatedChunks(BlockDevice& device, uint64_t size, uint32_t chunk_size) {
  std::vector<Extent> extents;
  EBS_RETURN_IF_ERROR(device.Map(0, size, &extents));
  std::vector<uint64_t> out;
  for (const auto& e : extents) {
    if (e.hole || e.length == 0) continue;
    const uint64_t last = (std::min(e.offset + e.length, size) + chunk_size - 1) / chunk_size;
    for (uint64_t c = e.offset / chunk_size; c < last; ++c) {
      if (out.empty() || out.back() < c) out.push_back(c);
    }
  }
  return out;
}

// Marks a deleted snapshot whose manifest is kept as the base of the next.
std::string TombstoneKey(const std::string& id) { return std::string(kManifestKeyPrefix) + id + ".deleted"; }

// A deleted snapshot whose manifest is still in the store, beside its
// tombstone (as the base of its lineage's next snapshot, or left by an
// interrupted deletion); `manifest` is unset when only the tombstone is left.
struct Tombstoned {
  std::string id;
  std::optional<Manifest> manifest;
};

// Every tombstone in the store, with its snapshot's manifest when readable.
// Few: one per deleted snapshot that was its lineage's newest.
Result<std::vector<Tombstoned>> ListTombstoned(ObjectStore& store) {
  auto keys = store.List(kManifestKeyPrefix);
  if (!keys.ok()) return keys.status();
  std::vector<Tombstoned> out;
  for (const auto& key : *keys) {
    if (!key.ends_with(".deleted")) continue;
    Tombstoned t;
    t.id = key.substr(kManifestKeyPrefix.size(), key.size() - kManifestKeyPrefix.size() - 8);
    auto bytes = store.Get(ManifestKey(t.id));
    if (bytes.ok()) {
      auto m = DecodeManifest(*bytes);
      if (!m.ok()) continue;  // damaged: left for store check and reindex to report
      t.manifest = std::move(*m);
    } else if (bytes.status().code() != ENOENT) {
      return bytes.status();
    }
    out.push_back(std::move(t));
  }
  return out;
}

// The manifest id of a fork's base (snapshot_index.h, forks): one per
// lineage, so named by it. Snapshot ids never end in ".base".
constexpr std::string_view kBaseIdSuffix = ".base";
std::string BaseId(const std::string& lineage) { return lineage + std::string(kBaseIdSuffix); }
bool IsBaseOf(const Manifest& m) { return m.snapshot_id == BaseId(m.lineage_id); }

// The chunks of one snapshot, for a volume restored lazily from it. Holds
// the snapshot's map and the store, so it outlives the service.
class SnapshotChunkSource final : public ChunkSource {
 public:
  SnapshotChunkSource(std::shared_ptr<ObjectStore> store, std::string id, const std::vector<DeltaEntry>& map,
                      std::shared_ptr<const ChunkCrypto> crypto)
      : store_(std::move(store)), id_(std::move(id)), crypto_(std::move(crypto)) {
    for (const auto& e : map) map_.emplace(e.chunk, e.hash);
  }
  Status Fetch(uint64_t chunk, std::string* data) override {
    auto it = map_.find(chunk);
    if (it == map_.end()) {
      data->clear();  // zeros
      return Status::Ok();
    }
    auto object = store_->Get(ChunkKey(it->second));
    if (!object.ok()) {
      return Status::IoError(fmt::format("snapshot {} chunk {}: object {} unreadable: {}", id_, chunk,
                                         it->second.ToHex(), object.status().message()));
    }
    thread_local ChunkCodec codec;
    Status st = codec.Decode(*object, it->second, data, crypto_.get());
    if (!st.ok()) return Status::IoError(fmt::format("snapshot {} chunk {} is corrupt: {}", id_, chunk, st.message()));
    return Status::Ok();
  }
  bool HasData(uint64_t chunk) const override { return map_.count(chunk) != 0; }
  std::string Describe() const override { return "snapshot " + id_; }

 private:
  const std::shared_ptr<ObjectStore> store_;
  const std::string id_;
  const std::shared_ptr<const ChunkCrypto> crypto_;
  std::unordered_map<uint64_t, ContentHash> map_;
};

}  // namespace

nlohmann::json SnapshotToJson(const SnapshotRecord& r) {
  // How well the objects it stored compressed (what deduplication saved is
  // not compression: a snapshot that stored nothing new has no ratio).
  nlohmann::json ratio = r.stored_bytes > 0 && r.new_bytes > 0
                             ? nlohmann::json(static_cast<double>(r.new_bytes) / static_cast<double>(r.stored_bytes))
                             : nlohmann::json(nullptr);
  return {{"id", r.id},
          {"state", std::string(SnapshotStateName(r.state))},
          {"volume", r.volume_name},
          {"volume_id", r.volume_id},
          {"parent", r.parent_id.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.parent_id)},
          {"sequence", r.seq},
          {"volume_size_bytes", r.volume_size},
          {"chunk_size", r.chunk_size},
          {"logical_bytes", r.logical_bytes},
          {"changed_bytes", r.changed_bytes},
          {"stored_bytes", r.stored_bytes},
          {"compression_ratio", ratio},
          {"created", FormatTime(r.created_at_ms)},
          {"description", r.description},
          {"encrypted", !r.key_id.empty()},
          {"key", r.key_id.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.key_name)},
          {"key_id", r.key_id.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.key_id)},
          {"error", r.error.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.error)}};
}

Result<std::unique_ptr<SnapshotService>> SnapshotService::Open(const std::string& root, VolumeManager* volumes,
                                                               uint32_t chunk_size, int workers,
                                                               std::shared_ptr<ObjectStore> objects) {
  if (chunk_size != 0) EBS_RETURN_IF_ERROR(ValidateChunkSize(chunk_size));
  std::unique_ptr<SnapshotService> s(new SnapshotService());
  s->volumes_ = volumes;
  s->root_ = root;
  s->workers_ = std::max(1, workers);
  if (objects) {
    s->store_ = std::move(objects);
  } else {
    auto store = DirectoryObjectStore::Open(root);
    if (!store.ok()) return store.status();
    s->store_ = std::move(*store);
  }
  auto config = s->store_->Get(kStoreConfigKey);
  if (config.ok()) {
    auto j = nlohmann::json::parse(*config, nullptr, false);
    if (j.is_discarded() || !j.contains("chunk_size")) return Status::IoError("corrupt store config in " + root);
    s->chunk_size_ = j["chunk_size"].get<uint32_t>();
    if (j.contains("id") && j["id"].is_string()) {
      s->store_id_ = j["id"].get<std::string>();
    } else {  // a store made before stores had ids
      s->store_id_ = "store-" + NewSnapshotId().substr(5);
      j["id"] = s->store_id_;
      EBS_RETURN_IF_ERROR(s->store_->Put(kStoreConfigKey, j.dump()));
    }
    if (chunk_size != 0 && chunk_size != s->chunk_size_) {
      return Status::InvalidArgument(fmt::format("the snapshot store {} has chunk size {}, not {}: a store keeps the "
                                                 "chunk size it was created with",
                                                 root, FormatSize(s->chunk_size_), FormatSize(chunk_size)));
    }
  } else if (config.status().code() == ENOENT) {
    s->chunk_size_ = chunk_size != 0 ? chunk_size : kDefaultChunkSize;
    s->store_id_ = "store-" + NewSnapshotId().substr(5);
    EBS_RETURN_IF_ERROR(s->store_->Put(
        kStoreConfigKey,
        nlohmann::json{{"format", 1}, {"chunk_size", s->chunk_size_}, {"id", s->store_id_}}.dump()));
  } else {
    return config.status();
  }
  auto index = SnapshotIndex::Open(root + "/index");
  if (!index.ok()) return index.status();
  s->index_ = std::move(*index);
  EBS_RETURN_IF_ERROR(s->RecoverInterrupted());
  SnapshotService* service = s.get();
  volumes->SetChunkSourceFactory([service](const VolumeRecord& v) -> Result<std::shared_ptr<ChunkSource>> {
    auto r = service->index_->GetSnapshot(v.source_snapshot);
    if (!r.ok()) return Status::NotFound("its source snapshot " + v.source_snapshot + " is not in this store");
    if (r->chunk_size != v.initialization_chunk_size) {
      return Status::InvalidArgument("its source snapshot " + v.source_snapshot + " has another chunk size");
    }
    auto map = service->FullMap(*r);
    if (!map.ok()) return map.status();
    auto crypto = service->CryptoFor(*r);
    if (!crypto.ok()) return crypto.status();
    return std::shared_ptr<ChunkSource>(std::make_shared<SnapshotChunkSource>(service->store_, r->id, *map, *crypto));
  });
  return s;
}

SnapshotService::~SnapshotService() {
  if (volumes_ != nullptr) volumes_->SetChunkSourceFactory(nullptr);
}

Status SnapshotService::ResumeLoading() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    serving_ = true;
  }
  return volumes_->OpenLoadingVolumes();
}

Status SnapshotService::DropUncommittedManifests(const SnapshotRecord& r) {
  EBS_RETURN_IF_ERROR(store_->Delete(ManifestKey(r.id)));
  // A fork's base is written with its lineage's first snapshot and
  // committed in the same batch: with no member, it was not.
  auto members = index_->ListLineage(r.lineage);
  if (!members.ok()) return members.status();
  if (members->empty()) EBS_RETURN_IF_ERROR(store_->Delete(ManifestKey(BaseId(r.lineage))));
  return Status::Ok();
}

Status SnapshotService::RecoverInterrupted() {
  auto all = index_->ListSnapshots();
  if (!all.ok()) return all.status();
  bool any = false;
  for (auto r : *all) {
    if (r.state != SnapshotState::kPending) continue;
    // A manifest it wrote before dying names objects the gc below removes:
    // left in the store, a reindex would bring the snapshot back completed
    // and broken. Removed first, so a crash here leaves it pending and this
    // runs again.
    EBS_RETURN_IF_ERROR(DropUncommittedManifests(r));
    r.state = SnapshotState::kError;
    r.error = "interrupted: the process taking it stopped before it completed";
    EBS_RETURN_IF_ERROR(index_->PutSnapshot(r));
    any = true;
  }
  // Its uploaded objects are referenced by nothing.
  if (any) {
    auto gc = Gc();
    if (!gc.ok()) return gc.status();
  }
  return Status::Ok();
}

// One volume's part in a snapshot: what it held at the previous cut, what
// changed since, and the chunks read (or copied out) for this one.
struct SnapshotService::Job {
  std::shared_ptr<Volume> volume;
  SnapshotRecord rec;
  // The lineage's map as of its newest committed snapshot: the delta of this
  // snapshot is relative to it. Empty for a new lineage; for the first
  // snapshot of a volume restored from a snapshot, that snapshot's map.
  std::unordered_map<uint64_t, ContentHash> lineage_base;
  // What the volume held at the previous cut: chunks read with the same
  // content are unchanged. Always the lineage base (since restored volumes
  // fork their source's lineage), kept apart as what StoreChunk compares.
  const std::unordered_map<uint64_t, ContentHash>* content_base = &lineage_base;
  // The first snapshot of a volume restored from a snapshot of this store
  // forks its lineage (snapshot_index.h): `fork_source` is that snapshot,
  // `fork_map` its whole map, committed as the lineage's base. Empty
  // otherwise.
  std::string fork_source;
  uint64_t fork_volume_size = 0;
  std::vector<DeltaEntry> fork_map;
  bool full = false;  // nothing known: read every allocated chunk
  // The lineage base holds this volume's own history (an earlier snapshot
  // of it, or the fork base of the snapshot it was restored from under the
  // same key), so a chunk a lazy restore has not loaded yet is unchanged
  // from it. Otherwise such chunks are read from the source like any other.
  bool base_has_unloaded = false;
  std::optional<uint64_t> cut_generation;
  int fd = -1;  // Import: the image file
  std::shared_ptr<const ChunkCrypto> crypto;  // set for an encrypted volume
  std::shared_ptr<CopyOutSession> session;
  std::unique_ptr<ProgressReporter> progress;  // while uploading
  struct Slot {
    ContentHash hash;
    uint64_t bytes = 0;
    uint64_t stored = 0;
    bool pinned = false;  // counted in pinned_ (SnapshotService::Unpin)
  };
  std::vector<Slot> slots;
  bool fork_pinned = false;  // fork_map's objects are counted in pinned_
  ~Job() {
    if (fd >= 0) ::close(fd);
  }
};

std::string SnapshotService::CutName(const std::string& lineage, uint64_t seq, const std::string& snapshot) const {
  return snapshot.empty() ? fmt::format("{}/{}/{}", store_id_, lineage, seq)
                          : fmt::format("{}/{}/{}", store_id_, lineage, snapshot);
}

Result<std::vector<SnapshotRecord>> SnapshotService::Create(const std::vector<std::string>& volumes,
                                                            const std::string& description) {
  if (volumes.empty()) return Status::InvalidArgument("name at least one volume to snapshot");
  for (size_t i = 0; i < volumes.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (volumes[i] == volumes[j]) return Status::InvalidArgument("volume '" + volumes[i] + "' is named twice");
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::unique_ptr<Job>> jobs;
  for (const auto& v : volumes) {
    auto job = PrepareJob(v, description);
    if (!job.ok()) {
      for (auto& j : jobs) FailJob(*j, job.status());
      return job.status();
    }
    jobs.push_back(std::move(*job));
  }
  // The cut: every volume's writes are held and drained together, so the
  // snapshots show one instant across all of them.
  for (auto& j : jobs) j->volume->copy_on_write().Freeze();
  Status cut = Status::Ok();
  for (auto& j : jobs) {
    if (cut.ok()) cut = CutJob(*j);
  }
  for (auto& j : jobs) j->volume->copy_on_write().Thaw(cut.ok() ? j->session : nullptr);
  if (!cut.ok()) {
    for (auto& j : jobs) FailJob(*j, cut);
    return cut;
  }
  // The upload: chunks not yet copied out by writers are read now.
  Status first = Status::Ok();
  std::vector<SnapshotRecord> out;
  for (auto& j : jobs) {
    Status st = UploadJob(*j);
    if (st.ok()) st = CommitJob(*j);
    if (!st.ok()) {
      FailJob(*j, st);
      if (first.ok()) first = st;
      continue;
    }
    out.push_back(j->rec);
  }
  if (!first.ok()) return first;
  return out;
}

Result<std::unique_ptr<SnapshotService::Job>> SnapshotService::PrepareJob(const std::string& volume,
                                                                          const std::string& description) {
  auto info = volumes_->Describe(volume);
  if (!info.ok()) return info.status();
  auto vol = volumes_->OpenVolume(volume);
  if (!vol.ok()) return vol.status();
  const VolumeRecord& vr = info->record;
  auto job = std::make_unique<Job>();
  job->volume = *vol;
  SnapshotRecord& rec = job->rec;
  rec.id = NewSnapshotId();
  rec.state = SnapshotState::kPending;
  rec.volume_name = vr.name;
  rec.volume_id = vr.id;
  rec.lineage = vr.id;
  rec.chunk_size = chunk_size_;
  rec.created_at_ms = NowMs();
  rec.description = description;
  if (vr.encryption) {
    // Chunks and manifest under the volume's master key: a missing or
    // re-created key stops the snapshot here, before anything is cut.
    rec.key_name = vr.encryption->key_name;
    rec.key_id = vr.encryption->key_id;
    auto crypto = CryptoFor(rec);
    if (!crypto.ok()) return crypto.status();
    job->crypto = *crypto;
  }

  auto members = index_->ListLineage(rec.lineage);
  if (!members.ok()) return members.status();
  rec.seq = members->empty() ? 1 : members->back().seq + 1;
  if (!members->empty()) {
    // The parent: the newest completed snapshot of this volume's lineage,
    // or the snapshot its base copies (a retired member in between is
    // absorbed when this one completes).
    auto parent = Predecessor(rec.lineage, rec.seq);
    if (!parent.ok()) return parent.status();
    rec.parent_id = parent->second;
    auto map = index_->ChangedChunks(rec.lineage, 0, members->back().seq);
    if (!map.ok()) return map.status();
    for (const auto& e : *map) {
      if (!e.hash.IsZeroChunk()) job->lineage_base[e.chunk] = e.hash;
    }
    // The tracker's marks are relative to its last cut: usable only if that
    // cut was this chain's newest snapshot (not one in another store).
    job->full = vr.last_cut != CutName(rec.lineage, members->back().seq);
    job->base_has_unloaded = true;
  } else if (!vr.source_snapshot.empty() && vr.last_cut == CutName("restore", 0, vr.source_snapshot)) {
    // A volume restored from a snapshot and not snapshotted since: its
    // tracker has recorded changes since the restore, so unchanged chunks
    // are the source's (and already in the store).
    auto src = index_->GetSnapshot(vr.source_snapshot);
    // Its chunks count as this volume's only under the same key (a restore
    // under another key or into an encrypted volume re-encrypted them).
    if (src.ok() && src->state == SnapshotState::kCompleted && src->chunk_size == chunk_size_ &&
        src->key_id == rec.key_id) {
      auto map = FullMap(*src);
      if (!map.ok()) return map.status();
      // Incremental to the source: the lineage starts with a copy of its
      // map (the base, seq 1) and this snapshot is a delta against it, with
      // the source as its parent.
      for (const auto& e : *map) job->lineage_base[e.chunk] = e.hash;
      job->fork_source = src->id;
      job->fork_volume_size = src->volume_size;
      job->fork_map = std::move(*map);
      job->base_has_unloaded = true;
      rec.seq = 2;
      rec.parent_id = src->id;
    } else {
      job->full = true;  // the source is gone: nothing to compare with
    }
  } else {
    job->full = true;  // no snapshot of this volume in this store: read every allocated chunk
  }
  EBS_RETURN_IF_ERROR(index_->PutSnapshot(rec));
  if (!job->fork_map.empty()) {
    // The fork base names the source's objects: kept until this snapshot
    // references them, whatever another job of this Create frees.
    std::lock_guard<std::mutex> lock(put_mu_);
    for (const auto& e : job->fork_map) ++pinned_[e.hash];
    job->fork_pinned = true;
  }
  return job;
}

Status SnapshotService::CutJob(Job& job) {
  Volume& vol = *job.volume;
  job.rec.volume_size = vol.device().size();
  const uint64_t chunks = ChunkCount(job.rec.volume_size, chunk_size_);
  auto cut = vol.tracker().Cut();
  if (!cut.ok()) return cut.status();
  job.cut_generation = cut->generation;
  // The chunks whose content may differ from the previous cut, in the
  // store's chunk size.
  std::vector<uint64_t> candidates;
  auto allocated_or_base = [&]() -> Result<std::vector<uint64_t>> {
    auto allocated = AllocatedChunks(vol.device(), job.rec.volume_size, chunk_size_);
    if (!allocated.ok()) return allocated.status();
    std::vector<uint64_t> out = std::move(*allocated);
    for (const auto& [chunk, hash] : *job.content_base) out.push_back(chunk);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  };
  if (job.full) {
    auto all = allocated_or_base();
    if (!all.ok()) return all.status();
    candidates = std::move(*all);
  } else {
    const uint64_t tcs = cut->chunk_size;
    for (uint64_t w = 0; w < cut->words.size(); ++w) {
      for (uint64_t bits = cut->words[w]; bits != 0; bits &= bits - 1) {
        const uint64_t t = w * 64 + static_cast<uint64_t>(std::countr_zero(bits));
        const uint64_t first = t * tcs / chunk_size_;
        const uint64_t last = std::min(((t + 1) * tcs - 1) / chunk_size_, chunks == 0 ? 0 : chunks - 1);
        for (uint64_t c = first; c <= last && c < chunks; ++c) {
          if (candidates.empty() || candidates.back() < c) candidates.push_back(c);
        }
      }
    }
    // Many marks (a tracker rebuilt after damage marks everything): a chunk
    // that is a hole now and was zero before did not change, so read only
    // allocated chunks and those that held data.
    if (candidates.size() > 4096) {
      auto keep = allocated_or_base();
      if (!keep.ok()) return keep.status();
      std::vector<uint64_t> both;
      std::set_intersection(candidates.begin(), candidates.end(), keep->begin(), keep->end(),
                            std::back_inserter(both));
      candidates = std::move(both);
    }
  }
  // A volume still loading lazily: a chunk not yet loaded cannot have been
  // written (writes load first), so its content is the source's. When the
  // lineage base already has it, it is unchanged and not read; otherwise
  // (the first snapshot after a restore under another key, or one whose
  // restore left no record of its cut) it is a candidate like any chunk
  // with data, read from the source through ReadStored.
  if (HydrationLayer* h = vol.hydration(); h != nullptr && !h->complete() && job.base_has_unloaded) {
    const uint64_t hcs = h->chunk_size();
    std::erase_if(candidates, [&](uint64_t c) {
      for (uint64_t b = c * chunk_size_ / hcs; b <= ((c + 1) * chunk_size_ - 1) / hcs; ++b) {
        if (h->Loaded(b)) return false;
      }
      return true;
    });
  }
  job.slots.assign(candidates.size(), {});
  // Made before the session, which may call StoreChunk as soon as writes resume.
  job.progress = std::make_unique<ProgressReporter>("uploading " + job.rec.volume_name, candidates.size());
  Job* jp = &job;
  std::shared_ptr<Volume> volume = job.volume;
  job.session = std::make_shared<CopyOutSession>(
      [volume](uint64_t offset, size_t length, char* buf) { return volume->ReadStored(offset, length, buf); },
      job.rec.volume_size, chunk_size_, std::move(candidates),
      [this, jp](size_t position, const std::string& data) { return StoreChunk(*jp, position, data); });
  return Status::Ok();
}

Status SnapshotService::StoreChunk(Job& job, size_t position, const std::string& data) {
  if (job.progress) job.progress->Add();
  thread_local ChunkCodec codec;
  thread_local std::string object;
  Job::Slot& s = job.slots[position];
  if (IsAllZero(data.data(), data.size())) {
    s.hash = ContentHash::ZeroChunk();
    return Status::Ok();
  }
  s.bytes = data.size();
  EBS_RETURN_IF_ERROR(codec.Encode(data.data(), data.size(), &object, &s.hash, job.crypto.get()));
  auto it = job.content_base->find(job.session->chunk(position));
  if (it != job.content_base->end() && it->second == s.hash) return Status::Ok();  // unchanged
  std::string key = ChunkKey(s.hash);
  {
    // Two workers storing the same content store it once: the second waits
    // for the first, then finds the object there.
    std::unique_lock<std::mutex> lock(put_mu_);
    put_cv_.wait(lock, [&] { return !putting_.contains(s.hash); });
    putting_.insert(s.hash);
    // Pinned before it is looked for: an object found here is not deleted
    // before this snapshot references it (DeleteUnusedChunk).
    ++pinned_[s.hash];
    s.pinned = true;
  }
  auto exists = store_->Exists(key);
  Status st = exists.status();
  if (st.ok() && !*exists) {
    // Durable before the manifest names it: CommitJob flushes the store.
    st = store_->PutBatched(key, object);
    if (st.ok()) s.stored = object.size();
  }
  {
    std::lock_guard<std::mutex> lock(put_mu_);
    putting_.erase(s.hash);
  }
  put_cv_.notify_all();
  return st;
}

Status SnapshotService::UploadJob(Job& job) {
  CopyOutSession& session = *job.session;
  // Twice the workers: the store writes large objects directly, so a worker
  // waits for the disk while the others hash and compress.
  Status st = ParallelFor(session.size(), 2 * workers_, [&](size_t i) -> Status {
    thread_local std::string buf;
    return session.Process(i, &buf);
  });
  if (!st.ok()) session.Cancel(st);
  Status copied = session.Wait();  // chunks writers took are handed over too
  job.progress.reset();
  if (job.volume) job.volume->copy_on_write().Detach();
  return st.ok() ? copied : st;
}

Status SnapshotService::CommitJob(Job& job) {
  SnapshotRecord& rec = job.rec;
  const CopyOutSession& session = *job.session;
  // The new whole map = the content base with this snapshot's reads applied;
  // the delta is that map's difference from the lineage base.
  std::map<uint64_t, ContentHash> now(job.content_base->begin(), job.content_base->end());
  for (size_t i = 0; i < session.size(); ++i) {
    const uint64_t chunk = session.chunk(i);
    if (job.slots[i].hash.IsZeroChunk()) {
      now.erase(chunk);
    } else {
      now[chunk] = job.slots[i].hash;
    }
  }
  const uint64_t chunks = ChunkCount(rec.volume_size, chunk_size_);
  auto chunk_bytes = [&](uint64_t chunk) {
    return std::min<uint64_t>(chunk_size_, rec.volume_size - chunk * chunk_size_);
  };
  Manifest m;
  MapDigest digest;
  for (const auto& [chunk, hash] : now) {
    if (chunk >= chunks) continue;
    digest.Add(chunk, hash);
    rec.logical_bytes += chunk_bytes(chunk);
    auto it = job.lineage_base.find(chunk);
    if (it == job.lineage_base.end() || !(it->second == hash)) {
      m.delta.push_back({chunk, hash});
      rec.changed_bytes += chunk_bytes(chunk);
    }
  }
  for (const auto& [chunk, hash] : job.lineage_base) {
    if (!now.count(chunk) && chunk < chunks) m.delta.push_back({chunk, ContentHash::ZeroChunk()});
  }
  std::sort(m.delta.begin(), m.delta.end(), [](const DeltaEntry& a, const DeltaEntry& b) { return a.chunk < b.chunk; });
  for (const auto& slot : job.slots) {
    rec.stored_bytes += slot.stored;
    if (slot.stored > 0) rec.new_bytes += slot.bytes;
  }
  m.snapshot_id = rec.id;
  m.volume_name = rec.volume_name;
  m.volume_id = rec.volume_id;
  m.lineage_id = rec.lineage;
  m.sequence = rec.seq;
  m.parent_snapshot_id = rec.parent_id;
  m.volume_size = rec.volume_size;
  m.chunk_size = chunk_size_;
  m.created_at_ms = rec.created_at_ms;
  m.description = rec.description;
  m.map_digest = digest.value();
  m.key_name = rec.key_name;
  m.key_id = rec.key_id;
  // The chunks, then the manifest, are durable before the index points at
  // the snapshot.
  EBS_RETURN_IF_ERROR(store_->Flush());
  ForkBase base;
  if (!job.fork_source.empty()) {
    // The fork's base has a manifest of its own, so the store alone still
    // describes this lineage after its source snapshot is deleted.
    Manifest b;
    b.snapshot_id = BaseId(rec.lineage);
    b.volume_name = rec.volume_name;
    b.volume_id = rec.volume_id;
    b.lineage_id = rec.lineage;
    b.sequence = 1;
    b.parent_snapshot_id = job.fork_source;
    b.volume_size = job.fork_volume_size;
    b.chunk_size = chunk_size_;
    b.created_at_ms = rec.created_at_ms;
    b.description = "base of " + rec.volume_name + "'s snapshots: a copy of " + job.fork_source + "'s map";
    b.delta = job.fork_map;
    MapDigest base_digest;
    for (const auto& e : b.delta) base_digest.Add(e.chunk, e.hash);
    b.map_digest = base_digest.value();
    b.key_name = rec.key_name;
    b.key_id = rec.key_id;
    auto encoded_base = EncodeManifest(b, job.crypto.get());
    if (!encoded_base.ok()) return encoded_base.status();
    EBS_RETURN_IF_ERROR(store_->Put(ManifestKey(b.snapshot_id), *encoded_base));
    base = {b.sequence, job.fork_source, job.fork_map};
  }
  auto encoded = EncodeManifest(m, job.crypto.get());
  if (!encoded.ok()) return encoded.status();
  EBS_RETURN_IF_ERROR(store_->Put(ManifestKey(rec.id), *encoded));
  rec.state = SnapshotState::kCompleted;
  Status st = index_->CompleteSnapshot(rec, m.delta, job.fork_source.empty() ? nullptr : &base);
  if (!st.ok()) {
    rec.state = SnapshotState::kPending;
    return st;
  }
  Unpin(job);  // referenced by the index now
  // Only now may the tracker forget the cut: a crash before this point
  // merges it back, and the next snapshot reads those chunks again. The
  // snapshot may have read writes still in the page cache only: the data
  // file is synced first, or a power cut could revert a chunk on disk with
  // no mark left to make the next snapshot read it again.
  if (job.cut_generation) {
    Status c = job.volume->SyncData();
    if (c.ok()) {
      c = job.volume->tracker().Commit(*job.cut_generation);
    } else {
      (void)job.volume->tracker().Abort(*job.cut_generation);  // the marks stay: the next snapshot reads them again
    }
    job.cut_generation.reset();
    if (c.ok()) c = volumes_->SetLastCut(rec.volume_name, rec.volume_id, CutName(rec.lineage, rec.seq));
    if (!c.ok()) {
      fprintf(stderr, "ebs: snapshot %s: forgetting the cut failed (the next snapshot reads its chunks again): %s\n",
              rec.id.c_str(), c.message().c_str());
    }
  }
  // Housekeeping: the snapshot is complete whatever happens here.
  Status absorbed = AbsorbRetired(rec);
  if (absorbed.ok()) {
    // Its parent and delta may have changed: report what the index holds.
    if (auto now = index_->GetSnapshot(rec.id); now.ok()) rec = std::move(*now);
  } else {
    fprintf(stderr, "ebs: snapshot %s: folding in a deleted predecessor failed (store gc will free its objects): %s\n",
            rec.id.c_str(), absorbed.message().c_str());
  }
  return Status::Ok();
}

// A snapshot deleted while it was its lineage's newest stayed as the base of
// the next one (snapshot_index.h); now that the next one exists, fold it in
// and free what nothing needs any more.
Status SnapshotService::AbsorbRetired(const SnapshotRecord& rec) {
  auto members = index_->ListLineage(rec.lineage);
  if (!members.ok()) return members.status();
  bool any = false;
  for (const auto& mbr : *members) any = any || (mbr.retired && mbr.seq < rec.seq);
  if (!any) return Status::Ok();
  auto outcomes = index_->AbsorbRetired(rec.lineage);
  if (!outcomes.ok()) return outcomes.status();
  // The new snapshot's delta now reaches back to the newest live member
  // (or the lineage's base).
  auto prev = Predecessor(rec.lineage, rec.seq);
  if (!prev.ok()) return prev.status();
  EBS_RETURN_IF_ERROR(RewriteManifest(rec, prev->first, prev->second));
  for (const auto& o : *outcomes) {
    for (const auto& h : o.released) EBS_RETURN_IF_ERROR(DeleteUnusedChunk(h, /*check_refs=*/false));
  }
  // The folded-in snapshots' manifests and tombstones: `rec`'s manifest no
  // longer needs them, and kept they would hold a reindex to the old chain.
  return RemoveSupersededManifests(rec.lineage, rec.seq);
}

Status SnapshotService::RemoveSupersededManifests(const std::string& lineage, uint64_t rewritten_seq) {
  auto tombstoned = ListTombstoned(*store_);
  if (!tombstoned.ok()) return tombstoned.status();
  std::map<std::string, std::vector<LineageMember>> lineages;
  auto members_of = [&](const std::string& l) -> Result<const std::vector<LineageMember>*> {
    auto it = lineages.find(l);
    if (it == lineages.end()) {
      auto members = index_->ListLineage(l);
      if (!members.ok()) return members.status();
      it = lineages.emplace(l, std::move(*members)).first;
    }
    return &it->second;
  };
  std::vector<std::pair<const Tombstoned*, std::optional<std::pair<std::string, uint64_t>>>> stale;
  std::set<std::pair<std::string, uint64_t>> rewrite;  // (lineage, seq) of members that absorbed one
  for (const auto& t : *tombstoned) {
    if (t.manifest && !lineage.empty() && t.manifest->lineage_id != lineage) continue;
    // Still a snapshot of the index: its deletion did not reach the index
    // (a crash right after the tombstone); deleting it again finishes it.
    if (auto r = index_->GetSnapshot(t.id); r.ok()) {
      continue;
    } else if (r.status().code() != ENOENT) {
      return r.status();
    }
    if (!t.manifest) {
      stale.push_back({&t, std::nullopt});  // only the tombstone is left
      continue;
    }
    auto members = members_of(t.manifest->lineage_id);
    if (!members.ok()) return members.status();
    const uint64_t seq = t.manifest->sequence;
    bool kept = false;
    std::optional<uint64_t> next;
    for (const auto& mbr : **members) {
      kept = kept || (mbr.seq == seq && mbr.retired);
      if (mbr.seq > seq && !next) next = mbr.seq;
    }
    if (kept) continue;  // retired: the base of the lineage's next snapshot
    // Absorbed into `next` (or dropped, with nothing after it). The manifest
    // of `next` may still be a delta against this one (a crash before it
    // was rewritten): rewrite it first, or a reindex could not rebuild it.
    std::optional<std::pair<std::string, uint64_t>> absorber;
    if (next && *next != rewritten_seq) absorber.emplace(t.manifest->lineage_id, *next);
    if (absorber) rewrite.insert(*absorber);
    stale.push_back({&t, absorber});
  }
  if (stale.empty()) return Status::Ok();
  std::vector<SnapshotRecord> records;
  if (!rewrite.empty()) {
    auto all = index_->ListSnapshots();
    if (!all.ok()) return all.status();
    records = std::move(*all);
  }
  std::set<std::pair<std::string, uint64_t>> failed;
  for (const auto& [l, seq] : rewrite) {
    auto prev = Predecessor(l, seq);
    if (!prev.ok()) return prev.status();
    const SnapshotRecord* live = nullptr;
    for (const auto& r : records) {
      if (r.lineage == l && r.seq == seq && r.state == SnapshotState::kCompleted) live = &r;
    }
    Status st = Status::Ok();
    if (live != nullptr) {
      st = RewriteManifest(*live, prev->first, prev->second);
    } else {
      // A retired member (kept with its tombstone): its manifest only.
      for (const auto& t : *tombstoned) {
        if (!st.ok() || !t.manifest || t.manifest->lineage_id != l || t.manifest->sequence != seq) continue;
        SnapshotRecord r;
        r.id = t.id;
        r.lineage = l;
        r.seq = seq;
        r.volume_size = t.manifest->volume_size;
        r.chunk_size = t.manifest->chunk_size;
        r.key_name = t.manifest->key_name;
        r.key_id = t.manifest->key_id;
        st = RewriteManifest(r, prev->first, prev->second, /*update_record=*/false);
      }
    }
    if (!st.ok()) {
      // An encrypted chain whose key is missing, say: its deleted
      // snapshot's manifest stays until a later gc can rewrite the next
      // one; the rest goes on.
      fprintf(stderr, "ebs: lineage %s: rewriting the manifest of seq %llu failed (kept what it depends on): %s\n",
              l.c_str(), static_cast<unsigned long long>(seq), st.message().c_str());
      failed.emplace(l, seq);
    }
  }
  // The manifest before its tombstone: a manifest left without one would
  // look like a snapshot the index lost.
  std::erase_if(stale, [&](const auto& s) { return s.second && failed.count(*s.second); });
  for (const auto& s : stale) EBS_RETURN_IF_ERROR(store_->Delete(ManifestKey(s.first->id)));
  for (const auto& s : stale) EBS_RETURN_IF_ERROR(store_->Delete(TombstoneKey(s.first->id)));
  return Status::Ok();
}

Result<std::set<std::string>> SnapshotService::VolumeIds() {
  auto vols = volumes_->List();
  if (!vols.ok()) return vols.status();
  std::set<std::string> ids;
  for (const auto& v : *vols) ids.insert(v.record.id);
  return ids;
}

Result<uint64_t> SnapshotService::DropAbandonedTip(const std::string& lineage) {
  auto members = index_->ListLineage(lineage);
  if (!members.ok()) return members.status();
  if (members->empty() || members->back().live()) return uint64_t{0};
  size_t first = members->size();
  while (first > 0 && !(*members)[first - 1].live()) --first;
  // The manifests of the members to drop (retired snapshots, by their
  // tombstones; a fork's base, by its lineage) go first: a crash after this
  // leaves index entries of a lineage that will never grow, which store
  // check accepts and the next gc drops, never a manifest a reindex would
  // bring back without its entries.
  auto tombstoned = ListTombstoned(*store_);
  if (!tombstoned.ok()) return tombstoned.status();
  std::vector<std::string> ids;
  for (size_t i = first; i < members->size(); ++i) {
    const LineageMember& mbr = (*members)[i];
    if (mbr.base()) {
      EBS_RETURN_IF_ERROR(store_->Delete(ManifestKey(BaseId(lineage))));
      continue;
    }
    for (const auto& t : *tombstoned) {
      if (t.manifest && t.manifest->lineage_id == lineage && t.manifest->sequence == mbr.seq) ids.push_back(t.id);
    }
  }
  for (const auto& id : ids) EBS_RETURN_IF_ERROR(store_->Delete(ManifestKey(id)));
  auto released = index_->DropRetiredTip(lineage);
  if (!released.ok()) return released.status();
  for (const auto& h : *released) EBS_RETURN_IF_ERROR(store_->Delete(ChunkKey(h)));
  for (const auto& id : ids) EBS_RETURN_IF_ERROR(store_->Delete(TombstoneKey(id)));
  return static_cast<uint64_t>(released->size());
}

Status SnapshotService::RewriteManifest(const SnapshotRecord& rec, uint64_t prev_seq, const std::string& prev_id,
                                       bool update_record) {
  auto bytes = store_->Get(ManifestKey(rec.id));
  if (!bytes.ok()) return bytes.status();
  auto m = DecodeManifest(*bytes);
  if (!m.ok()) return m.status();
  auto delta = index_->ChangedChunks(rec.lineage, prev_seq, rec.seq);
  if (!delta.ok()) return delta.status();
  m->parent_snapshot_id = prev_id;
  m->delta = *delta;
  auto crypto = CryptoFor(rec);
  if (!crypto.ok()) return crypto.status();
  auto encoded = EncodeManifest(*m, crypto->get());
  if (!encoded.ok()) return encoded.status();
  EBS_RETURN_IF_ERROR(store_->Put(ManifestKey(rec.id), *encoded));
  if (!update_record) return Status::Ok();
  // The record says the same: its parent, and its changed bytes counted
  // over the new delta (the data in it, as CommitJob and Reindex count).
  SnapshotRecord updated = rec;
  updated.parent_id = prev_id;
  updated.changed_bytes = 0;
  for (const auto& e : *delta) {
    if (!e.hash.IsZeroChunk() && e.chunk * rec.chunk_size < rec.volume_size) {
      updated.changed_bytes += std::min<uint64_t>(rec.chunk_size, rec.volume_size - e.chunk * rec.chunk_size);
    }
  }
  if (updated != rec) EBS_RETURN_IF_ERROR(index_->PutSnapshot(updated));
  return Status::Ok();
}

Result<std::pair<uint64_t, std::string>> SnapshotService::Predecessor(const std::string& lineage, uint64_t seq) {
  auto members = index_->ListLineage(lineage);
  if (!members.ok()) return members.status();
  const LineageMember* prev = nullptr;
  for (const auto& mbr : *members) {
    if (mbr.seq < seq && !mbr.retired) prev = &mbr;
  }
  if (prev == nullptr) return std::pair<uint64_t, std::string>(0, "");
  if (prev->base()) return std::pair<uint64_t, std::string>(prev->seq, prev->base_of);
  auto all = index_->ListSnapshots();
  if (!all.ok()) return all.status();
  for (const auto& s : *all) {
    if (s.lineage == lineage && s.seq == prev->seq && s.state == SnapshotState::kCompleted) {
      return std::pair<uint64_t, std::string>(prev->seq, s.id);
    }
  }
  return std::pair<uint64_t, std::string>(prev->seq, "");
}

void SnapshotService::FailJob(Job& job, const Status& why) {
  if (job.session) {
    job.session->Cancel(why);
    (void)job.session->Wait();
    if (job.volume) job.volume->copy_on_write().Detach();
  }
  if (job.cut_generation) {
    // The changes of the failed cut go back into the current set.
    Status st = job.volume->tracker().Abort(*job.cut_generation);
    if (!st.ok()) {
      fprintf(stderr, "ebs: snapshot %s: returning tracked changes failed: %s\n", job.rec.id.c_str(),
              st.message().c_str());
    }
    job.cut_generation.reset();
  }
  // Objects this snapshot uploaded or counted on that nothing references
  // (and no other job of the same Create counts on): removed, so the store
  // checks clean after a failure (a crash leaves them to the recovery's gc).
  std::vector<ContentHash> used;
  for (const auto& slot : job.slots) {
    if (slot.pinned) used.push_back(slot.hash);
  }
  Unpin(job);
  for (const auto& h : used) (void)DeleteUnusedChunk(h, /*check_refs=*/true);
  // Nor may a manifest be left for a snapshot the index never completed.
  if (Status st = DropUncommittedManifests(job.rec); !st.ok()) {
    fprintf(stderr, "ebs: snapshot %s: removing its manifest failed: %s\n", job.rec.id.c_str(), st.message().c_str());
  }
  job.rec.state = SnapshotState::kError;
  job.rec.error = why.message();
  (void)index_->PutSnapshot(job.rec);
}

void SnapshotService::Unpin(Job& job) {
  std::lock_guard<std::mutex> lock(put_mu_);
  auto drop = [&](const ContentHash& h) {
    auto it = pinned_.find(h);
    if (it != pinned_.end() && --it->second == 0) pinned_.erase(it);
  };
  for (auto& slot : job.slots) {
    if (slot.pinned) drop(slot.hash);
    slot.pinned = false;
  }
  if (job.fork_pinned) {
    for (const auto& e : job.fork_map) drop(e.hash);
    job.fork_pinned = false;
  }
}

Status SnapshotService::DeleteUnusedChunk(const ContentHash& hash, bool check_refs) {
  // Under put_mu_: a worker pins before it looks, so it either sees the
  // object gone (and stores it again) or has pinned it before this check.
  std::lock_guard<std::mutex> lock(put_mu_);
  if (pinned_.count(hash) || putting_.count(hash)) return Status::Ok();
  if (check_refs) {
    auto refs = index_->RefCount(hash);
    if (!refs.ok()) return refs.status();
    if (*refs > 0) return Status::Ok();
  }
  return store_->Delete(ChunkKey(hash));
}

Result<std::vector<SnapshotRecord>> SnapshotService::List() {
  std::lock_guard<std::mutex> lock(mu_);
  return index_->ListSnapshots();
}

Result<SnapshotRecord> SnapshotService::Describe(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return index_->GetSnapshot(id);  // ENOENT names the missing snapshot
}

Result<std::vector<DeltaEntry>> SnapshotService::FullMap(const SnapshotRecord& r) {
  if (r.state != SnapshotState::kCompleted) {
    return Status::InvalidArgument("snapshot " + r.id + " is " + std::string(SnapshotStateName(r.state)) +
                                   ", not completed");
  }
  auto map = index_->ChangedChunks(r.lineage, 0, r.seq);
  if (!map.ok()) return map.status();
  std::vector<DeltaEntry> out;
  for (const auto& e : *map) {
    if (!e.hash.IsZeroChunk()) out.push_back(e);
  }
  return out;
}

Result<std::shared_ptr<const ChunkCrypto>> SnapshotService::CryptoFor(const SnapshotRecord& r) const {
  if (r.key_id.empty()) return std::shared_ptr<const ChunkCrypto>();
  auto key = volumes_->keys().LoadExpected(r.key_name, r.key_id);
  if (!key.ok()) {
    return Status::Error(key.status().code(),
                         "snapshot " + r.id + " is encrypted with key '" + r.key_name + "': " + key.status().message());
  }
  return std::shared_ptr<const ChunkCrypto>(std::make_shared<ChunkCrypto>(*key));
}

Status SnapshotService::CheckManifest(const SnapshotRecord& r, const ChunkCrypto* crypto) {
  auto bytes = store_->Get(ManifestKey(r.id));
  if (!bytes.ok()) return bytes.status();
  auto m = DecodeManifest(*bytes);
  if (!m.ok()) return m.status();
  if (m->snapshot_id != r.id || m->key_id != r.key_id) {
    return Status::IoError("manifest " + ManifestKey(r.id) + " is not snapshot " + r.id + "'s");
  }
  if (crypto != nullptr) return VerifyManifestMac(*bytes, *crypto);
  return Status::Ok();
}

Result<VolumeInfo> SnapshotService::Restore(const std::string& id, const std::string& volume, VolumeParams params,
                                            std::optional<double> lazy_rate_mibps,
                                            std::optional<EncryptionRequest> encryption) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = index_->GetSnapshot(id);
  if (!r.ok()) return r.status();
  auto map = FullMap(*r);
  if (!map.ok()) return map.status();
  // Everything that can refuse the restore is checked before the volume exists.
  auto crypto = CryptoFor(*r);
  if (!crypto.ok()) return Status::Error(crypto.status().code(), "restore refused: " + crypto.status().message());
  if (Status m = CheckManifest(*r, crypto->get()); !m.ok()) {
    return Status::Error(m.code(), "restore refused: snapshot " + id + ": " + m.message());
  }
  if (!r->key_id.empty() && (!encryption || encryption->key_name.empty())) {
    encryption = EncryptionRequest{r->key_name};  // stays encrypted, by default under its own key
  }
  if (!params.size_bytes) params.size_bytes = r->volume_size;
  if (*params.size_bytes < r->volume_size) {
    return Status::InvalidArgument(fmt::format("InvalidParameterValue: size {} is smaller than the snapshot's {}",
                                               FormatSize(*params.size_bytes), FormatSize(r->volume_size)));
  }
  if (!params.type) params.type = VolumeType::kGp3;
  CreateOptions options;
  options.source_snapshot = id;
  options.encryption = encryption;
  // The volume's tracker counts from the restore: its first snapshot is a
  // delta against the source (PrepareJob).
  options.last_cut = CutName("restore", 0, id);
  if (lazy_rate_mibps) {
    if (*lazy_rate_mibps < 0) return Status::InvalidArgument("InvalidParameterValue: --initialization-rate must be positive");
    options.lazy = LazyRestore{r->chunk_size, *lazy_rate_mibps};
    auto info = volumes_->Create(volume, params, options);
    if (!info.ok()) return info.status();
    if (serving_) {
      auto opened = volumes_->OpenVolume(volume);  // starts loading in the background
      if (!opened.ok()) return opened.status();
    }
    return volumes_->Describe(volume);
  }
  // Created `creating`: nobody may open it before every chunk is in place,
  // and if this process dies first, the next open of the data directory
  // removes it.
  options.restoring = true;
  auto info = volumes_->Create(volume, params, options);
  if (!info.ok()) return info.status();
  // The new volume's cipher (null when plain), opened the way serving opens it.
  auto cipher = volumes_->OpenCipher(info->record);
  if (!cipher.ok()) {
    (void)volumes_->Delete(volume, /*force=*/true);
    return Status::Error(cipher.status().code(), "restore refused: " + cipher.status().message());
  }
  std::string path = volumes_->DataFilePath(info->record.id);
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  Status st = fd < 0 ? Status::FromErrno(errno, "open " + path) : Status::Ok();
  if (st.ok()) {
    st = WriteImage(*r, *map, fd, crypto->get(), cipher->get());
    ::close(fd);
  }
  if (st.ok()) st = volumes_->FinishRestore(volume, info->record.id);
  if (!st.ok()) {
    // No half-restored volume is left behind to be mistaken for a good one.
    (void)volumes_->Delete(volume, /*force=*/true);
    return Status::Error(st.code(), "restore refused: " + st.message());
  }
  return volumes_->Describe(volume);
}

Status SnapshotService::WriteImage(const SnapshotRecord& r, const std::vector<DeltaEntry>& map, int fd,
                                   const ChunkCrypto* crypto, const SectorCipher* cipher) {
  // The image is written with direct I/O where the file system allows it:
  // the whole volume is written once, and copying it through the page cache
  // (then writing that back) costs more than decoding it. A second
  // descriptor, so a chunk direct I/O refuses still goes through `fd`.
  int direct_fd = -1;
  if (r.chunk_size % kDirectIoAlign == 0) {
    direct_fd = ReopenDirect(fd, O_WRONLY);
  }
  std::atomic<bool> direct_ok{direct_fd >= 0};
  ProgressReporter progress("writing " + r.id, map.size());
  // Direct writes wait for the disk: twice the workers keep it busy while
  // the others decode.
  const int workers = direct_fd >= 0 ? 2 * workers_ : workers_;
  Status st = ParallelFor(map.size(), workers, [&](size_t i) -> Status {
    progress.Add();
    thread_local ChunkCodec codec;
    thread_local std::string data;
    thread_local AlignedBuffer aligned;
    const DeltaEntry& e = map[i];
    auto object = store_->Get(ChunkKey(e.hash));
    if (!object.ok()) {
      return Status::IoError(fmt::format("snapshot {} chunk {}: object {} unreadable: {}", r.id, e.chunk,
                                         e.hash.ToHex(), object.status().message()));
    }
    auto corrupt = [&](const Status& d) {
      return Status::IoError(fmt::format("snapshot {} chunk {} is corrupt: {}", r.id, e.chunk, d.message()));
    };
    const uint64_t off = e.chunk * r.chunk_size;
    const std::string what = "chunk " + std::to_string(e.chunk);
    if (direct_ok.load(std::memory_order_relaxed)) {
      std::span<char> buf = aligned.Get(r.chunk_size);
      if (buf.empty()) return Status::Error(ENOMEM, "cannot allocate a buffer for direct writes");
      auto n = codec.Decode(*object, e.hash, buf, crypto);
      if (!n.ok()) return corrupt(n.status());
      if (*n % kDirectIoAlign == 0) {
        // Whole sectors: encrypted in place for an encrypted volume.
        if (cipher != nullptr) EBS_RETURN_IF_ERROR(cipher->Encrypt(off, buf.data(), buf.data(), *n));
        Status w = PwriteAll(direct_fd, buf.data(), *n, off, what);
        if (w.code() != EINVAL) return w;
        direct_ok = false;  // the file system wants other alignment: buffered from now on
        return PwriteVolumeData(fd, buf.data(), *n, off, what);
      }
      data.assign(buf.data(), *n);  // the volume's partial last chunk
    } else {
      Status d = codec.Decode(*object, e.hash, &data, crypto);
      if (!d.ok()) return corrupt(d);
    }
    if (cipher != nullptr) EBS_RETURN_IF_ERROR(cipher->EncryptPadded(off, &data));
    return PwriteVolumeData(fd, data.data(), data.size(), off, what);
  });
  if (st.ok() && fdatasync(fd) != 0) st = Status::FromErrno(errno, "sync the written image");
  if (direct_fd >= 0) ::close(direct_fd);
  return st;
}

Result<nlohmann::json> SnapshotService::Export(const std::string& id, const std::string& file, bool force) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = index_->GetSnapshot(id);
  if (!r.ok()) return r.status();  // the index names the missing snapshot
  auto map = FullMap(*r);
  if (!map.ok()) return map.status();
  auto crypto = CryptoFor(*r);
  if (!crypto.ok()) return Status::Error(crypto.status().code(), "export refused: " + crypto.status().message());
  struct stat st;
  if (!force && ::lstat(file.c_str(), &st) == 0) {
    return Status::AlreadyExists("'" + file + "' exists; give --force to overwrite it");
  }
  // Written whole under a temporary name, then renamed: an interrupted or
  // failed export never leaves a partial image under the name asked for.
  // The name is unpredictable and created exclusively, never through a
  // symbolic link: in a directory others can write, nothing they plant
  // there makes the export write anywhere else. rename() replaces `file`
  // itself, a symbolic link included, and never follows it.
  const std::string tmp = file + ".ebs-export-" + NewSnapshotId().substr(5);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "create " + tmp);
  Status s = Status::Ok();
  if (ftruncate(fd, static_cast<off_t>(r->volume_size)) != 0) s = Status::FromErrno(errno, "size " + tmp);
  if (s.ok()) s = WriteImage(*r, *map, fd, crypto->get());
  ::close(fd);
  if (s.ok() && ::rename(tmp.c_str(), file.c_str()) != 0) s = Status::FromErrno(errno, "rename to " + file);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return Status::Error(s.code(), "export refused: " + s.message());
  }
  // The rename durable too, not only the data (WriteImage synced it).
  const std::string dir = std::filesystem::path(file).parent_path().string();
  if (Status d = SyncDirectory(dir.empty() ? "." : dir); !d.ok()) {
    return Status::Error(d.code(), "export written, but its directory could not be synced: " + d.message());
  }
  return nlohmann::json{{"snapshot", id}, {"file", file}, {"size_bytes", r->volume_size},
                        {"data_chunks", map->size()}};
}

Result<SnapshotRecord> SnapshotService::Import(const std::string& file, const std::string& name,
                                               const std::string& description) {
  std::lock_guard<std::mutex> lock(mu_);
  EBS_RETURN_IF_ERROR(VolumeManager::ValidateName(name));
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + file);
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::InvalidArgument("'" + file + "' is not a regular file (a raw disk image)");
  }
  if (st.st_size == 0) {
    ::close(fd);
    return Status::InvalidArgument("'" + file + "' is empty");
  }
  Job job;
  job.fd = fd;  // closed with the job
  SnapshotRecord& rec = job.rec;
  rec.id = NewSnapshotId();
  rec.state = SnapshotState::kPending;
  rec.volume_name = name;
  rec.volume_id = "import-" + rec.id.substr(5);
  rec.lineage = rec.volume_id;
  rec.seq = 1;
  // Volumes are whole GiB: the image is padded with zeros up to one.
  rec.volume_size = (static_cast<uint64_t>(st.st_size) + kGiB - 1) / kGiB * kGiB;
  rec.chunk_size = chunk_size_;
  rec.created_at_ms = NowMs();
  rec.description = description.empty() ? "imported from " + file : description;
  EBS_RETURN_IF_ERROR(index_->PutSnapshot(rec));
  auto chunks = AllocatedChunks(fd, static_cast<uint64_t>(st.st_size), chunk_size_);
  Status s = chunks.status();
  if (s.ok()) {
    job.slots.assign(chunks->size(), {});
    job.progress = std::make_unique<ProgressReporter>("importing " + file, chunks->size());
    Job* jp = &job;
    auto read_image = [fd](uint64_t offset, size_t length, char* buf) -> Status {
      size_t done = 0;
      while (done < length) {
        ssize_t n = pread(fd, buf + done, length - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return Status::FromErrno(errno, "read the image");
        if (n == 0) break;
        done += static_cast<size_t>(n);
      }
      std::memset(buf + done, 0, length - done);
      return Status::Ok();
    };
    job.session = std::make_shared<CopyOutSession>(
        read_image, static_cast<uint64_t>(st.st_size), chunk_size_, std::move(*chunks),
        [this, jp](size_t position, const std::string& data) { return StoreChunk(*jp, position, data); });
    s = UploadJob(job);
  }
  if (s.ok()) s = CommitJob(job);
  if (!s.ok()) {
    FailJob(job, s);
    return s;
  }
  return rec;
}

Result<nlohmann::json> SnapshotService::Reindex(bool force) {
  std::lock_guard<std::mutex> lock(mu_);
  auto keys = store_->List(kManifestKeyPrefix);
  if (!keys.ok()) return keys.status();
  // Every problem below drops a snapshot (or a chain's correctness) from
  // the new index, and with it the references that keep its objects from
  // gc: without `force`, any of them leaves the index as it is.
  nlohmann::json problems = nlohmann::json::array();
  std::map<std::string, std::map<uint64_t, Manifest>> lineages;  // lineage -> seq -> manifest
  std::set<std::string> deleted;
  for (const auto& key : *keys) {
    if (key.ends_with(".deleted")) {
      deleted.insert(key.substr(kManifestKeyPrefix.size(), key.size() - kManifestKeyPrefix.size() - 8));
      continue;
    }
    if (!key.ends_with(kManifestKeySuffix)) continue;
    auto bytes = store_->Get(key);
    auto m = bytes.ok() ? DecodeManifest(*bytes) : Result<Manifest>(bytes.status());
    const std::string skipped = force ? " (skipped)" : "";
    if (!m.ok()) {
      problems.push_back({{"object", key}, {"error", m.status().message() + skipped}});
      continue;
    }
    if (m->chunk_size != chunk_size_) {
      problems.push_back({{"object", key}, {"error", "chunk size differs from the store's" + skipped}});
      continue;
    }
    if (key != ManifestKey(m->snapshot_id)) {
      problems.push_back({{"object", key}, {"error", "holds the manifest of " + m->snapshot_id + skipped}});
      continue;
    }
    lineages[m->lineage_id][m->sequence] = std::move(*m);
  }
  // A completed snapshot of the current index whose manifest is not in the
  // store at all would vanish without a word. (The index may be what is
  // broken: if it cannot be listed, the store alone decides.)
  if (auto current = index_->ListSnapshots(); current.ok()) {
    std::set<std::string> listed(keys->begin(), keys->end());
    for (const auto& r : *current) {
      if (r.state == SnapshotState::kCompleted && !listed.count(ManifestKey(r.id))) {
        problems.push_back({{"object", ManifestKey(r.id)},
                            {"snapshot", r.id},
                            {"error", "missing: snapshot " + r.id + " is completed in the index" +
                                          (force ? " (dropped)" : "")}});
      }
    }
  }
  auto refuse = [&]() -> Status {
    std::string list;
    for (const auto& p : problems) {
      list += fmt::format("\n  {}: {}", p["object"].get<std::string>(), p["error"].get<std::string>());
    }
    return Status::IoError(fmt::format(
        "store reindex refused, the index is unchanged: the store does not describe every snapshot "
        "(rebuilding without these would drop their snapshots, and store gc then their objects; "
        "--force does that):{}",
        list));
  };
  if (!problems.empty() && !force) return refuse();
  // A fresh index beside the old one; swapped in only when complete.
  const std::string dir = root_ + "/index";
  const std::string fresh = root_ + "/index.reindex";
  std::error_code ec;
  std::filesystem::remove_all(fresh, ec);
  auto index = SnapshotIndex::Open(fresh);
  if (!index.ok()) return index.status();
  uint64_t snapshots = 0, removed = 0, bases = 0;
  for (auto& [lineage, members] : lineages) {
    std::map<uint64_t, ContentHash> map;  // the lineage's whole map as deltas apply
    for (auto& [seq, m] : members) {
      if (IsBaseOf(m)) {
        // A fork's base: a copy of its source's map, with no record; always
        // its lineage's first member, so `map` was empty until now.
        MapDigest digest;
        for (const auto& e : m.delta) {
          if (!e.hash.IsZeroChunk()) map[e.chunk] = e.hash;
        }
        for (const auto& [chunk, hash] : map) digest.Add(chunk, hash);
        if (digest.value() != m.map_digest || seq != members.begin()->first) {
          problems.push_back({{"object", ManifestKey(m.snapshot_id)},
                              {"error", "the base of lineage " + lineage + " does not reproduce its map"}});
        }
        Status st = (*index)->CommitDelta(lineage, seq, m.delta, m.parent_snapshot_id);
        if (!st.ok()) return Status::Error(st.code(), "reindex of " + m.snapshot_id + " failed: " + st.message());
        ++bases;
        continue;
      }
      MapDigest digest;
      SnapshotRecord rec;
      rec.changed_bytes = 0;
      for (const auto& e : m.delta) {
        if (e.hash.IsZeroChunk()) {
          map.erase(e.chunk);
        } else {
          map[e.chunk] = e.hash;
          rec.changed_bytes += std::min<uint64_t>(m.chunk_size, m.volume_size - e.chunk * m.chunk_size);
        }
      }
      for (const auto& [chunk, hash] : map) {
        digest.Add(chunk, hash);
        rec.logical_bytes += std::min<uint64_t>(m.chunk_size, m.volume_size - std::min(m.volume_size, chunk * m.chunk_size));
      }
      if (digest.value() != m.map_digest) {
        problems.push_back({{"object", ManifestKey(m.snapshot_id)},
                            {"snapshot", m.snapshot_id},
                            {"error", "its chain of deltas does not reproduce the map it recorded (digest mismatch)"}});
      }
      rec.id = m.snapshot_id;
      rec.state = SnapshotState::kCompleted;
      rec.volume_name = m.volume_name;
      rec.volume_id = m.volume_id;
      rec.lineage = m.lineage_id;
      rec.seq = m.sequence;
      rec.parent_id = m.parent_snapshot_id;
      rec.volume_size = m.volume_size;
      rec.chunk_size = m.chunk_size;
      rec.created_at_ms = m.created_at_ms;
      rec.description = m.description;
      rec.key_name = m.key_name;
      rec.key_id = m.key_id;
      Status st = (*index)->CompleteSnapshot(rec, m.delta);
      if (!st.ok()) return Status::Error(st.code(), "reindex of " + rec.id + " failed: " + st.message());
      ++snapshots;
    }
    // Deleted snapshots kept as bases: delete them again, in order, now that
    // their successors are in (absorbed into the next, or retired if last).
    for (auto& [seq, m] : members) {
      if (!deleted.count(m.snapshot_id)) continue;
      auto out = (*index)->DeleteSnapshot(m.snapshot_id);
      if (!out.ok()) return out.status();
      --snapshots;
      ++removed;
    }
  }
  index->reset();
  if (!problems.empty() && !force) {
    std::filesystem::remove_all(fresh, ec);
    return refuse();
  }
  index_.reset();
  const std::string old = root_ + "/index.old";
  std::filesystem::remove_all(old, ec);
  std::filesystem::rename(dir, old, ec);
  if (ec) return Status::IoError("reindex: cannot move the old index aside: " + ec.message());
  std::filesystem::rename(fresh, dir, ec);
  if (ec) {
    std::filesystem::rename(old, dir, ec);
    return Status::IoError("reindex: cannot put the new index in place");
  }
  auto reopened = SnapshotIndex::Open(dir);
  if (!reopened.ok()) return reopened.status();
  index_ = std::move(*reopened);
  std::filesystem::remove_all(old, ec);
  return nlohmann::json{{"snapshots", snapshots}, {"deleted_bases", removed}, {"fork_bases", bases},
                        {"ok", problems.empty()}, {"problems", problems}};
}

Result<nlohmann::json> SnapshotService::Diff(const std::string& from, const std::string& to, bool with_ranges) {
  std::lock_guard<std::mutex> lock(mu_);
  auto a = index_->GetSnapshot(from);
  if (!a.ok()) return a.status();  // the index names the missing snapshot
  auto b = index_->GetSnapshot(to);
  if (!b.ok()) return b.status();  // the index names the missing snapshot
  std::string lineage = a->lineage;
  uint64_t lo = std::min(a->seq, b->seq), hi = std::max(a->seq, b->seq);
  if (a->lineage != b->lineage) {
    // A snapshot and one of a volume restored from it: that volume's lineage
    // starts with a base copying the snapshot (snapshot_index.h, forks), so
    // the changes since are the deltas after the base.
    auto base_in = [&](const SnapshotRecord& child, const std::string& source) -> Result<std::optional<uint64_t>> {
      auto members = index_->ListLineage(child.lineage);
      if (!members.ok()) return members.status();
      if (!members->empty() && members->front().base_of == source) return std::optional(members->front().seq);
      return std::optional<uint64_t>();
    };
    const SnapshotRecord* child = &*b;
    auto base = base_in(*b, a->id);
    if (base.ok() && !base->has_value()) {
      child = &*a;
      base = base_in(*a, b->id);
    }
    if (!base.ok()) return base.status();
    if (!base->has_value()) {
      return Status::InvalidArgument("snapshots " + from + " and " + to + " are of different volumes (lineages)");
    }
    lineage = child->lineage;
    lo = **base;
    hi = child->seq;
  }
  auto changed = index_->ChangedChunks(lineage, lo, hi);
  if (!changed.ok()) return changed.status();
  // A diff can list millions of chunks: flat arrays of numbers (columns),
  // not one JSON object or array per chunk or range (allocations each). Byte
  // ranges merge adjacent changed chunks; only when asked, since in the worst
  // case (no two chunks adjacent) they are two more arrays as long.
  const uint64_t size = std::max(a->volume_size, b->volume_size);
  const uint64_t chunk_size = a->chunk_size;
  nlohmann::json chunks = nlohmann::json::array(), zeroed = nlohmann::json::array();
  nlohmann::json offsets = nlohmann::json::array(), lengths = nlohmann::json::array();
  auto& chunk_list = chunks.get_ref<nlohmann::json::array_t&>();
  auto& offset_list = offsets.get_ref<nlohmann::json::array_t&>();
  auto& length_list = lengths.get_ref<nlohmann::json::array_t&>();
  chunk_list.reserve(changed->size());
  if (with_ranges) {
    size_t nranges = 0;
    for (size_t i = 0; i < changed->size(); ++i) nranges += i == 0 || (*changed)[i].chunk != (*changed)[i - 1].chunk + 1;
    offset_list.reserve(nranges);
    length_list.reserve(nranges);
  }
  uint64_t run_end = 0;  // end of the byte range being merged
  for (const auto& e : *changed) {
    chunk_list.emplace_back(e.chunk);
    if (e.hash.IsZeroChunk()) zeroed.push_back(e.chunk);
    const uint64_t off = e.chunk * chunk_size;
    const uint64_t len = std::min<uint64_t>(chunk_size, size > off ? size - off : 0);
    if (!with_ranges) continue;
    if (!offset_list.empty() && run_end == off) {
      length_list.back() = length_list.back().get<uint64_t>() + len;
    } else {
      offset_list.emplace_back(off);
      length_list.emplace_back(len);
    }
    run_end = off + len;
  }
  // Built by moving, never through an initializer list (which copies).
  nlohmann::json out = nlohmann::json::object();
  out["from"] = from;
  out["to"] = to;
  out["chunk_size"] = chunk_size;
  out["volume_size"] = size;
  out["changed_chunks"] = changed->size();
  out["chunks"] = std::move(chunks);
  out["zeroed_chunks"] = std::move(zeroed);
  if (with_ranges) {
    out["ranges"] = nlohmann::json::object();
    out["ranges"]["offsets"] = std::move(offsets);
    out["ranges"]["lengths"] = std::move(lengths);
  }
  return out;
}

Result<nlohmann::json> SnapshotService::Verify(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = index_->GetSnapshot(id);
  if (!r.ok()) return r.status();  // the index names the missing snapshot
  nlohmann::json bad = nlohmann::json::array();
  auto crypto = CryptoFor(*r);
  if (!crypto.ok()) return crypto.status();  // nothing can be checked without the key
  if (Status m = CheckManifest(*r, crypto->get()); !m.ok()) {
    bad.push_back({{"object", ManifestKey(id)}, {"error", m.message()}});
  }
  auto map = FullMap(*r);
  if (!map.ok()) return map.status();
  std::mutex mu;
  ProgressReporter progress("verifying " + id, map->size());
  Status st = ParallelFor(map->size(), workers_, [&](size_t i) -> Status {
    progress.Add();
    thread_local ChunkCodec codec;
    thread_local std::string data;
    const DeltaEntry& e = (*map)[i];
    auto object = store_->Get(ChunkKey(e.hash));
    Status problem = object.ok() ? codec.Decode(*object, e.hash, &data, crypto->get()) : object.status();
    if (!problem.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      bad.push_back({{"chunk", e.chunk}, {"object", ChunkKey(e.hash)}, {"error", problem.message()}});
    }
    return Status::Ok();
  });
  if (!st.ok()) return st;
  return nlohmann::json{{"snapshot", id}, {"chunks_checked", map->size()}, {"ok", bad.empty()}, {"bad", bad}};
}

Result<nlohmann::json> SnapshotService::Delete(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = index_->GetSnapshot(id);
  if (!r.ok()) return r.status();  // the index names the missing snapshot
  auto vols = volumes_->List();
  if (!vols.ok()) return vols.status();
  for (const auto& v : *vols) {
    if (v.record.source_snapshot == id && v.record.initialization_state == "loading") {
      return Status::Busy("InvalidSnapshot.InUse: volume '" + v.record.name + "' is still loading from snapshot " + id +
                          "; delete it after the volume's initialization completes");
    }
  }
  // Deleting may re-seal the next snapshot's manifest (below): an encrypted
  // chain needs its key for that, so without it nothing is changed.
  if (auto crypto = CryptoFor(*r); !crypto.ok()) {
    return Status::Error(crypto.status().code(), "cannot delete: " + crypto.status().message());
  }
  // The tombstone first: whatever step a crash interrupts below, the store
  // says this snapshot was deleted, and a reindex deletes it again.
  const bool has_manifest = r->state == SnapshotState::kCompleted;
  if (has_manifest) EBS_RETURN_IF_ERROR(store_->Put(TombstoneKey(id), id));
  auto outcome = index_->DeleteSnapshot(id);
  if (!outcome.ok()) return outcome.status();
  // Objects nobody references any more.
  uint64_t freed = 0;
  for (const auto& h : outcome->released) {
    EBS_RETURN_IF_ERROR(store_->Delete(ChunkKey(h)));
    ++freed;
  }
  // A retired snapshot stays the base of the next one: its manifest stays,
  // with the tombstone. Absorbed, both go, once the member that absorbed it
  // (live, or itself retired) has its manifest rewritten against its new
  // predecessor, so the store stays self-describing.
  if (has_manifest && !outcome->retired) EBS_RETURN_IF_ERROR(RemoveSupersededManifests(r->lineage));
  // Retired, its volume gone (deleted; or an imported snapshot's, which
  // never had one): no next snapshot will ever absorb it, so it goes now,
  // with a fork base nothing is left to use.
  if (outcome->retired) {
    auto ids = VolumeIds();
    if (!ids.ok()) return ids.status();
    if (!ids->count(r->lineage)) {
      auto dropped = DropAbandonedTip(r->lineage);
      if (!dropped.ok()) return dropped.status();
      freed += *dropped;
    }
  }
  return nlohmann::json{{"id", id}, {"deleted", true}, {"objects_freed", freed}};
}

Result<nlohmann::json> SnapshotService::Gc() {
  std::lock_guard<std::mutex> lock(mu_);
  // Lineages whose volume is gone keep nothing for a next snapshot (see
  // DropAbandonedTip): a volume deleted after its newest snapshot was, or
  // while the store was not open (volume delete does not open it). A
  // volume of this data directory is known by its id (lineage), not its
  // name, which a new volume may reuse.
  auto ids = VolumeIds();
  if (!ids.ok()) return ids.status();
  auto lineages = index_->ListLineages();
  if (!lineages.ok()) return lineages.status();
  uint64_t dropped = 0;
  for (const auto& l : *lineages) {
    if (ids->count(l)) continue;
    auto n = DropAbandonedTip(l);
    if (!n.ok()) return n.status();
    dropped += *n;
  }
  // Manifests and tombstones of deleted snapshots left by an interrupted
  // deletion or fold.
  EBS_RETURN_IF_ERROR(RemoveSupersededManifests(""));
  // Temporary files of uploads a killed process left: only old ones, since
  // another process may be writing into this store directory right now.
  uint64_t temporaries = 0;
  if (auto* dir = dynamic_cast<DirectoryObjectStore*>(store_.get()); dir != nullptr) {
    auto n = dir->RemoveStaleTemporaries();
    if (!n.ok()) return n.status();
    temporaries = *n;
  }
  auto keys = store_->List(kChunkKeyPrefix);
  if (!keys.ok()) return keys.status();
  uint64_t removed = dropped;
  for (const auto& key : *keys) {
    std::string hex = key.substr(key.rfind('/') + 1);
    auto h = ContentHash::FromHex(hex);
    if (!h.ok()) continue;  // not ours
    auto refs = index_->RefCount(*h);
    if (!refs.ok()) return refs.status();
    if (*refs == 0) {
      EBS_RETURN_IF_ERROR(store_->Delete(key));
      ++removed;
    }
  }
  return nlohmann::json{{"objects_examined", keys->size()}, {"objects_removed", removed},
                        {"temporaries_removed", temporaries}};
}

Result<nlohmann::json> SnapshotService::Check() {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json problems = nlohmann::json::array();
  // Every problem names an object (the one missing, unreferenced or
  // miscounted, or the manifest of the snapshot concerned).
  auto problem = [&](const std::string& object, const std::string& error) {
    problems.push_back({{"object", object}, {"error", error}});
  };
  // Reference counts against the entries that name each object: a count
  // too high keeps garbage, one too low lets gc delete data a snapshot needs.
  auto audit = index_->AuditReferences();
  if (!audit.ok()) return audit.status();
  for (const auto& p : audit->problems) {
    std::string error = fmt::format("reference count {} but {} index entries name it", p.stored, p.in_deltas);
    if (p.in_maps != p.in_deltas) error += fmt::format(" ({} in chunk maps)", p.in_maps);
    problem(ChunkKey(p.hash), error);
    // A hash named by entries but without a count is not in the list below:
    // its object must exist all the same.
    if (p.stored == 0 && p.in_deltas + p.in_maps > 0) {
      auto exists = store_->Exists(ChunkKey(p.hash));
      if (!exists.ok()) return exists.status();
      if (!*exists) problem(ChunkKey(p.hash), "referenced but missing");
    }
  }
  auto refs = index_->ListRefCounts();
  if (!refs.ok()) return refs.status();
  for (const auto& [hash, count] : *refs) {
    auto exists = store_->Exists(ChunkKey(hash));
    if (!exists.ok()) return exists.status();
    if (!*exists) problem(ChunkKey(hash), "referenced but missing");
  }
  auto keys = store_->List(kChunkKeyPrefix);
  if (!keys.ok()) return keys.status();
  for (const auto& key : *keys) {
    auto h = ContentHash::FromHex(key.substr(key.rfind('/') + 1));
    if (!h.ok()) {
      problem(key, "not a chunk object name");
      continue;
    }
    auto n = index_->RefCount(*h);
    if (!n.ok()) return n.status();
    if (*n == 0) problem(key, "not referenced by any snapshot (store gc removes it)");
  }
  // Manifests against snapshot records and lineages: every completed
  // snapshot has one (a reindex would drop it otherwise), and every one
  // belongs to the index (a reindex would bring back a snapshot that is not
  // there). Kept besides the records: the manifest of a deleted snapshot
  // that is still the base of its lineage's next one, with its tombstone,
  // and a fork's base.
  auto manifest_keys = store_->List(kManifestKeyPrefix);
  if (!manifest_keys.ok()) return manifest_keys.status();
  std::set<std::string> manifests, tombstones;
  for (const auto& key : *manifest_keys) {
    const std::string name = key.substr(kManifestKeyPrefix.size());
    if (name.ends_with(".deleted")) {
      tombstones.insert(name.substr(0, name.size() - 8));
    } else if (name.ends_with(kManifestKeySuffix)) {
      manifests.insert(name.substr(0, name.size() - kManifestKeySuffix.size()));
    }
  }
  auto records = index_->ListSnapshots();
  if (!records.ok()) return records.status();
  std::map<std::string, SnapshotState> states;
  std::map<std::string, std::vector<LineageMember>> lineages;  // of completed snapshots
  for (const auto& r : *records) {
    states[r.id] = r.state;
    if (r.state != SnapshotState::kCompleted) continue;
    if (!manifests.count(r.id)) {
      problem(ManifestKey(r.id), "missing: the manifest of completed snapshot " + r.id);
    }
    auto it = lineages.find(r.lineage);
    if (it == lineages.end()) {
      auto members = index_->ListLineage(r.lineage);
      if (!members.ok()) return members.status();
      it = lineages.emplace(r.lineage, std::move(*members)).first;
    }
    bool live = false;
    for (const auto& mbr : it->second) live = live || (mbr.seq == r.seq && mbr.live());
    if (!live) {
      problem(ManifestKey(r.id), fmt::format("completed snapshot {} has no chunk map in the index (lineage {} seq {})",
                                             r.id, r.lineage, r.seq));
    }
  }
  for (const auto& id : manifests) {
    auto state = states.find(id);
    if (state != states.end()) {
      if (state->second != SnapshotState::kCompleted) {
        problem(ManifestKey(id), "the manifest of snapshot " + id + ", which is " +
                                     std::string(SnapshotStateName(state->second)) +
                                     " (a reindex would bring it back completed)");
      }
      continue;
    }
    if (tombstones.count(id)) continue;  // deleted, kept as the base of the next snapshot
    if (id.ends_with(kBaseIdSuffix)) {
      const std::string lineage = id.substr(0, id.size() - kBaseIdSuffix.size());
      auto members = index_->ListLineage(lineage);
      if (members.ok() && !members->empty() && members->front().base()) continue;
      problem(ManifestKey(id), "the base of lineage " + lineage + ", which the index does not have");
      continue;
    }
    problem(ManifestKey(id), "the manifest of snapshot " + id +
                                 ", which is not in the index (a reindex would bring it back)");
  }
  return nlohmann::json{{"objects", keys->size()},
                        {"referenced", refs->size()},
                        {"reference_entries", audit->entries},
                        {"manifests", manifests.size()},
                        {"ok", problems.empty()},
                        {"problems", problems}};
}

void RegisterSnapshotCommands(CommandRegistry* registry, SnapshotService* service) {
  registry->Register("snapshot.create", [service](const nlohmann::json& args) -> Result<nlohmann::json> {
    auto vols = args.at("volumes").get<std::vector<std::string>>();
    auto r = service->Create(vols, args.value("description", std::string()));
    if (!r.ok()) return r.status();
    nlohmann::json out = nlohmann::json::array();
    for (const auto& s : *r) out.push_back(SnapshotToJson(s));
    return out;
  });
  registry->Register("snapshot.list", [service](const nlohmann::json&) -> Result<nlohmann::json> {
    auto r = service->List();
    if (!r.ok()) return r.status();
    nlohmann::json out = nlohmann::json::array();
    for (const auto& s : *r) out.push_back(SnapshotToJson(s));
    return out;
  });
  registry->Register("snapshot.describe", [service](const nlohmann::json& args) -> Result<nlohmann::json> {
    auto r = service->Describe(args.at("id").get<std::string>());
    if (!r.ok()) return r.status();
    return SnapshotToJson(*r);
  });
  registry->Register("snapshot.restore", [service](const nlohmann::json& args) -> Result<nlohmann::json> {
    auto p = VolumeParamsFromArgs(args);
    if (!p.ok()) return p.status();
    std::optional<double> lazy;
    if (args.value("lazy", false)) lazy = args.value("initialization_rate_mibps", 0.0);
    auto r = service->Restore(args.at("id").get<std::string>(), args.at("volume").get<std::string>(), *p, lazy,
                              EncryptionFromArgs(args));
    if (!r.ok()) return r.status();
    return r->ToJson();
  });
  registry->Register("snapshot.diff", [service](const nlohmann::json& args) {
    return service->Diff(args.at("from").get<std::string>(), args.at("to").get<std::string>(),
                         args.value("ranges", false));
  });
  registry->Register("snapshot.verify", [service](const nlohmann::json& args) {
    return service->Verify(args.at("id").get<std::string>());
  });
  registry->Register("snapshot.delete", [service](const nlohmann::json& args) {
    return service->Delete(args.at("id").get<std::string>());
  });
  registry->Register("snapshot.export", [service](const nlohmann::json& args) {
    return service->Export(args.at("id").get<std::string>(), args.at("file").get<std::string>(),
                           args.value("force", false));
  });
  registry->Register("snapshot.import", [service](const nlohmann::json& args) -> Result<nlohmann::json> {
    auto r = service->Import(args.at("file").get<std::string>(), args.at("name").get<std::string>(),
                             args.value("description", std::string()));
    if (!r.ok()) return r.status();
    return SnapshotToJson(*r);
  });
  registry->Register("store.reindex",
                     [service](const nlohmann::json& args) { return service->Reindex(args.value("force", false)); });
  registry->Register("store.gc", [service](const nlohmann::json&) { return service->Gc(); });
  registry->Register("store.check", [service](const nlohmann::json&) { return service->Check(); });
}

}  // namespace ebs::snapshot
