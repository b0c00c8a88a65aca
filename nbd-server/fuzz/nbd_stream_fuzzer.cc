// libFuzzer target: the bytes a client sends, from the first handshake byte
// through the transmission phase, fed to the real server over a Unix socket
// (real event loop, real catalog, real volume). Whatever arrives, the server
// must not crash, hang or leak; ASan and UBSan watch it. The server offers TLS
// (--tls on, PSK): plain inputs are served as without it, and an input that
// sends STARTTLS feeds what follows to the TLS handshake.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "ebs/engine/event_loop.h"
#include "ebs/engine/volume_manager.h"
#include "ebs/nbd/server.h"
#include "ebs/nbd/tls.h"

namespace {

struct Fixture {
  std::string dir;
  std::string socket;
  std::unique_ptr<ebs::VolumeManager> volumes;
  std::unique_ptr<ebs::EventLoop> loop;
  std::unique_ptr<ebs::nbd::Server> server;
};

Fixture* fx = nullptr;

void Die(const std::string& what) {
  std::fprintf(stderr, "fuzzer setup failed: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fx = new Fixture();
  char tmpl[] = "/tmp/ebs-fuzz.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) Die("mkdtemp");
  fx->dir = tmpl;
  std::atexit([] { std::filesystem::remove_all(fx->dir); });
  fx->socket = fx->dir + "/nbd.sock";
  auto m = ebs::VolumeManager::Open(fx->dir + "/data");
  if (!m.ok()) Die(m.status().message());
  fx->volumes = std::move(*m);
  ebs::VolumeParams p;
  p.type = ebs::VolumeType::kGp3;
  p.size_bytes = ebs::kGiB;
  if (!fx->volumes->Create("vol0", p).ok()) Die("create vol0");
  auto loop = ebs::EventLoop::Create(256);
  if (!loop.ok()) Die(loop.status().message());
  fx->loop = std::move(*loop);
  fx->loop->Start("fuzz-loop");
  ebs::nbd::ServerOptions opts;
  opts.unix_socket = fx->socket;
  std::ofstream(fx->dir + "/keys.psk") << "fuzz:00112233445566778899aabbccddeeff\n";
  ebs::nbd::TlsConfig tls;
  tls.psk_file = fx->dir + "/keys.psk";
  auto creds = ebs::nbd::TlsCredentials::Load(tls);
  if (!creds.ok()) Die(creds.status().message());
  opts.tls = ebs::nbd::TlsMode::kOn;
  opts.tls_credentials = *creds;
  auto s = ebs::nbd::Server::Start(opts, fx->volumes.get(), {fx->loop.get()});
  if (!s.ok()) Die(s.status().message());
  fx->server = std::move(*s);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, fx->socket.c_str(), fx->socket.size() + 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) Die("connect");
  size_t sent = 0;
  bool write_shut = false;
  char buf[65536];
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  // Write the input while draining replies, so a server that answers a lot
  // never blocks on us; then read to EOF: the server must close by itself
  // once the stream ends.
  while (true) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "server did not close the connection within 10 s\n");
      std::abort();
    }
    if (sent == size && !write_shut) {
      shutdown(fd, SHUT_WR);
      write_shut = true;
    }
    pollfd p{fd, static_cast<short>(POLLIN | (write_shut ? 0 : POLLOUT)), 0};
    if (poll(&p, 1, 100) <= 0) continue;
    if (p.revents & POLLOUT) {
      ssize_t n = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
      if (n > 0) sent += static_cast<size_t>(n);
      if (n < 0 && errno != EAGAIN) sent = size;  // server closed on us
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n == 0 || (n < 0 && errno != EAGAIN)) break;
    }
  }
  close(fd);
  return 0;
}
