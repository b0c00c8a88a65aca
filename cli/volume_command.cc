// `ebs volume create|list|describe|delete|modify`.
#include <cstdio>
#include <optional>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "commands.h"
#include "context.h"
#include "ebs/engine/size.h"

namespace ebs::cli {
namespace {

struct VolumeArgs {
  std::string name;
  std::string type;
  std::string size;
  std::optional<int64_t> iops;
  std::optional<int64_t> throughput;
  std::string snapshot;
  bool lazy = false;
  bool eager = false;
  std::optional<double> initialization_rate;
  bool force = false;
  bool encrypted = false;
  std::string key;
};

std::string OrDash(const nlohmann::json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

void PrintVolume(const nlohmann::json& v) {
  fmt::print("name:              {}\n", v["name"].get<std::string>());
  fmt::print("id:                {}\n", v["id"].get<std::string>());
  fmt::print("type:              {}\n", v["type"].get<std::string>());
  fmt::print("size:              {} ({} bytes)\n", v["size"].get<std::string>(), v["size_bytes"].get<uint64_t>());
  fmt::print("iops:              {}\n", OrDash(v["iops"]));
  fmt::print("throughput:        {}\n",
             v["throughput_mibps"].is_null() ? "-" : v["throughput_mibps"].dump() + " MiB/s");
  const auto& p = v["performance"];
  fmt::print("performance:       {} IOPS baseline, {} burst; {} MiB/s baseline, {} burst\n",
             p["baseline_iops"].get<uint32_t>(), p["burst_iops"].get<uint32_t>(),
             p["baseline_throughput_mibps"].get<double>(), p["burst_throughput_mibps"].get<double>());
  fmt::print("state:             {}\n", v["state"].get<std::string>());
  fmt::print("created:           {}\n", v["created"].get<std::string>());
  fmt::print("source snapshot:   {}\n", OrDash(v["source_snapshot"]));
  fmt::print("encrypted:         {}\n", v.value("encrypted", false)
                                             ? fmt::format("yes, AES-256-XTS under key {} ({})", OrDash(v["key"]), OrDash(v["key_id"]))
                                             : std::string("no"));
  if (v.contains("initialization")) {
    const auto& init = v["initialization"];
    if (init["state"] == "loading") {
      fmt::print("initialization:    loading lazily, {:.1f}% ({} of {} chunks){}{}\n",
                 init["progress_percent"].get<double>(), init["loaded_chunks"].get<uint64_t>(),
                 init["total_chunks"].get<uint64_t>(),
                 init["rate_mibps"].is_null() ? "" : fmt::format(", at {} MiB/s", init["rate_mibps"].get<double>()),
                 init["error"].is_null() ? "" : "; stopped: " + init["error"].get<std::string>());
      if (init.value("reads_waited_for_fetch", uint64_t{0}) > 0) {
        fmt::print("first reads:       {} waited for their chunk's fetch, {:.2f} ms on average\n",
                   init["reads_waited_for_fetch"].get<uint64_t>(), init["fetch_wait_ms_mean"].get<double>());
      }
    } else {
      fmt::print("initialization:    {} (lazy, {})\n", init["state"].get<std::string>(), OrDash(init["completed"]));
    }
  }
  if (!v["modifications"].empty()) {
    const auto& m = v["modifications"].back();
    fmt::print("last modification: {} (started {}, {} -> {})\n", m["state"].get<std::string>(),
               m["started"].get<std::string>(), m["from"]["type"].get<std::string>() + " " +
               m["from"]["size"].get<std::string>(), m["to"]["type"].get<std::string>() + " " +
               m["to"]["size"].get<std::string>());
  }
}

// Turns flags into control-request arguments, refusing bad sizes early.
Result<nlohmann::json> ToArgs(const VolumeArgs& a) {
  nlohmann::json args = {{"name", a.name}};
  if (!a.type.empty()) args["type"] = a.type;
  if (!a.size.empty()) {
    auto bytes = ParseSize(a.size);
    if (!bytes.ok()) return Status::InvalidArgument("InvalidParameterValue: --size: " + bytes.status().message());
    args["size_bytes"] = *bytes;
  }
  if (a.iops) args["iops"] = *a.iops;
  if (a.throughput) args["throughput_mibps"] = *a.throughput;
  if (a.encrypted) args["encrypted"] = true;
  if (!a.key.empty()) args["key"] = a.key;
  return args;
}

int Run(const Context& ctx, const std::string& cmd, const Result<nlohmann::json>& args, bool print_volume) {
  if (!args.ok()) return Fail(args.status());
  auto r = Dispatch(ctx, cmd, *args);
  if (!r.ok()) return Fail(r.status());
  if (ctx.json) {
    PrintJson(*r);
  } else if (print_volume) {
    PrintVolume(*r);
  }
  return 0;
}

void AddParams(CLI::App* c, VolumeArgs* a, bool create) {
  auto* type = c->add_option("--type", a->type, "volume type: gp2, gp3, io1, io2, st1, sc1, standard");
  c->add_option("--size", a->size,
                             create ? "size in whole GiB, with a suffix: 10G, 10GiB, 1T, or bytes (required unless --snapshot)"
                                    : "new size (grow only): 20G, 1T, or bytes");
  if (create) type->default_str("gp3");
  c->add_option("--iops", a->iops, "provisioned IOPS (gp3, io1, io2)");
  c->add_option("--throughput", a->throughput, "provisioned throughput in MiB/s (gp3 only)");
}

}  // namespace

void AddVolumeCommands(CLI::App* app, Context* ctx, std::function<int()>* action) {
  auto* vol = app->add_subcommand("volume", "create, inspect, modify and delete volumes");
  vol->require_subcommand(1);
  auto a = std::make_shared<VolumeArgs>();

  auto* create = vol->add_subcommand("create", "create a volume (a sparse data file and a catalog entry)");
  create->add_option("name", a->name, "volume name ([A-Za-z0-9][A-Za-z0-9._-]{0,63}); also the NBD export name")
      ->required();
  AddParams(create, a.get(), true);
  create->add_option("--snapshot", a->snapshot, "restore from this snapshot (same as `ebs snapshot restore`)");
  auto* lazy = create->add_flag("--lazy", a->lazy,
      "with --snapshot: usable at once, chunks loaded on first access and in the background while "
      "`ebs serve` runs (default: fully copied first)");
  auto* rate = create->add_option("--initialization-rate", a->initialization_rate,
      "with --lazy: background loading rate in MiB/s (default: as fast as it goes)")
      ->check(CLI::PositiveNumber);
  // The default, stated: DESIGN.md's `--initialization-rate MiBps|--eager`.
  create->add_flag("--eager", a->eager, "fully copied before the volume can be used (the default)")
      ->excludes(lazy)
      ->excludes(rate);
  AddEncryptionOptions(create, &a->encrypted, &a->key);
  create->callback([=] {
    *action = [=] {
      if (a->snapshot.empty()) return Run(*ctx, "volume.create", ToArgs(*a), true);
      auto args = ToArgs(*a);
      if (args.ok()) {
        (*args)["id"] = a->snapshot;
        (*args)["volume"] = a->name;
        (*args)["lazy"] = a->lazy || a->initialization_rate.has_value();
        if (a->initialization_rate) (*args)["initialization_rate_mibps"] = *a->initialization_rate;
      }
      return Run(*ctx, "snapshot.restore", args, true);
    };
  });

  auto* list = vol->add_subcommand("list", "list volumes");
  list->callback([=] {
    *action = [=] {
      auto r = Dispatch(*ctx, "volume.list", nlohmann::json::object());
      if (!r.ok()) return Fail(r.status());
      if (ctx->json) {
        PrintJson(*r);
        return 0;
      }
      fmt::print("{:<24} {:<21} {:<8} {:>10} {:>7} {:>11} {}\n", "NAME", "ID", "TYPE", "SIZE", "IOPS",
                 "THROUGHPUT", "STATE");
      for (const auto& v : *r) {
        fmt::print("{:<24} {:<21} {:<8} {:>10} {:>7} {:>11} {}\n", v["name"].get<std::string>(),
                   v["id"].get<std::string>(), v["type"].get<std::string>(), v["size"].get<std::string>(),
                   OrDash(v["iops"]), OrDash(v["throughput_mibps"]), v["state"].get<std::string>());
      }
      return 0;
    };
  });

  auto* describe = vol->add_subcommand("describe", "show a volume's configuration, performance and history");
  describe->add_option("name", a->name, "volume name")->required();
  describe->callback([=] { *action = [=] { return Run(*ctx, "volume.describe", ToArgs(*a), true); }; });

  auto* del = vol->add_subcommand("delete", "delete a volume and its data");
  del->add_option("name", a->name, "volume name")->required();
  del->add_flag("--force", a->force, "delete even while clients are connected (their connections end)");
  del->callback([=] {
    *action = [=] {
      auto args = ToArgs(*a);
      if (args.ok()) (*args)["force"] = a->force;
      int rc = Run(*ctx, "volume.delete", args, false);
      if (rc == 0 && !ctx->json) fmt::print("deleted {}\n", a->name);
      return rc;
    };
  });

  auto* stats = vol->add_subcommand("stats", "I/O counters (the CloudWatch AWS/EBS set), latency and throttle state");
  stats->add_option("name", a->name, "volume name")->required();
  stats->callback([=] {
    *action = [=] {
      auto r = Dispatch(*ctx, "volume.stats", {{"name", a->name}});
      if (!r.ok()) return Fail(r.status());
      if (ctx->json) {
        PrintJson(*r);
        return 0;
      }
      for (const auto& [k, v] : r->items()) {
        if (v.is_object()) {
          for (const auto& [k2, v2] : v.items()) fmt::print("{:<32} {}\n", k + "." + k2, v2.dump());
        } else {
          fmt::print("{:<32} {}\n", k, v.is_string() ? v.get<std::string>() : v.dump());
        }
      }
      return 0;
    };
  });

  auto* modify = vol->add_subcommand("modify", "change size (grow), type, IOPS or throughput, also while in use");
  modify->add_option("name", a->name, "volume name")->required();
  AddParams(modify, a.get(), false);
  modify->add_flag("--encrypted", a->encrypted, "refused: encryption is chosen at creation (snapshot and restore to change it)")
      ->group("");
  modify->add_option("--key", a->key, "refused, as --encrypted")->group("");
  modify->callback([=] { *action = [=] { return Run(*ctx, "volume.modify", ToArgs(*a), true); }; });
}

}  // namespace ebs::cli
