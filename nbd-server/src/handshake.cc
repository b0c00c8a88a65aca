#include "ebs/nbd/handshake.h"

#include <algorithm>

#include "ebs/nbd/protocol.h"

namespace ebs::nbd {
namespace {

constexpr size_t kOptionHeaderSize = 16;  // IHAVEOPT, option, length

}  // namespace

void Handshake::Start(std::string* out) {
  Append64(out, kNbdMagic);
  Append64(out, kIHaveOpt);
  Append16(out, kFlagFixedNewstyle | kFlagNoZeroes);
}

void Handshake::Close(std::string reason) {
  state_ = State::kClosed;
  close_reason_ = std::move(reason);
}

uint16_t Handshake::transmission_flags() const {
  uint16_t f = kFlagHasFlags | kFlagSendFlush | kFlagSendFua | kFlagSendTrim | kFlagSendWriteZeroes |
               kFlagCanMultiConn | kFlagSendCache | kFlagSendFastZero;
  if (structured_) f |= kFlagSendDf;  // DF only means something with structured replies
  if (export_.read_only) f |= kFlagReadOnly;
  return f;
}

void Handshake::Reply(std::string* out, uint32_t option, uint32_t type, const std::string& payload) {
  Append64(out, kOptReplyMagic);
  Append32(out, option);
  Append32(out, type);
  Append32(out, static_cast<uint32_t>(payload.size()));
  out->append(payload);
}

void Handshake::ReplyError(std::string* out, uint32_t option, uint32_t type, const std::string& message) {
  Reply(out, option, type, message);
}

size_t Handshake::Consume(const char* data, size_t len, std::string* out, size_t out_budget) {
  size_t used = 0;
  const size_t out_start = out->size();
  while (state_ == State::kClientFlags || state_ == State::kOptions) {
    if (out->size() - out_start >= out_budget) break;  // the client must read first
    const char* p = data + used;
    size_t avail = len - used;
    if (state_ == State::kClientFlags) {
      if (avail < 4) break;
      uint32_t flags = Load32(p);
      used += 4;
      if (flags & ~(kClientFixedNewstyle | kClientNoZeroes)) {
        Close("client sent unknown handshake flags");
        break;
      }
      if (tls_mode_ == TlsMode::kRequire && !(flags & kClientFixedNewstyle)) {
        // STARTTLS needs fixed newstyle, and nothing else is served without it.
        Close("TLS is required but the client did not ask for fixed newstyle");
        break;
      }
      no_zeroes_ = flags & kClientNoZeroes;
      fixed_newstyle_ = flags & kClientFixedNewstyle;
      state_ = State::kOptions;
      continue;
    }
    if (discard_ > 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(discard_, avail));
      used += n;
      discard_ -= n;
      if (discard_ > 0) break;
      if (TlsRequired() && discard_option_ != kOptStartTls && discard_option_ != kOptAbort) {
        ReplyError(out, discard_option_, kRepErrTlsReqd, "TLS is required: send NBD_OPT_STARTTLS first");
      } else {
        ReplyError(out, discard_option_, kRepErrTooBig, "option data too long");
      }
      continue;
    }
    if (avail < kOptionHeaderSize) break;
    if (Load64(p) != kIHaveOpt) {
      Close("bad option magic");
      break;
    }
    uint32_t option = Load32(p + 8);
    uint32_t olen = Load32(p + 12);
    if (olen <= kMaxOptionLength && avail < kOptionHeaderSize + olen) break;  // the rest is still coming
    if (++options_ > kMaxOptions) {
      Close("more than " + std::to_string(kMaxOptions) + " options in one handshake");
      break;
    }
    if (olen > kMaxOptionLength) {
      if (option == kOptExportName) {  // no error reply exists for it
        Close("export name too long");
        break;
      }
      used += kOptionHeaderSize;
      discard_ = olen;
      discard_option_ = option;
      continue;
    }
    used += kOptionHeaderSize + olen;
    HandleOption(option, p + kOptionHeaderSize, olen, out);
  }
  return used;
}

void Handshake::TlsEstablished() {
  if (state_ != State::kStartTls) return;
  tls_active_ = true;
  state_ = State::kOptions;
  structured_ = false;
  meta_base_allocation_ = false;
  meta_bitmaps_.clear();
  meta_export_.clear();
  block_size_requested_ = false;
  export_ = ExportInfo{};
}

