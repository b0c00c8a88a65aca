// Connection, transmission phase: checking each request, running it on the
// volume's stack and building its reply (simple or structured).
#include "connection.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "ebs/engine/log.h"

namespace ebs::nbd {
namespace {

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
      if (!base_allocation_ && bitmaps_.empty()) return kEinval;  // no meta context negotiated
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
    if (h.type == kCmdBlockStatus) charge = kBlockStatusCharge * ((base_allocation_ ? 1 : 0) + bitmaps_.size());
    if (charge > 0 && slots_in_use_ > 0 && inflight_bytes_ + charge > kMaxInflightBytes) return false;
    if (h.magic != kRequestMagic) {
      // Framing is lost: nothing after this can be trusted.
      LogWarning(fmt::format("closing connection: bad request magic {:#010x}", h.magic));
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
  // Capped: the reply covers less than asked when the range is fragmented,
  // and the client asks again for the rest.
  const size_t max = (h.flags & kCmdFlagReqOne) ? size_t{1} : kMaxExtentsPerReply;
  // One reply chunk per selected context: [id, (length, flags)...]. The
  // first chunk's header goes in s->reply; the others' headers travel with
  // the payload, the last one flagged DONE.
  s->extra.clear();
  size_t first_len = 0;
  auto chunk = [&](uint32_t id, size_t n, auto&& entry) {
    const bool first = s->extra.empty();
    size_t at = s->extra.size();
    if (!first) {
      s->extra.resize(at + 20);
      char* p = s->extra.data() + at;
      Store32(p, kStructuredReplyMagic);
      Store16(p + 4, 0);  // DONE set below on the last
      Store16(p + 6, kReplyBlockStatus);
      Store64(p + 8, h.cookie);
      Store32(p + 16, static_cast<uint32_t>(4 + 8 * n));
      at += 20;
    }
    s->extra.resize(at + 4 + 8 * n);
    char* e = s->extra.data() + at;
    Store32(e, id);
    for (size_t i = 0; i < n; ++i) {
      auto [length, flags] = entry(i);
      Store32(e + 4 + 8 * i, static_cast<uint32_t>(length));
      Store32(e + 8 + 8 * i, flags);
    }
    if (first) first_len = s->extra.size();
  };
  size_t last_header = SIZE_MAX;  // where the last extra chunk's header starts
  if (base_allocation_) {
    std::vector<Extent>& extents = s->extents;  // the slot's: no allocation once warm
    extents.clear();
    Status st = device_->Map(h.offset, h.length, &extents, max);
    if (!st.ok()) {
      ReplyError(s, ToWireError(st.code()));
      return;
    }
    const size_t n = std::min(extents.size(), max);
    chunk(kBaseAllocationId, n, [&](size_t i) {
      return std::pair<uint64_t, uint32_t>(extents[i].length, extents[i].hole ? (kStateHole | kStateZero) : 0);
    });
  }
  for (size_t b = 0; b < bitmaps_.size(); ++b) {
    if (bitmaps_[b] == nullptr) {
      ReplyError(s, kEio);
      return;
    }
    dirty_extents_.clear();
    Status st = bitmaps_[b]->Map(h.offset, h.length, &dirty_extents_, max);
    if (!st.ok() || dirty_extents_.empty()) {
      ReplyError(s, st.ok() ? kEio : ToWireError(st.code()));
      return;
    }
    if (!s->extra.empty()) last_header = s->extra.size();
    const size_t n = std::min(dirty_extents_.size(), max);
    chunk(kFirstBitmapId + static_cast<uint32_t>(b), n, [&](size_t i) {
      return std::pair<uint64_t, uint32_t>(dirty_extents_[i].length, dirty_extents_[i].dirty ? kStateDirty : 0);
    });
  }
  char* p = s->reply;
  Store32(p, kStructuredReplyMagic);
  Store16(p + 4, last_header == SIZE_MAX ? kReplyFlagDone : 0);
  Store16(p + 6, kReplyBlockStatus);
  Store64(p + 8, h.cookie);
  Store32(p + 16, static_cast<uint32_t>(first_len));
  if (last_header != SIZE_MAX) Store16(s->extra.data() + last_header + 4, kReplyFlagDone);
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

}  // namespace ebs::nbd
