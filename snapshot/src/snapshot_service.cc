#include "ebs/snapshot/snapshot_service.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>

#include "ebs/engine/catalog.h"
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

Status ReadChunk(int fd, uint64_t chunk, uint32_t chunk_size, uint64_t volume_size, std::string* buf) {
  uint64_t off = chunk * chunk_size;
  size_t len = static_cast<size_t>(std::min<uint64_t>(chunk_size, volume_size - off));
  buf->assign(len, '\0');
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, buf->data() + done, len - done, static_cast<off_t>(off + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read chunk " + std::to_string(chunk));
    }
    if (n == 0) break;  // past the end of a short file: zeros
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

nlohmann::json SnapshotToJson(const SnapshotRecord& r) {
  double ratio = r.stored_bytes > 0 ? static_cast<double>(r.changed_bytes) / static_cast<double>(r.stored_bytes) : 0;
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
          {"error", r.error.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.error)}};
}

Result<std::unique_ptr<SnapshotService>> SnapshotService::Open(const std::string& root, VolumeManager* volumes,
                                                               uint32_t chunk_size, int workers) {
  EBS_RETURN_IF_ERROR(ValidateChunkSize(chunk_size));
  std::unique_ptr<SnapshotService> s(new SnapshotService());
  s->volumes_ = volumes;
  s->workers_ = std::max(1, workers);
  auto store = DirectoryObjectStore::Open(root);
  if (!store.ok()) return store.status();
  s->store_ = std::move(*store);
  auto config = s->store_->Get(kStoreConfigKey);
  if (config.ok()) {
    auto j = nlohmann::json::parse(*config, nullptr, false);
    if (j.is_discarded() || !j.contains("chunk_size")) return Status::IoError("corrupt store config in " + root);
    s->chunk_size_ = j["chunk_size"].get<uint32_t>();
  } else if (config.status().code() == ENOENT) {
    s->chunk_size_ = chunk_size;
    EBS_RETURN_IF_ERROR(s->store_->Put(kStoreConfigKey, nlohmann::json{{"format", 1}, {"chunk_size", chunk_size}}.dump()));
  } else {
    return config.status();
  }
  auto index = SnapshotIndex::Open(root + "/index");
  if (!index.ok()) return index.status();
  s->index_ = std::move(*index);
  return s;
}

Result<std::vector<SnapshotRecord>> SnapshotService::Create(const std::vector<std::string>& volumes,
                                                            const std::string& description) {
  if (volumes.empty()) return Status::InvalidArgument("name at least one volume to snapshot");
  std::lock_guard<std::mutex> lock(mu_);
  // Hold every volume first: with none attached, the cut is one instant
  // across all of them.
  std::vector<std::string> held;
  auto release = [&] {
    for (const auto& v : held) volumes_->EndExclusive(v);
  };
  for (const auto& v : volumes) {
    Status st = volumes_->BeginExclusive(v);
    if (!st.ok()) {
      release();
      return st;
    }
    held.push_back(v);
  }
  std::vector<SnapshotRecord> out;
  for (const auto& v : volumes) {
    auto r = CreateOne(v, description);
    if (!r.ok()) {
      release();
      return r.status();
    }
    out.push_back(*r);
  }
  release();
  return out;
}

