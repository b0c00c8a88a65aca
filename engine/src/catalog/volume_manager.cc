#include "ebs/engine/volume_manager.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <set>

#include <fmt/format.h>
#include <openssl/crypto.h>

#include "catalog/catalog.h"
#include "catalog/volume_stack.h"
#include "ebs/engine/file_util.h"
#include "ebs/engine/log.h"
#include "ebs/engine/size.h"
#include "ebs/engine/time.h"
#include "io/file_device.h"
#include "keys/sector_cipher.h"
#include "layers/change_tracker.h"
#include "layers/hydration_layer.h"
#include "layers/throttle_layer.h"

namespace ebs {
namespace {

std::string NewVolumeId() {
  std::random_device rd;
  std::mt19937_64 gen((static_cast<uint64_t>(rd()) << 32) ^ rd() ^ static_cast<uint64_t>(NowMs()));
  // AWS volume ids carry 17 hex digits.
  uint64_t high = gen() & 0xf;
  return fmt::format("vol-{:01x}{:016x}", high, gen());
}

}  // namespace

VolumeAttachment::VolumeAttachment(VolumeManager* manager, std::shared_ptr<Volume> volume)
    : manager_(manager), volume_(std::move(volume)) {}

VolumeAttachment::~VolumeAttachment() { manager_->Detach(volume_.get()); }

VolumeManager::VolumeManager(std::string data_dir, int lock_fd, std::unique_ptr<Catalog> catalog,
                             ManagerOptions options)
    : data_dir_(std::move(data_dir)),
      lock_fd_(lock_fd),
      options_(options),
      catalog_(std::move(catalog)),
      keys_(std::make_unique<KeyService>(options_.key_dir.empty() ? data_dir_ + "/keys" : options_.key_dir)) {}

VolumeManager::~VolumeManager() {
  open_.clear();  // volumes (and their throttles) go before the scheduler
  scheduler_.reset();
  catalog_.reset();
  ::close(lock_fd_);  // releases the flock
}

Result<std::unique_ptr<VolumeManager>> VolumeManager::Open(const std::string& data_dir,
                                                           ManagerOptions options) {
  // Every directory made durable in its parent before anything is put in
  // it: a power cut must not take the catalog or the volume files with a
  // directory entry that was never synced.
  EBS_RETURN_IF_ERROR(MakeDurableDirectories(data_dir, 0700));
  // Whoever made the directory (an older ebs, mkdir under umask 022), other
  // users must not reach the volumes, catalog and keys in it: made 0700, or
  // refused.
  EBS_RETURN_IF_ERROR(MakePrivate(data_dir, "data directory"));
  EBS_RETURN_IF_ERROR(MakeDurableDirectories(data_dir + "/volumes", 0700));
  EBS_RETURN_IF_ERROR(MakeDurableDirectories(data_dir + "/catalog", 0700));  // RocksDB syncs no parent
  std::string lock_path = data_dir + "/LOCK";
  int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, "open " + lock_path);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    char pid[32] = {0};
    ssize_t n = pread(fd, pid, sizeof(pid) - 1, 0);
    ::close(fd);
    if (err == EWOULDBLOCK) {
      std::string holder = n > 0 ? std::string(pid, strnlen(pid, sizeof(pid))) : "unknown";
      while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
      return Status::Busy("data directory " + data_dir + " is in use by another ebs process (pid " +
                          holder + ")");
    }
    return Status::FromErrno(err, "lock " + lock_path);
  }
  std::string pid = std::to_string(getpid()) + "\n";
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    int err = errno;
    ::close(fd);
    return Status::FromErrno(err, "write " + lock_path);
  }
  auto catalog = Catalog::Open(data_dir + "/catalog");
  if (!catalog.ok()) {
    ::close(fd);
    return catalog.status();
  }
  std::unique_ptr<VolumeManager> m(new VolumeManager(data_dir, fd, std::move(*catalog), options));
  // Older versions (and RocksDB under a loose umask) left these 0755 and
  // 0644; the private data directory already shuts other users out, and
  // this makes the modes say so too.
  EBS_RETURN_IF_ERROR(MakeDirectoryPrivate(data_dir, "data directory"));
  EBS_RETURN_IF_ERROR(MakeDirectoryPrivate(data_dir + "/volumes", "volume directory"));
  EBS_RETURN_IF_ERROR(MakeDirectoryPrivate(data_dir + "/catalog", "catalog"));
  if (Status st = MakeDirectoryPrivate(m->keys_->dir(), "key directory"); !st.ok() && st.code() != ENOENT) return st;
  EBS_RETURN_IF_ERROR(m->RemoveInterruptedRestores());
  EBS_RETURN_IF_ERROR(m->CleanOrphanFiles());
  EBS_RETURN_IF_ERROR(m->FinishInterruptedModifications());
  return m;
}

