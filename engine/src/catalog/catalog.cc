#include "catalog/catalog.h"

#include "ebs/engine/rocks_db.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>

#include <array>
#include <utility>

#include <fmt/format.h>

namespace ebs {
namespace {

constexpr char kVolumePrefix[] = "volume/";

nlohmann::json ConfigToJson(const VolumeConfig& c) {
  return {{"type", std::string(VolumeTypeName(c.type))},
          {"size_bytes", c.size_bytes},
          {"iops", c.iops},
          {"throughput_mibps", c.throughput_mibps}};
}

Result<VolumeConfig> ConfigFromJson(const nlohmann::json& j) {
  VolumeConfig c;
  auto type = ParseVolumeType(j.at("type").get<std::string>());
  if (!type.ok()) return type.status();
  c.type = *type;
  c.size_bytes = j.at("size_bytes").get<uint64_t>();
  c.iops = j.at("iops").get<uint32_t>();
  c.throughput_mibps = j.at("throughput_mibps").get<uint32_t>();
  return c;
}

template <typename E, size_t N>
Result<E> ParseName(std::string_view name, const std::array<std::pair<E, std::string_view>, N>& names,
                    std::string_view what) {
  for (const auto& [e, n] : names) {
    if (n == name) return e;
  }
  return Status::IoError("corrupt volume record in catalog: unknown " + std::string(what) + " '" + std::string(name) +
                         "'");
}

constexpr std::array<std::pair<VolumeState, std::string_view>, 2> kVolumeStates{
    {{VolumeState::kCreating, "creating"}, {VolumeState::kAvailable, "available"}}};
constexpr std::array<std::pair<ModificationState, std::string_view>, 4> kModificationStates{
    {{ModificationState::kModifying, "modifying"},
     {ModificationState::kOptimizing, "optimizing"},
     {ModificationState::kCompleted, "completed"},
     {ModificationState::kFailed, "failed"}}};
constexpr std::array<std::pair<LoadState, std::string_view>, 3> kLoadStates{
    {{LoadState::kNone, ""}, {LoadState::kLoading, "loading"}, {LoadState::kCompleted, "completed"}}};

template <typename E, size_t N>
std::string_view NameOf(E e, const std::array<std::pair<E, std::string_view>, N>& names) {
  for (const auto& [v, n] : names) {
    if (v == e) return n;
  }
  return "?";
}

}  // namespace

std::string_view StateName(VolumeState s) { return NameOf(s, kVolumeStates); }
std::string_view StateName(ModificationState s) { return NameOf(s, kModificationStates); }
std::string_view StateName(LoadState s) { return NameOf(s, kLoadStates); }
Result<VolumeState> ParseVolumeState(std::string_view n) { return ParseName(n, kVolumeStates, "volume state"); }
Result<ModificationState> ParseModificationState(std::string_view n) {
  return ParseName(n, kModificationStates, "modification state");
}
Result<LoadState> ParseLoadState(std::string_view n) { return ParseName(n, kLoadStates, "initialization state"); }

nlohmann::json VolumeRecord::ToJson() const {
  nlohmann::json mods = nlohmann::json::array();
  for (const auto& m : modifications) {
    mods.push_back({{"state", std::string(StateName(m.state))},
                    {"started_at_ms", m.started_at_ms},
                    {"optimizing_at_ms", m.optimizing_at_ms},
                    {"completed_at_ms", m.completed_at_ms},
                    {"optimize_until_ms", m.optimize_until_ms},
                    {"from", ConfigToJson(m.from)},
                    {"to", ConfigToJson(m.to)}});
  }
  nlohmann::json j = {{"name", name},
                      {"id", id},
                      {"config", ConfigToJson(config)},
                      {"created_at_ms", created_at_ms},
                      {"state", std::string(StateName(state))},
                      {"source_snapshot", source_snapshot},
                      {"modifications", mods}};
  if (!last_cut.empty()) j["last_cut"] = last_cut;
  if (encryption) {
    j["encryption"] = {{"key", encryption->key_name}, {"key_id", encryption->key_id}, {"data_key", encryption->sealed_hex}};
  }
  if (initialization_state != LoadState::kNone) {
    j["initialization"] = {{"state", std::string(StateName(initialization_state))},
                           {"rate_mibps", initialization_rate_mibps},
                           {"chunk_size", initialization_chunk_size},
                           {"completed_at_ms", initialization_completed_at_ms}};
  }
  return j;
}

Result<VolumeRecord> VolumeRecord::FromJson(const nlohmann::json& j) {
  try {
    VolumeRecord r;
    r.name = j.at("name").get<std::string>();
    r.id = j.at("id").get<std::string>();
    auto config = ConfigFromJson(j.at("config"));
    if (!config.ok()) return config.status();
    r.config = *config;
    r.created_at_ms = j.at("created_at_ms").get<int64_t>();
    auto state = ParseVolumeState(j.at("state").get<std::string>());
    if (!state.ok()) return state.status();
    r.state = *state;
    r.source_snapshot = j.value("source_snapshot", "");
    r.last_cut = j.value("last_cut", "");
    if (j.contains("encryption")) {
      const auto& e = j.at("encryption");
      r.encryption = WrappedKey{e.at("key").get<std::string>(), e.at("key_id").get<std::string>(),
                                e.at("data_key").get<std::string>()};
    }
    if (j.contains("initialization")) {
      const auto& init = j.at("initialization");
      auto load = ParseLoadState(init.at("state").get<std::string>());
      if (!load.ok()) return load.status();
      r.initialization_state = *load;
      r.initialization_rate_mibps = init.at("rate_mibps").get<double>();
      r.initialization_chunk_size = init.at("chunk_size").get<uint32_t>();
      r.initialization_completed_at_ms = init.at("completed_at_ms").get<int64_t>();
    }
    for (const auto& mj : j.at("modifications")) {
      Modification m;
      auto ms = ParseModificationState(mj.at("state").get<std::string>());
      if (!ms.ok()) return ms.status();
      m.state = *ms;
      m.started_at_ms = mj.at("started_at_ms").get<int64_t>();
      m.optimizing_at_ms = mj.at("optimizing_at_ms").get<int64_t>();
      m.completed_at_ms = mj.at("completed_at_ms").get<int64_t>();
      m.optimize_until_ms = mj.at("optimize_until_ms").get<int64_t>();
      auto from = ConfigFromJson(mj.at("from"));
      auto to = ConfigFromJson(mj.at("to"));
      if (!from.ok()) return from.status();
      if (!to.ok()) return to.status();
      m.from = *from;
      m.to = *to;
      r.modifications.push_back(m);
    }
    return r;
  } catch (const nlohmann::json::exception& e) {
    return Status::IoError(std::string("corrupt volume record in catalog: ") + e.what());
  }
}

Result<std::unique_ptr<Catalog>> Catalog::Open(const std::string& path) {
  // The catalog is tiny: few table files.
  auto db = OpenRocksDb(path, "catalog", 64);
  if (!db.ok()) return db.status();
  return std::unique_ptr<Catalog>(new Catalog(db->release()));
}

Catalog::~Catalog() {
  db_->Close().PermitUncheckedError();
  delete db_;
}

Status Catalog::Put(const VolumeRecord& record) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  rocksdb::Status s = db_->Put(wo, kVolumePrefix + record.name, record.ToJson().dump());
  if (!s.ok()) return Status::IoError("catalog write: " + s.ToString());
  return Status::Ok();
}