Result<SnapshotRecord> SnapshotService::CreateOne(const std::string& volume, const std::string& description) {
  auto info = volumes_->Describe(volume);
  if (!info.ok()) return info.status();
  const VolumeRecord& vr = info->record;
  SnapshotRecord rec;
  rec.id = NewSnapshotId();
  rec.state = SnapshotState::kPending;
  rec.volume_name = vr.name;
  rec.volume_id = vr.id;
  rec.lineage = vr.id;
  rec.volume_size = vr.config.size_bytes;
  rec.chunk_size = chunk_size_;
  rec.created_at_ms = NowMs();
  rec.description = description;

  // The parent: the newest snapshot of this volume's lineage.
  auto all = index_->ListSnapshots();
  if (!all.ok()) return all.status();
  const SnapshotRecord* parent = nullptr;
  for (const auto& r : *all) {
    if (r.lineage == rec.lineage && r.state == SnapshotState::kCompleted && (!parent || r.seq > parent->seq)) parent = &r;
  }
  auto members = index_->ListLineage(rec.lineage);
  if (!members.ok()) return members.status();
  rec.seq = members->empty() ? 1 : members->back().seq + 1;
  if (parent) rec.parent_id = parent->id;
  EBS_RETURN_IF_ERROR(index_->PutSnapshot(rec));

  auto fail = [&](const Status& st) -> Status {
    rec.state = SnapshotState::kError;
    rec.error = st.message();
    (void)index_->PutSnapshot(rec);
    return st;
  };

  // What the lineage holds now (the base this snapshot is a delta against).
  std::unordered_map<uint64_t, ContentHash> base;
  if (!members->empty()) {
    auto map = index_->ChangedChunks(rec.lineage, 0, members->back().seq);
    if (!map.ok()) return fail(map.status());
    for (const auto& e : *map) {
      if (!e.hash.IsZeroChunk()) base[e.chunk] = e.hash;
    }
  }
  std::string path = volumes_->DataFilePath(vr.id);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(Status::FromErrno(errno, "open " + path));
  auto allocated = AllocatedChunks(fd, rec.volume_size, chunk_size_);
  if (!allocated.ok()) {
    ::close(fd);
    return fail(allocated.status());
  }
  // Candidates: chunks with data now, and chunks that had data before (they
  // may have become holes).
  std::vector<uint64_t> candidates = *allocated;
  for (const auto& [chunk, hash] : base) candidates.push_back(chunk);
  std::sort(candidates.begin(), candidates.end());
  candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());

  struct Slot {
    ContentHash hash;
    uint64_t bytes = 0;
    uint64_t stored = 0;
  };
  std::vector<Slot> slots(candidates.size());
  std::mutex put_mu;  // two workers uploading the same new content store it once
  Status st = ParallelFor(candidates.size(), workers_, [&](size_t i) -> Status {
    thread_local ChunkCodec codec;
    thread_local std::string buf, object;
    uint64_t chunk = candidates[i];
    EBS_RETURN_IF_ERROR(ReadChunk(fd, chunk, chunk_size_, rec.volume_size, &buf));
    Slot& s = slots[i];
    if (IsAllZero(buf.data(), buf.size())) {
      s.hash = ContentHash::ZeroChunk();
      return Status::Ok();
    }
    s.bytes = buf.size();
    EBS_RETURN_IF_ERROR(codec.Encode(buf.data(), buf.size(), &object, &s.hash));
    auto it = base.find(chunk);
    if (it != base.end() && it->second == s.hash) return Status::Ok();  // unchanged
    std::string key = ChunkKey(s.hash);
    std::lock_guard<std::mutex> lock(put_mu);
    auto exists = store_->Exists(key);
    if (!exists.ok()) return exists.status();
    if (!*exists) {
      EBS_RETURN_IF_ERROR(store_->Put(key, object));
      s.stored = object.size();
    }
    return Status::Ok();
  });
  ::close(fd);
  if (!st.ok()) return fail(st);

  Manifest m;
  m.snapshot_id = rec.id;
  m.volume_name = rec.volume_name;
  m.volume_id = rec.volume_id;
  m.lineage_id = rec.lineage;
  m.sequence = rec.seq;
  m.parent_snapshot_id = rec.parent_id;
  m.volume_size = rec.volume_size;
  m.chunk_size = chunk_size_;
  m.created_at_ms = rec.created_at_ms;
  m.description = description;
  MapDigest digest;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const uint64_t chunk = candidates[i];
    const Slot& s = slots[i];
    auto it = base.find(chunk);
    bool had = it != base.end();
    if (!s.hash.IsZeroChunk()) {
      rec.logical_bytes += s.bytes;
      digest.Add(chunk, s.hash);
    }
    bool changed = had ? !(it->second == s.hash) : !s.hash.IsZeroChunk();
    if (!changed) continue;
    m.delta.push_back({chunk, s.hash});
    rec.changed_bytes += s.hash.IsZeroChunk() ? 0 : s.bytes;
    rec.stored_bytes += s.stored;
  }
  m.map_digest = digest.value();
  // The manifest is durable before the index points at the snapshot.
  auto encoded = EncodeManifest(m);
  if (!encoded.ok()) return fail(encoded.status());
  st = store_->Put(ManifestKey(rec.id), *encoded);
  if (!st.ok()) return fail(st);
  rec.state = SnapshotState::kCompleted;
  st = index_->CompleteSnapshot(rec, m.delta);
  if (!st.ok()) return fail(st);
  return rec;
}

Result<std::vector<SnapshotRecord>> SnapshotService::List() {
  std::lock_guard<std::mutex> lock(mu_);
  return index_->ListSnapshots();
}