std::string VolumeManager::DataFilePath(const std::string& id) const {
  return data_dir_ + "/volumes/" + id + ".img";
}

std::string VolumeManager::ChangesFilePath(const std::string& id) const {
  return data_dir_ + "/volumes/" + id + ".changes";
}

std::string VolumeManager::LoadedFilePath(const std::string& id) const {
  return data_dir_ + "/volumes/" + id + ".loaded";
}

Status VolumeManager::SetLastCut(const std::string& name, const std::string& id, const std::string& cut) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = catalog_->Get(name);
  if (!r.ok()) return r.status();
  if (r->id != id) return Status::NotFound("volume '" + name + "' was deleted");
  r->last_cut = cut;
  EBS_RETURN_IF_ERROR(catalog_->Put(*r));
  if (auto it = open_.find(name); it != open_.end()) {
    std::lock_guard<std::mutex> cut_lock(it->second->last_cut_mu_);
    it->second->last_cut_ = cut;
  }
  return Status::Ok();
}

void VolumeManager::SetChunkSourceFactory(ChunkSourceFactory factory) {
  std::lock_guard<std::mutex> lock(mu_);
  chunk_sources_ = std::move(factory);
}

Status VolumeManager::OpenLoadingVolumes() {
  std::lock_guard<std::mutex> lock(mu_);
  auto records = catalog_->List();
  if (!records.ok()) return records.status();
  Status first = Status::Ok();
  for (const auto& r : *records) {
    if (r.initialization_state != LoadState::kLoading) continue;
    auto v = OpenLocked(r.name);
    if (!v.ok() && first.ok()) first = v.status();
  }
  return first;
}

Status VolumeManager::ValidateName(const std::string& name) { return ebs::ValidateName("volume name", name); }

// A crash between creating a data file and recording it in the catalog (or
// between removing the record and the file) leaves a file nobody names.
Status VolumeManager::CleanOrphanFiles() {
  auto records = catalog_->List();
  if (!records.ok()) return records.status();
  std::set<std::string> known;  // volume ids
  for (const auto& r : *records) known.insert(r.id);
  std::string dir = data_dir_ + "/volumes";
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return Status::FromErrno(errno, "opendir " + dir);
  std::vector<std::string> orphans;         // data files
  std::set<std::string> orphan_trackers;    // ids whose change-tracking files are left
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    const std::string id = n.substr(0, n.find('.'));
    if (id.empty() || known.count(id)) continue;
    if (n.ends_with(".img")) orphans.push_back(n);
    if (n.find(".changes") != std::string::npos || n.find(".loaded") != std::string::npos) {
      orphan_trackers.insert(id);
    }
  }
  closedir(d);
  for (const auto& n : orphans) unlink((dir + "/" + n).c_str());
  for (const auto& id : orphan_trackers) {
    EBS_RETURN_IF_ERROR(ChangeTracker::Remove(ChangesFilePath(id)));
    EBS_RETURN_IF_ERROR(ChangeTracker::Remove(LoadedFilePath(id)));
  }
  return Status::Ok();
}

Status VolumeManager::RemoveInterruptedRestores() {
  auto records = catalog_->List();
  if (!records.ok()) return records.status();
  for (const auto& r : *records) {
    if (r.state != VolumeState::kCreating) continue;
    LogWarning(fmt::format("volume {}: its restore from snapshot {} did not finish (the process stopped); removed",
                           r.name, r.source_snapshot));
    EBS_RETURN_IF_ERROR(RemoveLocked(r));
  }
  return Status::Ok();
}

Status VolumeManager::FinishRestore(const std::string& name, const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = catalog_->Get(name);
  if (!r.ok()) return r.status();
  if (r->id != id) return Status::NotFound("volume '" + name + "' was deleted");
  r->state = VolumeState::kAvailable;
  return catalog_->Put(*r);
}

