#include "connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>

#include "ebs/engine/clock.h"
#include "ebs/engine/size.h"
#include "ebs/nbd/server.h"
#include "loop_state.h"

namespace ebs::nbd {
namespace {

constexpr size_t kSlots = 128;
constexpr size_t kRecvBuffer = 256 * 1024;
// A WRITE payload at least this large is received straight into its buffer.
constexpr size_t kDirectRecvThreshold = 64 * 1024;
// Slot buffers are kept for reuse up to this many bytes per connection;
// beyond it a released slot gives its buffer back.
constexpr size_t kMaxRetainedBytes = 64u << 20;
// Read and write payloads in flight per connection: past this, requests wait
// in the socket (at least one is always taken, whatever its size).
constexpr uint64_t kMaxInflightBytes = 64u << 20;
// TLS: ciphertext read per recv, and plaintext encrypted ahead of the socket
// (the ciphertext waiting to be sent stays around this size).
constexpr size_t kTlsRecvBuffer = 256 * 1024;
constexpr size_t kTlsOutHighWater = 2u << 20;

bool AllZero(const char* p, size_t n) {
  // Word at a time; real data usually differs in the first bytes.
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    std::memcpy(&v, p + i, 8);
    if (v != 0) return false;
  }
  for (; i < n; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

}  // namespace

Connection::Connection(Server* server, LoopState* loop, int fd, const ExportFilter* exports)
    : server_(server),
      loop_state_(loop),
      loop_(loop->loop),
      fd_(fd),
      exports_(exports),
      handshake_(this, server->options().tls) {
  recv_op_.c = this;
  send_op_.c = this;
  rcap_ = 64 * 1024;  // grows to kRecvBuffer in transmission
  rbuf_.reset(new char[rcap_]);
  slots_.resize(kSlots);
  for (auto& s : slots_) {
    s.conn = this;
    s.io.owner = &s;
    s.io.callback = &Connection::IoDone;
    s.next_free = free_slots_;
    free_slots_ = &s;
  }
  sendq_.resize(kSlots);
}

Connection::~Connection() { ::close(fd_); }

void Connection::Start() {
  handshake_.Start(&hs_out_);
  FlushSends();
  PostRecv();
}

bool Connection::VolumeGone() const { return attachment_ && attachment_->volume().deleted(); }

void Connection::StopReading() {
  if (closing_) return;
  closing_ = true;
  // Ends a pending receive; replies can still be sent.
  ::shutdown(fd_, SHUT_RD);
}

void Connection::RequestClose() {
  if (transmission_ && !tls_) {
    Drain();
  } else {
    StopReading();
  }
  MaybeFinish();  // may delete this
}

void Connection::Drain() {
  if (draining_ || closing_ || dead_) return;
  draining_ = true;
  drain_started_ns_ = SteadyClock::Default()->NowNs();
}

void Connection::EndDrainAfter(int64_t now_ns, int64_t max_ns) {
  if (!draining_ || closing_ || now_ns - drain_started_ns_ < max_ns) return;
  StopReading();
  MaybeFinish();  // may delete this
}

void Connection::ShutWriteWhenAnswered() {
  if (!draining_ || write_shut_ || closing_ || dead_) return;
  if (slots_in_use_ > 0 || payload_slot_ != nullptr || send_pending_ || sq_count_ > 0) return;
  // Every request read has its reply on the wire: the client reads them all,
  // then the end of the stream, and closes its side (OnRecv sees it).
  write_shut_ = true;
  ::shutdown(fd_, SHUT_WR);
}

// --- ExportDirectory ------------------------------------------------------

std::vector<ExportInfo> Connection::List() {
  std::vector<ExportInfo> out;
  auto list = server_->volumes()->List();
  if (!list.ok()) return out;
  for (const auto& v : *list) {
    if (!exports_->Allows(v.record.name)) continue;
    const VolumeConfig& c = v.record.config;
    out.push_back({v.record.name,
                   fmt::format("{} {} ({})", VolumeTypeName(c.type), FormatSize(c.size_bytes), v.record.id),
                   c.size_bytes, server_->options().read_only});
  }
  return out;
}

std::optional<ExportInfo> Connection::Find(const std::string& requested) {
  std::string name = requested.empty() ? server_->options().default_export : requested;
  if (!exports_->Allows(name)) return std::nullopt;  // as if it did not exist
  auto v = server_->volumes()->Describe(name);
  if (!v.ok()) return std::nullopt;
  const VolumeConfig& c = v->record.config;
  return ExportInfo{name,
                    fmt::format("{} {} ({})", VolumeTypeName(c.type), FormatSize(c.size_bytes), v->record.id),
                    c.size_bytes, server_->options().read_only};
}

Result<ExportInfo> Connection::Open(const std::string& requested) {
  auto info = Find(requested);
  if (!info) return Status::NotFound("no export named '" + requested + "'");
  auto att = server_->volumes()->Attach(info->name);
  if (!att.ok()) {
    // ENOENT is kept for "no such export"; a volume that exists but cannot
    // be opened (a missing key file, say) reports EIO with the reason.
    Status why = Status::Error(att.status().code() == ENOENT ? EIO : att.status().code(),
                               "volume '" + info->name + "' cannot be opened: " + att.status().message());
    fprintf(stderr, "ebs: export refused: %s\n", why.message().c_str());
    return why;
  }
  attachment_ = std::move(*att);
  device_ = &attachment_->volume().device();
  info->size = device_->size();  // fixed for this connection
  return *info;
}

// --- Receiving ------------------------------------------------------------

bool Connection::MakeRoom() {
  if (rpos_ == rend_) {
    rpos_ = rend_ = 0;
  } else if (rend_ == rcap_ && rpos_ > 0) {
    std::memmove(rbuf_.get(), rbuf_.get() + rpos_, rend_ - rpos_);
    rend_ -= rpos_;
    rpos_ = 0;
  }
  if (rend_ == rcap_ && transmission_) return false;  // full of requests waiting for slots
  if (rend_ == rcap_) {
    // The handshake needs a whole option in the buffer (bounded by
    // kMaxOptionLength); the transmission phase never does.
    size_t ncap = rcap_ * 2;
    std::unique_ptr<char[]> n(new char[ncap]);
    std::memcpy(n.get(), rbuf_.get() + rpos_, rend_ - rpos_);
    rend_ -= rpos_;
    rpos_ = 0;
    rbuf_ = std::move(n);
    rcap_ = ncap;
  }
  return true;
}

void Connection::PostRecv() {
  if (recv_pending_ || closing_ || dead_) return;
  if (transmission_ && payload_slot_ == nullptr && free_slots_ == nullptr) return;  // backpressure
  io_uring_sqe* sqe;
  if (tls_) {
    if (tls_->has_pending_input()) return;  // decrypt what is here first (TlsInput)
    sqe = loop_->GetSqe(&recv_op_);
    io_uring_prep_recv(sqe, fd_, tls_rbuf_.get(), kTlsRecvBuffer, 0);
    recv_into_ = RecvInto::kCipher;
  } else if (payload_slot_ != nullptr && payload_error_ == 0 && rpos_ == rend_ &&
             payload_slot_->req.length - payload_have_ >= kDirectRecvThreshold) {
    sqe = loop_->GetSqe(&recv_op_);
    // MSG_WAITALL: the kernel gathers the whole payload before completing,
    // instead of waking this loop for every piece that arrives.
    io_uring_prep_recv(sqe, fd_, payload_slot_->buf.get() + payload_have_,
                       payload_slot_->req.length - payload_have_, MSG_WAITALL);
    recv_into_ = RecvInto::kPayload;
  } else {
    if (!MakeRoom()) return;
    sqe = loop_->GetSqe(&recv_op_);
    io_uring_prep_recv(sqe, fd_, rbuf_.get() + rend_, rcap_ - rend_, 0);
    recv_into_ = RecvInto::kBuffer;
  }
  recv_pending_ = true;
}

void Connection::OnRecv(int res) {
  recv_pending_ = false;
  if (res == -EINTR || res == -EAGAIN) {
    PostRecv();
    return;
  }
  if (res <= 0) {
    // Peer closed or the socket failed: answer what was read, then close.
    closing_ = true;
    MaybeFinish();
    return;
  }
  switch (recv_into_) {
    case RecvInto::kPayload:
      payload_have_ += static_cast<size_t>(res);
      Process();
      break;
    case RecvInto::kBuffer:
      rend_ += static_cast<size_t>(res);
      Process();
      break;
    case RecvInto::kCipher:
      tls_->Feed(tls_rbuf_.get(), static_cast<size_t>(res));
      TlsInput();
      break;
  }
  PostRecv();
  MaybeFinish();
}

void Connection::Process() {
  if (!transmission_) {
    if (!ProcessHandshake()) return;
  }
  ProcessRequests();
}

bool Connection::ProcessHandshake() {
  size_t used = handshake_.Consume(rbuf_.get() + rpos_, rend_ - rpos_, &hs_out_);
  rpos_ += used;
  FlushSends();
  switch (handshake_.state()) {
    case Handshake::State::kTransmission:
      StartTransmission();
      return true;
    case Handshake::State::kClosed:
      StopReading();
      return false;
    case Handshake::State::kStartTls:
      if (!tls_) StartTls();
      return false;
    default:
      return false;
  }
}

// --- TLS ------------------------------------------------------------------

void Connection::StartTls() {
  auto session = TlsSession::Create(server_->options().tls_credentials, &wire_out_);
  if (!session.ok()) {
    std::fprintf(stderr, "ebs: closing connection: %s\n", session.status().message().c_str());
    StopReading();
    return;
  }
  // The ACK goes out in the clear, after any handshake bytes already in
  // flight and before the first TLS record.
  wire_out_ = std::move(hs_out_);
  hs_out_.clear();
  tls_ = std::move(*session);
  tls_rbuf_.reset(new char[kTlsRecvBuffer]);
  // Bytes that came after STARTTLS belong to the TLS stream (a client may
  // not send any before it has the ACK): fed to TLS, never read as options.
  if (rend_ > rpos_) tls_->Feed(rbuf_.get() + rpos_, rend_ - rpos_);
  rpos_ = rend_ = 0;
  TlsInput();
}

void Connection::TlsFailed(const std::string& why) {
  std::fprintf(stderr, "ebs: closing connection: %s\n", why.c_str());
  tls_failed_ = true;
  StopReading();
  FlushSends();  // an alert for the peer, if TLS produced one
}

void Connection::TlsInput() {
  if (closing_ || dead_ || tls_failed_) return;
  if (!tls_->handshake_done()) {
    ssize_t r = tls_->Handshake();
    if (r == TlsSession::kAgain) {
      FlushSends();
      return;
    }
    if (r != 0) {
      TlsFailed(tls_->error());
      return;
    }
    handshake_.TlsEstablished();  // option haggling starts again, inside TLS
  }
  while (!closing_ && !dead_) {
    if (transmission_ && payload_slot_ == nullptr && free_slots_ == nullptr) break;  // backpressure
    if (!MakeRoom()) break;
    ssize_t n = tls_->Read(rbuf_.get() + rend_, rcap_ - rend_);
    if (n == TlsSession::kAgain) break;
    if (n == TlsSession::kClosed) {
      StopReading();
      break;
    }
    if (n < 0) {
      TlsFailed(tls_->error());
      return;
    }
    rend_ += static_cast<size_t>(n);
    Process();
  }
  FlushSends();
}

void Connection::FlushTls() {
  if (tls_->handshake_done() && !tls_failed_) {
    size_t budget = wire_out_.size() < kTlsOutHighWater ? kTlsOutHighWater - wire_out_.size() : 0;
    bool corked = !hs_out_.empty() || (sq_count_ > 0 && budget > 0);
    bool ok = true;
    // Corked, a reply header and its data share records.
    if (corked) tls_->Cork();
    if (!hs_out_.empty()) {
      ok = tls_->Write(hs_out_.data(), hs_out_.size());
      hs_out_.clear();
    }
    while (ok && sq_count_ > 0 && budget > 0) {
      Slot* s = sendq_[sq_head_];
      size_t total = s->reply_len + s->data_len;
      while (ok && send_off_ < total && budget > 0) {
        const char* p;
        size_t n;
        if (send_off_ < s->reply_len) {
          p = s->reply + send_off_;
          n = s->reply_len - send_off_;
        } else {
          p = s->data + (send_off_ - s->reply_len);
          n = total - send_off_;
        }
        n = std::min(n, budget);
        ok = tls_->Write(p, n);
        send_off_ += n;
        budget -= n;
      }
      if (send_off_ < total) break;
      // Encrypted: the ciphertext holds it now.
      sq_head_ = (sq_head_ + 1) % sendq_.size();
      --sq_count_;
      send_off_ = 0;
      ReleaseSlot(s);
    }
    if (corked && ok) ok = tls_->Uncork();
    if (!ok) {
      std::fprintf(stderr, "ebs: closing connection: %s\n", tls_->error().c_str());
      tls_failed_ = true;
      SendFailed();
      return;
    }
  }
  if (send_pending_) return;
  io_uring_sqe* sqe;
  if (hs_sending_off_ < hs_sending_.size()) {
    // Handshake bytes from before STARTTLS (its ACK among them) go first.
    sqe = loop_->GetSqe(&send_op_);
    io_uring_prep_send(sqe, fd_, hs_sending_.data() + hs_sending_off_, hs_sending_.size() - hs_sending_off_,
                       MSG_NOSIGNAL);
    sending_ = Sending::kHandshake;
    send_pending_ = true;
    return;
  }
  if (wire_off_ == wire_sending_.size()) {
    if (wire_out_.empty()) return;
    wire_sending_.swap(wire_out_);  // both keep their capacity: no allocation once warm
    wire_out_.clear();
    wire_off_ = 0;
  }
  sqe = loop_->GetSqe(&send_op_);
  io_uring_prep_send(sqe, fd_, wire_sending_.data() + wire_off_, wire_sending_.size() - wire_off_, MSG_NOSIGNAL);
  sending_ = Sending::kWire;
  send_pending_ = true;
}

void Connection::StartTransmission() {
  transmission_ = true;
  structured_ = handshake_.structured_replies();
  base_allocation_ = handshake_.base_allocation();
  enforce_alignment_ = handshake_.block_size_negotiated();
  read_only_ = handshake_.export_info().read_only;
  size_ = handshake_.export_info().size;
  if (rcap_ < kRecvBuffer) {
    std::unique_ptr<char[]> n(new char[kRecvBuffer]);
    std::memcpy(n.get(), rbuf_.get() + rpos_, rend_ - rpos_);
    rend_ -= rpos_;
    rpos_ = 0;
    rbuf_ = std::move(n);
    rcap_ = kRecvBuffer;
  }
}

uint32_t Connection::Validate(const RequestHeader& h) const {
  // FUA is valid on every command once SEND_FUA is advertised (it always
  // is); where it means nothing it is ignored.
  uint16_t allowed = kCmdFlagFua;
  bool data_cmd = true;   // offset/length describe a range of the volume
  bool mutating = false;  // changes the volume
  switch (h.type) {
    case kCmdRead:
      if (structured_) allowed |= kCmdFlagDf;
      break;
    case kCmdWrite:
    case kCmdTrim:
      mutating = true;
      break;
    case kCmdWriteZeroes:
      allowed |= kCmdFlagNoHole | kCmdFlagFastZero;
      mutating = true;
      break;
    case kCmdCache:
      break;
    case kCmdBlockStatus:
      if (!base_allocation_) return kEinval;  // no meta context negotiated
      allowed |= kCmdFlagReqOne;
      break;
    case kCmdFlush:
    case kCmdDisc:
      data_cmd = false;
      break;
    default:
      return kEinval;
  }
  if (h.flags & ~allowed) return kEinval;
  if (!data_cmd) return 0;
  if (mutating && read_only_) return kEperm;
  if (h.length == 0) return kEinval;
  if (enforce_alignment_ && ((h.offset | h.length) & (kMinBlockSize - 1)) != 0) return kEinval;
  if (h.offset > size_ || h.length > size_ - h.offset) {
    // The spec: ENOSPC for writes past the end, EINVAL for the rest.
    return h.type == kCmdWrite || h.type == kCmdWriteZeroes ? kEnospc : kEinval;
  }
  if ((h.type == kCmdRead || h.type == kCmdWrite) && h.length > kMaxPayload) {
    // Beyond the advertised maximum payload. EOVERFLOW only where the spec
    // allows it: a DF read, which cannot be split into chunks.
    return h.type == kCmdRead && (h.flags & kCmdFlagDf) ? kEoverflow : kEinval;
  }
  return 0;
}

bool Connection::ProcessRequests() {
  while (true) {
    if (payload_slot_ != nullptr) {
      Slot* s = payload_slot_;
      size_t want = s->req.length - payload_have_;
      size_t n = std::min(want, rend_ - rpos_);
      if (n > 0 && payload_error_ == 0) std::memcpy(s->buf.get() + payload_have_, rbuf_.get() + rpos_, n);
      rpos_ += n;
      payload_have_ += n;
      if (payload_have_ < s->req.length) return false;
      payload_slot_ = nullptr;
      if (payload_error_ != 0) {
        uint32_t e = payload_error_;
        payload_error_ = 0;
        ReplySimple(s, e);
      } else {
        Execute(s);
      }
      continue;
    }
    if (closing_) return false;
    if (write_shut_) {  // nothing more can be answered: what the client still sends is dropped
      rpos_ = rend_;
      return false;
    }
    if (rend_ - rpos_ < kRequestHeaderSize) return false;
    if (free_slots_ == nullptr) return false;
    RequestHeader h = DecodeRequest(rbuf_.get() + rpos_);
    uint64_t charge = (h.type == kCmdRead || h.type == kCmdWrite) && h.length <= kMaxPayload ? h.length : 0;
    if (charge > 0 && slots_in_use_ > 0 && inflight_bytes_ + charge > kMaxInflightBytes) return false;
    if (h.magic != kRequestMagic) {
      // Framing is lost: nothing after this can be trusted.
      std::fprintf(stderr, "ebs: closing connection: bad request magic 0x%08x\n", h.magic);
      StopReading();
      return false;
    }
    rpos_ += kRequestHeaderSize;
    Slot* s = AllocSlot();
    s->req = h;
    s->charge = charge;
    inflight_bytes_ += charge;
    if (h.type == kCmdDisc) {
      ReleaseSlot(s);
      StopReading();
      return false;
    }
    uint32_t err = Validate(h);
    if (h.type == kCmdWrite) {
      // The payload follows whatever we think of the request.
      payload_slot_ = s;
      payload_have_ = 0;
      if (err == 0 && !EnsureBuffer(s, h.length)) err = kEnomem;
      payload_error_ = err;
      continue;
    }
    if (err != 0) {
      if (h.type == kCmdRead || h.type == kCmdBlockStatus) {
        ReplyError(s, err);
      } else {
        ReplySimple(s, err);
      }
      continue;
    }
    Execute(s);
  }
}

// --- Executing --------------------------------------------------------------

bool Connection::EnsureBuffer(Slot* s, size_t n) {
  if (s->buf_cap >= n) return true;
  retained_bytes_ -= s->buf_cap;
  s->buf.reset(new (std::nothrow) char[n]);
  s->buf_cap = s->buf ? n : 0;
  retained_bytes_ += s->buf_cap;
  return s->buf != nullptr;
}

void Connection::Execute(Slot* s) {
  const RequestHeader& h = s->req;
  if (draining_ || VolumeGone()) {
    if (h.type == kCmdRead || h.type == kCmdBlockStatus) {
      ReplyError(s, kEshutdown);
    } else {
      ReplySimple(s, kEshutdown);
    }
    if (tls_) {
      StopReading();
    } else {
      Drain();
    }
    return;
  }
  IoRequest& io = s->io;
  io.offset = h.offset;
  io.length = h.length;
  io.flags = (h.flags & kCmdFlagFua) ? kIoFua : 0u;
  io.buf = nullptr;
  switch (h.type) {
    case kCmdRead:
      if (!EnsureBuffer(s, h.length)) {
        ReplyError(s, kEnomem);
        return;
      }
      io.kind = IoKind::kRead;
      io.buf = s->buf.get();
      break;
    case kCmdWrite:
      io.kind = IoKind::kWrite;
      io.buf = s->buf.get();
      break;
    case kCmdFlush:
      io.kind = IoKind::kFlush;
      io.offset = 0;
      io.length = 0;
      break;
    case kCmdTrim:
      io.kind = IoKind::kTrim;
      break;
    case kCmdWriteZeroes:
      io.kind = IoKind::kWriteZeroes;
      if (h.flags & kCmdFlagNoHole) io.flags |= kIoNoHole;
      if (h.flags & kCmdFlagFastZero) io.flags |= kIoFastZero;
      break;
    case kCmdCache:
      io.kind = IoKind::kCache;
      break;
    case kCmdBlockStatus:
      BlockStatus(s);
      return;
  }
  device_->Submit(*loop_, &io);
}

void Connection::IoDone(IoRequest* io, int result) {
  Slot* s = static_cast<Slot*>(io->owner);
  Connection* c = s->conn;
  if (s->req.type == kCmdRead) {
    if (result < 0) {
      c->ReplyError(s, ToWireError(-result));
    } else {
      c->CompleteRead(s);
    }
  } else {
    c->ReplySimple(s, result < 0 ? ToWireError(-result) : 0);
  }
  c->MaybeFinish();
}

void Connection::CompleteRead(Slot* s) {
  const RequestHeader& h = s->req;
  if (!structured_) {
    ReplySimple(s, 0);  // carries the data
    return;
  }
  char* p = s->reply;
  Store32(p, kStructuredReplyMagic);
  Store16(p + 4, kReplyFlagDone);
  Store64(p + 8, h.cookie);
  if (!(h.flags & kCmdFlagDf) && AllZero(s->buf.get(), h.length)) {
    Store16(p + 6, kReplyOffsetHole);
    Store32(p + 16, 12);
    Store64(p + 20, h.offset);
    Store32(p + 28, h.length);
    s->reply_len = 32;
    s->data = nullptr;
    s->data_len = 0;
  } else {
    Store16(p + 6, kReplyOffsetData);
    Store32(p + 16, 8 + h.length);
    Store64(p + 20, h.offset);
    s->reply_len = 28;
    s->data = s->buf.get();
    s->data_len = h.length;
  }
  Enqueue(s);
}

void Connection::BlockStatus(Slot* s) {
  const RequestHeader& h = s->req;
  std::vector<Extent>& extents = s->extents;  // the slot's: no allocation once warm
  extents.clear();
  Status st = device_->Map(h.offset, h.length, &extents);
  if (!st.ok()) {
    ReplyError(s, ToWireError(st.code()));
    return;
  }
  // Cap the reply; the client asks again for the rest.
  constexpr size_t kMaxExtents = 1024;
  size_t n = std::min(extents.size(), (h.flags & kCmdFlagReqOne) ? size_t{1} : kMaxExtents);
  s->extra.resize(4 + 8 * n);
  char* e = s->extra.data();
  Store32(e, kBaseAllocationId);
  for (size_t i = 0; i < n; ++i) {
    Store32(e + 4 + 8 * i, static_cast<uint32_t>(extents[i].length));
    Store32(e + 8 + 8 * i, extents[i].hole ? (kStateHole | kStateZero) : 0);
  }
  char* p = s->reply;
  Store32(p, kStructuredReplyMagic);
  Store16(p + 4, kReplyFlagDone);
  Store16(p + 6, kReplyBlockStatus);
  Store64(p + 8, h.cookie);
  Store32(p + 16, static_cast<uint32_t>(s->extra.size()));
  s->reply_len = 20;
  s->data = s->extra.data();
  s->data_len = s->extra.size();
  Enqueue(s);
}

void Connection::ReplySimple(Slot* s, uint32_t error) {
  char* p = s->reply;
  Store32(p, kSimpleReplyMagic);
  Store32(p + 4, error);
  Store64(p + 8, s->req.cookie);
  s->reply_len = 16;
  s->data = nullptr;
  s->data_len = 0;
  if (error == 0 && s->req.type == kCmdRead) {
    s->data = s->buf.get();
    s->data_len = s->req.length;
  }
  Enqueue(s);
}

void Connection::ReplyError(Slot* s, uint32_t error) {
  if (!structured_) {
    ReplySimple(s, error);
    return;
  }
  char* p = s->reply;
  Store32(p, kStructuredReplyMagic);
  Store16(p + 4, kReplyFlagDone);
  Store16(p + 6, kReplyError);
  Store64(p + 8, s->req.cookie);
  Store32(p + 16, 6);
  Store32(p + 20, error);
  Store16(p + 24, 0);  // no message
  s->reply_len = 26;
  s->data = nullptr;
  s->data_len = 0;
  Enqueue(s);
}

// --- Sending ------------------------------------------------------------------

void Connection::Enqueue(Slot* s) {
  if (dead_) {
    ReleaseSlot(s);
    return;
  }
  sendq_[(sq_head_ + sq_count_) % sendq_.size()] = s;
  ++sq_count_;
  FlushSends();
}

void Connection::FlushSends() {
  if (dead_) return;
  if (tls_) {
    FlushTls();
    return;
  }
  if (send_pending_) return;
  io_uring_sqe* sqe;
  if (hs_sending_off_ == hs_sending_.size() && !hs_out_.empty()) {
    // Replies appended while a send is in flight must not move its bytes.
    hs_sending_.swap(hs_out_);
    hs_out_.clear();
    hs_sending_off_ = 0;
  }
  if (hs_sending_off_ < hs_sending_.size()) {
    sqe = loop_->GetSqe(&send_op_);
    io_uring_prep_send(sqe, fd_, hs_sending_.data() + hs_sending_off_, hs_sending_.size() - hs_sending_off_,
                       MSG_NOSIGNAL);
    sending_ = Sending::kHandshake;
    send_pending_ = true;
    return;
  }
  if (sq_count_ == 0) return;
  size_t niov = 0;
  size_t skip = send_off_;
  for (size_t i = 0; i < sq_count_ && niov + 2 <= std::size(iov_); ++i) {
    Slot* s = sendq_[(sq_head_ + i) % sendq_.size()];
    size_t hl = s->reply_len;
    if (skip < hl) {
      iov_[niov++] = {s->reply + skip, hl - skip};
      skip = 0;
    } else {
      skip -= hl;
    }
    if (s->data_len > 0) {
      iov_[niov++] = {const_cast<char*>(s->data) + skip, s->data_len - skip};
      skip = 0;
    }
  }
  msg_ = {};
  msg_.msg_iov = iov_;
  msg_.msg_iovlen = niov;
  sqe = loop_->GetSqe(&send_op_);
  io_uring_prep_sendmsg(sqe, fd_, &msg_, MSG_NOSIGNAL);
  sending_ = Sending::kReplies;
  send_pending_ = true;
}

void Connection::SendFailed() {
  dead_ = true;
  closing_ = true;
  while (sq_count_ > 0) {
    Slot* s = sendq_[sq_head_];
    sq_head_ = (sq_head_ + 1) % sendq_.size();
    --sq_count_;
    ReleaseSlot(s);
  }
  ::shutdown(fd_, SHUT_RDWR);
}

void Connection::OnSend(int res) {
  send_pending_ = false;
  if (res == -EINTR || res == -EAGAIN) {
    FlushSends();
    return;
  }
  if (res < 0) {
    SendFailed();
    MaybeFinish();
    return;
  }
  size_t n = static_cast<size_t>(res);
  if (sending_ == Sending::kHandshake) {
    hs_sending_off_ += n;
    if (hs_sending_off_ == hs_sending_.size()) {
      std::string().swap(hs_sending_);  // the handshake is over soon: give the memory back
      hs_sending_off_ = 0;
    }
  } else if (sending_ == Sending::kWire) {
    wire_off_ += n;
    if (wire_off_ == wire_sending_.size()) {
      wire_sending_.clear();
      wire_off_ = 0;
    }
  } else {
    n += send_off_;
    while (sq_count_ > 0) {
      Slot* s = sendq_[sq_head_];
      size_t total = s->reply_len + s->data_len;
      if (n < total) break;
      n -= total;
      sq_head_ = (sq_head_ + 1) % sendq_.size();
      --sq_count_;
      ReleaseSlot(s);
    }
    send_off_ = n;
  }
  FlushSends();
  if (transmission_) {
    // Freed slots may unblock requests waiting in the receive buffer.
    ProcessRequests();
  }
  if (tls_) TlsInput();  // and ciphertext waiting for room
  if (transmission_ || tls_) PostRecv();
  MaybeFinish();  // may delete this
}

// --- Slots and lifetime -----------------------------------------------------------

Connection::Slot* Connection::AllocSlot() {
  Slot* s = free_slots_;
  free_slots_ = s->next_free;
  ++slots_in_use_;
  return s;
}

void Connection::ReleaseSlot(Slot* s) {
  if (retained_bytes_ > kMaxRetainedBytes) {
    retained_bytes_ -= s->buf_cap;
    s->buf.reset();
    s->buf_cap = 0;
  }
  inflight_bytes_ -= s->charge;
  s->charge = 0;
  s->next_free = free_slots_;
  free_slots_ = s;
  --slots_in_use_;
}

void Connection::MaybeFinish() {
  ShutWriteWhenAnswered();
  if (finished_ || !closing_) return;
  if (recv_pending_) return;  // shutdown(SHUT_RD) ends it
  if (payload_slot_ != nullptr) {
    // The client went away in the middle of a WRITE payload.
    ReleaseSlot(payload_slot_);
    payload_slot_ = nullptr;
  }
  if (slots_in_use_ > 0 || send_pending_) return;  // requests or replies outstanding
  if (!dead_ && (!hs_out_.empty() || hs_sending_off_ < hs_sending_.size() || !wire_out_.empty() ||
                 wire_off_ < wire_sending_.size())) {
    FlushSends();
    if (send_pending_) return;  // else nothing can be sent: give up on it
  }
  if (!dead_ && tls_ && tls_->handshake_done() && !tls_failed_ && !tls_bye_) {
    tls_bye_ = true;
    tls_->Bye();  // close_notify: the peer can tell our close from a cut
    FlushSends();
    if (send_pending_) return;
  }
  finished_ = true;
  server_->ConnectionClosed(loop_state_, this);  // deletes this
}

}  // namespace ebs::nbd
