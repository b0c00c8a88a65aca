// `ebs serve`: export every volume over NBD until SIGINT/SIGTERM.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "commands.h"
#include "context.h"
#include "snapshot_exports.h"
#include "ebs/engine/control.h"
#include "ebs/engine/event_loop.h"
#include "ebs/engine/metrics_exporter.h"
#include "ebs/engine/volume_manager.h"
#include "ebs/nbd/server.h"
#include "ebs/nbd/tls.h"
#include "ebs/snapshot/snapshot_service.h"

namespace ebs::cli {
namespace {

struct ServeArgs {
  std::vector<std::string> listen;
  std::string socket;
  unsigned threads = 0;
  unsigned busy_poll_us = 50;
  bool read_only = false;
  std::string default_export = "vol0";
  bool no_throttle = false;
  std::string metrics;
  double optimizing_seconds = 0;
  bool modification_rate_limit = false;
  std::vector<std::string> faults;
  std::string tls = "off";
  std::string tls_certs;
  std::string tls_psk;
  bool tls_verify_peer = false;
  std::vector<std::string> exports_tcp;   // empty: every volume
  std::vector<std::string> exports_unix;  // empty: every volume
  bool allow_insecure_tcp = false;
  std::vector<std::string> tls_allow;  // IDENTITY=VOL[,VOL...]
  size_t max_connections = nbd::ServerOptions::kDefaultMaxConnections;
  double handshake_timeout = 10;
  bool no_snapshot_exports = false;
};

// --tls and its credentials, checked before anything is opened or bound.
Status ConfigureTls(const ServeArgs& a, nbd::ServerOptions* opts) {
  bool creds = !a.tls_certs.empty() || !a.tls_psk.empty();
  if (a.tls == "off") {
    if (creds || a.tls_verify_peer) {
      return Status::InvalidArgument("--tls-certs, --tls-psk and --tls-verify-peer need --tls on or --tls require");
    }
    opts->tls = nbd::TlsMode::kOff;
    return Status::Ok();
  }
  if (!creds) {
    return Status::InvalidArgument("--tls " + a.tls +
                                   " needs credentials: --tls-certs DIR (server-cert.pem, server-key.pem) "
                                   "and/or --tls-psk FILE (psktool's USERNAME:HEXKEY lines)");
  }
  opts->tls = a.tls == "require" ? nbd::TlsMode::kRequire : nbd::TlsMode::kOn;
  nbd::TlsConfig config;
  config.certs_dir = a.tls_certs;
  config.psk_file = a.tls_psk;
  config.verify_peer = a.tls_verify_peer;
  auto loaded = nbd::TlsCredentials::Load(config);
  if (!loaded.ok()) return loaded.status();
  opts->tls_credentials = *loaded;
  return Status::Ok();
}

Result<std::optional<std::vector<std::string>>> ExportList(const std::string& flag,
                                                           const std::vector<std::string>& names) {
  if (names.empty()) return std::optional<std::vector<std::string>>();
  for (const auto& n : names) {
    Status st = VolumeManager::ValidateName(n);
    if (!st.ok()) return Status::InvalidArgument(flag + ": " + st.message());
  }
  return std::optional<std::vector<std::string>>(names);
}

// --tls-allow IDENTITY=VOL[,VOL...], repeatable; an identity given twice
// gets the union.
Status ParseTlsAllow(const std::vector<std::string>& specs, std::map<std::string, std::vector<std::string>>* out) {
  for (const auto& spec : specs) {
    size_t eq = spec.find('=');
    if (eq == 0 || eq == std::string::npos || eq + 1 == spec.size()) {
      return Status::InvalidArgument("--tls-allow '" + spec + "': expected IDENTITY=VOLUME[,VOLUME...]");
    }
    std::vector<std::string>& names = (*out)[spec.substr(0, eq)];
    size_t pos = eq + 1;
    while (pos <= spec.size()) {
      size_t end = spec.find(',', pos);
      if (end == std::string::npos) end = spec.size();
      std::string name = spec.substr(pos, end - pos);
      Status st = VolumeManager::ValidateName(name);
      if (!st.ok()) return Status::InvalidArgument("--tls-allow '" + spec + "': " + st.message());
      names.push_back(name);
      pos = end + 1;
    }
  }
  return Status::Ok();
}

int Serve(const Context& ctx, const ServeArgs& a) {
  // Signals are taken synchronously by this thread; every thread started
  // below inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);  // the terminal went away: stop as cleanly as for Ctrl-C
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // Options that can be wrong are checked before the data directory is opened.
  nbd::ServerOptions opts;
  Status tls_status = ConfigureTls(a, &opts);
  if (!tls_status.ok()) return Fail(tls_status);
  auto tcp_exports = ExportList("--exports-tcp", a.exports_tcp);
  if (!tcp_exports.ok()) return Fail(tcp_exports.status());
  auto unix_exports = ExportList("--exports-unix", a.exports_unix);
  if (!unix_exports.ok()) return Fail(unix_exports.status());
  opts.tcp_exports = *tcp_exports;
  opts.unix_exports = *unix_exports;
  if (Status st = ParseTlsAllow(a.tls_allow, &opts.tls_allow); !st.ok()) return Fail(st);
  opts.allow_insecure_tcp = a.allow_insecure_tcp;
  opts.max_connections = a.max_connections;
  opts.handshake_timeout_ms = static_cast<int>(a.handshake_timeout * 1000);

  ManagerOptions mopts = ManagerOptionsFor(ctx);
  mopts.throttle = !a.no_throttle;
  mopts.optimize_ms = static_cast<int64_t>(a.optimizing_seconds * 1000);
  mopts.modification_rate_limit = mopts.modification_rate_limit || a.modification_rate_limit;
  for (const auto& text : a.faults) {
    auto spec = FaultSpec::Parse(text);
    if (!spec.ok()) return Fail(spec.status());
    mopts.faults.push_back(*spec);
  }
  auto manager = VolumeManager::Open(ctx.data_dir, mopts);
  if (!manager.ok()) return Fail(manager.status());

  unsigned nloops = a.threads ? a.threads : std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::unique_ptr<EventLoop>> loops;
  std::vector<EventLoop*> raw;
  for (unsigned i = 0; i < nloops; ++i) {
    auto loop = EventLoop::Create();
    if (!loop.ok()) return Fail(loop.status());
    (*loop)->set_busy_poll(std::chrono::microseconds(a.busy_poll_us));
    (*loop)->Start(fmt::format("ebs-loop-{}", i));
    raw.push_back(loop->get());
    loops.push_back(std::move(*loop));
  }

  CommandRegistry registry;
  RegisterVolumeCommands(&registry, manager->get());
  auto snapshots = snapshot::SnapshotService::Open(ctx.StorePath(), manager->get(), ctx.store_chunk_size);
  if (!snapshots.ok()) return Fail(snapshots.status());
  snapshot::RegisterSnapshotCommands(&registry, snapshots->get());
  // Volumes restored lazily go on loading in the background.
  if (Status st = (*snapshots)->ResumeLoading(); !st.ok()) {
    fmt::print(stderr, "ebs: warning: a lazily restored volume cannot load: {}\n", st.message());
  }
  auto control = ControlServer::Start(ctx.data_dir + "/control.sock", &registry);
  if (!control.ok()) return Fail(control.status());

  // No TCP unless asked for: the Unix socket (0600) lets in this user only.
  opts.tcp_listen = a.listen;
  if (opts.tcp_listen.size() == 1 && opts.tcp_listen[0] == "none") opts.tcp_listen.clear();
  opts.unix_socket = a.socket.empty() ? ctx.data_dir + "/nbd.sock" : a.socket;
  if (opts.unix_socket == "none") opts.unix_socket.clear();
  opts.read_only = a.read_only;
  opts.default_export = a.default_export;
  // Every completed snapshot is a read-only export named by its id, and
  // exports have qemu:dirty-bitmap:SNAP-ID contexts.
  auto snapshot_exports = std::make_unique<SnapshotExports>(snapshots->get(), manager->get(), !a.no_snapshot_exports);
  opts.extra_exports = snapshot_exports.get();
  auto server = nbd::Server::Start(opts, manager->get(), raw);
  if (!server.ok()) return Fail(server.status());
  std::unique_ptr<MetricsExporter> exporter;
  if (!a.metrics.empty()) {
    auto e = MetricsExporter::Start(a.metrics, manager->get());
    if (!e.ok()) return Fail(e.status());
    exporter = std::move(*e);
  }

  auto volumes = (*manager)->List();
  size_t count = volumes.ok() ? volumes->size() : 0;
  fmt::print("ebs: serving {} volume(s) from {} on {} event loop(s)\n", count, ctx.data_dir, nloops);
  for (const auto& addr : (*server)->addresses()) fmt::print("ebs: listening on {}\n", addr);
  for (const auto& w : (*server)->warnings()) fmt::print("ebs: warning: {}\n", w);
  if (!a.no_snapshot_exports) {
    auto snaps = (*snapshots)->ListCompleted();
    fmt::print("ebs: {} snapshot(s) exported read-only, each by its id (snap-...)\n", snaps.ok() ? snaps->size() : 0);
  }
  if (exporter) fmt::print("ebs: metrics on http://{}/metrics\n", exporter->address());
  if (!a.faults.empty()) fmt::print("ebs: FAULT INJECTION is on for testing: {}\n", fmt::join(a.faults, "; "));
  if (a.no_throttle) fmt::print("ebs: throttling is OFF (--no-throttle): volumes run unlimited\n");
  if (opts.tls_credentials) {
    fmt::print("ebs: TLS {}: {}\n",
               opts.tls == nbd::TlsMode::kRequire ? "required" : "offered (clients may stay plain)",
               opts.tls_credentials->description());
    for (const auto& w : opts.tls_credentials->warnings()) fmt::print("ebs: warning: {}\n", w);
  }
  if (opts.tcp_exports) fmt::print("ebs: TCP exports only: {}\n", fmt::join(*opts.tcp_exports, ", "));
  if (opts.unix_exports) fmt::print("ebs: Unix socket exports only: {}\n", fmt::join(*opts.unix_exports, ", "));
  // The hints name vol0 (the quickstart's volume) when it exists.
  std::string example = "NAME";
  if (volumes.ok() && !volumes->empty()) {
    example = volumes->front().record.name;
    for (const auto& v : *volumes) {
      if (v.record.name == "vol0") example = v.record.name;
    }
  }
  if (opts.tls == nbd::TlsMode::kRequire) {
    // Plain URIs would be refused: show the TLS ones.
    std::string query = !a.tls_certs.empty() ? "tls-certificates=" + a.tls_certs : "tls-psk-file=" + a.tls_psk;
    std::string user = a.tls_certs.empty() ? "USER@" : "";
    if (!opts.unix_socket.empty()) {
      fmt::print("ebs: connect:  nbdinfo 'nbds+unix://{}/{}?socket={}&{}'\n", user, example, opts.unix_socket, query);
    }
    for (const auto& addr : (*server)->addresses()) {
      if (addr.rfind("unix:", 0) == 0) continue;
      fmt::print("ebs: over TCP: nbdinfo 'nbds://{}{}/{}?{}'\n", user, addr, example, query);
    }
  } else if (!opts.unix_socket.empty()) {
    fmt::print("ebs: connect:  nbdinfo 'nbd+unix:///{}?socket={}'\n", example, opts.unix_socket);
    // nbdfuse creates the file once connected; mkfs only a blank volume.
    fmt::print("ebs: mount:    mkdir -p /tmp/ebs-fuse && nbdfuse /tmp/ebs-fuse/disk 'nbd+unix:///{}?socket={}' &\n"
               "              until [ -e /tmp/ebs-fuse/disk ]; do sleep 0.1; done; dev=$(losetup -f --show /tmp/ebs-fuse/disk)\n"
               "              blkid $dev || mkfs.ext4 $dev; mount $dev /mnt\n",
               example, opts.unix_socket);
  }
  if (opts.tls != nbd::TlsMode::kRequire) {
    bool tcp = false;
    for (const auto& addr : (*server)->addresses()) {
      if (addr.rfind("unix:", 0) == 0) continue;
      tcp = true;
      fmt::print("ebs: over TCP: nbdinfo nbd://{}/{}\n", addr, example);
    }
    if (!tcp) {
      fmt::print("ebs: no TCP listener; for clients on other hosts: psktool -u alice -p keys.psk, then\n"
                 "              ebs serve --listen 0.0.0.0:10809 --tls require --tls-psk keys.psk\n");
    }
  }
  fmt::print("ebs: ready (Ctrl-C or SIGTERM to stop)\n");
  std::fflush(stdout);

  int sig = 0;
  sigwait(&sigs, &sig);
  fmt::print("ebs: {} received: finishing in-flight requests\n",
             sig == SIGINT ? "SIGINT" : sig == SIGHUP ? "SIGHUP" : "SIGTERM");
  std::fflush(stdout);
  (*server)->Shutdown();
  exporter.reset();
  control->reset();
  for (auto& loop : loops) loop->Stop();
  server->reset();
  loops.clear();
  snapshot_exports.reset();
  snapshots->reset();
  manager->reset();  // closes the catalog; data files were synced as volumes closed
  fmt::print("ebs: stopped\n");
  return 0;
}

}  // namespace

void AddServeCommand(CLI::App* app, Context* ctx, std::function<int()>* action) {
  auto a = std::make_shared<ServeArgs>();
  auto* serve = app->add_subcommand("serve", "export every volume over NBD (a Unix socket; TCP with --listen)");
  serve->add_option("--listen", a->listen,
                    "also serve TCP on HOST:PORT (repeatable; default: none, the Unix socket only). Loopback "
                    "without TLS is open to every local user (a warning says so); beyond loopback it needs "
                    "--tls require with --tls-psk or --tls-verify-peer, or --allow-insecure-tcp")
      ->type_name("HOST:PORT");
  serve->add_flag("--allow-insecure-tcp", a->allow_insecure_tcp,
                  "serve TCP beyond loopback without client authentication (a trusted network only)");
  serve->add_option("--tls-allow", a->tls_allow,
                    "with --tls require: the TLS client IDENTITY (PSK user name or certificate CN) may open only "
                    "these volumes; once given, identities not named open none (repeatable)")
      ->type_name("IDENTITY=VOL[,VOL...]");
  serve->add_option("--max-connections", a->max_connections,
                    "connections served at once; more are closed as soon as they are accepted")
      ->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{1} << 20));
  serve->add_option("--handshake-timeout", a->handshake_timeout,
                    "seconds a client may take to choose an export (TLS handshake included) before it is "
                    "disconnected; 0: no limit")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 86400.0));
  serve->add_option("--socket", a->socket, "Unix socket path (default DATA_DIR/nbd.sock, mode 0600; 'none' for none)");
  serve->add_option("--threads", a->threads, "event-loop threads (default: one per core)");
  serve->add_option("--busy-poll-us", a->busy_poll_us,
                    "an event loop that runs out of work polls this many microseconds for more before it sleeps, "
                    "while nearly all its idle spells have been that short (0: never poll)")
      ->capture_default_str()
      ->check(CLI::Range(0u, 1000000u));
  serve->add_flag("--read-only", a->read_only, "export every volume read-only");
  serve->add_flag("--no-snapshot-exports", a->no_snapshot_exports,
                  "do not export the store's snapshots (by default each completed snapshot is a read-only "
                  "export named by its id, e.g. nbdinfo 'nbd+unix:///snap-...?socket=...')");
  serve->add_option("--default-export", a->default_export, "volume served for the empty export name")
      ->default_str("vol0");
  serve->add_flag("--no-throttle", a->no_throttle,
                  "do not enforce IOPS/throughput limits (for benchmarking the raw I/O path only)");
  serve->add_option("--metrics", a->metrics, "serve Prometheus metrics at http://HOST:PORT/metrics");
  serve->add_option("--optimizing-seconds", a->optimizing_seconds,
                    "how long a modification stays 'optimizing' (performance never below the old "
                    "configuration meanwhile); default 0");
  serve->add_flag("--modification-rate-limit", a->modification_rate_limit,
                  "enforce AWS's rule: at most 4 modifications per volume per 24 h, each after the previous "
                  "completed (also EBS_MODIFICATION_RATE_LIMIT=1)");
  serve->add_option("--inject-fault", a->faults,
                    "TESTING ONLY: fail requests of a volume, e.g. "
                    "'volume=vol0,error=EIO,rate=0.1,ops=read+write,seed=7,trigger=/tmp/fail' "
                    "(with trigger, only while that file exists)");
  serve->add_option("--tls", a->tls,
                    "TLS (STARTTLS) on every listener: off; on (clients choose); require (a client that does not "
                    "start TLS gets ERR_TLS_REQD and no export information)")
      ->check(CLI::IsMember({"off", "on", "require"}))
      ->default_str("off");
  serve->add_option("--tls-certs", a->tls_certs,
                    "X.509 directory as nbdkit and qemu lay it out: server-cert.pem, server-key.pem; ca-cert.pem "
                    "(and ca-crl.pem) for --tls-verify-peer")
      ->type_name("DIR");
  serve->add_option("--tls-psk", a->tls_psk, "pre-shared keys: USERNAME:HEXKEY lines, as psktool writes them")
      ->type_name("FILE");
  serve->add_flag("--tls-verify-peer", a->tls_verify_peer,
                  "require a client certificate signed by ca-cert.pem (default: client certificates are not "
                  "asked for)");
  serve->add_option("--exports-tcp", a->exports_tcp,
                    "volumes the TCP listeners export, comma-separated (default: every volume); the others are "
                    "invisible there")
      ->delimiter(',')
      ->type_name("NAME");
  serve->add_option("--exports-unix", a->exports_unix,
                    "volumes the Unix socket exports, comma-separated (default: every volume)")
      ->delimiter(',')
      ->type_name("NAME");
  serve->callback([=] { *action = [=] { return Serve(*ctx, *a); }; });
}

}  // namespace ebs::cli
