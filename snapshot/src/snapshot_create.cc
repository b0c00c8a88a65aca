#include "snapshot_create.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <iterator>
#include <map>
#include <optional>
#include <unordered_map>

#include <fmt/format.h>

#include "ebs/engine/time.h"
#include "ebs/engine/volume_record.h"
#include "ebs/engine/log.h"
#include "ebs/engine/progress.h"
#include "ebs/engine/size.h"
#include "ebs/snapshot/chunk_codec.h"
#include "ebs/snapshot/manifest.h"
#include "parallel.h"
#include "records.h"

namespace ebs::snapshot {
namespace {

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
  EBS_RETURN_IF_ERROR(device.Map(0, size, &extents, BlockDevice::kAllExtents));
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

}  // namespace

// One volume's part in a snapshot: what it held at the previous cut, what
// changed since, and the chunks read (or copied out) for this one.
struct SnapshotCreator::Job {
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
    bool pinned = false;  // counted in the store's pins (SnapshotCreator::Unpin)
  };
  std::vector<Slot> slots;
  bool fork_pinned = false;  // fork_map's objects are counted in the store's pins
  ~Job() {
    if (fd >= 0) ::close(fd);
  }
};

Result<std::vector<SnapshotRecord>> SnapshotCreator::Create(const std::vector<std::string>& volumes,
                                                            const std::string& description) {
  if (volumes.empty()) return Status::InvalidArgument("name at least one volume to snapshot");
  for (size_t i = 0; i < volumes.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (volumes[i] == volumes[j]) return Status::InvalidArgument("volume '" + volumes[i] + "' is named twice");
    }
  }
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
  for (auto& j : jobs) j->volume->FreezeWrites();
  Status cut = Status::Ok();
  for (auto& j : jobs) {
    if (cut.ok()) cut = CutJob(*j);
  }
  for (auto& j : jobs) j->volume->ThawWrites(cut.ok() ? j->session : nullptr);
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