Result<std::unique_ptr<ImageWriter>> VolumeManager::OpenRestoreWriter(const std::string& name, const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = catalog_->Get(name);
  if (!r.ok()) return r.status();
  if (r->id != id) return Status::NotFound("volume '" + name + "' was deleted");
  if (r->state != VolumeState::kCreating) return Status::InvalidArgument("volume '" + name + "' is not being restored");
  auto cipher = OpenCipher(*r);
  if (!cipher.ok()) return cipher.status();
  const std::string path = DataFilePath(r->id);
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  return std::make_unique<ImageWriter>(fd, std::move(*cipher), "volume " + name);
}

// A process that died inside Modify left the change `modifying`: the
// record was written before the data file grew and not after. Roll it
// forward (growing the file is idempotent), as if the call had returned.
Status VolumeManager::FinishInterruptedModifications() {
  auto records = catalog_->List();
  if (!records.ok()) return records.status();
  for (auto& r : *records) {
    if (r.modifications.empty() || r.modifications.back().state != ModificationState::kModifying) continue;
    Modification& m = r.modifications.back();
    struct stat st;
    const std::string path = DataFilePath(r.id);
    if (stat(path.c_str(), &st) != 0) return Status::FromErrno(errno, "stat " + path);
    if (static_cast<uint64_t>(st.st_size) < m.to.size_bytes &&
        truncate(path.c_str(), static_cast<off_t>(m.to.size_bytes)) != 0) {
      m.state = ModificationState::kFailed;
      m.completed_at_ms = NowMs();
    } else {
      r.config = m.to;
      m.state = ModificationState::kOptimizing;
      m.optimizing_at_ms = NowMs();
      m.optimize_until_ms = m.optimizing_at_ms + options_.optimize_ms;
    }
    EBS_RETURN_IF_ERROR(catalog_->Put(r));
    EBS_RETURN_IF_ERROR(AdvanceModifications(&r));
  }
  return Status::Ok();
}

VolumeInfo VolumeManager::InfoLocked(VolumeRecord record) {
  VolumeInfo info;
  auto it = open_.find(record.name);
  info.attachments = it == open_.end() ? 0 : it->second->attachments();
  if (record.initialization_state == LoadState::kLoading) {
    HydrationLayer* h = it == open_.end() ? nullptr : it->second->hydration();
    if (h != nullptr) {
      info.loaded_chunks = h->loaded_chunks();
      info.total_chunks = h->total_chunks();
      info.fetch_waits = h->fetch_waits();
      info.fetch_wait_ns = h->fetch_wait_ns();
      if (!h->error().ok()) info.initialization_error = h->error().message();
    } else {
      // Not open here: the record of loaded chunks says how far it got.
      ChangeTracker::Options opts;
      opts.chunk_size = record.initialization_chunk_size;
      auto loaded = ChangeTracker::Open(LoadedFilePath(record.id), 0, opts);
      if (loaded.ok()) {
        info.loaded_chunks = (*loaded)->Marked().Count();
        info.total_chunks = (*loaded)->chunk_count();
      } else {
        info.initialization_error = loaded.status().message();
      }
    }
    if (info.total_chunks > 0 && info.loaded_chunks >= info.total_chunks) {
      record.initialization_state = LoadState::kCompleted;
      record.initialization_completed_at_ms = NowMs();
      (void)catalog_->Put(record);  // noticed again next time if this fails
    }
  }
  info.record = std::move(record);
  return info;
}

Status VolumeManager::AdvanceModifications(VolumeRecord* record) {
  if (record->modifications.empty()) return Status::Ok();
  Modification& m = record->modifications.back();
  if (m.state != ModificationState::kOptimizing || NowMs() < m.optimize_until_ms) return Status::Ok();
  m.state = ModificationState::kCompleted;
  m.completed_at_ms = std::max(NowMs(), m.optimize_until_ms);
  return catalog_->Put(*record);
}

