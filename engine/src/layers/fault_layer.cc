#include "layers/fault_layer.h"

#include <unistd.h>

#include <cstring>
#include <sstream>

namespace ebs {
namespace {

struct NamedErrno {
  const char* name;
  int value;
};
constexpr NamedErrno kErrnos[] = {{"EIO", EIO},       {"ENOSPC", ENOSPC}, {"EPERM", EPERM},
                                  {"ENOMEM", ENOMEM}, {"EINVAL", EINVAL}, {"ESHUTDOWN", ESHUTDOWN}};

// Completion of an injected failure: a NOP on the ring carries it back.
void FailOnRing(IoRequest* req, int error) {
  req->inline_result = -error;
  req->on_cqe = [](IoRequest* r, int) { r->Finish(r->inline_result); };
  io_uring_sqe* sqe = req->loop->GetSqe(req);
  io_uring_prep_nop(sqe);
}

}  // namespace

Result<FaultSpec> FaultSpec::Parse(const std::string& text) {
  FaultSpec spec;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t eq = item.find('=');
    if (eq == std::string::npos) return Status::InvalidArgument("--inject-fault: expected KEY=VALUE, got '" + item + "'");
    std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    if (key == "volume") {
      spec.volume = value;
    } else if (key == "error") {
      bool found = false;
      for (const auto& e : kErrnos) {
        if (value == e.name) {
          spec.error = e.value;
          found = true;
        }
      }
      if (!found) return Status::InvalidArgument("--inject-fault: unknown error '" + value + "' (EIO, ENOSPC, ...)");
    } else if (key == "rate") {
      char* end = nullptr;
      spec.rate = std::strtod(value.c_str(), &end);
      if (end == value.c_str() || *end != '\0' || spec.rate < 0 || spec.rate > 1) {
        return Status::InvalidArgument("--inject-fault: rate must be between 0 and 1, got '" + value + "'");
      }
    } else if (key == "ops") {
      spec.reads = value.find("read") != std::string::npos;
      spec.writes = value.find("write") != std::string::npos;
      spec.flushes = value.find("flush") != std::string::npos;
      if (!spec.reads && !spec.writes && !spec.flushes) {
        return Status::InvalidArgument("--inject-fault: ops takes read, write, flush joined by '+'");
      }
    } else if (key == "seed") {
      spec.seed = std::strtoull(value.c_str(), nullptr, 10);
    } else if (key == "trigger") {
      spec.trigger_file = value;
    } else {
      return Status::InvalidArgument("--inject-fault: unknown key '" + key + "'");
    }
  }
  if (spec.volume.empty()) return Status::InvalidArgument("--inject-fault: volume=NAME is required");
  return spec;
}

FaultLayer::FaultLayer(std::shared_ptr<BlockDevice> next, FaultSpec spec)
    : DeviceLayer(std::move(next)), spec_(std::move(spec)), rng_(spec_.seed) {}

bool FaultLayer::ShouldFail(const IoRequest& req) {
  bool matches = false;
  switch (req.kind) {
    case IoKind::kRead:
    case IoKind::kCache:
      matches = spec_.reads;
      break;
    case IoKind::kWrite:
    case IoKind::kTrim:
    case IoKind::kWriteZeroes:
      matches = spec_.writes;
      break;
    case IoKind::kFlush:
      matches = spec_.flushes;
      break;
  }
  if (!matches) return false;
  if (!spec_.trigger_file.empty() && access(spec_.trigger_file.c_str(), F_OK) != 0) return false;
  if (spec_.rate >= 1.0) return true;
  std::lock_guard<std::mutex> lock(mu_);
  return std::uniform_real_distribution<double>(0, 1)(rng_) < spec_.rate;
}

void FaultLayer::Submit(EventLoop& loop, IoRequest* req) {
  if (!ShouldFail(*req)) {
    next_->Submit(loop, req);
    return;
  }
  injected_.fetch_add(1);
  req->loop = &loop;
  FailOnRing(req, spec_.error);
}

}  // namespace ebs
