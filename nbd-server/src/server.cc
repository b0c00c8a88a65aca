#include "ebs/nbd/server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "connection.h"
#include "ebs/engine/clock.h"
#include "ebs/engine/log.h"
#include "loop_state.h"

namespace ebs::nbd {

ExportFilter::ExportFilter(const std::optional<std::vector<std::string>>& names) : all_(!names.has_value()) {
  if (names) names_.insert(names->begin(), names->end());
}

struct Server::Listener : IoCompletion {
  // Out of file descriptors (or kernel memory), accept fails at once and
  // would be retried at once: the listener waits this long instead, on a
  // timeout completed to itself.
  static constexpr int64_t kBackoffNs = 100'000'000;

  Server* server = nullptr;
  int fd = -1;
  bool tcp = false;
  const ExportFilter* exports = nullptr;  // owned by the server
  std::string unix_path;
  __kernel_timespec backoff{0, kBackoffNs};
  bool backing_off = false;  // the pending operation is the timeout, not an accept
  bool warned_exhausted = false;
  void Arm() {
    io_uring_sqe* sqe = server->loops_[0]->GetSqe(this);
    io_uring_prep_accept(sqe, fd, nullptr, nullptr, SOCK_CLOEXEC);
  }
  void OnComplete(int res, uint32_t) override {
    if (backing_off) {
      backing_off = false;
      if (!server->stopping_.load()) Arm();
      return;
    }
    if (server->stopping_.load()) {
      if (res >= 0) ::close(res);
      return;
    }
    if (res >= 0) {
      server->Accepted(this, res);
    } else if (res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM) {
      if (!warned_exhausted) {
        warned_exhausted = true;
        LogWarning(std::string("cannot accept connections: ") + std::strerror(-res) +
                   "; retrying every 100 ms (raise ulimit -n, or lower --max-connections)");
      }
      backing_off = true;
      io_uring_prep_timeout(server->loops_[0]->GetSqe(this), &backoff, 0, 0);
      return;
    }
    Arm();  // also after ECONNABORTED and friends: the next accept may succeed
  }
  ~Listener() override {
    if (fd >= 0) ::close(fd);
    if (!unix_path.empty()) ::unlink(unix_path.c_str());
  }
};

void LoopState::Tick::Arm() {
  io_uring_sqe* sqe = state->loop->GetSqe(this);
  io_uring_prep_timeout(sqe, &ts, 0, 0);
}

void LoopState::Tick::OnComplete(int, uint32_t) {
  // A copy: closing may delete a connection (and erase it from the set).
  std::vector<Connection*> all(state->connections.begin(), state->connections.end());
  const int64_t now = SteadyClock::Default()->NowNs();
  for (Connection* c : all) {
    if (!state->stopping && c->VolumeGone()) c->RequestClose();
  }
  all.assign(state->connections.begin(), state->connections.end());
  for (Connection* c : all) c->EndDrainAfter(now, kMaxDrainNs);
  const int64_t handshake_ns = int64_t{state->server->options().handshake_timeout_ms} * 1'000'000;
  all.assign(state->connections.begin(), state->connections.end());
  for (Connection* c : all) c->EndHandshakeAfter(now, handshake_ns);
  // Stopping, the loop keeps ticking until its last connection has ended.
  if (!state->stopping || !state->connections.empty()) Arm();
}

namespace {

Result<std::pair<std::string, std::string>> SplitHostPort(const std::string& spec) {
  std::string host, port;
  if (!spec.empty() && spec[0] == '[') {
    size_t close = spec.find(']');
    if (close == std::string::npos || close + 1 >= spec.size() || spec[close + 1] != ':') {
      return Status::InvalidArgument("bad listen address '" + spec + "': expected [IPv6]:PORT");
    }
    host = spec.substr(1, close - 1);
    port = spec.substr(close + 2);
  } else {
    size_t colon = spec.rfind(':');
    if (colon == std::string::npos) {
      return Status::InvalidArgument("bad listen address '" + spec + "': expected HOST:PORT");
    }
    host = spec.substr(0, colon);
    port = spec.substr(colon + 1);
  }
  if (port.empty()) return Status::InvalidArgument("bad listen address '" + spec + "': no port");
  return std::make_pair(host, port);
}

bool IsLoopback(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
    return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
  }
  if (ss.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) return true;
    return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127;
  }
  return false;
}

