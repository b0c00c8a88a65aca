// `ebs snapshot create|list|describe|restore|diff|verify|delete` and
// `ebs store gc|check|reindex`.
#include <cstdio>
#include <filesystem>
#include <iterator>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "commands.h"
#include "context.h"
#include "ebs/engine/size.h"

namespace ebs::cli {
namespace {

struct SnapshotArgs {
  std::vector<std::string> volumes;
  std::string id, from, to, volume, description, type, size;
  std::optional<int64_t> iops, throughput;
  bool lazy = false;
  bool eager = false;
  std::optional<double> initialization_rate;
  std::string file, name = "imported";
  bool force = false;
  bool ranges = false;
  bool encrypted = false;
  std::string key;
};

std::string Str(const nlohmann::json& v) {
  if (v.is_null()) return "-";
  return v.is_string() ? v.get<std::string>() : v.dump();
}

void PrintSnapshot(const nlohmann::json& s) {
  fmt::print("{:<22} {:<10} {:<16} {:>10} {:>10} {:>10} {:>6} {}\n", Str(s["id"]), Str(s["state"]), Str(s["volume"]),
             FormatSize(s["logical_bytes"].get<uint64_t>()), FormatSize(s["changed_bytes"].get<uint64_t>()),
             FormatSize(s["stored_bytes"].get<uint64_t>()), (s["compression_ratio"].is_null() ? std::string("-") : fmt::format("{:.2f}", s["compression_ratio"].get<double>())),
             Str(s["created"]));
}

void PrintSnapshotHeader() {
  fmt::print("{:<22} {:<10} {:<16} {:>10} {:>10} {:>10} {:>6} {}\n", "ID", "STATE", "VOLUME", "LOGICAL", "CHANGED",
             "STORED", "RATIO", "CREATED");
}

// One line per changed byte range (adjacent chunks merged), written in
// large blocks: a diff can list millions of chunks.
void PrintDiff(const nlohmann::json& d) {
  const auto chunk_size = d["chunk_size"].get<uint64_t>();
  const auto& zeroed = d["zeroed_chunks"];
  const auto& offsets = d["ranges"]["offsets"];
  const auto& lengths = d["ranges"]["lengths"];
  fmt::memory_buffer out;
  fmt::format_to(std::back_inserter(out), "{} chunks of {} changed, in {} byte ranges{}\n",
                 d["changed_chunks"].get<uint64_t>(), FormatSize(chunk_size), offsets.size(),
                 zeroed.empty() ? std::string() : fmt::format(" ({} chunks now zero)", zeroed.size()));
  size_t z = 0;
  for (size_t i = 0; i < offsets.size(); ++i) {
    const auto off = offsets[i].get<uint64_t>(), len = lengths[i].get<uint64_t>();
    const uint64_t first = off / chunk_size, last = (off + len - 1) / chunk_size;
    size_t zeros = 0;
    while (z < zeroed.size() && zeroed[z].get<uint64_t>() <= last) zeros += zeroed[z++].get<uint64_t>() >= first;
    fmt::format_to(std::back_inserter(out), "offset {:>14}  length {:>14}  chunks {}", off, len, first);
    if (last != first) fmt::format_to(std::back_inserter(out), "-{}", last);
    if (zeros > 0) fmt::format_to(std::back_inserter(out), "  ({} zeroed)", zeros);
    out.push_back('\n');
    if (out.size() >= (1 << 16)) {
      std::fwrite(out.data(), 1, out.size(), stdout);
      out.clear();
    }
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
}

// Runs a command; prints JSON, or `text` for humans.
int Run(const Context& ctx, const std::string& cmd, const nlohmann::json& args,
        const std::function<void(const nlohmann::json&)>& text) {
  auto r = Dispatch(ctx, cmd, args);
  if (!r.ok()) return Fail(r.status());
  if (ctx.json) {
    PrintJson(*r);
  } else {
    text(*r);
  }
  return 0;
}

}  // namespace

void AddSnapshotCommands(CLI::App* app, Context* ctx, std::function<int()>* action) {
  auto a = std::make_shared<SnapshotArgs>();
  auto* snap = app->add_subcommand("snapshot", "point-in-time, incremental snapshots of volumes");
  snap->require_subcommand(1);

  auto* create = snap->add_subcommand("create", "snapshot one or more volumes (several: one instant for all)");
  create->add_option("volumes", a->volumes, "volume names")->required();
  create->add_option("--description", a->description, "free text kept with the snapshot");
  create->callback([=] {
    *action = [=] {
      return Run(*ctx, "snapshot.create", {{"volumes", a->volumes}, {"description", a->description}},
                 [](const nlohmann::json& r) {
                   PrintSnapshotHeader();
                   for (const auto& s : r) PrintSnapshot(s);
                 });
    };
  });

  auto* list = snap->add_subcommand("list", "list snapshots");
  list->callback([=] {
    *action = [=] {
      return Run(*ctx, "snapshot.list", nlohmann::json::object(), [](const nlohmann::json& r) {
        PrintSnapshotHeader();
        for (const auto& s : r) PrintSnapshot(s);
      });
    };
  });

  auto* describe = snap->add_subcommand("describe", "show a snapshot");
  describe->add_option("id", a->id, "snapshot id")->required();
  describe->callback([=] {
    *action = [=] {
      return Run(*ctx, "snapshot.describe", {{"id", a->id}}, [](const nlohmann::json& s) {
        for (const auto& [k, v] : s.items()) fmt::print("{:<18} {}\n", k + ":", Str(v));
      });
    };
  });

  auto* restore = snap->add_subcommand(
      "restore", "create a volume from a snapshot (fully copied before use, or with --lazy loaded on demand)");
  restore->add_option("id", a->id, "snapshot id")->required();
  restore->add_option("--volume", a->volume, "name of the new volume")->required();
  restore->add_option("--type", a->type, "volume type (default gp3)");
  restore->add_option("--size", a->size, "size (default: the snapshot's; may be larger)");
  restore->add_option("--iops", a->iops, "provisioned IOPS (gp3, io1, io2)");
  restore->add_option("--throughput", a->throughput, "provisioned throughput in MiB/s (gp3)");
  auto* lazy = restore->add_flag("--lazy", a->lazy,
      "usable at once: chunks are loaded on first access and in the background while `ebs serve` "
      "runs; progress in `volume describe` (default: fully copied first)");
  auto* rate = restore->add_option("--initialization-rate", a->initialization_rate,
      "with --lazy: background loading rate in MiB/s (default: as fast as it goes)")
      ->check(CLI::PositiveNumber);
  // The default, stated: DESIGN.md's `--initialization-rate MiBps|--eager`.
  restore->add_flag("--eager", a->eager, "fully copied before the volume can be used (the default)")
      ->excludes(lazy)
      ->excludes(rate);
  AddEncryptionOptions(restore, &a->encrypted, &a->key);
  restore->callback([=] {
    *action = [=] {
      nlohmann::json args = {{"id", a->id}, {"volume", a->volume}};
      if (!a->type.empty()) args["type"] = a->type;
      if (!a->size.empty()) {
        auto b = ParseSize(a->size);
        if (!b.ok()) return Fail(b.status());
        args["size_bytes"] = *b;
      }
      if (a->iops) args["iops"] = *a->iops;
      if (a->throughput) args["throughput_mibps"] = *a->throughput;
      args["lazy"] = a->lazy || a->initialization_rate.has_value();
      if (a->initialization_rate) args["initialization_rate_mibps"] = *a->initialization_rate;
      if (a->encrypted) args["encrypted"] = true;
      if (!a->key.empty()) args["key"] = a->key;
      return Run(*ctx, "snapshot.restore", args, [](const nlohmann::json& v) {
        fmt::print("restored {} ({}, {}) from {}\n", Str(v["name"]), Str(v["type"]), Str(v["size"]),
                   Str(v["source_snapshot"]));
      });
    };
  });

  auto* diff = snap->add_subcommand("diff", "chunks that changed between two snapshots of a volume");
  diff->add_option("from", a->from, "older snapshot id")->required();
  diff->add_option("to", a->to, "newer snapshot id")->required();
  diff->add_flag("--ranges", a->ranges,
                 "with --json, also list the changed bytes as ranges (adjacent chunks merged); text output always "
                 "does");
  diff->callback([=] {
    *action = [=] {
      // Text always shows byte ranges; JSON lists chunks, and ranges on request.
      const bool ranges = a->ranges || !ctx->json;
      return Run(*ctx, "snapshot.diff", {{"from", a->from}, {"to", a->to}, {"ranges", ranges}}, PrintDiff);
    };
  });

  auto* verify = snap->add_subcommand("verify", "read and check every object of a snapshot");
  verify->add_option("id", a->id, "snapshot id")->required();
  verify->callback([=] {
    *action = [=] {
      auto r = Dispatch(*ctx, "snapshot.verify", {{"id", a->id}});
      if (!r.ok()) return Fail(r.status());
      if (ctx->json) {
        PrintJson(*r);
      } else {
        fmt::print("{}: {} chunks checked, {}\n", a->id, (*r)["chunks_checked"].get<uint64_t>(),
                   (*r)["ok"].get<bool>() ? "all good" : fmt::format("{} bad", (*r)["bad"].size()));
        for (const auto& b : (*r)["bad"]) fmt::print("  bad: chunk {} {}: {}\n", Str(b.value("chunk", nlohmann::json())),
                                                     Str(b["object"]), Str(b["error"]));
      }
      return (*r)["ok"].get<bool>() ? 0 : 2;
    };
  });

  auto* del = snap->add_subcommand("delete", "delete a snapshot (frees only what no other snapshot needs)");
  del->add_option("id", a->id, "snapshot id")->required();
  del->callback([=] {
    *action = [=] {
      return Run(*ctx, "snapshot.delete", {{"id", a->id}}, [&](const nlohmann::json& r) {
        fmt::print("deleted {} ({} objects freed)\n", Str(r["id"]), r["objects_freed"].get<uint64_t>());
      });
    };
  });

  auto* exp = snap->add_subcommand("export", "write a snapshot as a raw disk image file");
  exp->add_option("id", a->id, "snapshot id")->required();
  exp->add_option("file", a->file, "image file to write (sparse; refused if it exists)")->required();
  exp->add_flag("--force", a->force, "overwrite an existing file");
  exp->callback([=] {
    *action = [=] {
      nlohmann::json args = {{"id", a->id}, {"file", std::filesystem::absolute(a->file).string()}, {"force", a->force}};
      return Run(*ctx, "snapshot.export", args, [](const nlohmann::json& r) {
        fmt::print("exported {} to {} ({})\n", Str(r["snapshot"]), Str(r["file"]),
                   FormatSize(r["size_bytes"].get<uint64_t>()));
      });
    };
  });

  auto* imp = snap->add_subcommand("import", "make a snapshot from a raw disk image file");
  imp->add_option("file", a->file, "raw image file (sizes round up to whole GiB with zeros)")->required();
  imp->add_option("--name", a->name, "volume name the snapshot records (default: imported)");
  imp->add_option("--description", a->description, "free text stored with the snapshot");
  imp->callback([=] {
    *action = [=] {
      nlohmann::json args = {{"file", std::filesystem::absolute(a->file).string()}, {"name", a->name},
                             {"description", a->description}};
      return Run(*ctx, "snapshot.import", args, [](const nlohmann::json& r) {
        fmt::print("imported {} as {} ({} of data, {} stored)\n", Str(r["volume"]), Str(r["id"]),
                   FormatSize(r["logical_bytes"].get<uint64_t>()), FormatSize(r["stored_bytes"].get<uint64_t>()));
      });
    };
  });

  auto* store = app->add_subcommand("store", "snapshot store maintenance");
  store->require_subcommand(1);
  auto* gc = store->add_subcommand("gc", "remove objects no snapshot references");
  gc->callback([=] {
    *action = [=] {
      return Run(*ctx, "store.gc", nlohmann::json::object(), [](const nlohmann::json& r) {
        fmt::print("{} objects examined, {} removed\n", r["objects_examined"].get<uint64_t>(),
                   r["objects_removed"].get<uint64_t>());
      });
    };
  });
  auto* reindex = store->add_subcommand("reindex", "rebuild the snapshot index from the manifests in the store alone");
  reindex->add_flag("--force", a->force,
                    "rebuild even when manifests are unreadable or missing, dropping their snapshots from the "
                    "index (store gc then removes objects only they used); without it such a store is refused "
                    "and the index left unchanged");
  reindex->callback([=] {
    *action = [=] {
      auto r = Dispatch(*ctx, "store.reindex", {{"force", a->force}});
      if (!r.ok()) return Fail(r.status());
      if (ctx->json) {
        PrintJson(*r);
      } else {
        fmt::print("index rebuilt: {} snapshots{}\n", (*r)["snapshots"].get<uint64_t>(),
                   (*r)["ok"].get<bool>() ? "" : ", with problems:");
        for (const auto& p : (*r)["problems"]) {
          fmt::print("  {}: {}\n", Str(p.value("object", p.value("snapshot", nlohmann::json()))), Str(p["error"]));
        }
      }
      return (*r)["ok"].get<bool>() ? 0 : 2;
    };
  });
  auto* check = store->add_subcommand("check",
                                      "every referenced object exists and every object is referenced, reference "
                                      "counts agree, every snapshot has its manifest and every manifest its snapshot");
  check->callback([=] {
    *action = [=] {
      auto r = Dispatch(*ctx, "store.check", nlohmann::json::object());
      if (!r.ok()) return Fail(r.status());
      if (ctx->json) {
        PrintJson(*r);
      } else {
        fmt::print("{} objects, {} referenced: {}\n", (*r)["objects"].get<uint64_t>(),
                   (*r)["referenced"].get<uint64_t>(), (*r)["ok"].get<bool>() ? "clean" : "PROBLEMS");
        for (const auto& p : (*r)["problems"]) fmt::print("  {}: {}\n", Str(p["object"]), Str(p["error"]));
      }
      return (*r)["ok"].get<bool>() ? 0 : 2;
    };
  });
}

}  // namespace ebs::cli
