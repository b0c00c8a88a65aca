#include "ebs/nbd/tls.h"

#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <unordered_map>

#include <fmt/format.h>

namespace ebs::nbd {
namespace {

// TLS 1.2 and 1.3 only (the NBD spec: 1.2 is the minimum, older versions not
// by default). PSK key exchanges are not in NORMAL and are added when keys
// are configured (as nbdkit and qemu do).
constexpr char kPriority[] = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2";
constexpr char kPriorityPsk[] = ":+ECDHE-PSK:+DHE-PSK:+PSK";
// Where the CPU has AES instructions, AES-GCM costs a fraction of ChaCha20:
// ChaCha20 goes last and the server's order wins. (Without this, TLS 1.3
// with a PSK, limited to SHA-256 suites, lands on ChaCha20: measured at
// about 5x the CPU per byte of AES-128-GCM on such a machine.)
constexpr char kPriorityAesFirst[] = ":-CHACHA20-POLY1305:+CHACHA20-POLY1305:%SERVER_PRECEDENCE";

bool CpuHasAes() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul");
#else
  return false;  // keep GnuTLS's order
#endif
}
constexpr size_t kMaxCredentialFile = 1 << 20;
// Warning alerts (or renegotiation requests) in a row before giving up on a peer.
constexpr int kMaxWarnings = 16;

// Reads a small file whole; the error names the file and the errno.
Status ReadSmallFile(const std::string& path, std::string* out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "cannot read " + path);
  out->clear();
  char buf[8192];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return Status::FromErrno(err, "cannot read " + path);
    }
    if (n == 0) break;
    out->append(buf, static_cast<size_t>(n));
    if (out->size() > kMaxCredentialFile) {
      ::close(fd);
      return Status::InvalidArgument(path + ": larger than 1 MiB, not a credentials file");
    }
  }
  ::close(fd);
  return Status::Ok();
}

bool Exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// A secret other users can read is worth a warning, not a refusal (the
// operator may have reasons, e.g. a group of services sharing a key).
void WarnIfShared(const std::string& path, std::vector<std::string>* warnings) {
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    warnings->push_back(fmt::format("{} holds a secret but other users may read it (mode {:04o}); chmod 0600 it",
                                    path, st.st_mode & 07777));
  }
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Status ParsePskFile(const std::string& path, const std::string& text,
                    std::unordered_map<std::string, std::string>* keys) {
  size_t pos = 0;
  int lineno = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string line = text.substr(pos, eol - pos);
    pos = eol + 1;
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    auto where = [&] { return fmt::format("{} line {}", path, lineno); };
    size_t colon = line.find(':');
    if (colon == std::string::npos) {
      return Status::InvalidArgument(where() + ": expected USERNAME:HEXKEY (as psktool writes)");
    }
    std::string user = line.substr(0, colon);
    std::string hex = line.substr(colon + 1);
    if (user.empty()) return Status::InvalidArgument(where() + ": empty username");
    if (hex.empty() || hex.size() % 2 != 0) {
      return Status::InvalidArgument(where() + ": the key must be an even number of hex digits");
    }
    std::string key(hex.size() / 2, '\0');
    for (size_t i = 0; i < key.size(); ++i) {
      int hi = HexDigit(hex[2 * i]), lo = HexDigit(hex[2 * i + 1]);
      if (hi < 0 || lo < 0) return Status::InvalidArgument(where() + ": the key is not hexadecimal");
      key[i] = static_cast<char>(hi << 4 | lo);
    }
    if (!keys->emplace(user, std::move(key)).second) {
      return Status::InvalidArgument(where() + ": user '" + user + "' appears twice");
    }
  }
  if (keys->empty()) return Status::InvalidArgument(path + ": no keys (expected USERNAME:HEXKEY lines)");
  return Status::Ok();
}

std::string FormatTime(time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

}  // namespace

