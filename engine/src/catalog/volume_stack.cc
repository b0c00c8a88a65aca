#include "catalog/volume_stack.h"

#include <fmt/format.h>

#include "ebs/engine/log.h"
#include "io/file_device.h"
#include "keys/sector_cipher.h"
#include "layers/change_tracker.h"
#include "layers/copy_on_write_layer.h"
#include "layers/encryption_layer.h"
#include "layers/fault_layer.h"
#include "layers/hydration_layer.h"
#include "layers/metrics_layer.h"
#include "layers/throttle_layer.h"
#include "ebs/engine/performance_model.h"

namespace ebs {
namespace {

using Stack = std::shared_ptr<BlockDevice>;

// One layer's step: the stack so far gains this layer (or stays as it is
// when the volume has none of it). Runs with the volume half built: the
// fields of layers below are set.
struct Build {
  const StackInputs& in;
};
using StackStep = Result<Stack> (*)(Build& b, Stack below, VolumeParts& vol);

// An encrypted volume's file holds AES-XTS sectors (encryption.md).
Result<Stack> AddEncryption(Build& b, Stack below, VolumeParts& vol) {
  if (!b.in.cipher) return below;
  return Stack(std::make_shared<EncryptionLayer>(std::move(below), b.in.cipher, vol.file->fd()));
}

// Marks chunks durably before they change (change_tracker.h). The tracking
// file is made with the volume; lost or damaged, every chunk counts as
// changed so the next snapshot misses nothing.
Result<Stack> AddChangeTracking(Build& b, Stack below, VolumeParts& vol) {
  ChangeTracker::Options topts;
  topts.if_missing = ChangeTracker::IfMissing::kCreateAllMarked;
  const uint64_t size = b.in.record->config.size_bytes;
  auto tracker = ChangeTracker::Open(b.in.changes_path, size, topts);
  if (!tracker.ok() && tracker.status().code() == EBADMSG) {
    LogWarning(fmt::format("volume {}: change tracking file damaged ({}); the next snapshot reads every chunk",
                           vol.name, tracker.status().message()));
    EBS_RETURN_IF_ERROR(ChangeTracker::Remove(b.in.changes_path));
    tracker = ChangeTracker::Open(b.in.changes_path, size, topts);
  }
  if (!tracker.ok()) return tracker.status();
  vol.tracker = *tracker;
  return Stack(std::make_shared<ChangeTrackingLayer>(std::move(below), *tracker));
}

// A volume restored lazily loads each chunk before first use (hydration_layer.h).
Result<Stack> AddHydration(Build& b, Stack below, VolumeParts& vol) {
  const VolumeRecord& r = *b.in.record;
  if (r.initialization_state != LoadState::kLoading) return below;
  if (b.in.chunk_sources == nullptr || !*b.in.chunk_sources) {
    return Status::Busy("volume '" + r.name + "' is still loading from snapshot " + r.source_snapshot +
                        " and its snapshot store is not open here");
  }
  auto source = (*b.in.chunk_sources)(r);
  if (!source.ok()) {
    return Status::Error(source.status().code(), "volume '" + r.name + "' is loading from snapshot " +
                                                     r.source_snapshot + ": " + source.status().message());
  }
  HydrationLayer::Options hopts;
  hopts.chunk_size = r.initialization_chunk_size;
  hopts.rate_mibps = r.initialization_rate_mibps;
  hopts.cipher = vol.cipher;
  auto h = HydrationLayer::Open(std::move(below), b.in.data_path, b.in.loaded_path, std::move(*source), hopts);
  if (!h.ok()) return h.status();
  vol.hydration = h->get();
  return Stack(*h);
}

// Freezes writes for a snapshot's cut and copies chunks out before they change.
Result<Stack> AddCopyOnWrite(Build&, Stack below, VolumeParts& vol) {
  auto cow = std::make_shared<CopyOnWriteLayer>(std::move(below));
  vol.copy_on_write = cow.get();
  return Stack(std::move(cow));
}

// Test-only faults (`ebs serve --inject-fault`), per volume.
Result<Stack> AddFaults(Build& b, Stack below, VolumeParts& vol) {
  for (const FaultSpec& f : b.in.options->faults) {
    if (f.volume == vol.name) below = std::make_shared<FaultLayer>(std::move(below), f);
  }
  return below;
}

// The volume type's limits (performance.md); waiting here spends no tokens below.
Result<Stack> AddThrottle(Build& b, Stack below, VolumeParts& vol) {
  if (b.in.scheduler == nullptr) return below;
  auto throttle = std::make_shared<ThrottleLayer>(std::move(below), ComputeLimits(b.in.record->config),
                                                  b.in.scheduler, vol.metrics.get(), b.in.options->clock);
  vol.throttle = throttle.get();
  return Stack(std::move(throttle));
}

// Counts what the client sees (CloudWatch's metrics), on top of everything.
Result<Stack> AddMetrics(Build& b, Stack below, VolumeParts& vol) {
  return Stack(std::make_shared<MetricsLayer>(std::move(below), vol.metrics.get(), b.in.options->clock));
}

// The stack, bottom (the data file) to top (what clients call). The order
// matters; docs/snapshots.md and design.md say why each sits where it does.
constexpr StackStep kVolumeStack[] = {
    &AddEncryption,      // the data file's ciphertext
    &AddChangeTracking,  // a mark before any change reaches the file
    &AddHydration,       // loading a chunk is not a change
    &AddCopyOnWrite,     // the cut sees everything below as the volume
    &AddFaults,          // tests: fail before copy-out and tracking
    &AddThrottle,        // the type's limits
    &AddMetrics,         // the client's view
};

}  // namespace

Result<std::shared_ptr<Volume>> VolumeStackBuilder::Build(const StackInputs& in) {
  const VolumeRecord& r = *in.record;
  auto vol = std::make_shared<Volume>();
  vol->name_ = r.name;
  vol->id_ = r.id;
  vol->source_snapshot_ = r.source_snapshot;
  vol->last_cut_ = r.last_cut;
  vol->metrics_ = std::make_unique<VolumeMetrics>(in.options->clock->NowNs());
  vol->cipher_ = in.cipher;
  auto dev = FileDevice::Open(in.data_path, r.config.size_bytes, /*create=*/false);
  if (!dev.ok()) return dev.status();
  vol->file_ = *dev;
  Stack stack = *dev;
  ebs::Build b{in};
  VolumeParts parts{vol->name_,    vol->metrics_,   vol->throttle_, vol->tracker_, vol->copy_on_write_,
                    vol->hydration_, vol->cipher_, vol->file_};
  for (StackStep step : kVolumeStack) {
    auto next = step(b, std::move(stack), parts);
    if (!next.ok()) return next.status();
    stack = std::move(*next);
  }
  vol->device_ = std::move(stack);
  return vol;
}

void VolumeStackBuilder::StartBackground(Volume& volume) {
  if (volume.hydration_ != nullptr) volume.hydration_->StartBackground();
}

}  // namespace ebs