Result<VolumeInfo> VolumeManager::Create(const std::string& name, const VolumeParams& params,
                                         const CreateOptions& options) {
  const LazyRestore* lazy = options.lazy ? &*options.lazy : nullptr;
  const EncryptionRequest* encryption = options.encryption ? &*options.encryption : nullptr;
  EBS_RETURN_IF_ERROR(ValidateName(name));
  auto config = ValidateCreate(params);
  if (!config.ok()) return config.status();
  std::lock_guard<std::mutex> lock(mu_);
  auto existing = catalog_->Get(name);
  if (existing.ok()) {
    return Status::AlreadyExists("InvalidParameterValue: volume '" + name + "' already exists");
  }
  if (existing.status().code() != ENOENT) return existing.status();
  VolumeRecord r;
  r.name = name;
  r.id = NewVolumeId();
  r.config = *config;
  r.created_at_ms = NowMs();
  r.state = options.restoring ? VolumeState::kCreating : VolumeState::kAvailable;
  r.source_snapshot = options.source_snapshot;
  r.last_cut = options.last_cut;
  if (lazy != nullptr) {
    r.initialization_state = LoadState::kLoading;
    r.initialization_rate_mibps = lazy->rate_mibps;
    r.initialization_chunk_size = lazy->chunk_size;
  }
  if (encryption != nullptr) {
    const std::string& key_name = encryption->key_name.empty() ? std::string(kDefaultKeyName) : encryption->key_name;
    auto master = encryption->key_name.empty() ? keys_->LoadOrCreate(key_name) : keys_->Load(key_name);
    if (!master.ok()) return master.status();
    std::string data_key;
    auto wrapped = keys_->NewDataKey(*master, SectorCipher::kKeySize, r.id, &data_key);
    OPENSSL_cleanse(data_key.data(), data_key.size());  // opened again, from the record, when used
    if (!wrapped.ok()) return wrapped.status();
    r.encryption = *wrapped;
  }
  // The file first, durable, then the record that names it: a crash in
  // between leaves an orphan file that the next Open removes.
  auto dev = FileDevice::Open(DataFilePath(r.id), r.config.size_bytes, /*create=*/true);
  if (!dev.ok()) return dev.status();
  dev->reset();
  // A new volume holds only zeros: nothing has changed yet.
  ChangeTracker::Options topts;
  topts.if_missing = ChangeTracker::IfMissing::kCreateEmpty;
  auto tracker = ChangeTracker::Open(ChangesFilePath(r.id), r.config.size_bytes, topts);
  if (!tracker.ok()) {
    unlink(DataFilePath(r.id).c_str());
    return tracker.status();
  }
  tracker->reset();
  if (lazy != nullptr) {
    Status st = HydrationLayer::CreateBitmap(LoadedFilePath(r.id), r.config.size_bytes, lazy->chunk_size);
    if (!st.ok()) {
      unlink(DataFilePath(r.id).c_str());
      (void)ChangeTracker::Remove(ChangesFilePath(r.id));
      return st;
    }
  }
  EBS_RETURN_IF_ERROR(SyncDirectory(data_dir_ + "/volumes"));
  Status st = catalog_->Put(r);
  if (!st.ok()) {
    unlink(DataFilePath(r.id).c_str());
    (void)ChangeTracker::Remove(ChangesFilePath(r.id));
    (void)ChangeTracker::Remove(LoadedFilePath(r.id));
    return st;
  }
  return InfoLocked(std::move(r));
}

Result<std::vector<VolumeInfo>> VolumeManager::List() {
  std::lock_guard<std::mutex> lock(mu_);
  auto records = catalog_->List();
  if (!records.ok()) return records.status();
  std::vector<VolumeInfo> out;
  for (auto& r : *records) {
    EBS_RETURN_IF_ERROR(AdvanceModifications(&r));
    out.push_back(InfoLocked(std::move(r)));
  }
  return out;
}

Result<VolumeInfo> VolumeManager::Describe(const std::string& name) {
  EBS_RETURN_IF_ERROR(ValidateName(name));
  std::lock_guard<std::mutex> lock(mu_);
  auto r = catalog_->Get(name);
  if (!r.ok()) return r.status();
  EBS_RETURN_IF_ERROR(AdvanceModifications(&*r));
  return InfoLocked(std::move(*r));
}

Status VolumeManager::Delete(const std::string& name, bool force) {
  EBS_RETURN_IF_ERROR(ValidateName(name));
  std::lock_guard<std::mutex> lock(mu_);
  auto r = catalog_->Get(name);
  if (!r.ok()) return r.status();
  auto it = open_.find(name);
  if (it != open_.end() && it->second->attachments() > 0) {
    if (!force) {
      return Status::Busy(fmt::format(
          "VolumeInUse: volume '{}' has {} open connection(s); disconnect them first or delete with --force",
          name, it->second->attachments()));
    }
  }
  if (it != open_.end()) {
    it->second->deleted_.store(true, std::memory_order_release);
    open_.erase(it);  // attachments keep the device open until they end
  }
  return RemoveLocked(*r);
}

