#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>

#include "context.h"
#include "ebs/engine/control.h"
#include "ebs/engine/volume_manager.h"
#include "ebs/snapshot/snapshot_service.h"

namespace ebs::cli {

Result<nlohmann::json> Dispatch(const Context& ctx, const std::string& cmd, const nlohmann::json& args) {
  nlohmann::json request = {{"cmd", cmd}, {"args", args}};
  std::string socket = ctx.data_dir + "/control.sock";
  struct stat st {};
  if (stat(socket.c_str(), &st) == 0) {
    auto reply = ControlCall(socket, request);
    if (reply.ok()) return ReplyToResult(*reply);
    // A socket without a listener was left by a server that died; any other
    // failure is real.
    if (reply.status().code() != ECONNREFUSED && reply.status().code() != ENOENT) return reply.status();
  }
  auto manager = VolumeManager::Open(ctx.data_dir, ManagerOptionsFromEnv());
  if (!manager.ok()) return manager.status();
  CommandRegistry registry;
  RegisterVolumeCommands(&registry, manager->get());
  std::unique_ptr<snapshot::SnapshotService> snapshots;
  if (cmd.rfind("snapshot.", 0) == 0 || cmd.rfind("store.", 0) == 0) {
    auto s = snapshot::SnapshotService::Open(ctx.StorePath(), manager->get());
    if (!s.ok()) return s.status();
    snapshots = std::move(*s);
    snapshot::RegisterSnapshotCommands(&registry, snapshots.get());
  }
  return ReplyToResult(registry.Handle(request));
}

ManagerOptions ManagerOptionsFromEnv() {
  ManagerOptions o;
  const char* rate = std::getenv("EBS_MODIFICATION_RATE_LIMIT");
  o.modification_rate_limit = rate != nullptr && (std::string(rate) == "1" || std::string(rate) == "on");
  return o;
}

int Fail(const Status& status) {
  std::fprintf(stderr, "ebs: %s\n", status.message().c_str());
  return 1;
}

}  // namespace ebs::cli
