// NBD wire constants (NetworkBlockDevice/nbd doc/proto.md) and big-endian
// helpers. Everything on the wire is network byte order.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "ebs/engine/byte_order.h"

namespace ebs::nbd {

// Handshake.
inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943ull;  // "NBDMAGIC"
inline constexpr uint64_t kIHaveOpt = 0x49484156454F5054ull;  // "IHAVEOPT"
inline constexpr uint64_t kOptReplyMagic = 0x0003e889045565a9ull;
inline constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
inline constexpr uint16_t kFlagNoZeroes = 1 << 1;
inline constexpr uint32_t kClientFixedNewstyle = 1 << 0;
inline constexpr uint32_t kClientNoZeroes = 1 << 1;

enum Option : uint32_t {
  kOptExportName = 1,
  kOptAbort = 2,
  kOptList = 3,
  kOptPeekExport = 4,
  kOptStartTls = 5,
  kOptInfo = 6,
  kOptGo = 7,
  kOptStructuredReply = 8,
  kOptListMetaContext = 9,
  kOptSetMetaContext = 10,
  kOptExtendedHeaders = 11,
};

inline constexpr uint32_t kRepErrBit = 1u << 31;
enum OptionReply : uint32_t {
  kRepAck = 1,
  kRepServer = 2,
  kRepInfo = 3,
  kRepMetaContext = 4,
  kRepErrUnsup = kRepErrBit | 1,
  kRepErrPolicy = kRepErrBit | 2,
  kRepErrInvalid = kRepErrBit | 3,
  kRepErrPlatform = kRepErrBit | 4,
  kRepErrTlsReqd = kRepErrBit | 5,
  kRepErrUnknown = kRepErrBit | 6,
  kRepErrShutdown = kRepErrBit | 7,
  kRepErrBlockSizeReqd = kRepErrBit | 8,
  kRepErrTooBig = kRepErrBit | 9,
};

enum Info : uint16_t {
  kInfoExport = 0,
  kInfoName = 1,
  kInfoDescription = 2,
  kInfoBlockSize = 3,
};

// Transmission flags.
enum TransmissionFlag : uint16_t {
  kFlagHasFlags = 1 << 0,
  kFlagReadOnly = 1 << 1,
  kFlagSendFlush = 1 << 2,
  kFlagSendFua = 1 << 3,
  kFlagRotational = 1 << 4,
  kFlagSendTrim = 1 << 5,
  kFlagSendWriteZeroes = 1 << 6,
  kFlagSendDf = 1 << 7,
  kFlagCanMultiConn = 1 << 8,
  kFlagSendResize = 1 << 9,
  kFlagSendCache = 1 << 10,
  kFlagSendFastZero = 1 << 11,
};

// Transmission phase.
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;
inline constexpr size_t kRequestHeaderSize = 28;
inline constexpr size_t kSimpleReplyHeaderSize = 16;
inline constexpr size_t kStructuredReplyHeaderSize = 20;

enum Command : uint16_t {
  kCmdRead = 0,
  kCmdWrite = 1,
  kCmdDisc = 2,
  kCmdFlush = 3,
  kCmdTrim = 4,
  kCmdCache = 5,
  kCmdWriteZeroes = 6,
  kCmdBlockStatus = 7,
};

enum CommandFlag : uint16_t {
  kCmdFlagFua = 1 << 0,
  kCmdFlagNoHole = 1 << 1,
  kCmdFlagDf = 1 << 2,
  kCmdFlagReqOne = 1 << 3,
  kCmdFlagFastZero = 1 << 4,
};

inline constexpr uint16_t kReplyFlagDone = 1 << 0;
enum ReplyType : uint16_t {
  kReplyNone = 0,
  kReplyOffsetData = 1,
  kReplyOffsetHole = 2,
  kReplyBlockStatus = 5,
  kReplyError = (1 << 15) | 1,
  kReplyErrorOffset = (1 << 15) | 2,
};

// Error values on the wire (fixed by the protocol, not the host's errno).
enum WireError : uint32_t {
  kEperm = 1,
  kEio = 5,
  kEnomem = 12,
  kEinval = 22,
  kEnospc = 28,
  kEoverflow = 75,
  kEnotsup = 95,
  kEshutdown = 108,
};
// Maps a host errno to the protocol's value (EIO for anything unmapped).
uint32_t ToWireError(int err);

// base:allocation flags.
inline constexpr uint32_t kStateHole = 1 << 0;
inline constexpr uint32_t kStateZero = 1 << 1;
inline constexpr uint32_t kBaseAllocationId = 1;  // our id for base:allocation
inline constexpr char kBaseAllocation[] = "base:allocation";
// qemu's dirty bitmaps: "qemu:dirty-bitmap:NAME", one flag (bit 0: dirty).
inline constexpr char kDirtyBitmapPrefix[] = "qemu:dirty-bitmap:";
inline constexpr uint32_t kFirstBitmapId = 2;  // our ids for the selected bitmaps: 2, 3, ...
inline constexpr uint32_t kStateDirty = 1;

// Limits we advertise and enforce.
inline constexpr uint32_t kMinBlockSize = 512;
inline constexpr uint32_t kPreferredBlockSize = 4096;
inline constexpr uint32_t kMaxPayload = 64u << 20;  // the reference tester sends up to ~48 MiB
inline constexpr uint32_t kMaxOptionLength = 64u << 10;

// Network byte order, as every NBD field is.
inline uint16_t Load16(const void* p) { return LoadBig<uint16_t>(p); }
inline uint32_t Load32(const void* p) { return LoadBig<uint32_t>(p); }
inline uint64_t Load64(const void* p) { return LoadBig<uint64_t>(p); }
inline void Store16(void* p, uint16_t v) { StoreBig(p, v); }
inline void Store32(void* p, uint32_t v) { StoreBig(p, v); }
inline void Store64(void* p, uint64_t v) { StoreBig(p, v); }
inline void Append16(std::string* s, uint16_t v) { AppendBig(s, v); }
inline void Append32(std::string* s, uint32_t v) { AppendBig(s, v); }
inline void Append64(std::string* s, uint64_t v) { AppendBig(s, v); }

// A decoded request header.
struct RequestHeader {
  uint32_t magic;
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint32_t length;
};
inline RequestHeader DecodeRequest(const char* p) {
  return {Load32(p), Load16(p + 4), Load16(p + 6), Load64(p + 8), Load64(p + 16), Load32(p + 24)};
}

}  // namespace ebs::nbd
