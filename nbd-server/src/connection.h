// One NBD client connection, living on one event loop: the handshake, then
// the transmission phase with many requests in flight. All methods run on the
// loop's thread.
//
// TLS (after NBD_OPT_STARTTLS) stays on the same path: the ring still reads
// and writes the socket, now into a ciphertext buffer, and a TlsSession
// turns ciphertext into the plaintext receive buffer and queued replies into
// ciphertext. A plain connection never touches any of it.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <memory>
#include <string>
#include <vector>

#include "ebs/engine/block_device.h"
#include "ebs/engine/event_loop.h"
#include "ebs/engine/volume_manager.h"
#include "ebs/nbd/export_provider.h"
#include "ebs/nbd/handshake.h"
#include "ebs/nbd/protocol.h"
#include "ebs/nbd/tls.h"

namespace ebs::nbd {

class ExportFilter;
class Server;
struct LoopState;

// What one connection may hold (docs/nbd.md, "Limits").
inline constexpr size_t kSlots = 128;  // requests in flight
inline constexpr size_t kRecvBuffer = 256 * 1024;
// A WRITE payload at least this large is received straight into its buffer.
inline constexpr size_t kDirectRecvThreshold = 64 * 1024;
// Slot buffers are kept for reuse up to this many bytes per connection;
// beyond it a released slot gives its buffer back.
inline constexpr size_t kMaxRetainedBytes = 64u << 20;
// Read and write payloads and block status replies in flight per
// connection: past this, requests wait in the socket (at least one is always
// taken, whatever its size).
inline constexpr uint64_t kMaxInflightBytes = 64u << 20;
// Handshake replies not yet sent: past this the connection stops reading
// options until the client has read some.
inline constexpr size_t kMaxHandshakeBacklog = 64 * 1024;
// The socket's send buffer (SO_SNDBUF; the kernel doubles it) during the
// handshake, and from transmission on: room for a few large replies, so a
// 1 MiB read reply goes out in one send instead of several partial ones,
// each costing a wake-up (the kernel caps it at net.core.wmem_max).
inline constexpr int kHandshakeSendBuffer = 64 * 1024;
inline constexpr int kTransmissionSendBuffer = 4 << 20;
// Extents in one BLOCK_STATUS reply (a reply may cover less than asked; the
// client asks again for the rest).
inline constexpr size_t kMaxExtentsPerReply = 1024;
// What a BLOCK_STATUS request counts toward kMaxInflightBytes: its extent
// list and its reply at their largest.
inline constexpr uint64_t kBlockStatusCharge = kMaxExtentsPerReply * (sizeof(Extent) + 8) + 4;
// TLS: ciphertext read per recv, and plaintext encrypted ahead of the socket
// (the ciphertext waiting to be sent stays around this size).
inline constexpr size_t kTlsRecvBuffer = 256 * 1024;
inline constexpr size_t kTlsOutHighWater = 2u << 20;

class Connection final : public ExportDirectory {
 public:
  // `exports` (owned by the server) limits what this connection may see.
  Connection(Server* server, LoopState* loop, int fd, const ExportFilter* exports);
  ~Connection() override;
  void Start();
  // Ends the connection softly (the server stopping, the volume deleted):
  // requests already read finish and are answered, and so is every request
  // read from now on, with ESHUTDOWN, while reading goes on, so the client
  // can still send and reads every reply. Once all are answered the write
  // side is shut: the client sees the end of the stream, closes, and the
  // connection ends. A TLS connection, or one not yet transmitting, stops
  // reading at once instead.
  // May delete this (from the loop's own context only).
  void RequestClose();
  // A connection RequestClose left draining for longer than `max_ns` (a
  // client that neither reads nor closes) stops reading and ends.
  // May delete this (from the loop's own context only).
  void EndDrainAfter(int64_t now_ns, int64_t max_ns);
  // The volume (or snapshot) was deleted underneath: close.
  bool VolumeGone() const;
  // A connection still in the handshake `max_ns` after it was accepted (an
  // idle or slow client) is closed. May delete this.
  void EndHandshakeAfter(int64_t now_ns, int64_t max_ns);

  // ExportDirectory (handshake).
  std::vector<ExportInfo> List() override;
  std::optional<ExportInfo> Find(const std::string& name) override;
  Result<ExportInfo> Open(const std::string& name) override;
  std::vector<std::string> DirtyBitmaps(const std::string& name) override;

 private:
  // One request in flight. Slots are preallocated per connection; their
  // buffers grow to the largest request seen and are reused, so the hot path
  // does not allocate.
  struct Slot {
    Connection* conn = nullptr;
    RequestHeader req{};
    IoRequest io;
    std::unique_ptr<char[]> buf;
    size_t buf_cap = 0;
    char reply[32];
    size_t reply_len = 0;
    const char* data = nullptr;  // payload sent after the reply header
    size_t data_len = 0;
    std::vector<char> extra;     // block status payload
    std::vector<Extent> extents; // block status query; a large one is freed once sent
    Slot* next_free = nullptr;
    uint64_t charge = 0;  // bytes counted in inflight_bytes_
  };

  struct RecvOp : IoCompletion {
    Connection* c;
    void OnComplete(int res, uint32_t) override { c->OnRecv(res); }
  };
  struct SendOp : IoCompletion {
    Connection* c;
    void OnComplete(int res, uint32_t) override { c->OnSend(res); }
  };

