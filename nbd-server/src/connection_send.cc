// Connection, sending: handshake bytes, then replies gathered from the send
// queue into one sendmsg; what a completed send frees.
#include "connection.h"

#include <sys/socket.h>

#include <iterator>

namespace ebs::nbd {

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
  if (hs_sending_off_ == hs_sending_.size() && !hs_out_.empty()) {
    // Replies appended while a send is in flight must not move its bytes.
    hs_sending_.swap(hs_out_);
    hs_out_.clear();
    hs_sending_off_ = 0;
  }
  if (SendHandshakeBytes()) return;
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
  io_uring_sqe* sqe = loop_->GetSqe(&send_op_);
  io_uring_prep_sendmsg(sqe, fd_, &msg_, MSG_NOSIGNAL);
  sending_ = Sending::kReplies;
  send_pending_ = true;
}

bool Connection::SendHandshakeBytes() {
  if (hs_sending_off_ == hs_sending_.size()) return false;
  io_uring_sqe* sqe = loop_->GetSqe(&send_op_);
  io_uring_prep_send(sqe, fd_, hs_sending_.data() + hs_sending_off_, hs_sending_.size() - hs_sending_off_,
                     MSG_NOSIGNAL);
  sending_ = Sending::kHandshake;
  send_pending_ = true;
  return true;
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
  } else if (!tls_ && rend_ > rpos_) {
    Process();  // options left unread while the client was not reading replies
  }
  if (tls_) TlsInput();  // and ciphertext waiting for room
  PostRecv();
  MaybeFinish();  // may delete this
}

}  // namespace ebs::nbd