Status VolumeManager::RemoveLocked(const VolumeRecord& r) {
  // The record first: a crash after it leaves files no record names, which
  // the next Open removes.
  EBS_RETURN_IF_ERROR(catalog_->Delete(r.name));
  if (unlink(DataFilePath(r.id).c_str()) != 0 && errno != ENOENT) {
    return Status::FromErrno(errno, "remove data file of " + r.name);
  }
  EBS_RETURN_IF_ERROR(ChangeTracker::Remove(ChangesFilePath(r.id)));
  EBS_RETURN_IF_ERROR(ChangeTracker::Remove(LoadedFilePath(r.id)));
  return SyncDirectory(data_dir_ + "/volumes");
}

Result<VolumeInfo> VolumeManager::Modify(const std::string& name, const VolumeParams& params) {
  EBS_RETURN_IF_ERROR(ValidateName(name));
  std::lock_guard<std::mutex> lock(mu_);
  auto r = catalog_->Get(name);
  if (!r.ok()) return r.status();
  EBS_RETURN_IF_ERROR(AdvanceModifications(&*r));
  auto next = ValidateModify(r->config, params);
  if (!next.ok()) return next.status();
  if (options_.modification_rate_limit && !r->modifications.empty()) {
    const Modification& last = r->modifications.back();
    if (last.state != ModificationState::kCompleted && last.state != ModificationState::kFailed) {
      return Status::Busy("IncorrectModificationState: volume '" + name + "' is still " + std::string(StateName(last.state)) +
                          " from its previous modification; wait until it is completed");
    }
    int64_t day_ago = NowMs() - 24 * 3600 * 1000;
    int recent = 0;
    for (const auto& m : r->modifications) recent += m.started_at_ms > day_ago ? 1 : 0;
    if (recent >= 4) {
      return Status::Busy("VolumeModificationRateExceeded: volume '" + name +
                          "' has been modified 4 times in the last 24 hours (the limit)");
    }
  }
  Modification m;
  m.state = ModificationState::kModifying;
  m.started_at_ms = NowMs();
  m.from = r->config;
  m.to = *next;
  r->modifications.push_back(m);
  EBS_RETURN_IF_ERROR(catalog_->Put(*r));

  // Apply: grow the data file (through the open device when attached so its
  // users see the new size), then the new configuration is in effect.
  Status applied = Status::Ok();
  if (next->size_bytes > r->config.size_bytes) {
    auto it = open_.find(name);
    if (it != open_.end()) {
      applied = it->second->device().Resize(next->size_bytes);
    } else if (truncate(DataFilePath(r->id).c_str(), static_cast<off_t>(next->size_bytes)) != 0) {
      applied = Status::FromErrno(errno, "grow data file of " + name);
    }
  }
  Modification& cur = r->modifications.back();
  if (!applied.ok()) {
    cur.state = ModificationState::kFailed;
    cur.completed_at_ms = NowMs();
    EBS_RETURN_IF_ERROR(catalog_->Put(*r));
    return applied;
  }
  r->config = *next;
  cur.state = ModificationState::kOptimizing;
  cur.optimizing_at_ms = NowMs();
  cur.optimize_until_ms = cur.optimizing_at_ms + options_.optimize_ms;
  EBS_RETURN_IF_ERROR(catalog_->Put(*r));
  if (auto it = open_.find(name); it != open_.end()) ApplyLimits(it->second.get(), cur);
  EBS_RETURN_IF_ERROR(AdvanceModifications(&*r));
  return InfoLocked(std::move(*r));
}

Result<std::unique_ptr<VolumeAttachment>> VolumeManager::Attach(const std::string& name) {
  EBS_RETURN_IF_ERROR(ValidateName(name));
  std::lock_guard<std::mutex> lock(mu_);
  auto vol = OpenLocked(name);
  if (!vol.ok()) return vol.status();
  (*vol)->attachments_.fetch_add(1);
  return std::make_unique<VolumeAttachment>(this, std::move(*vol));
}

Result<std::shared_ptr<Volume>> VolumeManager::OpenVolume(const std::string& name) {
  EBS_RETURN_IF_ERROR(ValidateName(name));
  std::lock_guard<std::mutex> lock(mu_);
  return OpenLocked(name);
}

