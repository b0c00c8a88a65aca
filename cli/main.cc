// The `ebs` command: parses, calls the libraries, prints.
#include <cstdlib>
#include <filesystem>
#include <functional>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "context.h"

int main(int argc, char** argv) {
  ebs::cli::Context ctx;
  if (const char* env = std::getenv("EBS_DATA_DIR"); env != nullptr && *env != '\0') ctx.data_dir = env;

  CLI::App app("ebs: EBS-style block volumes and snapshots on one Linux host, served over NBD", "ebs");
  app.require_subcommand(1);
  app.fallthrough();  // global options are accepted after the subcommand too
  app.add_option("--data-dir", ctx.data_dir,
                 "data directory: catalog, volume data files, sockets (env EBS_DATA_DIR; default ./ebs-data)");
  app.add_flag("--json", ctx.json, "print one JSON document instead of text");
  app.add_option("--store", ctx.store, "snapshot store directory (default DATA_DIR/store)");

  std::function<int()> action;
  ebs::cli::AddVolumeCommands(&app, &ctx, &action);
  ebs::cli::AddServeCommand(&app, &ctx, &action);
  ebs::cli::AddSnapshotCommands(&app, &ctx, &action);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  // Absolute, so the paths printed for clients work from any directory.
  if (!ctx.data_dir.empty() && ctx.data_dir[0] != '/') {
    ctx.data_dir = std::filesystem::current_path().string() + "/" + ctx.data_dir;
  }
  if (!ctx.store.empty() && ctx.store[0] != '/') ctx.store = std::filesystem::current_path().string() + "/" + ctx.store;
  return action ? action() : 0;
}