struct TlsCredentials::Impl {
  gnutls_certificate_credentials_t x509 = nullptr;
  gnutls_psk_server_credentials_t psk = nullptr;
  gnutls_priority_t priority = nullptr;
  bool verify_peer = false;
  std::unordered_map<std::string, std::string> psk_keys;  // username -> key bytes

  ~Impl() {
    if (priority != nullptr) gnutls_priority_deinit(priority);
    if (x509 != nullptr) gnutls_certificate_free_credentials(x509);
    if (psk != nullptr) gnutls_psk_free_server_credentials(psk);
  }

  // GnuTLS asks for a user's key during the handshake (on a connection's
  // loop thread; psk_keys is read-only by then). Unknown user: -1, and the
  // handshake fails.
  static int LookupPsk(gnutls_session_t session, const char* username, gnutls_datum_t* key) {
    auto* self = static_cast<const Impl*>(gnutls_session_get_ptr(session));
    auto it = self->psk_keys.find(username);
    if (it == self->psk_keys.end()) return -1;
    key->data = static_cast<unsigned char*>(gnutls_malloc(it->second.size()));
    if (key->data == nullptr) return -1;
    std::memcpy(key->data, it->second.data(), it->second.size());
    key->size = static_cast<unsigned>(it->second.size());
    return 0;
  }
};

TlsCredentials::TlsCredentials() : impl_(std::make_unique<Impl>()) {}
TlsCredentials::~TlsCredentials() = default;

