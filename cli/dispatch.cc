#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <optional>
#include <ostream>
#include <streambuf>
#include <string>
#include <string_view>
#include <vector>

#include "context.h"
#include "ebs/engine/control.h"
#include "ebs/engine/file_util.h"
#include "ebs/engine/progress.h"
#include "ebs/engine/volume_manager.h"
#include "ebs/snapshot/snapshot_service.h"

namespace ebs::cli {

namespace {

// A progress bar on stderr, redrawn in place; cleared when the command ends.
class TerminalBar final : public Progress {
 public:
  ~TerminalBar() override {
    if (drawn_) fprintf(stderr, "\r\033[K");
  }
  void Update(std::string_view stage, uint64_t done, uint64_t total) override {
    const int width = 30;
    double f = total > 0 ? std::min(1.0, static_cast<double>(done) / static_cast<double>(total)) : 1.0;
    int filled = static_cast<int>(f * width);
    fprintf(stderr, "\r\033[K%.*s %3d%% [%s%s] %llu/%llu chunks", static_cast<int>(stage.size()), stage.data(),
            static_cast<int>(f * 100), std::string(static_cast<size_t>(filled), '#').c_str(),
            std::string(static_cast<size_t>(width - filled), ' ').c_str(), static_cast<unsigned long long>(done),
            static_cast<unsigned long long>(total));
    fflush(stderr);
    drawn_ = true;
  }

 private:
  bool drawn_ = false;
};

}  // namespace

Result<nlohmann::json> Dispatch(const Context& ctx, const std::string& cmd, const nlohmann::json& args) {
  // A command runs once and exits. Keep what it frees for reuse rather than
  // returning it to the kernel, and serve large blocks from the heap: a
  // diff of a million chunks spent a third of its time in page faults on
  // freshly mapped memory. (Not for `ebs serve`, which does not come here.)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  nlohmann::json request = {{"cmd", cmd}, {"args", args}};
  // Long operations draw a bar on a terminal; --json output stays one document.
  std::optional<TerminalBar> bar;
  if (!ctx.json && isatty(STDERR_FILENO)) bar.emplace();
  std::string socket = ctx.data_dir + "/control.sock";
  struct stat st {};
  if (stat(socket.c_str(), &st) == 0) {
    if (ctx.store_chunk_size != 0 && (cmd.rfind("snapshot.", 0) == 0 || cmd.rfind("store.", 0) == 0)) {
      return Status::InvalidArgument(
          "--store-chunk-size is for the process that opens the store: give it to `ebs serve`, or run this "
          "command while no server runs");
    }
    if (bar) request["progress"] = true;
    auto reply = ControlCall(socket, request, [&](const nlohmann::json& p) {
      if (bar) bar->Update(p.value("stage", std::string()), p.value("done", uint64_t{0}), p.value("total", uint64_t{0}));
    });
    if (reply.ok()) return ReplyToResult(std::move(*reply));
    // A socket without a listener was left by a server that died; any other
    // failure is real.
    if (reply.status().code() != ECONNREFUSED && reply.status().code() != ENOENT) return reply.status();
  }
  auto manager = VolumeManager::Open(ctx.data_dir, ManagerOptionsFor(ctx));
  if (!manager.ok()) return manager.status();
  CommandRegistry registry;
  RegisterVolumeCommands(&registry, manager->get());
  std::unique_ptr<snapshot::SnapshotService> snapshots;
  if (cmd.rfind("snapshot.", 0) == 0 || cmd.rfind("store.", 0) == 0) {
    auto s = snapshot::SnapshotService::Open(ctx.StorePath(), manager->get(), ctx.store_chunk_size);
    if (!s.ok()) return s.status();
    snapshots = std::move(*s);
    snapshot::RegisterSnapshotCommands(&registry, snapshots.get());
  }
  ScopedProgress scope(bar ? &*bar : nullptr);
  return ReplyToResult(registry.Handle(request));
}

ManagerOptions ManagerOptionsFor(const Context& ctx) {
  ManagerOptions o;
  o.key_dir = ctx.KeyDir();
  const char* rate = std::getenv("EBS_MODIFICATION_RATE_LIMIT");
  o.modification_rate_limit = rate != nullptr && (std::string(rate) == "1" || std::string(rate) == "on");
  return o;
}

int Fail(const Status& status) {
  std::fprintf(stderr, "ebs: %s\n", status.message().c_str());
  return 1;
}

namespace {

// An ostream buffer over stdout's descriptor, written in 1 MiB blocks.
class StdoutBuffer final : public std::streambuf {
 public:
  StdoutBuffer() : buf_(1 << 20) { setp(buf_.data(), buf_.data() + buf_.size()); }
  ~StdoutBuffer() override { sync(); }

 protected:
  int_type overflow(int_type c) override {
    if (sync() != 0) return traits_type::eof();
    if (!traits_type::eq_int_type(c, traits_type::eof())) sputc(traits_type::to_char_type(c));
    return traits_type::not_eof(c);
  }
  int sync() override {
    Status s = WriteAll(STDOUT_FILENO, std::string_view(pbase(), static_cast<size_t>(pptr() - pbase())), "stdout");
    setp(buf_.data(), buf_.data() + buf_.size());
    return s.ok() ? 0 : -1;
  }

 private:
  std::vector<char> buf_;
};

}  // namespace

void PrintJson(const nlohmann::json& doc) {
  // Serialized straight into a large buffer: no copy of the whole text.
  std::fflush(stdout);
  StdoutBuffer buffer;
  std::ostream out(&buffer);
  out << std::setw(2) << doc << '\n';
}

}  // namespace ebs::cli
