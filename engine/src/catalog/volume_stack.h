// Builds an open volume's I/O stack from its catalog record. The layers and
// their order are one list in volume_stack.cc (kVolumeStack): adding a layer
// is one line there and one function beside it.
#pragma once

#include <memory>
#include <string>

#include "ebs/engine/chunk_source.h"
#include "ebs/engine/volume.h"
#include "ebs/engine/volume_manager.h"
#include "ebs/engine/volume_record.h"

namespace ebs {

class ThrottleScheduler;

// What building one volume's stack needs from its manager.
struct StackInputs {
  const VolumeRecord* record = nullptr;
  const ManagerOptions* options = nullptr;
  std::string data_path;      // the data file
  std::string changes_path;   // its change-tracking file
  std::string loaded_path;    // a lazy restore's record of loaded chunks
  std::shared_ptr<SectorCipher> cipher;        // null for a plain volume
  ChunkSourceFactory* chunk_sources = nullptr;  // may be empty
  ThrottleScheduler* scheduler = nullptr;       // null with throttling off
};

// The parts of a volume its layers fill in while the stack is built (the
// builder, a friend of Volume, hands the steps this view).
struct VolumeParts {
  const std::string& name;
  std::unique_ptr<VolumeMetrics>& metrics;
  ThrottleLayer*& throttle;
  std::shared_ptr<ChangeTracker>& tracker;
  CopyOnWriteLayer*& copy_on_write;
  HydrationLayer*& hydration;
  const std::shared_ptr<SectorCipher>& cipher;
  std::shared_ptr<FileDevice>& file;
};

class VolumeStackBuilder {
 public:
  // The volume with its stack, not yet started (StartBackground below).
  static Result<std::shared_ptr<Volume>> Build(const StackInputs& in);
  // Starts what runs by itself once the volume is open (a lazy restore's
  // background loading).
  static void StartBackground(Volume& volume);
};

}  // namespace ebs