Result<std::shared_ptr<const TlsCredentials>> TlsCredentials::Load(const TlsConfig& config) {
  if (config.certs_dir.empty() && config.psk_file.empty()) {
    return Status::InvalidArgument("TLS needs credentials: certificates (--tls-certs DIR) or pre-shared keys "
                                   "(--tls-psk FILE)");
  }
  if (config.verify_peer && config.certs_dir.empty()) {
    return Status::InvalidArgument("--tls-verify-peer checks client certificates: it needs --tls-certs DIR "
                                   "with ca-cert.pem");
  }
  std::shared_ptr<TlsCredentials> creds(new TlsCredentials());
  Impl* impl = creds->impl_.get();
  impl->verify_peer = config.verify_peer;
  std::vector<std::string> parts;

  if (!config.certs_dir.empty()) {
    std::string dir = config.certs_dir;
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) return Status::FromErrno(errno, "TLS certificates directory " + dir);
    if (!S_ISDIR(st.st_mode)) {
      return Status::InvalidArgument("TLS certificates directory " + dir + " is not a directory");
    }
    const std::string cert = dir + "/server-cert.pem", key = dir + "/server-key.pem";
    std::string cert_pem, scratch;
    EBS_RETURN_IF_ERROR(ReadSmallFile(cert, &cert_pem));
    EBS_RETURN_IF_ERROR(ReadSmallFile(key, &scratch));
    std::fill(scratch.begin(), scratch.end(), '\0');  // the private key: do not leave it lying around
    WarnIfShared(key, &creds->warnings_);

    int rc = gnutls_certificate_allocate_credentials(&impl->x509);
    if (rc < 0) return Status::Error(ENOMEM, std::string("TLS: ") + gnutls_strerror(rc));
    // Also checks that the key belongs to the certificate.
    rc = gnutls_certificate_set_x509_key_file(impl->x509, cert.c_str(), key.c_str(), GNUTLS_X509_FMT_PEM);
    if (rc < 0) {
      return Status::InvalidArgument(fmt::format("cannot use {} with {}: {} (expected PEM files, an unencrypted key "
                                                 "matching the certificate)",
                                                 cert, key, gnutls_strerror(rc)));
    }
    // Validity dates: a server that starts with an expired certificate would
    // refuse every client, so say so at startup.
    gnutls_x509_crt_t crt = nullptr;
    gnutls_datum_t datum{reinterpret_cast<unsigned char*>(cert_pem.data()), static_cast<unsigned>(cert_pem.size())};
    std::string subject;
    if (gnutls_x509_crt_init(&crt) >= 0) {
      if (gnutls_x509_crt_import(crt, &datum, GNUTLS_X509_FMT_PEM) >= 0) {
        time_t now = std::time(nullptr);
        time_t not_after = gnutls_x509_crt_get_expiration_time(crt);
        time_t not_before = gnutls_x509_crt_get_activation_time(crt);
        if (not_after != static_cast<time_t>(-1) && not_after < now) {
          creds->warnings_.push_back(cert + " expired at " + FormatTime(not_after) + ": clients will refuse it");
        }
        if (not_before != static_cast<time_t>(-1) && not_before > now) {
          creds->warnings_.push_back(cert + " is not valid before " + FormatTime(not_before));
        }
        gnutls_datum_t dn{};
        if (gnutls_x509_crt_get_dn3(crt, &dn, 0) >= 0) {
          subject.assign(reinterpret_cast<const char*>(dn.data), dn.size);
          gnutls_free(dn.data);
        }
      }
      gnutls_x509_crt_deinit(crt);
    }
    std::string what = "X.509 " + cert + (subject.empty() ? "" : " (" + subject + ")");

    if (config.verify_peer) {
      const std::string ca = dir + "/ca-cert.pem", crl = dir + "/ca-crl.pem";
      if (!Exists(ca)) {
        return Status::InvalidArgument("--tls-verify-peer needs " + ca + " to check client certificates against");
      }
      EBS_RETURN_IF_ERROR(ReadSmallFile(ca, &scratch));
      rc = gnutls_certificate_set_x509_trust_file(impl->x509, ca.c_str(), GNUTLS_X509_FMT_PEM);
      if (rc < 0) return Status::InvalidArgument(fmt::format("cannot use {}: {}", ca, gnutls_strerror(rc)));
      if (rc == 0) return Status::InvalidArgument(ca + ": no PEM certificate in it");
      if (Exists(crl)) {
        EBS_RETURN_IF_ERROR(ReadSmallFile(crl, &scratch));
        rc = gnutls_certificate_set_x509_crl_file(impl->x509, crl.c_str(), GNUTLS_X509_FMT_PEM);
        if (rc < 0) return Status::InvalidArgument(fmt::format("cannot use {}: {}", crl, gnutls_strerror(rc)));
      }
      what += ", client certificates required (signed by " + ca + (Exists(crl) ? ", checked against ca-crl.pem" : "") +
              ")";
    } else {
      what += ", client certificates not checked";
    }
    gnutls_certificate_set_known_dh_params(impl->x509, GNUTLS_SEC_PARAM_MEDIUM);
    parts.push_back(what);
  }

  if (!config.psk_file.empty()) {
    std::string text;
    EBS_RETURN_IF_ERROR(ReadSmallFile(config.psk_file, &text));
    Status st = ParsePskFile(config.psk_file, text, &impl->psk_keys);
    std::fill(text.begin(), text.end(), '\0');
    if (!st.ok()) return st;
    WarnIfShared(config.psk_file, &creds->warnings_);
    int rc = gnutls_psk_allocate_server_credentials(&impl->psk);
    if (rc < 0) return Status::Error(ENOMEM, std::string("TLS: ") + gnutls_strerror(rc));
    gnutls_psk_set_server_credentials_function(impl->psk, &Impl::LookupPsk);
    gnutls_psk_set_server_known_dh_params(impl->psk, GNUTLS_SEC_PARAM_MEDIUM);
    parts.push_back(fmt::format("PSK {} ({} user{})", config.psk_file, impl->psk_keys.size(),
                                impl->psk_keys.size() == 1 ? "" : "s"));
  }

  std::string priority = kPriority;
  if (CpuHasAes()) priority += kPriorityAesFirst;
  if (impl->psk != nullptr) priority += kPriorityPsk;
  const char* err_pos = nullptr;
  int rc = gnutls_priority_init(&impl->priority, priority.c_str(), &err_pos);
  if (rc < 0) {
    return Status::InvalidArgument(fmt::format("TLS priority '{}': {} at '{}'", priority, gnutls_strerror(rc),
                                               err_pos ? err_pos : ""));
  }
  for (size_t i = 0; i < parts.size(); ++i) creds->description_ += (i ? "; " : "") + parts[i];
  return std::shared_ptr<const TlsCredentials>(std::move(creds));
}

