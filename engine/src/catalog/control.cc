#include "ebs/engine/control.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <mutex>

#include <cstring>

#include "ebs/engine/progress.h"

namespace ebs {
namespace {

nlohmann::json ErrorReply(int code, const std::string& message) {
  return {{"ok", false}, {"code", code}, {"error", message}};
}

Status WriteAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "control socket write");
    }
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

// Reads one newline-terminated line; EOF before any byte gives an empty string.
Result<std::string> ReadLine(int fd, size_t max_bytes) {
  std::string line;
  char buf[4096];
  while (true) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "control socket read");
    }
    if (n == 0) return line;
    line.append(buf, static_cast<size_t>(n));
    size_t nl = line.find('\n');
    if (nl != std::string::npos) {
      line.resize(nl);
      return line;
    }
    if (line.size() > max_bytes) return Status::InvalidArgument("control request too large");
  }
}

Result<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument("socket path too long (max " + std::to_string(sizeof(addr.sun_path) - 1) +
                                   " bytes): " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

}  // namespace

void CommandRegistry::Register(const std::string& name, CommandHandler handler) {
  handlers_[name] = std::move(handler);
}

nlohmann::json CommandRegistry::Handle(const nlohmann::json& request) const {
  if (!request.is_object() || !request.contains("cmd") || !request["cmd"].is_string()) {
    return ErrorReply(EINVAL, "malformed control request: expected {\"cmd\": NAME, \"args\": {...}}");
  }
  const std::string cmd = request["cmd"].get<std::string>();
  auto it = handlers_.find(cmd);
  if (it == handlers_.end()) return ErrorReply(EOPNOTSUPP, "unknown control command '" + cmd + "'");
  nlohmann::json args = request.value("args", nlohmann::json::object());
  if (!args.is_object()) return ErrorReply(EINVAL, "control request args must be an object");
  try {
    Result<nlohmann::json> r = it->second(args);
    if (!r.ok()) return ErrorReply(r.status().code(), r.status().message());
    // Moved, not copied: a result can hold millions of elements (a diff).
    nlohmann::json reply = nlohmann::json::object();
    reply["ok"] = true;
    reply["result"] = std::move(*r);
    return reply;
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong type: the request is bad, not the server.
    return ErrorReply(EINVAL, std::string("malformed arguments for ") + cmd + ": " + e.what());
  }
}

Result<nlohmann::json> ReplyToResult(nlohmann::json reply) {
  if (!reply.is_object() || !reply.contains("ok")) return Status::IoError("malformed control reply");
  if (reply["ok"].get<bool>()) {
    auto it = reply.find("result");
    return it == reply.end() ? nlohmann::json() : std::move(*it);
  }
  return Status::Error(reply.value("code", EIO), reply.value("error", std::string("unknown error")));
}

Result<std::unique_ptr<ControlServer>> ControlServer::Start(const std::string& socket_path,
                                                            const CommandRegistry* registry) {
  auto addr = UnixAddress(socket_path);
  if (!addr.ok()) return addr.status();
  std::unique_ptr<ControlServer> s(new ControlServer());
  s->path_ = socket_path;
  s->registry_ = registry;
  s->listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s->listen_fd_ < 0) return Status::FromErrno(errno, "control socket");
  // We hold the data directory lock, so a socket file left here is stale.
  ::unlink(socket_path.c_str());
  mode_t old = umask(0177);  // the socket is created 0600
  int rc = ::bind(s->listen_fd_, reinterpret_cast<sockaddr*>(&*addr), sizeof(sockaddr_un));
  umask(old);
  if (rc != 0) return Status::FromErrno(errno, "bind " + socket_path);
  if (::listen(s->listen_fd_, 16) != 0) return Status::FromErrno(errno, "listen " + socket_path);
  if (pipe2(s->stop_pipe_, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe");
  s->acceptor_ = std::thread([srv = s.get()] { srv->AcceptLoop(); });
  return s;
}

ControlServer::~ControlServer() {
  if (acceptor_.joinable()) {
    char c = 0;
    (void)!::write(stop_pipe_[1], &c, 1);
    acceptor_.join();
  }
  while (active_.load() > 0) usleep(1000);
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    ::unlink(path_.c_str());
  }
  for (int fd : stop_pipe_) {
    if (fd >= 0) ::close(fd);
  }
}

