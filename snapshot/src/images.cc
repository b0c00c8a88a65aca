#include "images.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <span>
#include <unordered_map>

#include <fmt/format.h>

#include "ebs/engine/file_util.h"
#include "ebs/engine/progress.h"
#include "ebs/engine/size.h"
#include "ebs/snapshot/chunk_codec.h"
#include "parallel.h"
#include "records.h"

namespace ebs::snapshot {
namespace {

// The chunks of one snapshot, for a volume restored lazily from it. Holds
// the snapshot's map and the store, so it outlives the service.
class SnapshotChunkSource final : public ChunkSource {
 public:
  // `cached`: objects are read through the store's cache (a snapshot export
  // reads them again and again; a lazy restore once).
  SnapshotChunkSource(std::shared_ptr<ObjectStore> store, std::string id, const std::vector<DeltaEntry>& map,
                      std::shared_ptr<const ChunkCrypto> crypto, bool cached)
      : store_(std::move(store)), id_(std::move(id)), crypto_(std::move(crypto)), cached_(cached) {
    for (const auto& e : map) map_.emplace(e.chunk, e.hash);
  }
  Status Fetch(uint64_t chunk, std::string* data) override {
    auto it = map_.find(chunk);
    if (it == map_.end()) {
      data->clear();  // zeros
      return Status::Ok();
    }
    auto object = cached_ ? store_->GetCached(ChunkKey(it->second)) : store_->Get(ChunkKey(it->second));
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
  const bool cached_;
  std::unordered_map<uint64_t, ContentHash> map_;
};

}  // namespace

Result<VolumeInfo> Images::Restore(const std::string& id, const std::string& volume, VolumeParams params,
                           std::optional<double> lazy_rate_mibps, std::optional<EncryptionRequest> encryption) {
  auto record = ctx_.index->GetSnapshot(id);
  if (!record.ok()) return record.status();  // the index names the missing snapshot
  // Everything that can refuse the restore is checked before the volume exists.
  auto checked = Checked(std::move(*record));
  if (!checked.ok()) return Status::Error(checked.status().code(), "restore refused: " + checked.status().message());
  const auto& [r, map, crypto] = *checked;
  if (!r.key_id.empty() && (!encryption || encryption->key_name.empty())) {
    encryption = EncryptionRequest{r.key_name};  // stays encrypted, by default under its own key
  }
  if (!params.size_bytes) params.size_bytes = r.volume_size;
  if (*params.size_bytes < r.volume_size) {
    return Status::InvalidArgument(fmt::format("InvalidParameterValue: size {} is smaller than the snapshot's {}",
                                               FormatSize(*params.size_bytes), FormatSize(r.volume_size)));
  }
  if (!params.type) params.type = VolumeType::kGp3;
  CreateOptions options;
  options.source_snapshot = id;
  options.encryption = encryption;
  // The volume's tracker counts from the restore: its first snapshot is a
  // delta against the source (PrepareJob).
  options.last_cut = ctx_.CutName("restore", 0, id);
  if (lazy_rate_mibps) {
    if (*lazy_rate_mibps < 0) return Status::InvalidArgument("InvalidParameterValue: --initialization-rate must be positive");
    options.lazy = LazyRestore{r.chunk_size, *lazy_rate_mibps};
    auto info = ctx_.volumes->Create(volume, params, options);
    if (!info.ok()) return info.status();
    if (serving_) {
      auto opened = ctx_.volumes->OpenVolume(volume);  // starts loading in the background
      if (!opened.ok()) return opened.status();
    }
    return ctx_.volumes->Describe(volume);
  }
  // Created `creating`: nobody may open it before every chunk is in place,
  // and if this process dies first, the next open of the data directory
  // removes it.
  options.restoring = true;
  auto info = ctx_.volumes->Create(volume, params, options);
  if (!info.ok()) return info.status();
  // Its data file through its cipher, opened the way serving opens it.
  auto writer = ctx_.volumes->OpenRestoreWriter(volume, info->record.id);
  Status st = writer.status();
  if (st.ok()) st = WriteImage(r, map, crypto.get(), **writer);
  if (st.ok()) st = ctx_.volumes->FinishRestore(volume, info->record.id);
  if (!st.ok()) {
    // No half-restored volume is left behind to be mistaken for a good one.
    (void)ctx_.volumes->Delete(volume, /*force=*/true);
    return Status::Error(st.code(), "restore refused: " + st.message());
  }
  return ctx_.volumes->Describe(volume);
}

Status Images::WriteImage(const SnapshotRecord& r, const std::vector<DeltaEntry>& map, const ChunkCrypto* crypto,
                          ImageWriter& out) {
  ProgressReporter progress("writing " + r.id, map.size());
  // Direct writes wait for the disk: twice the workers keep it busy while
  // the others decode.
  const int workers = out.direct() ? 2 * ctx_.workers : ctx_.workers;
  Status st = ParallelFor(map.size(), workers, [&](size_t i) -> Status {
    progress.Add();
    thread_local ChunkCodec codec;
    thread_local AlignedBuffer aligned;
    const DeltaEntry& e = map[i];
    auto object = ctx_.store->Get(ChunkKey(e.hash));
    if (!object.ok()) {
      return Status::IoError(fmt::format("snapshot {} chunk {}: object {} unreadable: {}", r.id, e.chunk,
                                         e.hash.ToHex(), object.status().message()));
    }
    const size_t capacity = (r.chunk_size + kDirectIoAlign - 1) / kDirectIoAlign * kDirectIoAlign;
    std::span<char> buf = aligned.Get(capacity);
    if (buf.empty()) return Status::Error(ENOMEM, "cannot allocate a buffer for writing the image");
    auto n = codec.Decode(*object, e.hash, buf.first(r.chunk_size), crypto);
    if (!n.ok()) return Status::IoError(fmt::format("snapshot {} chunk {} is corrupt: {}", r.id, e.chunk, n.status().message()));
    return out.Write(e.chunk * r.chunk_size, buf.data(), *n, capacity);
  });
  if (st.ok()) st = out.Sync();
  return st;
}

Result<nlohmann::json> Images::Export(const std::string& id, const std::string& file, bool force) {
  auto r = ctx_.index->GetSnapshot(id);
  if (!r.ok()) return r.status();  // the index names the missing snapshot
  auto map = ctx_.FullMap(*r);
  if (!map.ok()) return map.status();
  auto crypto = ctx_.CryptoFor(*r);
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
  {
    ImageWriter out(fd, nullptr, tmp);  // closes fd
    if (s.ok()) s = WriteImage(*r, *map, crypto->get(), out);
  }
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

Result<Images::CheckedSnapshot> Images::Checked(SnapshotRecord r) {
  auto map = ctx_.FullMap(r);
  if (!map.ok()) return map.status();
  auto crypto = ctx_.CryptoFor(r);
  if (!crypto.ok()) return crypto.status();
  if (Status m = ctx_.CheckManifest(r, crypto->get()); !m.ok()) {
    return Status::Error(m.code(), "snapshot " + r.id + ": " + m.message());
  }
  return CheckedSnapshot{std::move(r), std::move(*map), std::move(*crypto)};
}

Result<SnapshotImage> Images::OpenImage(const std::string& id) {
  auto record = ctx_.index->GetSnapshot(id);
  if (!record.ok()) return record.status();
  auto checked = Checked(std::move(*record));
  if (!checked.ok()) return checked.status();
  const auto& [r, map, crypto] = *checked;
  return SnapshotImage{r, std::make_shared<SnapshotChunkSource>(ctx_.store, r.id, map, crypto, /*cached=*/true)};
}

Result<std::shared_ptr<ChunkSource>> Images::ChunkSourceFor(const VolumeRecord& v) {
  auto r = ctx_.index->GetSnapshot(v.source_snapshot);
  if (!r.ok()) return Status::NotFound("its source snapshot " + v.source_snapshot + " is not in this store");
  if (r->chunk_size != v.initialization_chunk_size) {
    return Status::InvalidArgument("its source snapshot " + v.source_snapshot + " has another chunk size");
  }
  auto map = ctx_.FullMap(*r);
  if (!map.ok()) return map.status();
  auto crypto = ctx_.CryptoFor(*r);
  if (!crypto.ok()) return crypto.status();
  return std::shared_ptr<ChunkSource>(std::make_shared<SnapshotChunkSource>(ctx_.store, r->id, *map, *crypto, /*cached=*/false));
}

}  // namespace ebs::snapshot
