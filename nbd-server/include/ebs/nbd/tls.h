// NBD over TLS with GnuTLS. Credentials are loaded once, at startup, so a bad
// file is reported before the server listens; each connection that sends
// NBD_OPT_STARTTLS gets a TlsSession. The session works on memory only:
// ciphertext in through Feed(), ciphertext out by appending to a string the
// connection owns. The connection's io_uring ring keeps doing every socket
// read and write, as for a plain connection.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "ebs/engine/status.h"

struct gnutls_session_int;  // GnuTLS's gnutls_session_t, kept out of this header

namespace ebs::nbd {

struct TlsConfig {
  // X.509, laid out as nbdkit and qemu do: server-cert.pem and server-key.pem
  // (required), ca-cert.pem (needed only to check client certificates) and
  // ca-crl.pem (optional). Empty: no certificates.
  std::string certs_dir;
  // Pre-shared keys: `username:hexkey` lines, as psktool writes them.
  // Empty: no PSK.
  std::string psk_file;
  // Require a client certificate signed by certs_dir/ca-cert.pem (like
  // nbdkit --tls-verify-peer). Off: client certificates are not requested.
  bool verify_peer = false;
};

// Server credentials. Immutable after Load(); GnuTLS allows one set of
// credentials to be used by many sessions on many threads at once.
class TlsCredentials {
 public:
  // Reads and checks every file named by `config`: unreadable or malformed
  // files, a key that does not match its certificate, verify_peer without a
  // CA, or no credentials at all are errors naming the file and the problem.
  static Result<std::shared_ptr<const TlsCredentials>> Load(const TlsConfig& config);
  ~TlsCredentials();
  TlsCredentials(const TlsCredentials&) = delete;
  TlsCredentials& operator=(const TlsCredentials&) = delete;

  // One line for the server log, e.g. "X.509 (certs/server-cert.pem), PSK (2 users)".
  const std::string& description() const { return description_; }
  // Things worth telling the operator that do not stop the server (a key
  // file readable by other users, ...).
  const std::vector<std::string>& warnings() const { return warnings_; }
  // Every client that completes a TLS handshake has proven who it is: by a
  // pre-shared key, or by a client certificate checked against the CA
  // (verify_peer). False when a certificate-only client needs no credential.
  bool authenticates_clients() const;

  struct Impl;  // GnuTLS objects; defined in tls.cc

 private:
  TlsCredentials();
  std::unique_ptr<Impl> impl_;
  std::string description_;
  std::vector<std::string> warnings_;
  friend class TlsSession;
};

// The server side of one TLS connection. Not thread-safe (one per
// connection, used on the connection's loop only).
class TlsSession {
 public:
  // Read() results other than a byte count.
  static constexpr ssize_t kAgain = -1;   // needs more ciphertext
  static constexpr ssize_t kClosed = -2;  // the peer ended TLS (close_notify or EOF)
  static constexpr ssize_t kFailed = -3;  // protocol error; see error()

  // Ciphertext produced by the session is appended to *sink, which must
  // outlive the session. The caller may take bytes out of *sink at any time.
  static Result<std::unique_ptr<TlsSession>> Create(std::shared_ptr<const TlsCredentials> credentials,
                                                    std::string* sink);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // Ciphertext received from the peer (copied).
  void Feed(const char* data, size_t len);
  // Drives the TLS handshake as far as the input fed allows: 0 once done,
  // kAgain when every byte fed was taken and more are needed, kFailed (an
  // alert for the peer is then in the sink). kAgain never leaves input
  // unread, so the caller may wait for the socket.
  ssize_t Handshake();
  bool handshake_done() const { return done_; }
  // Decrypts into buf: a byte count > 0, or kAgain (all input taken),
  // kClosed, kFailed.
  ssize_t Read(char* buf, size_t len);
  // Bytes fed but not yet decrypted, or decrypted but not yet read: call
  // Read() before asking the socket for more.
  bool has_pending_input() const;
  // While corked, Write() only collects plaintext; Uncork() encrypts it in
  // full-size records (fewer, larger records for a reply header + its data).
  void Cork();
  [[nodiscard]] bool Uncork();
  // Encrypts all of data into the sink. False on failure; see error().
  [[nodiscard]] bool Write(const char* data, size_t len);
  // Appends close_notify to the sink.
  void Bye();

  const std::string& error() const { return error_; }
  // Who the peer proved to be, once the handshake is done: its PSK user
  // name, or the common name (CN) of its verified client certificate.
  // Empty when it proved nothing.
  std::string peer_identity() const;

 private:
  TlsSession() = default;
  static ssize_t Push(void* self, const void* data, size_t len);
  static ssize_t Pull(void* self, void* data, size_t len);
  static int PullTimeout(void* self, unsigned ms);
  ssize_t Fail(int err, const char* what);
  size_t unread() const { return in_.size() - in_off_; }

  std::shared_ptr<const TlsCredentials> credentials_;
  ::gnutls_session_int* session_ = nullptr;
  std::string* sink_ = nullptr;
  std::string in_;  // ciphertext fed, [in_off_, size) not yet pulled by GnuTLS
  size_t in_off_ = 0;
  bool done_ = false;
  std::string error_;
};

}  // namespace ebs::nbd