Result<int> ListenTcp(const std::string& spec, std::string* bound, bool* loopback) {
  auto hp = SplitHostPort(spec);
  if (!hp.ok()) return hp.status();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(hp->first.empty() ? nullptr : hp->first.c_str(), hp->second.c_str(), &hints, &res);
  if (rc != 0) return Status::InvalidArgument("listen address '" + spec + "': " + gai_strerror(rc));
  Status last = Status::InvalidArgument("no usable address for " + spec);
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last = Status::FromErrno(errno, "socket");
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 128) != 0) {
      last = Status::FromErrno(errno, "listen on " + spec);
      ::close(fd);
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, host, sizeof(host), serv, sizeof(serv),
                NI_NUMERICHOST | NI_NUMERICSERV);
    *bound = ss.ss_family == AF_INET6 ? "[" + std::string(host) + "]:" + serv : std::string(host) + ":" + serv;
    *loopback = IsLoopback(ss);
    freeaddrinfo(res);
    return fd;
  }
  freeaddrinfo(res);
  return last;
}

Result<int> ListenUnix(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return Status::InvalidArgument("socket path too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno(errno, "socket");
  // A socket file left behind by a server that died is useless; one that a
  // live server still listens on is not ours to take.
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      ::close(fd);
      return Status::AlreadyExists(path + " exists and is not a socket");
    }
    int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool live = ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(probe);
    if (live) {
      ::close(fd);
      return Status::Busy("another server is listening on " + path);
    }
    ::unlink(path.c_str());
  }
  mode_t old = umask(0177);  // 0600: only the owner may connect
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  umask(old);
  if (rc != 0 || ::listen(fd, 128) != 0) {
    int err = errno;
    ::close(fd);
    return Status::FromErrno(err, "listen on " + path);
  }
  return fd;
}

}  // namespace

Result<std::unique_ptr<Server>> Server::Start(const ServerOptions& options, VolumeManager* volumes,
                                              std::vector<EventLoop*> loops) {
  std::unique_ptr<Server> s(new Server());
  s->options_ = options;
  s->volumes_ = volumes;
  s->loops_ = std::move(loops);
  if (s->loops_.empty()) return Status::InvalidArgument("the server needs at least one event loop");
  if (options.tls != TlsMode::kOff && options.tls_credentials == nullptr) {
    return Status::InvalidArgument("TLS is on but no credentials were given: --tls-certs DIR or --tls-psk FILE");
  }
  s->tcp_exports_ = ExportFilter(options.tcp_exports);
  s->unix_exports_ = ExportFilter(options.unix_exports);
  if (!options.tls_allow.empty() && options.tls != TlsMode::kRequire) {
    return Status::InvalidArgument("--tls-allow limits TLS clients to some exports: it needs --tls require");
  }
  for (const auto& [identity, names] : options.tls_allow) {
    s->tls_allow_[identity].insert(names.begin(), names.end());
  }
  // Clients that must prove who they are before they see anything.
  const bool authenticated = options.tls == TlsMode::kRequire && options.tls_credentials != nullptr &&
                             options.tls_credentials->authenticates_clients();
  for (const auto& spec : options.tcp_listen) {
    std::string bound;
    bool loopback = false;
    auto fd = ListenTcp(spec, &bound, &loopback);
    if (!fd.ok()) return fd.status();
    if (!authenticated && !loopback && !options.allow_insecure_tcp) {
      ::close(*fd);
      return Status::Error(EACCES,
          "refusing to serve TCP on " + bound +
          " without authentication: anyone who can reach it could read and write every volume. Use "
          "--tls require with --tls-psk FILE (or --tls-certs DIR --tls-verify-peer), listen on loopback, or "
          "give --allow-insecure-tcp if the network is trusted");
    }
    if (!authenticated) {
      s->warnings_.push_back("TCP " + bound + " takes clients without authentication: " +
                             (loopback ? "every local user" : "anyone who can reach it") +
                             " can read and write the volumes it exports (--tls require with --tls-psk "
                             "authenticates them; the Unix socket is open to this user only)");
    }
    auto l = std::make_unique<Listener>();
    l->server = s.get();
    l->fd = *fd;
    l->tcp = true;
    l->exports = &s->tcp_exports_;
    s->listeners_.push_back(std::move(l));
    s->addresses_.push_back(bound);
  }
  if (!options.unix_socket.empty()) {
    auto fd = ListenUnix(options.unix_socket);
    if (!fd.ok()) return fd.status();
    auto l = std::make_unique<Listener>();
    l->server = s.get();
    l->fd = *fd;
    l->unix_path = options.unix_socket;
    l->exports = &s->unix_exports_;
    s->listeners_.push_back(std::move(l));
    s->addresses_.push_back("unix:" + options.unix_socket);
  }
  if (s->listeners_.empty()) return Status::InvalidArgument("nothing to listen on: give --listen or --socket");
  for (EventLoop* loop : s->loops_) {
    auto st = std::make_unique<LoopState>();
    st->server = s.get();
    st->loop = loop;
    st->tick.state = st.get();
    s->loop_states_.push_back(std::move(st));
  }
  Server* raw = s.get();
  for (auto& st : s->loop_states_) {
    LoopState* ls = st.get();
    ls->loop->Post([ls] { ls->tick.Arm(); });
  }
  raw->loops_[0]->Post([raw] {
    for (auto& l : raw->listeners_) l->Arm();
  });
  return s;
}

