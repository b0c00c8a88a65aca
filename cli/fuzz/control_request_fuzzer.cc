// libFuzzer target: the bytes a client sends on the control socket, read,
// framed, parsed and answered by the server's own connection handler
// (ServeControlConnection) with the real volume and snapshot commands against
// a real data directory and snapshot store. Whatever the bytes are, the
// process must survive, and the client must get nothing (an empty or
// over-long request) or progress lines followed by one reply document.
//
// The handler is given a 2 KiB request limit instead of 1 MiB, so that
// inputs of libFuzzer's usual sizes reach the over-long path too; the unit
// tests check the real limit.
//
// Before the bytes are sent, two things in a request that parses are
// rewritten: a "file" (export, import) always names the fuzzer's scratch
// file in the data directory, whatever the input says; and a snapshot
// reference ("id", "from", "to", "source_snapshot") written "@N" becomes the
// id of the N-th snapshot in the store (modulo their number), since the
// fuzzer cannot guess the random ids of snapshots it created.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <semaphore>
#include <string>
#include <thread>

#include "ebs/engine/control.h"
#include "ebs/engine/volume_manager.h"
#include "ebs/snapshot/snapshot_service.h"

namespace {

constexpr size_t kFuzzRequestLimit = 2048;

std::string* dir = nullptr;
std::unique_ptr<ebs::VolumeManager>* manager = nullptr;
std::unique_ptr<ebs::snapshot::SnapshotService>* snapshots = nullptr;
ebs::CommandRegistry* registry = nullptr;

// The client side of a connection, on a thread of its own (started once: a
// thread per input would cost more than most inputs): sends the input,
// half-closes, and reads everything the server answers until it closes.
struct Client {
  int fd = -1;
  std::string input;
  std::string answer;
  std::binary_semaphore start{0}, finished{0};

  void Run() {
    for (;;) {
      start.acquire();
      answer.clear();
      for (size_t off = 0; off < input.size();) {
        ssize_t n = ::send(fd, input.data() + off, input.size() - off, MSG_NOSIGNAL);
        if (n <= 0) break;  // the server stopped reading (request too long)
        off += static_cast<size_t>(n);
      }
      ::shutdown(fd, SHUT_WR);
      char buf[65536];
      ssize_t n;
      while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) answer.append(buf, static_cast<size_t>(n));
      finished.release();
    }
  }
};
Client* client = nullptr;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "control_request_fuzzer: %s\n", what);
  std::abort();
}

// The input with the rewrites above applied (unchanged when it has none).
std::string Rewrite(std::string input) {
  const size_t nl = input.find('\n');
  auto request = nlohmann::json::parse(input.substr(0, nl), nullptr, /*allow_exceptions=*/false);
  if (!request.is_object() || !request.contains("args") || !request["args"].is_object()) return input;
  auto& args = request["args"];
  bool changed = false;
  if (args.contains("file") && args["file"].is_string()) {
    args["file"] = *dir + "/scratch.img";
    changed = true;
  }
  for (const char* key : {"id", "from", "to", "source_snapshot"}) {
    if (!args.contains(key) || !args[key].is_string()) continue;
    const std::string ref = args[key].get<std::string>();
    if (ref.empty() || ref[0] != '@') continue;
    auto list = (*snapshots)->List();
    if (!list.ok() || list->empty()) continue;
    args[key] = (*list)[std::strtoull(ref.c_str() + 1, nullptr, 10) % list->size()].id;
    changed = true;
  }
  if (!changed) return input;
  return request.dump() + (nl == std::string::npos ? std::string() : input.substr(nl));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // On tmpfs when there is one: the commands' fsyncs then cost nothing
  // (volumes are sparse and the fuzzer writes no data into them).
  char shm[] = "/dev/shm/ebs-control-fuzz.XXXXXX";
  char tmp[] = "/tmp/ebs-control-fuzz.XXXXXX";
  const char* made = mkdtemp(shm);
  if (made == nullptr) made = mkdtemp(tmp);
  if (made == nullptr) Die("mkdtemp");
  dir = new std::string(made);
  std::atexit([] { std::filesystem::remove_all(*dir); });
  ebs::ManagerOptions opts;
  opts.throttle = false;
  auto m = ebs::VolumeManager::Open(*dir, opts);
  if (!m.ok()) Die(m.status().message().c_str());
  manager = new std::unique_ptr<ebs::VolumeManager>(std::move(*m));
  auto s = ebs::snapshot::SnapshotService::Open(*dir + "/store", manager->get());
  if (!s.ok()) Die(s.status().message().c_str());
  snapshots = new std::unique_ptr<ebs::snapshot::SnapshotService>(std::move(*s));
  registry = new ebs::CommandRegistry();
  ebs::RegisterVolumeCommands(registry, manager->get());
  ebs::snapshot::RegisterSnapshotCommands(registry, snapshots->get());
  client = new Client();
  std::thread([] { client->Run(); }).detach();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) Die("socketpair");
  client->fd = fds[1];
  client->input = Rewrite(std::string(reinterpret_cast<const char*>(data), size));
  client->start.release();
  ebs::ServeControlConnection(fds[0], *registry, kFuzzRequestLimit);
  ::close(fds[0]);
  client->finished.acquire();
  ::close(fds[1]);
  const std::string& answer = client->answer;

  // Nothing, or progress lines and one reply, each a JSON line.
  size_t pos = 0;
  bool replied = false;
  while (pos < answer.size()) {
    if (replied) Die("bytes after the reply");
    const size_t nl = answer.find('\n', pos);
    if (nl == std::string::npos) Die("an answer line without a newline");
    auto doc = nlohmann::json::parse(answer.substr(pos, nl - pos), nullptr, /*allow_exceptions=*/false);
    if (!doc.is_object()) Die("an answer line that is not a JSON object");
    if (doc.contains("ok")) {
      replied = true;
      (void)ebs::ReplyToResult(doc);
    } else if (!doc.contains("progress")) {
      Die("an answer line that is neither progress nor a reply");
    }
    pos = nl + 1;
  }
  return 0;
}
