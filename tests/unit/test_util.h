// Helpers shared by the unit tests: temporary directories, test data, event
// loops and synchronous I/O through them.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <filesystem>
#include <future>
#include <random>
#include <string>

#include "ebs/engine/block_device.h"
#include "ebs/engine/event_loop.h"

// EBS_CANNOT_RUN(why << ...): this test cannot run here. Skips it (as
// GTEST_SKIP), or under CI fails it (as GTEST_FAIL); either returns from the
// current function, like those two.
#define EBS_CANNOT_RUN(why)                                                    \
  do {                                                                         \
    if (::ebs::testing::UnderCi()) GTEST_FAIL() << "cannot run under CI: " << why; \
    GTEST_SKIP() << why;                                                       \
  } while (0)

namespace ebs::testing {

// Under CI (the environment has CI=true) a check that cannot run is a
// failure: CI must not pass having skipped it. Elsewhere it is skipped.
inline bool UnderCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::strcmp(ci, "true") == 0;
}


// `n` pseudo-random bytes (incompressible), the same for the same seed.
inline std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(&s[i], &v, std::min<size_t>(8, n - i));
  }
  return s;
}

// `n` bytes of word soup: compresses well, like text.
inline std::string TextBytes(size_t n) {
  static const char* kWords[] = {"block ", "storage ", "snapshot ", "volume ", "chunk ", "the ", "of ", "\n"};
  std::mt19937 rng(7);
  std::string s;
  while (s.size() < n) s += kWords[rng() % 8];
  s.resize(n);
  return s;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ebs-test.XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// An event loop with `entries` ring entries, busy-polling for up to
// `busy_poll` (zero: never), started on a thread named `name`; null (and the
// test failed) when it cannot be created.
inline std::unique_ptr<EventLoop> StartLoop(const std::string& name, unsigned entries = 256,
                                            std::chrono::nanoseconds busy_poll = {}) {
  auto loop = EventLoop::Create(entries);
  if (!loop.ok()) {
    ADD_FAILURE() << "event loop " << name << ": " << loop.status().message();
    return nullptr;
  }
  (*loop)->set_busy_poll(busy_poll);
  (*loop)->Start(name);
  return std::move(*loop);
}

// Runs one request on `loop` (started) and waits for it; returns 0 or -errno.
inline int RunIo(EventLoop& loop, BlockDevice& dev, IoKind kind, uint64_t offset, uint64_t length,
                 char* buf = nullptr, uint32_t flags = 0) {
  struct Waiter {
    IoRequest req;
    std::promise<int> done;
  } w;
  w.req.kind = kind;
  w.req.offset = offset;
  w.req.length = length;
  w.req.buf = buf;
  w.req.flags = flags;
  w.req.owner = &w;
  w.req.callback = [](IoRequest* r, int result) { static_cast<Waiter*>(r->owner)->done.set_value(result); };
  auto f = w.done.get_future();
  loop.Post([&] { dev.Submit(loop, &w.req); });
  return f.get();
}

}  // namespace ebs::testing
