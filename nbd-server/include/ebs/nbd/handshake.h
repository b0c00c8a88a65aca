// The fixed-newstyle handshake as a pure state machine: bytes in, bytes out.
// It owns no socket, so the connection, the unit tests and the fuzzer drive
// the same code. Not thread-safe (one per connection).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ebs/engine/status.h"

namespace ebs::nbd {

struct ExportInfo {
  std::string name;
  std::string description;
  uint64_t size = 0;
  bool read_only = false;
};

// What the handshake asks of the server.
class ExportDirectory {
 public:
  virtual ~ExportDirectory() = default;
  virtual std::vector<ExportInfo> List() = 0;
  // Describes an export without opening it (NBD_OPT_INFO, LIST_META_CONTEXT).
  virtual std::optional<ExportInfo> Find(const std::string& name) = 0;
  // Opens an export for transmission (NBD_OPT_GO, EXPORT_NAME). The
  // returned size is fixed for the connection. ENOENT when there is no such
  // export; any other error says why an existing one cannot be opened (e.g.
  // its encryption key is missing), and the client is told.
  virtual Result<ExportInfo> Open(const std::string& name) = 0;
  // The dirty bitmaps export `name` offers as qemu:dirty-bitmap:NAME meta
  // contexts (for ebs, snapshot ids: what changed since that snapshot).
  virtual std::vector<std::string> DirtyBitmaps(const std::string& /*name*/) { return {}; }
};

// The server's TLS policy (NBD spec, "TLS support"): kOff is NOTLS (STARTTLS
// gets ERR_UNSUP), kOn is opportunistic (a client may upgrade, or not),
// kRequire is FORCEDTLS (before STARTTLS every option but ABORT gets
// ERR_TLS_REQD and reveals nothing; EXPORT_NAME closes the connection).
enum class TlsMode { kOff, kOn, kRequire };

class Handshake {
 public:
  // kStartTls: STARTTLS was acknowledged (the ACK is the last thing in `out`).
  // Every byte after it belongs to TLS: Consume() takes nothing more until
  // the connection has run the TLS handshake and called TlsEstablished().
  enum class State { kClientFlags, kOptions, kStartTls, kTransmission, kClosed };

  explicit Handshake(ExportDirectory* directory, TlsMode tls = TlsMode::kOff) : dir_(directory), tls_mode_(tls) {}

  // Appends the server greeting to `out`.
  void Start(std::string* out);
  // A handshake may send at most this many options; the next one closes it.
  // (nbdinfo --list sends a few per export.)
  static constexpr size_t kMaxOptions = 4096;

  // Consumes whole messages from data[0, len) and appends replies to `out`.
  // Returns the bytes consumed; stop feeding once state() leaves kOptions.
  // Stops before the next message once the replies appended reach
  // `out_budget` bytes: a client that sends options without reading the
  // replies then waits (the caller stops receiving) instead of growing `out`.
  // One message's replies may pass the budget (a LIST of every export).
  size_t Consume(const char* data, size_t len, std::string* out, size_t out_budget = SIZE_MAX);
  State state() const { return state_; }
  // REQUIRES: state() == kStartTls. Option haggling restarts inside TLS;
  // what was negotiated in the clear (structured replies, meta contexts) is
  // forgotten, so a man in the middle cannot have chosen it.
  void TlsEstablished();
  // TLS is running on this connection.
  bool tls() const { return tls_active_; }
  // Why the handshake closed (for the log).
  const std::string& close_reason() const { return close_reason_; }

  // Valid in kTransmission.
  const ExportInfo& export_info() const { return export_; }
  bool structured_replies() const { return structured_; }
  bool base_allocation() const { return meta_base_allocation_ && meta_export_ == export_.name; }
  // The dirty bitmaps selected (SET_META_CONTEXT) for the export: the i-th
  // has context id kFirstBitmapId + i.
  std::vector<std::string> dirty_bitmaps() const {
    return meta_export_ == export_.name ? meta_bitmaps_ : std::vector<std::string>();
  }
  // At most this many dirty bitmaps per connection.
  static constexpr size_t kMaxDirtyBitmaps = 16;
  // The client asked for block size constraints, so it honours them.
  bool block_size_negotiated() const { return block_size_requested_; }
  uint16_t transmission_flags() const;

 private:
  void HandleOption(uint32_t option, const char* data, uint32_t len, std::string* out);
  void HandleStartTls(uint32_t len, std::string* out);
  void HandleInfoOrGo(uint32_t option, const char* data, uint32_t len, std::string* out);
  void HandleMetaContext(uint32_t option, const char* data, uint32_t len, std::string* out);
  void Reply(std::string* out, uint32_t option, uint32_t type, const std::string& payload);
  void ReplyError(std::string* out, uint32_t option, uint32_t type, const std::string& message);
  void Close(std::string reason);
  // TLS is required and not running yet: the option may not be served.
  bool TlsRequired() const { return tls_mode_ == TlsMode::kRequire && !tls_active_; }

  ExportDirectory* dir_;
  const TlsMode tls_mode_;
  bool tls_active_ = false;
  State state_ = State::kClientFlags;
  std::string close_reason_;
  bool no_zeroes_ = false;
  bool fixed_newstyle_ = false;
  bool structured_ = false;
  bool meta_base_allocation_ = false;
  std::vector<std::string> meta_bitmaps_;
  std::string meta_export_;
  bool block_size_requested_ = false;
  ExportInfo export_;
  size_t options_ = 0;  // options received, STARTTLS's restart included
  // Bytes of an oversized option still to skip, and that option's code.
  uint64_t discard_ = 0;
  uint32_t discard_option_ = 0;
};

}  // namespace ebs::nbd