Result<std::shared_ptr<SectorCipher>> VolumeManager::OpenCipher(const VolumeRecord& record) {
  if (!record.encryption) return std::shared_ptr<SectorCipher>();
  auto key = keys_->Unwrap(*record.encryption, record.id);
  if (!key.ok()) {
    return Status::Error(key.status().code(), "volume '" + record.name + "' is encrypted with key '" +
                                                  record.encryption->key_name + "': " + key.status().message());
  }
  auto cipher = SectorCipher::Create(*key);
  OPENSSL_cleanse(key->data(), key->size());
  return cipher;
}

Result<std::shared_ptr<Volume>> VolumeManager::OpenLocked(const std::string& name) {
  auto it = open_.find(name);
  if (it != open_.end()) return it->second;
  auto r = catalog_->Get(name);
  if (!r.ok()) return r.status();
  if (r->state == VolumeState::kCreating) {
    return Status::Busy("IncorrectState: volume '" + name + "' is being restored from snapshot " +
                        r->source_snapshot + "; it can be used once the restore completes");
  }
  EBS_RETURN_IF_ERROR(AdvanceModifications(&*r));
  auto cipher = OpenCipher(*r);
  if (!cipher.ok()) return cipher.status();
  if (options_.throttle && !scheduler_) scheduler_ = std::make_unique<ThrottleScheduler>(options_.clock);
  StackInputs in;
  in.record = &*r;
  in.options = &options_;
  in.data_path = DataFilePath(r->id);
  in.changes_path = ChangesFilePath(r->id);
  in.loaded_path = LoadedFilePath(r->id);
  in.cipher = *cipher;
  in.chunk_sources = &chunk_sources_;
  in.scheduler = options_.throttle ? scheduler_.get() : nullptr;
  auto built = VolumeStackBuilder::Build(in);
  if (!built.ok()) return built.status();
  std::shared_ptr<Volume> vol = std::move(*built);
  if (vol->throttle() != nullptr && !r->modifications.empty()) ApplyLimits(vol.get(), r->modifications.back());
  open_[name] = vol;
  VolumeStackBuilder::StartBackground(*vol);
  return vol;
}
void VolumeManager::Detach(Volume* volume) {
  // The volume stays open (counters, credits) until deleted or shut down.
  volume->attachments_.fetch_sub(1);
}

void VolumeManager::ApplyLimits(Volume* volume, const Modification& m) {
  if (volume->throttle_ == nullptr) return;
  PerformanceLimits target = ComputeLimits(m.to);
  if (m.state != ModificationState::kOptimizing) {
    volume->throttle_->SetLimits(target);
    return;
  }
  int64_t remaining_ns = std::max<int64_t>(0, m.optimize_until_ms - NowMs()) * 1'000'000;
  volume->throttle_->SetLimits(OptimizingLimits(m.from, m.to), target, options_.clock->NowNs() + remaining_ns);
}