bool TlsCredentials::authenticates_clients() const { return impl_->verify_peer || impl_->x509 == nullptr; }

// --- TlsSession ----------------------------------------------------------------

Result<std::unique_ptr<TlsSession>> TlsSession::Create(std::shared_ptr<const TlsCredentials> credentials,
                                                       std::string* sink) {
  std::unique_ptr<TlsSession> s(new TlsSession());
  s->credentials_ = std::move(credentials);
  s->sink_ = sink;
  const TlsCredentials::Impl* impl = s->credentials_->impl_.get();
  int rc = gnutls_init(&s->session_, GNUTLS_SERVER | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL);
  if (rc < 0) return Status::Error(ENOMEM, std::string("TLS session: ") + gnutls_strerror(rc));
  rc = gnutls_priority_set(s->session_, impl->priority);
  if (rc >= 0 && impl->x509 != nullptr) rc = gnutls_credentials_set(s->session_, GNUTLS_CRD_CERTIFICATE, impl->x509);
  if (rc >= 0 && impl->psk != nullptr) rc = gnutls_credentials_set(s->session_, GNUTLS_CRD_PSK, impl->psk);
  if (rc < 0) return Status::IoError(std::string("TLS session: ") + gnutls_strerror(rc));
  if (impl->verify_peer) {
    gnutls_certificate_server_set_request(s->session_, GNUTLS_CERT_REQUIRE);
    gnutls_session_set_verify_cert(s->session_, nullptr, 0);  // chain checked during the handshake
  }
  gnutls_session_set_ptr(s->session_, const_cast<TlsCredentials::Impl*>(impl));
  gnutls_transport_set_ptr(s->session_, s.get());
  gnutls_transport_set_push_function(s->session_, &TlsSession::Push);
  gnutls_transport_set_pull_function(s->session_, &TlsSession::Pull);
  gnutls_transport_set_pull_timeout_function(s->session_, &TlsSession::PullTimeout);
  // No timers here: the connection owns time. A stalled handshake costs one
  // idle connection, like a stalled plain handshake.
  gnutls_handshake_set_timeout(s->session_, 0);
  return s;
}

std::string TlsSession::peer_identity() const {
  if (!done_) return "";
  if (gnutls_auth_get_type(session_) == GNUTLS_CRD_PSK) {
    const char* user = gnutls_psk_server_get_username(session_);
    return user != nullptr ? user : "";
  }
  // A certificate counts only when it was required and checked.
  if (!credentials_->impl_->verify_peer) return "";
  unsigned n = 0;
  const gnutls_datum_t* chain = gnutls_certificate_get_peers(session_, &n);
  if (chain == nullptr || n == 0) return "";
  gnutls_x509_crt_t crt = nullptr;
  if (gnutls_x509_crt_init(&crt) < 0) return "";
  std::string cn;
  if (gnutls_x509_crt_import(crt, &chain[0], GNUTLS_X509_FMT_DER) >= 0) {
    char buf[256];
    size_t len = sizeof(buf);
    if (gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, buf, &len) >= 0) cn.assign(buf, len);
  }
  gnutls_x509_crt_deinit(crt);
  return cn;
}

TlsSession::~TlsSession() {
  if (session_ != nullptr) gnutls_deinit(session_);
}

ssize_t TlsSession::Push(void* self, const void* data, size_t len) {
  auto* s = static_cast<TlsSession*>(self);
  s->sink_->append(static_cast<const char*>(data), len);
  return static_cast<ssize_t>(len);
}

