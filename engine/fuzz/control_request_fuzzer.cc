// libFuzzer target: one control-socket request line, parsed and run by the
// real command registry against a real data directory. Whatever the JSON
// says, the answer must be a reply document and the process must survive.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "ebs/engine/control.h"
#include "ebs/engine/volume_manager.h"

namespace {

std::string* dir = nullptr;
std::unique_ptr<ebs::VolumeManager>* manager = nullptr;
ebs::CommandRegistry* registry = nullptr;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  char tmpl[] = "/tmp/ebs-control-fuzz.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) std::abort();
  dir = new std::string(tmpl);
  std::atexit([] { std::filesystem::remove_all(*dir); });
  ebs::ManagerOptions opts;
  opts.throttle = false;
  auto m = ebs::VolumeManager::Open(*dir, opts);
  if (!m.ok()) {
    std::fprintf(stderr, "%s\n", m.status().message().c_str());
    std::abort();
  }
  manager = new std::unique_ptr<ebs::VolumeManager>(std::move(*m));
  registry = new ebs::CommandRegistry();
  ebs::RegisterVolumeCommands(registry, manager->get());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto request = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded()) return 0;  // the server answers "not valid JSON" before the registry
  nlohmann::json reply = registry->Handle(request);
  if (!reply.is_object() || !reply.contains("ok")) std::abort();
  (void)ebs::ReplyToResult(reply);
  return 0;
}