Result<std::unique_ptr<SnapshotCreator::Job>> SnapshotCreator::PrepareJob(const std::string& volume,
                                                                          const std::string& description) {
  auto info = ctx_.volumes->Describe(volume);
  if (!info.ok()) return info.status();
  auto vol = ctx_.volumes->OpenVolume(volume);
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
  rec.chunk_size = ctx_.chunk_size;
  rec.created_at_ms = NowMs();
  rec.description = description;
  if (vr.encryption) {
    // Chunks and manifest under the volume's master key: a missing or
    // re-created key stops the snapshot here, before anything is cut.
    rec.key_name = vr.encryption->key_name;
    rec.key_id = vr.encryption->key_id;
    auto crypto = ctx_.CryptoFor(rec);
    if (!crypto.ok()) return crypto.status();
    job->crypto = *crypto;
  }

  auto members = ctx_.index->ListLineage(rec.lineage);
  if (!members.ok()) return members.status();
  rec.seq = members->empty() ? 1 : members->back().seq + 1;
  if (!members->empty()) {
    // The parent: the newest completed snapshot of this volume's lineage,
    // or the snapshot its base copies (a retired member in between is
    // absorbed when this one completes).
    auto parent = ctx_.Predecessor(rec.lineage, rec.seq);
    if (!parent.ok()) return parent.status();
    rec.parent_id = parent->second;
    auto map = ctx_.index->ChangedChunks(rec.lineage, 0, members->back().seq);
    if (!map.ok()) return map.status();
    for (const auto& e : *map) {
      if (!e.hash.IsZeroChunk()) job->lineage_base[e.chunk] = e.hash;
    }
    // The tracker's marks are relative to its last cut: usable only if that
    // cut was this chain's newest snapshot (not one in another store).
    job->full = vr.last_cut != ctx_.CutName(rec.lineage, members->back().seq);
    job->base_has_unloaded = true;
  } else if (!vr.source_snapshot.empty() && vr.last_cut == ctx_.CutName("restore", 0, vr.source_snapshot)) {
    // A volume restored from a snapshot and not snapshotted since: its
    // tracker has recorded changes since the restore, so unchanged chunks
    // are the source's (and already in the store).
    auto src = ctx_.index->GetSnapshot(vr.source_snapshot);
    // Its chunks count as this volume's only under the same key (a restore
    // under another key or into an encrypted volume re-encrypted them).
    if (src.ok() && src->state == SnapshotState::kCompleted && src->chunk_size == ctx_.chunk_size &&
        src->key_id == rec.key_id) {
      auto map = ctx_.FullMap(*src);
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
  EBS_RETURN_IF_ERROR(ctx_.index->PutSnapshot(rec));
  if (!job->fork_map.empty()) {
    // The fork base names the source's objects: kept until this snapshot
    // references them, whatever another job of this Create frees.
    for (const auto& e : job->fork_map) ctx_.pins.Pin(e.hash);
    job->fork_pinned = true;
  }
  return job;
}

Status SnapshotCreator::CutJob(Job& job) {
  Volume& vol = *job.volume;
  job.rec.volume_size = vol.device().size();
  const uint64_t chunks = ChunkCount(job.rec.volume_size, ctx_.chunk_size);
  auto cut = vol.CutChanges();
  if (!cut.ok()) return cut.status();
  job.cut_generation = cut->generation;
  // The chunks whose content may differ from the previous cut, in the
  // store's chunk size.
  std::vector<uint64_t> candidates;
  auto allocated_or_base = [&]() -> Result<std::vector<uint64_t>> {
    auto allocated = AllocatedChunks(vol.device(), job.rec.volume_size, ctx_.chunk_size);
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
        const uint64_t first = t * tcs / ctx_.chunk_size;
        const uint64_t last = std::min(((t + 1) * tcs - 1) / ctx_.chunk_size, chunks == 0 ? 0 : chunks - 1);
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
  if (vol.Loading() && job.base_has_unloaded) {
    std::erase_if(candidates,
                  [&](uint64_t c) { return vol.Untouched(c * ctx_.chunk_size, ctx_.chunk_size); });
  }
  job.slots.assign(candidates.size(), {});
  // Made before the session, which may call StoreChunk as soon as writes resume.
  job.progress = std::make_unique<ProgressReporter>("uploading " + job.rec.volume_name, candidates.size());
  Job* jp = &job;
  std::shared_ptr<Volume> volume = job.volume;
  job.session = std::make_shared<CopyOutSession>(
      [volume](uint64_t offset, size_t length, char* buf) { return volume->ReadStored(offset, length, buf); },
      job.rec.volume_size, ctx_.chunk_size, std::move(candidates),
      [this, jp](size_t position, const std::string& data) { return StoreChunk(*jp, position, data); });
  return Status::Ok();
}

Status SnapshotCreator::StoreChunk(Job& job, size_t position, const std::string& data) {
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
  // Two workers storing the same content store it once: the second waits
  // for the first, then finds the object there. Pinned before it is looked
  // for: an object found here is not deleted before this snapshot
  // references it (ObjectPins).
  ctx_.pins.BeginPut(s.hash);
  s.pinned = true;
  auto exists = ctx_.store->Exists(key);
  Status st = exists.status();
  if (st.ok() && !*exists) {
    // Durable before the manifest names it: CommitJob flushes the store.
    st = ctx_.store->PutBatched(key, object);
    if (st.ok()) s.stored = object.size();
  }
  ctx_.pins.EndPut(s.hash);
  return st;
}

Status SnapshotCreator::UploadJob(Job& job) {
  CopyOutSession& session = *job.session;
  // Twice the workers: the store writes large objects directly, so a worker
  // waits for the disk while the others hash and compress.
  Status st = ParallelFor(session.size(), 2 * ctx_.workers, [&](size_t i) -> Status {
    thread_local std::string buf;
    return session.Process(i, &buf);
  });
  if (!st.ok()) session.Cancel(st);
  Status copied = session.Wait();  // chunks writers took are handed over too
  job.progress.reset();
  if (job.volume) job.volume->DetachCopyOut();
  return st.ok() ? copied : st;
}

Status SnapshotCreator::CommitJob(Job& job) {
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
  const uint64_t chunks = ChunkCount(rec.volume_size, ctx_.chunk_size);
  std::vector<DeltaEntry> delta;
  MapDigest digest;
  for (const auto& [chunk, hash] : now) {
    if (chunk >= chunks) continue;
    digest.Add(chunk, hash);
    rec.logical_bytes += ChunkBytes(chunk, rec.volume_size, ctx_.chunk_size);
    auto it = job.lineage_base.find(chunk);
    if (it == job.lineage_base.end() || !(it->second == hash)) delta.push_back({chunk, hash});
  }
  for (const auto& [chunk, hash] : job.lineage_base) {
    if (!now.count(chunk) && chunk < chunks) delta.push_back({chunk, ContentHash::ZeroChunk()});
  }
  std::sort(delta.begin(), delta.end(), [](const DeltaEntry& a, const DeltaEntry& b) { return a.chunk < b.chunk; });
  rec.changed_bytes = DataBytes(delta, rec.volume_size, ctx_.chunk_size);
  for (const auto& slot : job.slots) {
    rec.stored_bytes += slot.stored;
    if (slot.stored > 0) rec.new_bytes += slot.bytes;
  }
  const Manifest m = ManifestOf(rec, std::move(delta), digest.value());
  // The chunks, then the manifest, are durable before the index points at
  // the snapshot.
  EBS_RETURN_IF_ERROR(ctx_.store->Flush());
  ForkBase base;
  if (!job.fork_source.empty()) {
    // The fork's base has a manifest of its own, so the store alone still
    // describes this lineage after its source snapshot is deleted.
    SnapshotRecord base_rec = rec;
    base_rec.id = BaseId(rec.lineage);
    base_rec.seq = 1;
    base_rec.parent_id = job.fork_source;
    base_rec.volume_size = job.fork_volume_size;
    base_rec.description = "base of " + rec.volume_name + "'s snapshots: a copy of " + job.fork_source + "'s map";
    MapDigest base_digest;
    for (const auto& e : job.fork_map) base_digest.Add(e.chunk, e.hash);
    const Manifest b = ManifestOf(base_rec, job.fork_map, base_digest.value());
    auto encoded_base = EncodeManifest(b, job.crypto.get());
    if (!encoded_base.ok()) return encoded_base.status();
    EBS_RETURN_IF_ERROR(ctx_.store->Put(ManifestKey(b.snapshot_id), *encoded_base));
    base = {b.sequence, job.fork_source, job.fork_map};
  }
  auto encoded = EncodeManifest(m, job.crypto.get());
  if (!encoded.ok()) return encoded.status();
  EBS_RETURN_IF_ERROR(ctx_.store->Put(ManifestKey(rec.id), *encoded));
  rec.state = SnapshotState::kCompleted;
  Status st = ctx_.index->CompleteSnapshot(rec, m.delta, job.fork_source.empty() ? nullptr : &base);
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
  //
  // The volume's last cut names this snapshot before the cut is forgotten:
  // whoever reads the tracker's unsnapshotted changes and then the last cut
  // (a dirty bitmap) never sees the cut gone and the older snapshot named.
  // A crash in between leaves the cut set, merged back on open: extra marks.
  if (job.cut_generation) {
    Status c = ctx_.volumes->SetLastCut(rec.volume_name, rec.volume_id, ctx_.CutName(rec.lineage, rec.seq));
    if (c.ok()) c = job.volume->SyncData();
    if (c.ok()) {
      c = job.volume->CommitCut(*job.cut_generation);
    } else {
      (void)job.volume->AbortCut(*job.cut_generation);  // the marks stay: the next snapshot reads them again
    }
    job.cut_generation.reset();
    if (!c.ok()) {
      LogWarning(fmt::format("snapshot {}: forgetting the cut failed (the next snapshot reads its chunks again): {}",
                             rec.id, c.message()));
    }
  }
  // Housekeeping: the snapshot is complete whatever happens here.
  Status absorbed = lineages_.AbsorbRetired(rec);
  if (absorbed.ok()) {
    // Its parent and delta may have changed: report what the index holds.
    if (auto now = ctx_.index->GetSnapshot(rec.id); now.ok()) rec = std::move(*now);
  } else {
    LogWarning(fmt::format("snapshot {}: folding in a deleted predecessor failed (store gc will free its objects): {}",
                           rec.id, absorbed.message()));
  }
  return Status::Ok();
}

void SnapshotCreator::FailJob(Job& job, const Status& why) {
  if (job.session) {
    job.session->Cancel(why);
    (void)job.session->Wait();
    if (job.volume) job.volume->DetachCopyOut();
  }
  if (job.cut_generation) {
    // The changes of the failed cut go back into the current set.
    Status st = job.volume->AbortCut(*job.cut_generation);
    if (!st.ok()) {
      LogWarning(fmt::format("snapshot {}: returning tracked changes failed: {}", job.rec.id, st.message()));
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
  for (const auto& h : used) (void)ctx_.pins.DeleteUnused(*ctx_.store, ctx_.index.get(), h);
  // Nor may a manifest be left for a snapshot the index never completed.
  if (Status st = ctx_.DropUncommittedManifests(job.rec); !st.ok()) {
    LogWarning(fmt::format("snapshot {}: removing its manifest failed: {}", job.rec.id, st.message()));
  }
  job.rec.state = SnapshotState::kError;
  job.rec.error = why.message();
  (void)ctx_.index->PutSnapshot(job.rec);
}

void SnapshotCreator::Unpin(Job& job) {
  for (auto& slot : job.slots) {
    if (slot.pinned) ctx_.pins.Unpin(slot.hash);
    slot.pinned = false;
  }
  if (job.fork_pinned) {
    for (const auto& e : job.fork_map) ctx_.pins.Unpin(e.hash);
    job.fork_pinned = false;
  }
}

Result<SnapshotRecord> SnapshotCreator::Import(const std::string& file, const std::string& name,
                                               const std::string& description) {
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
  rec.chunk_size = ctx_.chunk_size;
  rec.created_at_ms = NowMs();
  rec.description = description.empty() ? "imported from " + file : description;
  EBS_RETURN_IF_ERROR(ctx_.index->PutSnapshot(rec));
  auto chunks = AllocatedChunks(fd, static_cast<uint64_t>(st.st_size), ctx_.chunk_size);
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
        read_image, static_cast<uint64_t>(st.st_size), ctx_.chunk_size, std::move(*chunks),
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

}  // namespace ebs::snapshot