  // The export is visible to this connection: its listener exports it and,
  // with --tls-allow, its TLS identity may open it.
  bool Allowed(const std::string& name) const;
  // Find, telling whether the export is a provided one.
  std::optional<ExportInfo> FindExport(const std::string& requested, bool* provided);
  // A provided export is visible when its name or its volume's is.
  bool Allowed(const ProvidedExport& e) const { return Allowed(e.info.name) || Allowed(e.volume); }
  // Handshake bytes not yet sent (replies, and their ciphertext under TLS).
  size_t HandshakeBacklog() const;
  void PostRecv();
  void OnRecv(int res);
  void OnSend(int res);
  void Process();
  bool ProcessHandshake();
  bool ProcessRequests();
  void StartTransmission();
  // Validates a decoded header; returns 0 or a wire error.
  uint32_t Validate(const RequestHeader& h) const;
  void Execute(Slot* s);
  static void IoDone(IoRequest* io, int result);
  void CompleteRead(Slot* s);
  void BlockStatus(Slot* s);
  void ReplySimple(Slot* s, uint32_t error);
  void ReplyError(Slot* s, uint32_t error);
  void Enqueue(Slot* s);
  void FlushSends();
  // Sends what is left of hs_sending_, if anything; true if it did.
  bool SendHandshakeBytes();
  // The socket cannot take our replies: drop them and close.
  void SendFailed();
  // Makes room at rbuf_[rend_]: compacts, grows during the handshake. False
  // when the buffer is full of requests waiting for slots.
  bool MakeRoom();
  // TLS: switches to TLS once STARTTLS is acknowledged.
  void StartTls();
  // TLS: runs the TLS handshake, then decrypts into rbuf_ and processes,
  // as far as backpressure allows.
  void TlsInput();
  // TLS: encrypts pending handshake replies and queued request replies
  // (bounded by kTlsOutHighWater) and sends the ciphertext.
  void FlushTls();
  void TlsFailed(const std::string& why);
  Slot* AllocSlot();
  void ReleaseSlot(Slot* s);
  bool EnsureBuffer(Slot* s, size_t n);
  void StopReading();
  // Deletes this once closing and nothing is outstanding; call it last.
  void MaybeFinish();

  Server* const server_;
  LoopState* const loop_state_;
  EventLoop* const loop_;
  const int fd_;
  const ExportFilter* const exports_;

  Handshake handshake_;
  std::string hs_out_;      // handshake replies not yet sent
  std::string hs_sending_;  // handshake bytes in flight: not touched until sent
  size_t hs_sending_off_ = 0;
  bool transmission_ = false;
  int64_t accepted_ns_ = 0;
  std::string tls_identity_;  // the peer's PSK user name or certificate CN, once TLS runs

  std::unique_ptr<VolumeAttachment> attachment_;
  OpenedExport provided_;  // an export of ServerOptions::extra_exports instead

  BlockDevice* device_ = nullptr;
  uint64_t size_ = 0;
  bool structured_ = false;
  bool base_allocation_ = false;
  // The selected dirty bitmaps, in context-id order (kFirstBitmapId + i);
  // null where one could not be opened (its queries fail with EIO).
  std::vector<std::unique_ptr<ChangeMap>> bitmaps_;
  std::vector<DirtyExtent> dirty_extents_;  // scratch for BlockStatus
  bool enforce_alignment_ = false;
  bool read_only_ = false;

  // Receive buffer: bytes [rpos_, rend_) are unparsed.
  std::unique_ptr<char[]> rbuf_;
  size_t rcap_ = 0;
  size_t rpos_ = 0;
  size_t rend_ = 0;
  RecvOp recv_op_;
  bool recv_pending_ = false;
  // Where the pending recv puts its bytes: rbuf_, payload_slot_'s buffer
  // (a large WRITE payload), or tls_rbuf_ (ciphertext).
  enum class RecvInto { kBuffer, kPayload, kCipher };
  RecvInto recv_into_ = RecvInto::kBuffer;

  // A WRITE whose payload is still arriving (or being discarded).
  Slot* payload_slot_ = nullptr;
  size_t payload_have_ = 0;
  uint32_t payload_error_ = 0;  // nonzero: discard the payload, then reply this

  std::vector<Slot> slots_;
  Slot* free_slots_ = nullptr;
  size_t slots_in_use_ = 0;
  uint64_t inflight_bytes_ = 0;
  uint64_t retained_bytes_ = 0;  // sum of slot buffer capacities

  // Replies waiting to be sent, in a ring of slot pointers.
  std::vector<Slot*> sendq_;
  size_t sq_head_ = 0;
  size_t sq_count_ = 0;
  size_t send_off_ = 0;  // bytes of sendq_[sq_head_] already sent
  SendOp send_op_;
  bool send_pending_ = false;
  // What the pending send is sending.
  enum class Sending { kHandshake, kReplies, kWire };
  Sending sending_ = Sending::kHandshake;
  msghdr msg_{};
  iovec iov_[128];

  // TLS, once STARTTLS is acknowledged (null on a plain connection).
  std::unique_ptr<TlsSession> tls_;
  std::unique_ptr<char[]> tls_rbuf_;  // ciphertext received
  std::string wire_out_;      // bytes for the socket: the clear STARTTLS ACK, then ciphertext
  std::string wire_sending_;  // bytes in flight: not touched until sent
  size_t wire_off_ = 0;
  bool tls_failed_ = false;
  bool tls_bye_ = false;  // close_notify queued

  // RequestClose's soft close: answering everything with ESHUTDOWN, then
  // (write_shut_) waiting for the client to close.
  void Drain();
  void ShutWriteWhenAnswered();
  bool draining_ = false;
  bool write_shut_ = false;
  int64_t drain_started_ns_ = 0;
  bool closing_ = false;  // read no more requests
  bool dead_ = false;     // the socket failed: drop replies
  bool finished_ = false;
};

}  // namespace ebs::nbd
