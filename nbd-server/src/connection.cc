#include "connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "ebs/engine/clock.h"
#include "ebs/engine/log.h"
#include "ebs/engine/size.h"
#include "ebs/nbd/server.h"
#include "loop_state.h"

namespace ebs::nbd {


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
  accepted_ns_ = SteadyClock::Default()->NowNs();
  handshake_.Start(&hs_out_);
  FlushSends();
  PostRecv();
}

bool Connection::VolumeGone() const {
  return (attachment_ && attachment_->volume().deleted()) || (provided_.gone && provided_.gone());
}

void Connection::StopReading() {
  if (closing_) return;
  closing_ = true;
  // Ends a pending receive; replies can still be sent.
  ::shutdown(fd_, SHUT_RD);
}

size_t Connection::HandshakeBacklog() const {
  return hs_out_.size() + (hs_sending_.size() - hs_sending_off_) + wire_out_.size() +
         (wire_sending_.size() - wire_off_);
}

void Connection::EndHandshakeAfter(int64_t now_ns, int64_t max_ns) {
  if (transmission_ || finished_ || dead_ || max_ns <= 0 || now_ns - accepted_ns_ < max_ns) return;
  LogWarning(fmt::format("closing connection: no export chosen within {} s of connecting (--handshake-timeout)",
                         max_ns / 1'000'000'000.0));
  SendFailed();  // nothing worth sending: drop it all and close
  MaybeFinish();  // may delete this
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

bool Connection::Allowed(const std::string& name) const {
  return exports_->Allows(name) && server_->TlsAllows(tls_ != nullptr, tls_identity_, name);
}

std::vector<ExportInfo> Connection::List() {
  std::vector<ExportInfo> out;
  auto list = server_->volumes()->List();
  if (!list.ok()) return out;
  for (const auto& v : *list) {
    if (!Allowed(v.record.name)) continue;
    const VolumeConfig& c = v.record.config;
    out.push_back({v.record.name,
                   fmt::format("{} {} ({})", VolumeTypeName(c.type), FormatSize(c.size_bytes), v.record.id),
                   c.size_bytes, server_->options().read_only});
  }
  if (ExportProvider* extra = server_->options().extra_exports) {
    for (auto& e : extra->List()) {
      if (Allowed(e)) out.push_back(std::move(e.info));
    }
  }
  return out;
}

std::optional<ExportInfo> Connection::Find(const std::string& requested) {
  bool provided = false;
  return FindExport(requested, &provided);
}

std::optional<ExportInfo> Connection::FindExport(const std::string& requested, bool* provided) {
  std::string name = requested.empty() ? server_->options().default_export : requested;
  auto v = server_->volumes()->Describe(name);
  if (!v.ok()) {
    ExportProvider* extra = server_->options().extra_exports;
    auto e = extra != nullptr ? extra->Find(name) : std::nullopt;
    if (!e || !Allowed(*e)) return std::nullopt;
    *provided = true;
    return e->info;
  }
  if (!Allowed(name)) return std::nullopt;  // as if it did not exist
  const VolumeConfig& c = v->record.config;
  return ExportInfo{name,
                    fmt::format("{} {} ({})", VolumeTypeName(c.type), FormatSize(c.size_bytes), v->record.id),
                    c.size_bytes, server_->options().read_only};
}

Result<ExportInfo> Connection::Open(const std::string& requested) {
  bool provided = false;
  auto info = FindExport(requested, &provided);
  if (!info) return Status::NotFound("no export named '" + requested + "'");
  Status st = Status::Ok();
  if (provided) {
    auto opened = server_->options().extra_exports->Open(info->name);
    if (opened.ok()) {
      provided_ = std::move(*opened);
      device_ = provided_.device.get();
    } else {
      st = opened.status();
    }
  } else {
    auto att = server_->volumes()->Attach(info->name);
    if (att.ok()) {
      attachment_ = std::move(*att);
      device_ = &attachment_->volume().device();
    } else {
      st = att.status();
    }
  }
  if (!st.ok()) {
    // ENOENT is kept for "no such export". Why an existing one cannot be
    // opened (a missing key file, say) goes to the log only: it may name
    // keys and paths, which are no business of the client's.
    const std::string what = (provided ? "'" : "volume '") + info->name + "'";
    LogWarning("export refused: " + what + " cannot be opened: " + st.message());
    return Status::Error(st.code() == ENOENT ? EIO : st.code(),
                         what + " cannot be opened (the server's log says why)");
  }
  info->size = device_->size();  // fixed for this connection
  return *info;
}

std::vector<std::string> Connection::DirtyBitmaps(const std::string& name) {
  ExportProvider* extra = server_->options().extra_exports;
  return extra != nullptr ? extra->Bitmaps(name) : std::vector<std::string>();
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
  // A client that sends options without reading the replies waits until it
  // has read some (OnSend resumes).
  if (!transmission_ && HandshakeBacklog() >= kMaxHandshakeBacklog) return;
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
  const size_t backlog = HandshakeBacklog();
  const size_t budget = backlog < kMaxHandshakeBacklog ? kMaxHandshakeBacklog - backlog : 0;
  size_t used = handshake_.Consume(rbuf_.get() + rpos_, rend_ - rpos_, &hs_out_, budget);
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


void Connection::StartTransmission() {
  transmission_ = true;
  int sndbuf = kTransmissionSendBuffer;
  setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
  structured_ = handshake_.structured_replies();
  base_allocation_ = handshake_.base_allocation();
  // Only a provider offers dirty bitmaps, so any selected has one.
  for (const auto& name : handshake_.dirty_bitmaps()) {
    Volume* volume = attachment_ ? &attachment_->volume() : nullptr;
    auto map = server_->options().extra_exports->OpenBitmap(handshake_.export_info().name, volume, name);
    if (!map.ok()) LogWarning("dirty bitmap '" + name + "' cannot be opened: " + map.status().message());
    bitmaps_.push_back(map.ok() ? std::move(*map) : nullptr);
  }
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
  if (s->extents.capacity() > 64) {  // a fragmented range's: give it back
    std::vector<Extent>().swap(s->extents);
    std::vector<char>().swap(s->extra);
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
