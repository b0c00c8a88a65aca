// The `ebs` command: parses, calls the libraries, prints.
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <functional>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "context.h"
#include "ebs/engine/size.h"

int main(int argc, char** argv) {
  // What ebs creates is its user's alone, also where a library picks the
  // mode (RocksDB's catalog and snapshot index: 0755 and 0644 otherwise) and
  // for snapshot exports; ebs's own files carry explicit private modes too.
  ::umask(077);
  ebs::cli::Context ctx;
  if (const char* env = std::getenv("EBS_DATA_DIR"); env != nullptr && *env != '\0') ctx.data_dir = env;
  if (const char* env = std::getenv("EBS_STORE"); env != nullptr && *env != '\0') ctx.store = env;

  CLI::App app("ebs: EBS-style block volumes and snapshots on one Linux host, served over NBD", "ebs");
  app.require_subcommand(1);
  app.fallthrough();  // global options are accepted after the subcommand too
  app.add_option("--data-dir", ctx.data_dir,
                 "data directory: catalog, volume data files, sockets (env EBS_DATA_DIR; default ./ebs-data)");
  app.add_flag("--json", ctx.json, "print one JSON document instead of text");
  app.add_option("--store", ctx.store, "snapshot store directory (env EBS_STORE; default DATA_DIR/store)");
  app.add_option("--key-dir", ctx.key_dir,
                 "where master keys for encrypted volumes live (default DATA_DIR/keys; a running server uses its own)");
  std::string chunk_size;
  app.add_option("--store-chunk-size", chunk_size,
                 "chunk size of a new snapshot store: a power of two from 64K to 4M (default 512K; an existing "
                 "store keeps its own, and naming another is refused)");

  std::function<int()> action;
  ebs::cli::AddVolumeCommands(&app, &ctx, &action);
  ebs::cli::AddServeCommand(&app, &ctx, &action);
  ebs::cli::AddSnapshotCommands(&app, &ctx, &action);
  ebs::cli::AddKeyCommands(&app, &ctx, &action);
  // Subcommand help lists only the subcommand's own options: name the
  // global ones (accepted after the subcommand too) at the end of each.
  std::function<void(CLI::App*)> add_footer = [&](CLI::App* parent) {
    for (CLI::App* sub : parent->get_subcommands([](CLI::App*) { return true; })) {
      sub->footer(
          "Global options (before or after the subcommand; see ebs --help): --data-dir DIR, --json, "
          "--store DIR, --key-dir DIR, --store-chunk-size SIZE");
      add_footer(sub);
    }
  };
  add_footer(&app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  // Absolute, so the paths printed for clients (and given to a server) work
  // from any directory.
  for (std::string* path : {&ctx.data_dir, &ctx.key_dir, &ctx.store}) {
    if (!path->empty() && (*path)[0] != '/') *path = std::filesystem::current_path().string() + "/" + *path;
  }
  if (!chunk_size.empty()) {
    auto bytes = ebs::ParseSize(chunk_size);
    if (!bytes.ok()) return ebs::cli::Fail(ebs::Status::InvalidArgument("--store-chunk-size: " + bytes.status().message()));
    if (*bytes > (uint64_t{1} << 30)) return ebs::cli::Fail(ebs::Status::InvalidArgument("--store-chunk-size: at most 4M"));
    ctx.store_chunk_size = static_cast<uint32_t>(*bytes);
  }
  return action ? action() : 0;
}