void Handshake::HandleStartTls(uint32_t len, std::string* out) {
  if (tls_mode_ == TlsMode::kOff) {
    ReplyError(out, kOptStartTls, kRepErrUnsup, "TLS is not enabled on this server (ebs serve --tls on|require)");
    return;
  }
  if (tls_active_) {
    ReplyError(out, kOptStartTls, kRepErrInvalid, "TLS is already running");
    return;
  }
  if (!fixed_newstyle_) {  // the spec: NOTLS unless both sides agreed to fixed newstyle
    ReplyError(out, kOptStartTls, kRepErrPolicy, "STARTTLS needs fixed newstyle negotiation");
    return;
  }
  if (len != 0) {
    ReplyError(out, kOptStartTls, kRepErrInvalid, "STARTTLS takes no data");
    return;
  }
  Reply(out, kOptStartTls, kRepAck, "");
  state_ = State::kStartTls;
}

void Handshake::HandleOption(uint32_t option, const char* data, uint32_t len, std::string* out) {
  if (TlsRequired() && option != kOptStartTls && option != kOptAbort) {
    if (option == kOptExportName) {  // it has no error reply: the spec says close
      Close("client sent EXPORT_NAME without TLS, which is required");
      return;
    }
    ReplyError(out, option, kRepErrTlsReqd, "TLS is required: send NBD_OPT_STARTTLS first");
    return;
  }
  switch (option) {
    case kOptExportName: {
      auto info = dir_->Open(std::string(data, len));
      if (!info.ok()) {
        Close(info.status().code() == ENOENT ? "unknown export '" + std::string(data, len) + "'"
                                             : info.status().message());
        return;
      }
      export_ = *info;
      Append64(out, export_.size);
      Append16(out, transmission_flags());
      if (!no_zeroes_) out->append(124, '\0');
      state_ = State::kTransmission;
      return;
    }
    case kOptAbort:
      Reply(out, option, kRepAck, "");
      Close("client aborted");
      return;
    case kOptList: {
      if (len != 0) {
        ReplyError(out, option, kRepErrInvalid, "LIST takes no data");
        return;
      }
      for (const auto& e : dir_->List()) {
        std::string payload;
        Append32(&payload, static_cast<uint32_t>(e.name.size()));
        payload += e.name;
        payload += e.description;
        Reply(out, option, kRepServer, payload);
      }
      Reply(out, option, kRepAck, "");
      return;
    }
    case kOptStructuredReply:
      if (len != 0) {
        ReplyError(out, option, kRepErrInvalid, "STRUCTURED_REPLY takes no data");
        return;
      }
      structured_ = true;
      Reply(out, option, kRepAck, "");
      return;
    case kOptInfo:
    case kOptGo:
      HandleInfoOrGo(option, data, len, out);
      return;
    case kOptListMetaContext:
    case kOptSetMetaContext:
      HandleMetaContext(option, data, len, out);
      return;
    case kOptStartTls:
      HandleStartTls(len, out);
      return;
    default:
      ReplyError(out, option, kRepErrUnsup, "option " + std::to_string(option) + " is not supported");
      return;
  }
}

void Handshake::HandleInfoOrGo(uint32_t option, const char* data, uint32_t len, std::string* out) {
  if (len < 6) {
    ReplyError(out, option, kRepErrInvalid, "INFO/GO request too short");
    return;
  }
  uint32_t name_len = Load32(data);
  if (name_len > len - 6) {
    ReplyError(out, option, kRepErrInvalid, "INFO/GO export name overruns the option");
    return;
  }
  std::string name(data + 4, name_len);
  uint16_t n = Load16(data + 4 + name_len);
  if (static_cast<uint64_t>(name_len) + 6 + 2ull * n != len) {
    ReplyError(out, option, kRepErrInvalid, "INFO/GO request length does not match its contents");
    return;
  }
  bool want_name = false, want_description = false, want_block_size = false;
  for (uint16_t i = 0; i < n; ++i) {
    uint16_t info = Load16(data + 6 + name_len + 2 * i);
    if (info == kInfoName) want_name = true;
    if (info == kInfoDescription) want_description = true;
    if (info == kInfoBlockSize) want_block_size = true;
  }
  std::optional<ExportInfo> info;
  std::string why = "no volume named '" + name + "'";
  if (option == kOptGo) {
    auto opened = dir_->Open(name);
    if (opened.ok()) info = *opened;
    if (!opened.ok() && opened.status().code() != ENOENT) why = opened.status().message();
  } else {
    info = dir_->Find(name);
  }
  if (!info) {
    ReplyError(out, option, kRepErrUnknown, why);
    return;
  }
  ExportInfo saved = export_;
  export_ = *info;  // transmission_flags() reads it
  std::string p;
  Append16(&p, kInfoExport);
  Append64(&p, export_.size);
  Append16(&p, transmission_flags());
  Reply(out, option, kRepInfo, p);
  if (want_name) {
    p.clear();
    Append16(&p, kInfoName);
    p += export_.name;
    Reply(out, option, kRepInfo, p);
  }
  if (want_description && !export_.description.empty()) {
    p.clear();
    Append16(&p, kInfoDescription);
    p += export_.description;
    Reply(out, option, kRepInfo, p);
  }
  // Always sent: a client that ignores it still gets byte-granular service.
  p.clear();
  Append16(&p, kInfoBlockSize);
  Append32(&p, kMinBlockSize);
  Append32(&p, kPreferredBlockSize);
  Append32(&p, kMaxPayload);
  Reply(out, option, kRepInfo, p);
  Reply(out, option, kRepAck, "");
  if (option == kOptGo) {
    block_size_requested_ = want_block_size;
    state_ = State::kTransmission;
  } else {
    export_ = saved;
  }
}

