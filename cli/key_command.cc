// `ebs key create|list`: the master keys encrypted volumes and their
// snapshots are sealed under (engine/key_service.h). They work on the key
// directory directly, whether or not a server runs.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "commands.h"
#include "context.h"
#include "ebs/engine/key_service.h"
#include "ebs/engine/time.h"

namespace ebs::cli {

void AddEncryptionOptions(CLI::App* command, bool* encrypted, std::string* key) {
  command->add_flag("--encrypted", *encrypted,
                    "encrypt the volume at rest (AES-256-XTS) under a fresh data key sealed by --key (default: the "
                    "key named 'default', created on first use). A snapshot of an encrypted volume always restores "
                    "encrypted");
  command->add_option("--key", *key, "master key to seal the volume's data key (implies --encrypted; `ebs key list`)");
}

void AddKeyCommands(CLI::App* app, Context* ctx, std::function<int()>* action) {
  auto* key = app->add_subcommand(
      "key", "master keys for encrypted volumes and snapshots (files in DATA_DIR/keys, or --key-dir)");
  key->require_subcommand(1);
  auto name = std::make_shared<std::string>();

  auto* create = key->add_subcommand(
      "create", "create a master key: 256 random bits in a file readable only by its owner. Back it up: "
                "volumes and snapshots encrypted under it cannot be read without it");
  create->add_option("name", *name, "key name ([A-Za-z0-9][A-Za-z0-9._-]{0,63}); used with --key")->required();
  create->callback([=] {
    *action = [=] {
      KeyService keys(ctx->KeyDir());
      auto info = keys.Create(*name);
      if (!info.ok()) return Fail(info.status());
      if (ctx->json) {
        PrintJson(info->ToJson());
      } else {
        fmt::print("created key {} ({}) in {}\n", info->name, info->id, keys.dir());
      }
      return 0;
    };
  });

  auto* list = key->add_subcommand("list", "list master keys");
  list->callback([=] {
    *action = [=] {
      KeyService keys(ctx->KeyDir());
      auto all = keys.List();
      if (!all.ok()) return Fail(all.status());
      if (ctx->json) {
        nlohmann::json out = nlohmann::json::array();
        for (const auto& k : *all) out.push_back(k.ToJson());
        PrintJson(out);
        return 0;
      }
      fmt::print("{:<24} {:<21} {}\n", "NAME", "ID", "CREATED");
      for (const auto& k : *all) {
        fmt::print("{:<24} {:<21} {}\n", k.name, k.error.empty() ? k.id : "-",
                   k.error.empty() ? FormatTime(k.created_at_ms) : "unreadable: " + k.error);
      }
      return 0;
    };
  });
}

}  // namespace ebs::cli
