// The volume commands of the control channel: JSON arguments in, the
// describe documents out. Shared by the CLI (in-process) and the server.
#include <nlohmann/json.hpp>

#include "ebs/engine/control.h"
#include "ebs/engine/volume_manager.h"

namespace ebs {

Result<VolumeParams> VolumeParamsFromArgs(const nlohmann::json& args) {
  VolumeParams p;
  if (args.contains("type") && !args["type"].is_null()) {
    auto t = ParseVolumeType(args["type"].get<std::string>());
    if (!t.ok()) return t.status();
    p.type = *t;
  }
  if (args.contains("size_bytes") && !args["size_bytes"].is_null()) p.size_bytes = args["size_bytes"].get<uint64_t>();
  if (args.contains("iops") && !args["iops"].is_null()) {
    int64_t v = args["iops"].get<int64_t>();
    if (v <= 0 || v > UINT32_MAX) return Status::InvalidArgument("InvalidParameterValue: iops " + std::to_string(v) + " is out of range");
    p.iops = static_cast<uint32_t>(v);
  }
  if (args.contains("throughput_mibps") && !args["throughput_mibps"].is_null()) {
    int64_t v = args["throughput_mibps"].get<int64_t>();
    if (v <= 0 || v > UINT32_MAX) {
      return Status::InvalidArgument("InvalidParameterValue: throughput " + std::to_string(v) + " is out of range");
    }
    p.throughput_mibps = static_cast<uint32_t>(v);
  }
  return p;
}

std::optional<EncryptionRequest> EncryptionFromArgs(const nlohmann::json& args) {
  std::string key = args.contains("key") && args["key"].is_string() ? args["key"].get<std::string>() : "";
  if (key.empty() && !args.value("encrypted", false)) return std::nullopt;
  return EncryptionRequest{key};
}

void RegisterVolumeCommands(CommandRegistry* registry, VolumeManager* manager) {
  registry->Register("volume.create", [manager](const nlohmann::json& args) -> Result<nlohmann::json> {
    auto p = VolumeParamsFromArgs(args);
    if (!p.ok()) return p.status();
    if (!p->type) p->type = VolumeType::kGp3;
    if (!p->size_bytes) return Status::InvalidArgument("MissingParameter: --size is required");
    CreateOptions options;
    options.encryption = EncryptionFromArgs(args);
    auto info = manager->Create(args.at("name").get<std::string>(), *p, options);
    if (!info.ok()) return info.status();
    return info->ToJson();
  });
  registry->Register("volume.list", [manager](const nlohmann::json&) -> Result<nlohmann::json> {
    auto list = manager->List();
    if (!list.ok()) return list.status();
    nlohmann::json out = nlohmann::json::array();
    for (const auto& v : *list) out.push_back(v.ToJson());
    return out;
  });
  registry->Register("volume.describe", [manager](const nlohmann::json& args) -> Result<nlohmann::json> {
    auto info = manager->Describe(args.at("name").get<std::string>());
    if (!info.ok()) return info.status();
    return info->ToJson();
  });
  registry->Register("volume.delete", [manager](const nlohmann::json& args) -> Result<nlohmann::json> {
    std::string name = args.at("name").get<std::string>();
    Status st = manager->Delete(name, args.value("force", false));
    if (!st.ok()) return st;
    return nlohmann::json{{"name", name}, {"deleted", true}};
  });
  registry->Register("volume.stats", [manager](const nlohmann::json& args) -> Result<nlohmann::json> {
    return manager->Stats(args.at("name").get<std::string>());
  });
  registry->Register("volume.modify", [manager](const nlohmann::json& args) -> Result<nlohmann::json> {
    if (EncryptionFromArgs(args)) {
      return Status::InvalidArgument(
          "InvalidParameterCombination: a volume cannot be encrypted, decrypted or re-keyed in place; snapshot it "
          "and restore the snapshot with --encrypted or --key");
    }
    auto p = VolumeParamsFromArgs(args);
    if (!p.ok()) return p.status();
    auto info = manager->Modify(args.at("name").get<std::string>(), *p);
    if (!info.ok()) return info.status();
    return info->ToJson();
  });
}

}  // namespace ebs
