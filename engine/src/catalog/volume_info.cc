// The describe document of a volume (`ebs volume describe --json`, the
// control socket, and what the API front ends build on).
#include <nlohmann/json.hpp>

#include "ebs/engine/size.h"
#include "ebs/engine/time.h"
#include "ebs/engine/volume_manager.h"
#include "ebs/engine/performance_model.h"

namespace ebs {
namespace {

nlohmann::json ConfigJson(const VolumeConfig& c) {
  nlohmann::json j = {{"type", std::string(VolumeTypeName(c.type))},
                      {"size_bytes", c.size_bytes},
                      {"size", FormatSize(c.size_bytes)}};
  j["iops"] = c.iops ? nlohmann::json(c.iops) : nlohmann::json(nullptr);
  j["throughput_mibps"] = c.throughput_mibps ? nlohmann::json(c.throughput_mibps) : nlohmann::json(nullptr);
  return j;
}

}  // namespace

nlohmann::json VolumeInfo::ToJson() const {
  const VolumeConfig& c = record.config;
  PerformanceLimits limits = ComputeLimits(c);
  nlohmann::json j = ConfigJson(c);
  j["name"] = record.name;
  j["id"] = record.id;
  j["state"] = attachments > 0 ? std::string("in-use") : std::string(StateName(record.state));
  j["attachments"] = attachments;
  j["created"] = FormatTime(record.created_at_ms);
  j["source_snapshot"] = record.source_snapshot.empty() ? nlohmann::json(nullptr)
                                                        : nlohmann::json(record.source_snapshot);
  j["encrypted"] = record.encryption.has_value();
  j["key"] = record.encryption ? nlohmann::json(record.encryption->key_name) : nlohmann::json(nullptr);
  j["key_id"] = record.encryption ? nlohmann::json(record.encryption->key_id) : nlohmann::json(nullptr);
  if (record.initialization_state != LoadState::kNone) {
    nlohmann::json init = {{"state", std::string(StateName(record.initialization_state))},
                           {"mode", "lazy"},
                           {"rate_mibps", record.initialization_rate_mibps > 0
                                              ? nlohmann::json(record.initialization_rate_mibps)
                                              : nlohmann::json(nullptr)}};
    if (record.initialization_state == LoadState::kLoading) {
      init["loaded_chunks"] = loaded_chunks;
      init["total_chunks"] = total_chunks;
      init["progress_percent"] = total_chunks > 0 ? 100.0 * static_cast<double>(loaded_chunks) /
                                                        static_cast<double>(total_chunks)
                                                  : 0.0;
      init["error"] = initialization_error.empty() ? nlohmann::json(nullptr) : nlohmann::json(initialization_error);
      // First reads of chunks not loaded yet wait for their fetch (read-through).
      init["reads_waited_for_fetch"] = fetch_waits;
      init["fetch_wait_ms_total"] = static_cast<double>(fetch_wait_ns) / 1e6;
      init["fetch_wait_ms_mean"] =
          fetch_waits > 0 ? static_cast<double>(fetch_wait_ns) / 1e6 / static_cast<double>(fetch_waits) : 0.0;
    } else {
      init["completed"] = FormatTime(record.initialization_completed_at_ms);
    }
    j["initialization"] = init;
  }
  j["performance"] = {{"baseline_iops", limits.baseline_iops},
                      {"burst_iops", limits.burst_iops},
                      {"baseline_throughput_mibps", limits.baseline_throughput_mibps},
                      {"burst_throughput_mibps", limits.burst_throughput_mibps},
                      {"io_credit_bucket", limits.io_credit_bucket},
                      {"throughput_credit_bucket_mib", limits.throughput_credit_bucket_mib},
                      {"io_unit_bytes", limits.io_unit_bytes}};
  nlohmann::json mods = nlohmann::json::array();
  for (const auto& m : record.modifications) {
    mods.push_back({{"state", std::string(StateName(m.state))},
                    {"started", FormatTime(m.started_at_ms)},
                    {"optimizing_since", FormatTime(m.optimizing_at_ms)},
                    {"completed", FormatTime(m.completed_at_ms)},
                    {"from", ConfigJson(m.from)},
                    {"to", ConfigJson(m.to)}});
  }
  j["modifications"] = mods;
  j["modification_state"] = record.modifications.empty() ? nlohmann::json(nullptr)
                                                         : nlohmann::json(std::string(StateName(record.modifications.back().state)));
  return j;
}

}  // namespace ebs
