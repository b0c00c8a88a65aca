// The snapshot and store commands of the command registry (control socket,
// CLI without a server): arguments from JSON, results as JSON.
#include "ebs/engine/time.h"
#include "ebs/engine/volume_record.h"
#include "ebs/engine/control.h"
#include "ebs/snapshot/snapshot_service.h"

namespace ebs::snapshot {

nlohmann::json SnapshotToJson(const SnapshotRecord& r) {
  // How well the objects it stored compressed (what deduplication saved is
  // not compression: a snapshot that stored nothing new has no ratio).
  nlohmann::json ratio = r.stored_bytes > 0 && r.new_bytes > 0
                             ? nlohmann::json(static_cast<double>(r.new_bytes) / static_cast<double>(r.stored_bytes))
                             : nlohmann::json(nullptr);
  return {{"id", r.id},
          {"state", std::string(SnapshotStateName(r.state))},
          {"volume", r.volume_name},
          {"volume_id", r.volume_id},
          {"parent", r.parent_id.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.parent_id)},
          {"sequence", r.seq},
          {"volume_size_bytes", r.volume_size},
          {"chunk_size", r.chunk_size},
          {"logical_bytes", r.logical_bytes},
          {"changed_bytes", r.changed_bytes},
          {"stored_bytes", r.stored_bytes},
          {"compression_ratio", ratio},
          {"created", FormatTime(r.created_at_ms)},
          {"description", r.description},
          {"encrypted", !r.key_id.empty()},
          {"key", r.key_id.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.key_name)},
          {"key_id", r.key_id.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.key_id)},
          {"error", r.error.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.error)}};
}

void RegisterSnapshotCommands(CommandRegistry* registry, SnapshotService* service) {
  registry->Register("snapshot.create", [service](const nlohmann::json& args) -> Result<nlohmann::json> {
    auto vols = args.at("volumes").get<std::vector<std::string>>();
    auto r = service->Create(vols, args.value("description", std::string()));
    if (!r.ok()) return r.status();
    nlohmann::json out = nlohmann::json::array();
    for (const auto& s : *r) out.push_back(SnapshotToJson(s));
    return out;
  });
  registry->Register("snapshot.list", [service](const nlohmann::json&) -> Result<nlohmann::json> {
    auto r = service->List();
    if (!r.ok()) return r.status();
    nlohmann::json out = nlohmann::json::array();
    for (const auto& s : *r) out.push_back(SnapshotToJson(s));
    return out;
  });
  registry->Register("snapshot.describe", [service](const nlohmann::json& args) -> Result<nlohmann::json> {
    auto r = service->Describe(args.at("id").get<std::string>());
    if (!r.ok()) return r.status();
    return SnapshotToJson(*r);
  });
  registry->Register("snapshot.restore", [service](const nlohmann::json& args) -> Result<nlohmann::json> {
    auto p = VolumeParamsFromArgs(args);
    if (!p.ok()) return p.status();
    std::optional<double> lazy;
    if (args.value("lazy", false)) lazy = args.value("initialization_rate_mibps", 0.0);
    auto r = service->Restore(args.at("id").get<std::string>(), args.at("volume").get<std::string>(), *p, lazy,
                              EncryptionFromArgs(args));
    if (!r.ok()) return r.status();
    return r->ToJson();
  });
  registry->Register("snapshot.diff", [service](const nlohmann::json& args) {
    return service->Diff(args.at("from").get<std::string>(), args.at("to").get<std::string>(),
                         args.value("ranges", false));
  });
  registry->Register("snapshot.verify", [service](const nlohmann::json& args) {
    return service->Verify(args.at("id").get<std::string>());
  });
  registry->Register("snapshot.delete", [service](const nlohmann::json& args) {
    return service->Delete(args.at("id").get<std::string>());
  });
  registry->Register("snapshot.export", [service](const nlohmann::json& args) {
    return service->Export(args.at("id").get<std::string>(), args.at("file").get<std::string>(),
                           args.value("force", false));
  });
  registry->Register("snapshot.import", [service](const nlohmann::json& args) -> Result<nlohmann::json> {
    auto r = service->Import(args.at("file").get<std::string>(), args.at("name").get<std::string>(),
                             args.value("description", std::string()));
    if (!r.ok()) return r.status();
    return SnapshotToJson(*r);
  });
  registry->Register("store.reindex",
                     [service](const nlohmann::json& args) { return service->Reindex(args.value("force", false)); });
  registry->Register("store.gc", [service](const nlohmann::json&) { return service->Gc(); });
  registry->Register("store.check", [service](const nlohmann::json&) { return service->Check(); });
}

}  // namespace ebs::snapshot
