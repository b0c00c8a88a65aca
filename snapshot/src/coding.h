// Fixed-width integer encoding shared by the on-disk formats of this library
// (chunk headers, manifests, index keys). Internal: not installed.
//
// Little-endian is used inside objects (cheap on every machine we run on);
// big-endian is used in RocksDB keys, where bytewise order must equal numeric
// order.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace ebs::snapshot::coding {

inline uint32_t ToLittle32(uint32_t v) {
  return std::endian::native == std::endian::little ? v : __builtin_bswap32(v);
}
inline uint64_t ToLittle64(uint64_t v) {
  return std::endian::native == std::endian::little ? v : __builtin_bswap64(v);
}
inline uint64_t ToBig64(uint64_t v) {
  return std::endian::native == std::endian::big ? v : __builtin_bswap64(v);
}

inline void PutFixed16(std::string* dst, uint16_t v) {
  char b[2] = {static_cast<char>(v & 0xff), static_cast<char>(v >> 8)};
  dst->append(b, 2);
}
inline void PutFixed32(std::string* dst, uint32_t v) {
  v = ToLittle32(v);
  dst->append(reinterpret_cast<const char*>(&v), 4);
}
inline void PutFixed64(std::string* dst, uint64_t v) {
  v = ToLittle64(v);
  dst->append(reinterpret_cast<const char*>(&v), 8);
}
inline void PutBig64(std::string* dst, uint64_t v) {
  v = ToBig64(v);
  dst->append(reinterpret_cast<const char*>(&v), 8);
}

inline void EncodeFixed32(char* dst, uint32_t v) {
  v = ToLittle32(v);
  std::memcpy(dst, &v, 4);
}
inline void EncodeFixed64(char* dst, uint64_t v) {
  v = ToLittle64(v);
  std::memcpy(dst, &v, 8);
}

inline uint16_t DecodeFixed16(const char* p) {
  auto u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint16_t>(u[0] | (u[1] << 8));
}
inline uint32_t DecodeFixed32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return ToLittle32(v);
}
inline uint64_t DecodeFixed64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return ToLittle64(v);
}
inline uint64_t DecodeBig64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return ToBig64(v);
}

}  // namespace ebs::snapshot::coding
