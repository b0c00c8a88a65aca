// Fixed-width integers in a stated byte order, for every wire and on-disk
// format in the project: big-endian for the NBD protocol and for RocksDB
// keys (bytewise order is numeric order), little-endian inside our own
// objects and files. Unaligned pointers are fine.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>

namespace ebs {

constexpr uint8_t ByteSwap(uint8_t v) { return v; }
constexpr uint16_t ByteSwap(uint16_t v) { return __builtin_bswap16(v); }
constexpr uint32_t ByteSwap(uint32_t v) { return __builtin_bswap32(v); }
constexpr uint64_t ByteSwap(uint64_t v) { return __builtin_bswap64(v); }

template <typename T>
constexpr T ToBig(T v) {
  return std::endian::native == std::endian::big ? v : ByteSwap(v);
}
template <typename T>
constexpr T ToLittle(T v) {
  return std::endian::native == std::endian::little ? v : ByteSwap(v);
}

template <typename T>
T LoadBig(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return ToBig(v);
}
template <typename T>
T LoadLittle(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return ToLittle(v);
}
template <typename T>
void StoreBig(void* p, T v) {
  v = ToBig(v);
  std::memcpy(p, &v, sizeof v);
}
template <typename T>
void StoreLittle(void* p, T v) {
  v = ToLittle(v);
  std::memcpy(p, &v, sizeof v);
}
template <typename T>
void AppendBig(std::string* s, T v) {
  v = ToBig(v);
  s->append(reinterpret_cast<const char*>(&v), sizeof v);
}
template <typename T>
void AppendLittle(std::string* s, T v) {
  v = ToLittle(v);
  s->append(reinterpret_cast<const char*>(&v), sizeof v);
}

}  // namespace ebs
