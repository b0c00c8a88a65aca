// The NBD server: listeners on TCP and a Unix socket, connections spread over
// the engine's event loops, every volume of the data directory exported under
// its name. Sockets and disk I/O share each loop's io_uring ring.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "ebs/engine/event_loop.h"
#include "ebs/engine/status.h"
#include "ebs/engine/volume_manager.h"
#include "ebs/nbd/export_provider.h"
#include "ebs/nbd/handshake.h"
#include "ebs/nbd/tls.h"

namespace ebs::nbd {

struct ServerOptions {
  std::vector<std::string> tcp_listen;  // "HOST:PORT"; empty: no TCP
  std::string unix_socket;              // empty: no Unix socket
  std::string default_export = "vol0";  // served for the empty export name
  bool read_only = false;
  // Volumes the TCP listeners / the Unix socket export (LIST, INFO, GO and
  // EXPORT_NAME see only these). nullopt: every volume.
  std::optional<std::vector<std::string>> tcp_exports;
  std::optional<std::vector<std::string>> unix_exports;
  // TLS on every listener. Anything but kOff needs tls_credentials.
  TlsMode tls = TlsMode::kOff;
  std::shared_ptr<const TlsCredentials> tls_credentials;
  // A TCP listener beyond loopback needs tls == kRequire with credentials
  // that authenticate every client (PSK, or verify_peer), unless this is
  // set. On loopback without that, Start() warns: every local user can
  // connect.
  bool allow_insecure_tcp = false;
  // Per-identity authorization: a TLS client whose PSK user name or
  // certificate CN is a key here sees and opens only the volumes listed;
  // an identity not listed, or a client without TLS, sees none. Empty:
  // every client may open every export its listener serves. Needs kRequire.
  std::map<std::string, std::vector<std::string>> tls_allow;
  // Connections open at once; one more is closed as soon as it is accepted.
  size_t max_connections = kDefaultMaxConnections;
  // A connection that has not chosen an export this long after it was
  // accepted is closed. 0: no limit.
  int handshake_timeout_ms = 10'000;
  // Exports beyond the volumes (the store's snapshots), always read-only;
  // a volume of the same name wins. Null: volumes only. Must outlive the
  // server.
  ExportProvider* extra_exports = nullptr;

  static constexpr size_t kDefaultMaxConnections = 256;
};

// The volumes one listener exports.
class ExportFilter {
 public:
  ExportFilter() = default;  // every volume
  explicit ExportFilter(const std::optional<std::vector<std::string>>& names);
  bool Allows(const std::string& name) const { return all_ || names_.count(name) > 0; }

 private:
  bool all_ = true;
  std::unordered_set<std::string> names_;
};

class Connection;
struct LoopState;

class Server {
 public:
  // Binds every listener (failing without side effects if one cannot be
  // bound) and starts accepting on the loops. `loops` must be running and
  // outlive the server.
  static Result<std::unique_ptr<Server>> Start(const ServerOptions& options, VolumeManager* volumes,
                                               std::vector<EventLoop*> loops);
  // REQUIRES: the loops have been stopped (their pending operations point
  // into the server).
  ~Server();

  // Stops accepting, lets each connection finish the requests it has read,
  // send their replies and close, waiting up to `timeout_ms`.
  void Shutdown(int timeout_ms = 30000);

  // Addresses actually bound (port 0 resolved), for logs and tests.
  const std::vector<std::string>& addresses() const { return addresses_; }
  // What the operator should know about this configuration (TCP open to
  // every local user, ...), for the log.
  const std::vector<std::string>& warnings() const { return warnings_; }

  // --tls-allow: may a client (over TLS or not, proven `identity`) see and
  // open export `name`?
  bool TlsAllows(bool tls, const std::string& identity, const std::string& name) const;

  VolumeManager* volumes() { return volumes_; }
  const ServerOptions& options() const { return options_; }
  // Called by a connection (on its loop) when it has closed.
  void ConnectionClosed(LoopState* loop, Connection* c);

 private:
  struct Listener;
  Server() = default;
  void Accepted(Listener* l, int fd);

  ServerOptions options_;
  ExportFilter tcp_exports_;
  ExportFilter unix_exports_;
  VolumeManager* volumes_ = nullptr;
  std::vector<EventLoop*> loops_;
  std::vector<std::unique_ptr<LoopState>> loop_states_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::vector<std::string> addresses_;
  std::vector<std::string> warnings_;
  std::map<std::string, std::unordered_set<std::string>> tls_allow_;
  std::atomic<size_t> next_loop_{0};
  std::atomic<int64_t> last_refusal_log_ns_{0};
  std::atomic<int> connections_{0};
  std::atomic<bool> stopping_{false};
};

}  // namespace ebs::nbd