Result<SnapshotRecord> SnapshotService::Describe(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = index_->GetSnapshot(id);
  if (!r.ok() && r.status().code() == ENOENT) {
    return Status::NotFound("InvalidSnapshot.NotFound: snapshot '" + id + "' does not exist");
  }
  return r;
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

Result<VolumeInfo> SnapshotService::Restore(const std::string& id, const std::string& volume, VolumeParams params) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = index_->GetSnapshot(id);
  if (!r.ok()) {
    if (r.status().code() == ENOENT) return Status::NotFound("InvalidSnapshot.NotFound: snapshot '" + id + "' does not exist");
    return r.status();
  }
  auto map = FullMap(*r);
  if (!map.ok()) return map.status();
  if (!params.size_bytes) params.size_bytes = r->volume_size;
  if (*params.size_bytes < r->volume_size) {
    return Status::InvalidArgument(fmt::format("InvalidParameterValue: size {} is smaller than the snapshot's {}",
                                               FormatSize(*params.size_bytes), FormatSize(r->volume_size)));
  }
  if (!params.type) params.type = VolumeType::kGp3;
  // Nobody may attach the new volume before every chunk is in place.
  EBS_RETURN_IF_ERROR(volumes_->BeginExclusive(volume));
  auto info = volumes_->Create(volume, params, id);
  if (!info.ok()) {
    volumes_->EndExclusive(volume);
    return info.status();
  }
  std::string path = volumes_->DataFilePath(info->record.id);
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  Status st = fd < 0 ? Status::FromErrno(errno, "open " + path) : Status::Ok();
  if (st.ok()) {
    st = ParallelFor(map->size(), workers_, [&](size_t i) -> Status {
      thread_local ChunkCodec codec;
      thread_local std::string data;
      const DeltaEntry& e = (*map)[i];
      auto object = store_->Get(ChunkKey(e.hash));
      if (!object.ok()) {
        return Status::IoError(fmt::format("snapshot {} chunk {}: object {} unreadable: {}", id, e.chunk,
                                           e.hash.ToHex(), object.status().message()));
      }
      Status d = codec.Decode(*object, e.hash, &data);
      if (!d.ok()) return Status::IoError(fmt::format("snapshot {} chunk {} is corrupt: {}", id, e.chunk, d.message()));
      uint64_t off = e.chunk * r->chunk_size;
      size_t done = 0;
      while (done < data.size()) {
        ssize_t n = pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(off + done));
        if (n < 0) {
          if (errno == EINTR) continue;
          return Status::FromErrno(errno, "write restored chunk " + std::to_string(e.chunk));
        }
        done += static_cast<size_t>(n);
      }
      return Status::Ok();
    });
    if (st.ok() && fdatasync(fd) != 0) st = Status::FromErrno(errno, "sync restored volume");
    ::close(fd);
  }
  volumes_->EndExclusive(volume);
  if (!st.ok()) {
    // No half-restored volume is left behind to be mistaken for a good one.
    (void)volumes_->Delete(volume, /*force=*/true);
    return Status::Error(st.code(), "restore refused: " + st.message());
  }
  return volumes_->Describe(volume);
}

Result<nlohmann::json> SnapshotService::Diff(const std::string& from, const std::string& to) {
  std::lock_guard<std::mutex> lock(mu_);
  auto a = index_->GetSnapshot(from);
  if (!a.ok()) return Status::NotFound("InvalidSnapshot.NotFound: snapshot '" + from + "' does not exist");
  auto b = index_->GetSnapshot(to);
  if (!b.ok()) return Status::NotFound("InvalidSnapshot.NotFound: snapshot '" + to + "' does not exist");
  if (a->lineage != b->lineage) {
    return Status::InvalidArgument("snapshots " + from + " and " + to + " are of different volumes (lineages)");
  }
  uint64_t lo = std::min(a->seq, b->seq), hi = std::max(a->seq, b->seq);
  auto changed = index_->ChangedChunks(a->lineage, lo, hi);
  if (!changed.ok()) return changed.status();
  nlohmann::json chunks = nlohmann::json::array();
  const uint64_t size = std::max(a->volume_size, b->volume_size);
  for (const auto& e : *changed) {
    uint64_t off = e.chunk * a->chunk_size;
    chunks.push_back({{"chunk", e.chunk},
                      {"offset", off},
                      {"length", std::min<uint64_t>(a->chunk_size, size - off)},
                      {"zero", e.hash.IsZeroChunk()}});
  }
  return nlohmann::json{{"from", from}, {"to", to}, {"chunk_size", a->chunk_size},
                        {"changed_chunks", changed->size()}, {"chunks", chunks}};
}