void Handshake::HandleMetaContext(uint32_t option, const char* data, uint32_t len, std::string* out) {
  if (option == kOptSetMetaContext && !structured_) {
    ReplyError(out, option, kRepErrInvalid, "SET_META_CONTEXT needs structured replies first");
    return;
  }
  if (len < 8) {
    ReplyError(out, option, kRepErrInvalid, "meta context request too short");
    return;
  }
  uint32_t name_len = Load32(data);
  if (name_len > len - 8) {
    ReplyError(out, option, kRepErrInvalid, "meta context export name overruns the option");
    return;
  }
  std::string name(data + 4, name_len);
  uint32_t nq = Load32(data + 4 + name_len);
  size_t pos = 8 + name_len;
  std::vector<std::string> queries;
  for (uint32_t i = 0; i < nq; ++i) {
    if (pos + 4 > len) {
      ReplyError(out, option, kRepErrInvalid, "meta context query overruns the option");
      return;
    }
    uint32_t ql = Load32(data + pos);
    pos += 4;
    if (ql > len - pos) {
      ReplyError(out, option, kRepErrInvalid, "meta context query overruns the option");
      return;
    }
    queries.emplace_back(data + pos, ql);
    pos += ql;
  }
  if (pos != len) {
    ReplyError(out, option, kRepErrInvalid, "meta context request has trailing bytes");
    return;
  }
  auto info = dir_->Find(name);
  if (!info) {
    ReplyError(out, option, kRepErrUnknown, "no volume named '" + name + "'");
    return;
  }
  const bool list = option == kOptListMetaContext;
  const std::vector<std::string> offered = dir_->DirtyBitmaps(info->name);
  const std::string prefix = kDirtyBitmapPrefix;
  // LIST with no query lists every context; SET with none selects none.
  bool base = list && queries.empty();
  std::vector<std::string> bitmaps;
  if (list && queries.empty()) bitmaps = offered;
  for (const auto& q : queries) {
    if (q == kBaseAllocation || (list && (q == "base:" || q == "base"))) base = true;
    if (list && (q == "qemu:" || q == prefix)) {
      bitmaps = offered;  // every bitmap ("qemu:" has no other context here)
      continue;
    }
    if (q.size() > prefix.size() && q.compare(0, prefix.size(), prefix) == 0) {
      const std::string name = q.substr(prefix.size());
      const bool known = std::find(offered.begin(), offered.end(), name) != offered.end();
      const bool chosen = std::find(bitmaps.begin(), bitmaps.end(), name) != bitmaps.end();
      if (known && !chosen && (list || bitmaps.size() < kMaxDirtyBitmaps)) bitmaps.push_back(name);
    }
  }
  if (option == kOptSetMetaContext) {
    meta_base_allocation_ = base;
    meta_bitmaps_ = bitmaps;
    meta_export_ = info->name;
  }
  if (base) {
    std::string p;
    Append32(&p, list ? 0 : kBaseAllocationId);
    p += kBaseAllocation;
    Reply(out, option, kRepMetaContext, p);
  }
  for (size_t i = 0; i < bitmaps.size(); ++i) {
    std::string p;
    Append32(&p, list ? 0 : kFirstBitmapId + static_cast<uint32_t>(i));
    p += prefix + bitmaps[i];
    Reply(out, option, kRepMetaContext, p);
  }
  Reply(out, option, kRepAck, "");
}

}  // namespace ebs::nbd
