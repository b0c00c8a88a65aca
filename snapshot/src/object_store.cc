#include "ebs/snapshot/object_store.h"

namespace ebs::snapshot {

namespace {

bool IsKeyChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '-' || c == '/';
}

}  // namespace

Status ValidateObjectKey(std::string_view key) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("invalid object key '" + std::string(key) + "': " + why);
  };
  if (key.empty()) return bad("empty");
  if (key.size() > kMaxObjectKeyLength) return bad("longer than " + std::to_string(kMaxObjectKeyLength) + " bytes");
  for (char c : key) {
    if (!IsKeyChar(c)) return bad("only A-Z a-z 0-9 . _ - / are allowed");
  }
  size_t start = 0;
  while (true) {
    size_t end = key.find('/', start);
    std::string_view segment = key.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    if (segment.empty()) return bad("empty path segment (leading, trailing or doubled '/')");
    if (segment[0] == '.') return bad("a segment may not start with '.'");
    if (segment.size() > kMaxKeySegmentLength) {
      return bad("segment longer than " + std::to_string(kMaxKeySegmentLength) + " bytes");
    }
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return Status::Ok();
}

std::string ChunkKey(const ContentHash& hash) {
  std::string hex = hash.ToHex();
  std::string key;
  key.reserve(kChunkKeyPrefix.size() + 6 + hex.size());
  key.append(kChunkKeyPrefix);
  key.append(hex, 0, 2);
  key += '/';
  key.append(hex, 2, 2);
  key += '/';
  key.append(hex);
  return key;
}

std::string ManifestKey(std::string_view snapshot_id) {
  std::string key(kManifestKeyPrefix);
  key.append(snapshot_id);
  key.append(kManifestKeySuffix);
  return key;
}

}  // namespace ebs::snapshot