ssize_t TlsSession::Pull(void* self, void* data, size_t len) {
  auto* s = static_cast<TlsSession*>(self);
  size_t avail = s->in_.size() - s->in_off_;
  if (avail == 0) {
    gnutls_transport_set_errno(s->session_, EAGAIN);
    return -1;
  }
  size_t n = std::min(avail, len);
  std::memcpy(data, s->in_.data() + s->in_off_, n);
  s->in_off_ += n;
  if (s->in_off_ == s->in_.size()) {
    s->in_.clear();
    s->in_off_ = 0;
  }
  return static_cast<ssize_t>(n);
}

int TlsSession::PullTimeout(void* self, unsigned) {
  auto* s = static_cast<TlsSession*>(self);
  return s->in_off_ < s->in_.size() ? 1 : 0;
}

void TlsSession::Feed(const char* data, size_t len) { in_.append(data, len); }

bool TlsSession::has_pending_input() const {
  return in_off_ < in_.size() || gnutls_record_check_pending(session_) > 0;
}

ssize_t TlsSession::Fail(int err, const char* what) {
  error_ = fmt::format("{}: {}", what, gnutls_strerror(err));
  return kFailed;
}

// GnuTLS may answer E_AGAIN after one record even though more input is
// waiting; it is called again while it consumes some. E_AGAIN with input
// left that it will not take would stall the connection for good: an error.
ssize_t TlsSession::Handshake() {
  int warnings = 0;
  while (true) {
    size_t before = unread();
    int rc = gnutls_handshake(session_);
    if (rc == 0) {
      done_ = true;
      return 0;
    }
    if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
      if (unread() == 0) return kAgain;
      if (unread() < before) continue;
      error_ = "TLS handshake stalled with input left";
      return kFailed;
    }
    if (!gnutls_error_is_fatal(rc) && ++warnings < kMaxWarnings) continue;  // a warning alert
    gnutls_alert_send_appropriate(session_, rc);
    return Fail(rc, "TLS handshake failed");
  }
}

ssize_t TlsSession::Read(char* buf, size_t len) {
  int warnings = 0;
  while (true) {
    size_t before = unread();
    ssize_t n = gnutls_record_recv(session_, buf, len);
    if (n > 0) return n;
    if (n == 0 || n == GNUTLS_E_PREMATURE_TERMINATION) return kClosed;
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) {
      if (unread() == 0) return kAgain;
      if (unread() < before) continue;
      error_ = "TLS receive stalled with input left";
      return kFailed;
    }
    if (++warnings >= kMaxWarnings) return Fail(static_cast<int>(n), "TLS receive failed");
    if (n == GNUTLS_E_REHANDSHAKE) {
      // Renegotiation is not offered: decline and keep the session.
      gnutls_alert_send(session_, GNUTLS_AL_WARNING, GNUTLS_A_NO_RENEGOTIATION);
      continue;
    }
    if (!gnutls_error_is_fatal(static_cast<int>(n))) continue;
    return Fail(static_cast<int>(n), "TLS receive failed");
  }
}

void TlsSession::Cork() { gnutls_record_cork(session_); }

bool TlsSession::Uncork() {
  int rc = gnutls_record_uncork(session_, GNUTLS_RECORD_WAIT);
  if (rc < 0) {
    Fail(rc, "TLS send failed");
    return false;
  }
  return true;
}

bool TlsSession::Write(const char* data, size_t len) {
  size_t off = 0;
  while (off < len) {
    // The push function never blocks, so every call takes a record's worth.
    ssize_t n = gnutls_record_send(session_, data + off, len - off);
    if (n <= 0) {
      Fail(static_cast<int>(n), "TLS send failed");
      return false;
    }
    off += static_cast<size_t>(n);
  }
  return true;
}

void TlsSession::Bye() { (void)gnutls_bye(session_, GNUTLS_SHUT_WR); }

}  // namespace ebs::nbd
