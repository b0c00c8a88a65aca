#include "dirty_bitmaps.h"

#include <algorithm>

namespace ebs::cli {
namespace {

// Appends [pos, end) to `out` as one extent, merged with the last one when
// it continues it in the same state; false once `max` extents are full.
bool Append(std::vector<nbd::DirtyExtent>* out, size_t first, size_t max, uint64_t pos, uint64_t end, bool dirty) {
  if (out->size() > first && out->back().dirty == dirty && out->back().offset + out->back().length == pos) {
    out->back().length += end - pos;
    return true;
  }
  if (out->size() - first == max) return false;
  out->push_back({pos, end - pos, dirty});
  return true;
}

// Walks [offset, offset + length) chunk by chunk, asking `dirty(chunk)`.
template <typename F>
void Walk(uint64_t offset, uint64_t length, uint64_t size, uint64_t chunk_size, std::vector<nbd::DirtyExtent>* out,
          size_t max, F dirty) {
  const size_t first = out->size();
  const uint64_t end = std::min(offset + length, size);
  for (uint64_t pos = offset; pos < end;) {
    const uint64_t c = pos / chunk_size;
    const uint64_t next = std::min(end, (c + 1) * chunk_size);
    if (!Append(out, first, max, pos, next, dirty(c))) return;
    pos = next;
  }
}

class Fixed final : public nbd::ChangeMap {
 public:
  Fixed(std::vector<uint64_t> chunks, uint64_t chunk_size, uint64_t size)
      : chunks_(std::move(chunks)), chunk_size_(chunk_size), size_(size) {}
  Status Map(uint64_t offset, uint64_t length, std::vector<nbd::DirtyExtent>* out, size_t max) override {
    Walk(offset, length, size_, chunk_size_, out, max,
         [&](uint64_t c) { return std::binary_search(chunks_.begin(), chunks_.end(), c); });
    return Status::Ok();
  }

 private:
  const std::vector<uint64_t> chunks_;
  const uint64_t chunk_size_;
  const uint64_t size_;
};

class OfVolume final : public nbd::ChangeMap {
 public:
  OfVolume(snapshot::SnapshotService* service, std::string name, Volume* volume, std::string since)
      : service_(service), name_(std::move(name)), volume_(volume), since_(std::move(since)) {}

  Status Map(uint64_t offset, uint64_t length, std::vector<nbd::DirtyExtent>* out, size_t max) override {
    // The tracker first, then the last cut: a snapshot completing between
    // the two names itself as the last cut before its cut set leaves the
    // tracker (snapshot_create.cc), so nothing falls in the gap.
    const ChangeSet tracked = volume_->UnsnapshottedChanges();
    // From the open volume, not the catalog: no manager lock on the loop.
    VolumeRecord v;
    v.name = name_;
    v.id = volume_->id();
    v.source_snapshot = volume_->source_snapshot();
    v.last_cut = volume_->last_cut();
    if (!known_ || v.last_cut != cut_) {
      auto changed = service_->ChangedSinceLastCut(v, since_);
      if (!changed.ok()) return changed.status();
      base_ = std::move(*changed);
      cut_ = v.last_cut;
      known_ = true;
    }
    const uint64_t cs = service_->chunk_size();
    const uint64_t tcs = tracked.chunk_size;
    Walk(offset, length, volume_->device().size(), cs, out, max, [&](uint64_t c) {
      if (!base_ || std::binary_search(base_->begin(), base_->end(), c)) return true;
      // The tracker's chunks overlapping store chunk c.
      for (uint64_t t = c * cs / tcs; t <= ((c + 1) * cs - 1) / tcs; ++t) {
        if (tracked.Contains(t)) return true;
      }
      return false;
    });
    return Status::Ok();
  }

 private:
  snapshot::SnapshotService* const service_;
  const std::string name_;
  Volume* const volume_;
  const std::string since_;
  bool known_ = false;
  std::string cut_;  // the last cut base_ was computed for
  std::optional<std::vector<uint64_t>> base_;  // nullopt: unknown, all dirty
};

}  // namespace

std::unique_ptr<nbd::ChangeMap> FixedChangeMap(std::vector<uint64_t> dirty_chunks, uint64_t chunk_size,
                                               uint64_t size) {
  return std::make_unique<Fixed>(std::move(dirty_chunks), chunk_size, size);
}

std::unique_ptr<nbd::ChangeMap> VolumeChangeMap(snapshot::SnapshotService* service, const std::string& name,
                                                Volume* volume, std::string since) {
  return std::make_unique<OfVolume>(service, name, volume, std::move(since));
}

}  // namespace ebs::cli