nlohmann::json VolumeManager::StatsLocked(const VolumeRecord& record) {
  nlohmann::json j = {{"name", record.name}, {"id", record.id}, {"type", std::string(VolumeTypeName(record.config.type))}};
  auto it = open_.find(record.name);
  Volume* v = it == open_.end() ? nullptr : it->second.get();
  j["open"] = v != nullptr;
  j["attachments"] = v ? v->attachments() : 0;
  VolumeMetrics idle(options_.clock->NowNs());
  VolumeMetrics::Sample s = (v ? v->metrics() : idle).Read(options_.clock->NowNs());
  j["VolumeReadOps"] = s.read_ops;
  j["VolumeWriteOps"] = s.write_ops;
  j["VolumeReadBytes"] = s.read_bytes;
  j["VolumeWriteBytes"] = s.write_bytes;
  j["VolumeTotalReadTime"] = s.total_read_time_s;
  j["VolumeTotalWriteTime"] = s.total_write_time_s;
  j["VolumeIdleTime"] = s.idle_time_s;
  j["VolumeQueueLength"] = s.queue_length;
  const VolumeType type = record.config.type;
  const bool provisioned_iops = type == VolumeType::kIo1 || type == VolumeType::kIo2;
  // CloudWatch (using_cloudwatch_ebs): VolumeConsumedReadWriteOps and
  // VolumeThroughputPercentage are for Provisioned IOPS SSD (io1, io2) only;
  // the exceeded checks for every type but magnetic (standard).
  if (provisioned_iops) j["VolumeConsumedReadWriteOps"] = s.consumed_rw_ops;
  if (type != VolumeType::kStandard) {
    j["VolumeIOPSExceededCheck"] = s.iops_exceeded_last_minute ? 1 : 0;
    j["VolumeThroughputExceededCheck"] = s.throughput_exceeded_last_minute ? 1 : 0;
  }
  j["ThrottledTime"] = s.throttled_time_s;
  j["ThrottledRequests"] = s.throttled_requests;
  j["InFlight"] = s.in_flight;
  j["Errors"] = s.errors;
  j["ElapsedTime"] = s.elapsed_s;
  j["LatencyMicroseconds"] = {{"p50", s.latency_p50_us}, {"p90", s.latency_p90_us}, {"p99", s.latency_p99_us},
                              {"p99.9", s.latency_p999_us}};
  if (v != nullptr && v->hydration() != nullptr) {
    // First reads of chunks a lazy restore has not loaded yet wait for their fetch.
    const HydrationLayer* h = v->hydration();
    j["LazyLoad"] = {{"loaded_chunks", h->loaded_chunks()},
                     {"total_chunks", h->total_chunks()},
                     {"reads_waited_for_fetch", h->fetch_waits()},
                     {"fetch_wait_ms_total", static_cast<double>(h->fetch_wait_ns()) / 1e6}};
  }
  PerformanceLimits limits = ComputeLimits(record.config);
  double burst_balance = 100;
  if (v && v->throttle()) {
    ThrottleLayer::State t = v->throttle()->Read();
    burst_balance = t.burst_balance_percent;
    j["Throttle"] = {{"enabled", true},
                     {"current_iops_limit", t.current_iops},
                     {"current_throughput_limit_mibps", t.current_throughput_mibps},
                     {"io_credits", t.io_credits},
                     {"throughput_credits_mib", t.throughput_credits_mib},
                     {"waiting", t.waiting}};
  } else {
    j["Throttle"] = {{"enabled", v ? false : options_.throttle}};
  }
  // What the exceeded checks and the throttle's accounting rest on: seconds
  // held back on each limit in the last minute, counted I/Os (merged).
  j["Throttle"]["iops_limited_seconds"] = s.iops_exceeded_seconds;
  j["Throttle"]["throughput_limited_seconds"] = s.throughput_exceeded_seconds;
  j["Throttle"]["counted_ios"] = s.consumed_ops;
  // CloudWatch reports BurstBalance for gp2, st1 and sc1 only (using_cloudwatch_ebs);
  // standard's credits are ours, not a metric. A gp2 of 1,000 GiB and more has no bucket.
  if ((type == VolumeType::kGp2 || type == VolumeType::kSt1 || type == VolumeType::kSc1) &&
      (limits.io_credit_bucket > 0 || limits.throughput_credit_bucket_mib > 0)) {
    j["BurstBalance"] = burst_balance;
  }
  j["PeriodSeconds"] = s.period_s;
  if (provisioned_iops) {
    // Without a throttle (--no-throttle) nothing counts I/Os the EBS way;
    // then the delivered I/Os are VolumeConsumedReadWriteOps' count.
    VolumeMetrics::Sample delivered = s;
    if (v == nullptr || v->throttle() == nullptr) {
      delivered.period_consumed_ops = static_cast<double>(s.period_consumed_rw_ops);
    }
    j["VolumeThroughputPercentage"] = VolumeMetrics::ThroughputPercentage(delivered, record.config.iops);
  }
  return j;
}

Result<nlohmann::json> VolumeManager::Stats(const std::string& name) {
  EBS_RETURN_IF_ERROR(ValidateName(name));
  std::lock_guard<std::mutex> lock(mu_);
  auto r = catalog_->Get(name);
  if (!r.ok()) return r.status();
  return StatsLocked(*r);
}

Result<std::vector<nlohmann::json>> VolumeManager::AllStats() {
  std::lock_guard<std::mutex> lock(mu_);
  auto records = catalog_->List();
  if (!records.ok()) return records.status();
  std::vector<nlohmann::json> out;
  for (const auto& r : *records) out.push_back(StatsLocked(r));
  return out;
}

}  // namespace ebs
