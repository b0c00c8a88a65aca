#include "ebs/snapshot/manifest.h"

#include <xxhash.h>

#include <cstring>
#include <limits>
#include <vector>

#include "coding.h"
#include "ebs/engine/crypto.h"

namespace ebs::snapshot {
namespace {

constexpr char kMagic[4] = {'E', 'B', 'S', 'M'};
constexpr size_t kFixedHeaderSize = 64;
constexpr size_t kEntrySize = 24;
constexpr size_t kTrailerSize = 8;
constexpr size_t kMacSize = crypto::kMacSize;

Status Corrupt(const std::string& what) { return Status::IoError("corrupt snapshot manifest: " + what); }

// Bounds-checked reader over the checksummed body.
class Reader {
 public:
  Reader(const char* p, size_t n) : p_(p), end_(p + n) {}
  size_t left() const { return static_cast<size_t>(end_ - p_); }
  bool String(std::string* out) {
    if (left() < 2) return false;
    uint16_t len = coding::DecodeFixed16(p_);
    p_ += 2;
    if (left() < len) return false;
    out->assign(p_, len);
    p_ += len;
    return true;
  }
  const char* pos() const { return p_; }

 private:
  const char* p_;
  const char* end_;
};

}  // namespace

Result<std::string> EncodeManifest(const Manifest& m, const ChunkCrypto* crypto) {
  const bool encrypted = !m.key_id.empty();
  if (crypto != nullptr && !encrypted) {
    return Status::InvalidArgument("manifest of " + m.snapshot_id + " is to be sealed but names no key");
  }
  if (encrypted && (crypto == nullptr || crypto->key_id() != m.key_id)) {
    return Status::InvalidArgument("manifest of " + m.snapshot_id + " names key " + m.key_id + " but is not sealed with it");
  }
  if (m.snapshot_id.empty()) return Status::InvalidArgument("manifest has no snapshot id");
  if (m.lineage_id.empty()) return Status::InvalidArgument("manifest of " + m.snapshot_id + " has no lineage id");
  EBS_RETURN_IF_ERROR(ValidateChunkSize(m.chunk_size));
  EBS_RETURN_IF_ERROR(ValidateDelta(m.delta, m.chunk_count()));
  // Order is the format: see the layout in manifest.h.
  std::vector<const std::string*> strings = {&m.snapshot_id, &m.volume_name,        &m.volume_id,
                                             &m.lineage_id,  &m.parent_snapshot_id, &m.description};
  if (encrypted) {
    strings.push_back(&m.key_name);
    strings.push_back(&m.key_id);
  }
  size_t strings_size = 0;
  for (const std::string* s : strings) {
    if (s->size() > std::numeric_limits<uint16_t>::max()) {
      return Status::InvalidArgument("manifest string field longer than 65535 bytes");
    }
    strings_size += 2 + s->size();
  }
  const uint64_t total =
      kFixedHeaderSize + strings_size + m.delta.size() * kEntrySize + (encrypted ? kMacSize : 0) + kTrailerSize;

  std::string out;
  out.reserve(total);
  out.append(kMagic, 4);
  coding::PutFixed16(&out, encrypted ? kEncryptedManifestFormatVersion : kManifestFormatVersion);
  coding::PutFixed16(&out, 0);
  coding::PutFixed64(&out, total);
  coding::PutFixed64(&out, m.sequence);
  coding::PutFixed64(&out, m.volume_size);
  coding::PutFixed32(&out, m.chunk_size);
  coding::PutFixed32(&out, 0);
  coding::PutFixed64(&out, static_cast<uint64_t>(m.created_at_ms));
  coding::PutFixed64(&out, m.map_digest);
  coding::PutFixed64(&out, m.delta.size());
  for (const std::string* s : strings) {
    coding::PutFixed16(&out, static_cast<uint16_t>(s->size()));
    out.append(*s);
  }
  for (const DeltaEntry& e : m.delta) {
    coding::PutFixed64(&out, e.chunk);
    out.append(e.hash.AsBytes());
  }
  if (encrypted) out.append(crypto->ManifestMac(out));
  coding::PutFixed64(&out, XXH3_64bits(out.data(), out.size()));
  return out;
}

Result<Manifest> DecodeManifest(std::string_view bytes) {
  if (bytes.size() < 16) {
    return Corrupt("truncated: " + std::to_string(bytes.size()) + " bytes, shorter than a header");
  }
  const char* p = bytes.data();
  if (std::memcmp(p, kMagic, 4) != 0) return Corrupt("bad magic (not a manifest)");
  uint16_t version = coding::DecodeFixed16(p + 4);
  if (version != kManifestFormatVersion && version != kEncryptedManifestFormatVersion) {
    return Corrupt("unsupported format version " + std::to_string(version) + " (this build reads versions " +
                   std::to_string(kManifestFormatVersion) + " and " + std::to_string(kEncryptedManifestFormatVersion) +
                   ")");
  }
  const bool encrypted = version == kEncryptedManifestFormatVersion;
  uint64_t total = coding::DecodeFixed64(p + 8);
  if (bytes.size() < total) {
    return Corrupt("truncated: " + std::to_string(bytes.size()) + " of " + std::to_string(total) + " bytes");
  }
  if (bytes.size() > total) {
    return Corrupt(std::to_string(bytes.size() - total) + " trailing bytes after " + std::to_string(total));
  }
  if (total < kFixedHeaderSize + (encrypted ? kMacSize : 0) + kTrailerSize) {
    return Corrupt("total length " + std::to_string(total) + " is shorter than a header");
  }
  const size_t body = bytes.size() - kTrailerSize;
  uint64_t stored = coding::DecodeFixed64(p + body);
  uint64_t computed = XXH3_64bits(p, body);
  if (stored != computed) return Corrupt("checksum mismatch");

  // From here on the bytes are what an encoder wrote; checks below catch
  // encoder bugs, not storage damage.
  Manifest m;
  if (coding::DecodeFixed16(p + 6) != 0 || coding::DecodeFixed32(p + 36) != 0) {
    return Corrupt("reserved header fields are set");
  }
  m.sequence = coding::DecodeFixed64(p + 16);
  m.volume_size = coding::DecodeFixed64(p + 24);
  m.chunk_size = coding::DecodeFixed32(p + 32);
  m.created_at_ms = static_cast<int64_t>(coding::DecodeFixed64(p + 40));
  m.map_digest = coding::DecodeFixed64(p + 48);
  uint64_t count = coding::DecodeFixed64(p + 56);
  const size_t signed_end = body - (encrypted ? kMacSize : 0);
  Reader r(p + kFixedHeaderSize, signed_end - kFixedHeaderSize);
  std::vector<std::string*> strings = {&m.snapshot_id, &m.volume_name, &m.volume_id, &m.lineage_id,
                                       &m.parent_snapshot_id, &m.description};
  if (encrypted) {
    strings.push_back(&m.key_name);
    strings.push_back(&m.key_id);
  }
  for (std::string* s : strings) {
    if (!r.String(s)) return Corrupt("string fields run past the end");
  }
  if (encrypted && m.key_id.empty()) return Corrupt("an encrypted manifest without a key id");
  if (r.left() / kEntrySize != count || r.left() % kEntrySize != 0) {
    return Corrupt("entry count " + std::to_string(count) + " does not match " + std::to_string(r.left()) +
                   " bytes of entries");
  }
  if (Status s = ValidateChunkSize(m.chunk_size); !s.ok()) return Corrupt(s.message());
  m.delta.resize(count);
  const char* e = r.pos();
  for (uint64_t i = 0; i < count; ++i, e += kEntrySize) {
    m.delta[i].chunk = coding::DecodeFixed64(e);
    std::memcpy(m.delta[i].hash.bytes.data(), e + 8, 16);
  }
  if (Status s = ValidateDelta(m.delta, m.chunk_count()); !s.ok()) return Corrupt(s.message());
  if (m.snapshot_id.empty() || m.lineage_id.empty()) return Corrupt("empty snapshot id or lineage id");
  return m;
}

Status VerifyManifestMac(std::string_view bytes, const ChunkCrypto& crypto) {
  const size_t min = kFixedHeaderSize + kMacSize + kTrailerSize;
  if (bytes.size() < min || coding::DecodeFixed16(bytes.data() + 4) != kEncryptedManifestFormatVersion) {
    return Status::Error(EACCES, "the manifest is not an encrypted snapshot's (no MAC)");
  }
  const size_t signed_end = bytes.size() - kTrailerSize - kMacSize;
  std::string_view mac = bytes.substr(signed_end, kMacSize);
  if (!crypto::MacEqual(mac, crypto.ManifestMac(bytes.substr(0, signed_end)))) {
    return Status::Error(EACCES, "the manifest's MAC does not match under key '" + crypto.key_name() +
                                     "': it was altered, or sealed with another key");
  }
  return Status::Ok();
}

}  // namespace ebs::snapshot