void ControlServer::AcceptLoop() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    // Requests are rare and some (modify, later snapshots) take a while:
    // each gets its own short-lived thread so one slow command blocks no other.
    active_.fetch_add(1);
    std::thread([this, fd] {
      ServeControlConnection(fd, *registry_);
      ::close(fd);
      active_.fetch_sub(1);
    }).detach();
  }
}

namespace {

// Sends progress to the client as {"progress": {...}} lines before the reply.
class SocketProgress final : public Progress {
 public:
  explicit SocketProgress(int fd) : fd_(fd) {}
  void Update(std::string_view stage, uint64_t done, uint64_t total) override {
    nlohmann::json line = {{"progress", {{"stage", stage}, {"done", done}, {"total", total}}}};
    std::lock_guard<std::mutex> lock(mu_);
    (void)WriteAll(fd_, line.dump() + "\n");  // a client gone is found at the reply
  }

 private:
  const int fd_;
  std::mutex mu_;
};

}  // namespace

void ServeControlConnection(int fd, const CommandRegistry& registry, size_t max_request_bytes) {
  auto line = ReadLine(fd, max_request_bytes);
  if (!line.ok() || line->empty()) return;
  auto request = nlohmann::json::parse(*line, nullptr, /*allow_exceptions=*/false);
  nlohmann::json reply;
  if (request.is_discarded()) {
    reply = ErrorReply(EINVAL, "control request is not valid JSON");
  } else {
    SocketProgress progress(fd);
    // Only `true` asks for progress. (value("progress", false) would throw
    // on a "progress" that is not a boolean, and nothing here catches it.)
    const bool wants = request.is_object() && request.contains("progress") && request["progress"] == true;
    ScopedProgress scope(wants ? &progress : nullptr);
    reply = registry.Handle(request);
  }
  (void)WriteAll(fd, reply.dump() + "\n");
}

Result<nlohmann::json> ControlCall(const std::string& socket_path, const nlohmann::json& request,
                                   const std::function<void(const nlohmann::json&)>& on_progress) {
  auto addr = UnixAddress(socket_path);
  if (!addr.ok()) return addr.status();
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno(errno, "socket");
  if (::connect(fd, reinterpret_cast<sockaddr*>(&*addr), sizeof(sockaddr_un)) != 0) {
    int err = errno;
    ::close(fd);
    return Status::FromErrno(err, "connect " + socket_path);
  }
  Status st = WriteAll(fd, request.dump() + "\n");
  if (!st.ok()) {
    ::close(fd);
    return st;
  }
  // Progress lines (if asked for), then the reply. Replies may be large (a
  // diff of many chunks): no size limit on this side.
  std::string buffer;
  char buf[65536];
  for (;;) {
    size_t nl = buffer.find('\n');
    if (nl == std::string::npos) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        int err = errno;
        ::close(fd);
        if (n < 0) return Status::FromErrno(err, "control socket read");
        return Status::IoError("the server closed the control connection without a reply");
      }
      buffer.append(buf, static_cast<size_t>(n));
      continue;
    }
    auto doc = nlohmann::json::parse(std::string_view(buffer).substr(0, nl), nullptr, false);
    buffer.erase(0, nl + 1);
    if (doc.is_discarded()) {
      ::close(fd);
      return Status::IoError("malformed control reply");
    }
    if (doc.is_object() && doc.contains("progress") && !doc.contains("ok")) {
      if (on_progress) on_progress(doc["progress"]);
      continue;
    }
    ::close(fd);
    return doc;
  }
}

}  // namespace ebs
