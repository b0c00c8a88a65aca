// The control channel. While `ebs serve` runs it owns the data directory, so
// the other commands send it their requests over a Unix socket in the data
// directory (DATA_DIR/control.sock, mode 0600); without a server they run
// the same commands in-process. Either way a command is a JSON request
//   {"cmd": "volume.create", "args": {...}}
// answered by one JSON document
//   {"ok": true, "result": ...} or {"ok": false, "code": errno, "error": "..."},
// optionally preceded by progress lines when the request asks for them.
// Messages are single lines (JSON never needs a raw newline).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "ebs/engine/key_service.h"
#include "ebs/engine/status.h"
#include "ebs/engine/volume_type.h"

namespace ebs {

class VolumeManager;

using CommandHandler = std::function<Result<nlohmann::json>(const nlohmann::json& args)>;

// Maps command names to handlers. Register before use; then thread-safe.
class CommandRegistry {
 public:
  void Register(const std::string& name, CommandHandler handler);
  // Never throws: malformed requests and handler failures become error replies.
  nlohmann::json Handle(const nlohmann::json& request) const;

 private:
  std::map<std::string, CommandHandler> handlers_;
};

// Reads volume parameters (type, size_bytes, iops, throughput_mibps; each
// optional) from a control request's arguments, refusing bad values.
Result<VolumeParams> VolumeParamsFromArgs(const nlohmann::json& args);
// "encrypted": true and/or "key": NAME ask for an encrypted volume; nullopt
// when neither is given.
std::optional<EncryptionRequest> EncryptionFromArgs(const nlohmann::json& args);

// volume.create|list|describe|delete|modify|stats over `manager`.
void RegisterVolumeCommands(CommandRegistry* registry, VolumeManager* manager);

// The longest request line a control connection accepts.
inline constexpr size_t kMaxControlRequestBytes = 1 << 20;

// Answers one control connection on `fd`, a connected stream socket: reads
// one request line (a longer one than `max_request_bytes`, or a failed read,
// ends it without a reply), answers invalid JSON with an error reply and
// anything else with `registry`, preceded by progress lines when the request
// asks for them. Leaves `fd` open. Run by ControlServer for each client, and
// by the fuzzer.
void ServeControlConnection(int fd, const CommandRegistry& registry,
                            size_t max_request_bytes = kMaxControlRequestBytes);

// Listens on a Unix socket and answers each request line with the registry.
class ControlServer {
 public:
  static Result<std::unique_ptr<ControlServer>> Start(const std::string& socket_path,
                                                      const CommandRegistry* registry);
  ~ControlServer();  // stops accepting, waits for requests being handled

 private:
  ControlServer() = default;
  void AcceptLoop();

  std::string path_;
  int listen_fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  const CommandRegistry* registry_ = nullptr;
  std::thread acceptor_;
  std::atomic<int> active_{0};
};

// Sends one request to the server behind `socket_path`. ECONNREFUSED/ENOENT
// mean no server is running there. A request with "progress": true gets
// {"progress": {"stage", "done", "total"}} lines before its reply (see
// progress.h); each is passed to `on_progress`.
Result<nlohmann::json> ControlCall(const std::string& socket_path, const nlohmann::json& request,
                                   const std::function<void(const nlohmann::json&)>& on_progress = nullptr);

// Turns a reply document back into a Result (the inverse of Handle()).
Result<nlohmann::json> ReplyToResult(nlohmann::json reply);

}  // namespace ebs
