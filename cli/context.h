// What every subcommand shares: where the data directory is, how to print,
// and how a request reaches the volumes (the running server, or in-process).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "ebs/engine/status.h"
#include "ebs/engine/volume_manager.h"

namespace ebs::cli {

struct Context {
  std::string data_dir = "./ebs-data";
  std::string store;  // snapshot store; empty: DATA_DIR/store
  uint32_t store_chunk_size = 0;  // for a new store; 0: the default (512 KiB)
  bool json = false;
  std::string key_dir;  // master keys; empty: DATA_DIR/keys
  std::string StorePath() const { return store.empty() ? data_dir + "/store" : store; }
  std::string KeyDir() const { return key_dir.empty() ? data_dir + "/keys" : key_dir; }
};

// Sends {"cmd": cmd, "args": args} to the server through DATA_DIR/control.sock
// when one is running, else runs it in-process on the data directory.
Result<nlohmann::json> Dispatch(const Context& ctx, const std::string& cmd, const nlohmann::json& args);

// Manager settings that also apply to commands run without a server
// (EBS_MODIFICATION_RATE_LIMIT=1, the key directory).
ManagerOptions ManagerOptionsFor(const Context& ctx);

// Prints an error to stderr and returns the process exit status (1).
int Fail(const Status& status);

// Prints `doc` to stdout as indented JSON and a newline: the --json output of
// every command. Written straight from the serialized text (a diff can be
// tens of megabytes).
void PrintJson(const nlohmann::json& doc);

}  // namespace ebs::cli
