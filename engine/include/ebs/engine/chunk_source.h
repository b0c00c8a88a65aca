// Where a lazily restored volume's chunks come from: the snapshot store
// gives the volume manager one per volume (VolumeManager::SetChunkSourceFactory).
#pragma once

#include <cstdint>
#include <string>

#include "ebs/engine/status.h"

namespace ebs {

// Where a lazily restored volume's chunks come from (a snapshot store).
class ChunkSource {
 public:
  virtual ~ChunkSource() = default;
  // The content of chunk `chunk`: its bytes (at most the chunk size), or
  // empty for a chunk of zeros. Blocking; called from several threads.
  virtual Status Fetch(uint64_t chunk, std::string* data) = 0;
  // False when the chunk holds only zeros (nothing to fetch). Fast.
  virtual bool HasData(uint64_t chunk) const = 0;
  // What the volume is loaded from, for messages ("snapshot snap-...").
  virtual std::string Describe() const = 0;
};

}  // namespace ebs
