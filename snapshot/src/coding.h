// The on-disk formats' names for fixed-width integers (chunk headers,
// manifests, index keys), over the project's byte-order helpers
// (ebs/engine/byte_order.h). Internal: not installed.
//
// Little-endian is used inside objects (cheap on every machine we run on);
// big-endian is used in RocksDB keys, where bytewise order must equal numeric
// order.
#pragma once

#include <cstdint>
#include <string>

#include "ebs/engine/byte_order.h"

namespace ebs::snapshot::coding {

inline void PutFixed16(std::string* dst, uint16_t v) { AppendLittle(dst, v); }
inline void PutFixed32(std::string* dst, uint32_t v) { AppendLittle(dst, v); }
inline void PutFixed64(std::string* dst, uint64_t v) { AppendLittle(dst, v); }
inline void PutBig64(std::string* dst, uint64_t v) { AppendBig(dst, v); }

inline void EncodeFixed32(char* dst, uint32_t v) { StoreLittle(dst, v); }
inline void EncodeFixed64(char* dst, uint64_t v) { StoreLittle(dst, v); }

inline uint16_t DecodeFixed16(const char* p) { return LoadLittle<uint16_t>(p); }
inline uint32_t DecodeFixed32(const char* p) { return LoadLittle<uint32_t>(p); }
inline uint64_t DecodeFixed64(const char* p) { return LoadLittle<uint64_t>(p); }
inline uint64_t DecodeBig64(const char* p) { return LoadBig<uint64_t>(p); }

}  // namespace ebs::snapshot::coding