Result<VolumeRecord> Catalog::Get(const std::string& name) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kVolumePrefix + name, &value);
  if (s.IsNotFound()) return Status::NotFound("InvalidVolume.NotFound: volume '" + name + "' does not exist");
  if (!s.ok()) return Status::IoError("catalog read: " + s.ToString());
  auto j = nlohmann::json::parse(value, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::IoError("corrupt volume record for " + name);
  return VolumeRecord::FromJson(j);
}

Result<std::vector<VolumeRecord>> Catalog::List() {
  std::vector<VolumeRecord> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(kVolumePrefix); it->Valid() && it->key().starts_with(kVolumePrefix); it->Next()) {
    auto j = nlohmann::json::parse(it->value().ToString(), nullptr, false);
    if (j.is_discarded()) return Status::IoError("corrupt volume record " + it->key().ToString());
    auto r = VolumeRecord::FromJson(j);
    if (!r.ok()) return r.status();
    out.push_back(std::move(*r));
  }
  if (!it->status().ok()) return Status::IoError("catalog scan: " + it->status().ToString());
  return out;
}

Status Catalog::Delete(const std::string& name) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  rocksdb::Status s = db_->Delete(wo, kVolumePrefix + name);
  if (!s.ok()) return Status::IoError("catalog delete: " + s.ToString());
  return Status::Ok();
}

}  // namespace ebs
