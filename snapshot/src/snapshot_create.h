// Creating snapshots: for each volume, record it pending and find what it
// is a delta against; take the cut of all volumes at one instant (writes
// held for a moment); read and store the chunks that may have changed
// (copy-before-write guards them from writers meanwhile); write the
// manifest and complete it in the index; or mark it failed and remove what
// it stored. Importing a raw image runs the same pipeline over a file.
//
// REQUIRES: external synchronization (SnapshotService's lock); the upload
// runs on worker threads of its own.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "lineage.h"
#include "store_context.h"

namespace ebs::snapshot {

class SnapshotCreator {
 public:
  SnapshotCreator(StoreContext& ctx, Lineages& lineages) : ctx_(ctx), lineages_(lineages) {}

  // One snapshot per volume, all taken at one instant.
  Result<std::vector<SnapshotRecord>> Create(const std::vector<std::string>& volumes, const std::string& description);
  // A snapshot of a raw image file (SnapshotService::Import).
  Result<SnapshotRecord> Import(const std::string& file, const std::string& name, const std::string& description);

 private:
  struct Job;
  Result<std::unique_ptr<Job>> PrepareJob(const std::string& volume, const std::string& description);
  Status CutJob(Job& job);
  Status UploadJob(Job& job);
  Status CommitJob(Job& job);
  void FailJob(Job& job, const Status& why);
  // Encodes one chunk's content as of the cut and stores it if new.
  Status StoreChunk(Job& job, size_t position, const std::string& data);
  // Releases the job's pins (its objects are referenced, or it failed).
  void Unpin(Job& job);

  StoreContext& ctx_;
  Lineages& lineages_;
};

}  // namespace ebs::snapshot
