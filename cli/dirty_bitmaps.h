// The qemu:dirty-bitmap:SNAP-ID contexts of `ebs serve`, at the store's
// chunk size (a chunk is dirty or not as a whole):
// - on snapshot export B: what differs between SNAP-ID and B, the same
//   chunks as `ebs snapshot diff SNAP-ID B`, fixed for the connection;
// - on a volume export: what changed since SNAP-ID, whether or not a later
//   snapshot was taken: the deltas from SNAP-ID to the volume's last cut
//   (the index) and whatever its change tracker holds since (every write
//   acknowledged so far). Asked afresh by every query, so writes made while
//   the connection is open are in it. It may report more than changed
//   (a cut whose snapshot never completed), never less.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ebs/engine/volume.h"
#include "ebs/engine/volume_manager.h"
#include "ebs/nbd/export_provider.h"
#include "ebs/snapshot/snapshot_service.h"

namespace ebs::cli {

// Chunks of `chunk_size` (a sorted list) over an export of `size` bytes.
std::unique_ptr<nbd::ChangeMap> FixedChangeMap(std::vector<uint64_t> dirty_chunks, uint64_t chunk_size,
                                               uint64_t size);

// Open volume `volume` (named `name`) since snapshot `since`; reads its
// last cut and tracker from the volume itself, never the catalog.
std::unique_ptr<nbd::ChangeMap> VolumeChangeMap(snapshot::SnapshotService* service, const std::string& name,
                                                Volume* volume, std::string since);

}  // namespace ebs::cli