Result<nlohmann::json> SnapshotService::Verify(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto r = index_->GetSnapshot(id);
  if (!r.ok()) return Status::NotFound("InvalidSnapshot.NotFound: snapshot '" + id + "' does not exist");
  nlohmann::json bad = nlohmann::json::array();
  auto manifest = store_->Get(ManifestKey(id));
  if (!manifest.ok()) {
    bad.push_back({{"object", ManifestKey(id)}, {"error", manifest.status().message()}});
  } else if (auto m = DecodeManifest(*manifest); !m.ok()) {
    bad.push_back({{"object", ManifestKey(id)}, {"error", m.status().message()}});
  }
  auto map = FullMap(*r);
  if (!map.ok()) return map.status();
  std::mutex mu;
  Status st = ParallelFor(map->size(), workers_, [&](size_t i) -> Status {
    thread_local ChunkCodec codec;
    thread_local std::string data;
    const DeltaEntry& e = (*map)[i];
    auto object = store_->Get(ChunkKey(e.hash));
    Status problem = object.ok() ? codec.Decode(*object, e.hash, &data) : object.status();
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
  if (!r.ok()) return Status::NotFound("InvalidSnapshot.NotFound: snapshot '" + id + "' does not exist");
  auto all = index_->ListSnapshots();
  if (!all.ok()) return all.status();
  auto outcome = index_->DeleteSnapshot(id);
  if (!outcome.ok()) return outcome.status();
  // The snapshot that absorbed the deleted one's entries now differs from
  // its new parent: rewrite its manifest so the store stays self-describing.
  if (outcome->absorbed_into) {
    const SnapshotRecord* next = nullptr;
    const SnapshotRecord* prev = nullptr;
    for (const auto& s : *all) {
      if (s.lineage != r->lineage || s.id == id) continue;
      if (s.seq == *outcome->absorbed_into) next = &s;
      if (s.seq < r->seq && (!prev || s.seq > prev->seq)) prev = &s;
    }
    if (next) {
      auto bytes = store_->Get(ManifestKey(next->id));
      if (bytes.ok()) {
        auto m = DecodeManifest(*bytes);
        auto delta = index_->ChangedChunks(r->lineage, prev ? prev->seq : 0, next->seq);
        if (m.ok() && delta.ok()) {
          m->parent_snapshot_id = prev ? prev->id : "";
          m->delta = *delta;
          auto encoded = EncodeManifest(*m);
          if (encoded.ok()) EBS_RETURN_IF_ERROR(store_->Put(ManifestKey(next->id), *encoded));
          SnapshotRecord updated = *next;
          updated.parent_id = prev ? prev->id : "";
          EBS_RETURN_IF_ERROR(index_->PutSnapshot(updated));
        }
      }
    }
  }
  // Objects nobody references any more.
  uint64_t freed = 0;
  for (const auto& h : outcome->released) {
    EBS_RETURN_IF_ERROR(store_->Delete(ChunkKey(h)));
    ++freed;
  }
  // A retired snapshot stays the base of the next one: keep its manifest.
  if (!outcome->retired) EBS_RETURN_IF_ERROR(store_->Delete(ManifestKey(id)));
  return nlohmann::json{{"id", id}, {"deleted", true}, {"objects_freed", freed}};
}

Result<nlohmann::json> SnapshotService::Gc() {
  std::lock_guard<std::mutex> lock(mu_);
  auto keys = store_->List(kChunkKeyPrefix);
  if (!keys.ok()) return keys.status();
  uint64_t removed = 0;
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
  return nlohmann::json{{"objects_examined", keys->size()}, {"objects_removed", removed}};
}

Result<nlohmann::json> SnapshotService::Check() {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json problems = nlohmann::json::array();
  auto refs = index_->ListRefCounts();
  if (!refs.ok()) return refs.status();
  for (const auto& [hash, count] : *refs) {
    auto exists = store_->Exists(ChunkKey(hash));
    if (!exists.ok()) return exists.status();
    if (!*exists) problems.push_back({{"object", ChunkKey(hash)}, {"error", "referenced but missing"}});
  }
  auto keys = store_->List(kChunkKeyPrefix);
  if (!keys.ok()) return keys.status();
  for (const auto& key : *keys) {
    auto h = ContentHash::FromHex(key.substr(key.rfind('/') + 1));
    if (!h.ok()) {
      problems.push_back({{"object", key}, {"error", "not a chunk object name"}});
      continue;
    }
    auto n = index_->RefCount(*h);
    if (!n.ok()) return n.status();
    if (*n == 0) problems.push_back({{"object", key}, {"error", "not referenced by any snapshot (store gc removes it)"}});
  }
  return nlohmann::json{{"objects", keys->size()}, {"referenced", refs->size()}, {"ok", problems.empty()},
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
    auto r = service->Restore(args.at("id").get<std::string>(), args.at("volume").get<std::string>(), *p);
    if (!r.ok()) return r.status();
    return r->ToJson();
  });
  registry->Register("snapshot.diff", [service](const nlohmann::json& args) {
    return service->Diff(args.at("from").get<std::string>(), args.at("to").get<std::string>());
  });
  registry->Register("snapshot.verify", [service](const nlohmann::json& args) {
    return service->Verify(args.at("id").get<std::string>());
  });
  registry->Register("snapshot.delete", [service](const nlohmann::json& args) {
    return service->Delete(args.at("id").get<std::string>());
  });
  registry->Register("store.gc", [service](const nlohmann::json&) { return service->Gc(); });
  registry->Register("store.check", [service](const nlohmann::json&) { return service->Check(); });
}

}  // namespace ebs::snapshot