bool Server::TlsAllows(bool tls, const std::string& identity, const std::string& name) const {
  if (tls_allow_.empty()) return true;
  if (!tls || identity.empty()) return false;
  auto it = tls_allow_.find(identity);
  return it != tls_allow_.end() && it->second.count(name) > 0;
}

void Server::Accepted(Listener* l, int fd) {
  if (connections_.load() >= static_cast<int>(options_.max_connections)) {
    ::close(fd);  // at once: a refused client costs nothing while it waits
    const int64_t now = SteadyClock::Default()->NowNs();
    int64_t last = last_refusal_log_ns_.load();
    if (now - last >= 10'000'000'000 && last_refusal_log_ns_.compare_exchange_strong(last, now)) {
      LogWarning(fmt::format("refusing connections: {} open, the most --max-connections allows", options_.max_connections));
    }
    return;
  }
  if (l->tcp) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  // Small until the client has chosen an export (Connection raises it
  // then): a client that sends options and never reads parks no more than
  // this of replies in the kernel, beyond the server's own bound.
  int sndbuf = kHandshakeSendBuffer;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
  connections_.fetch_add(1);
  LoopState* ls = loop_states_[next_loop_.fetch_add(1) % loop_states_.size()].get();
  const ExportFilter* exports = l->exports;
  ls->loop->Post([ls, fd, exports] {
    if (ls->stopping) {  // accepted just as the server began to stop
      ::close(fd);
      ls->server->connections_.fetch_sub(1);
      return;
    }
    auto* c = new Connection(ls->server, ls, fd, exports);
    ls->connections.insert(c);
    c->Start();
  });
}

void Server::ConnectionClosed(LoopState* loop, Connection* c) {
  loop->connections.erase(c);
  delete c;
  connections_.fetch_sub(1);
}

void Server::Shutdown(int timeout_ms) {
  if (stopping_.exchange(true)) return;
  // Wakes the pending accepts; their completions see stopping_ and stop.
  for (auto& l : listeners_) ::shutdown(l->fd, SHUT_RDWR);
  for (auto& st : loop_states_) {
    LoopState* ls = st.get();
    ls->loop->Post([ls] {
      ls->stopping = true;
      std::vector<Connection*> all(ls->connections.begin(), ls->connections.end());
      for (Connection* c : all) c->RequestClose();
    });
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (connections_.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

Server::~Server() {
  Shutdown();
  // Connections that did not finish in time are abandoned to the loops,
  // which are stopped by their owner after this.
  listeners_.clear();
}

}  // namespace ebs::nbd
