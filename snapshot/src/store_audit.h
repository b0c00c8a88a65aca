// The store's audit: reading every object of a snapshot back (verify),
// rebuilding the index from the manifests (reindex), collecting what no
// snapshot references (gc), checking that index and store agree (check),
// and finishing what a process that died left pending.
//
// REQUIRES: external synchronization (SnapshotService's lock).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "lineage.h"
#include "store_context.h"

namespace ebs::snapshot {

class StoreAudit {
 public:
  StoreAudit(StoreContext& ctx, Lineages& lineages) : ctx_(ctx), lineages_(lineages) {}

  // The SnapshotService operations of the same names.
  Result<nlohmann::json> Verify(const std::string& id);
  Result<nlohmann::json> Reindex(bool force);
  Result<nlohmann::json> Gc();
  Result<nlohmann::json> Check();
  // Snapshots left pending by a process that died are marked failed, and
  // the objects they uploaded are collected.
  Status RecoverInterrupted();

 private:
  StoreContext& ctx_;
  Lineages& lineages_;
};

}  // namespace ebs::snapshot
