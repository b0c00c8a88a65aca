// Connection, TLS: STARTTLS, the TLS handshake, decrypting into the receive
// buffer and encrypting replies (bounded ahead of the socket).
#include "connection.h"

#include <algorithm>

#include "ebs/engine/log.h"
#include "ebs/nbd/server.h"

namespace ebs::nbd {

// --- TLS ------------------------------------------------------------------

void Connection::StartTls() {
  auto session = TlsSession::Create(server_->options().tls_credentials, &wire_out_);
  if (!session.ok()) {
    LogWarning("closing connection: " + session.status().message());
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
  LogWarning("closing connection: " + why);
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
    tls_identity_ = tls_->peer_identity();
    handshake_.TlsEstablished();  // option haggling starts again, inside TLS
  }
  // Options left unread while the client was not reading replies.
  if (!transmission_ && rend_ > rpos_) Process();
  while (!closing_ && !dead_) {
    if (transmission_ && payload_slot_ == nullptr && free_slots_ == nullptr) break;  // backpressure
    if (!transmission_ && HandshakeBacklog() >= kMaxHandshakeBacklog) break;  // the client reads first
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
      LogWarning("closing connection: " + tls_->error());
      tls_failed_ = true;
      SendFailed();
      return;
    }
  }
  if (send_pending_) return;
  // Handshake bytes from before STARTTLS (its ACK among them) go first.
  if (SendHandshakeBytes()) return;
  io_uring_sqe* sqe;
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

}  // namespace ebs::nbd
