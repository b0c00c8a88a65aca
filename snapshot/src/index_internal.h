// The index's inner parts shared by its source files (snapshot_index.cc,
// index_deletion.cc): the key encoding of snapshot_index.h, value parsing,
// and Mutation, the one atomic change every mutation builds.
#pragma once

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "coding.h"
#include "ebs/snapshot/snapshot_index.h"

namespace ebs::snapshot {
namespace index_internal {

inline constexpr char kFormatKey[] = "meta|format";
inline constexpr char kFormatVersion[] = "1";
inline constexpr char kLive = 'l';
inline constexpr char kRetired = 'r';
inline constexpr char kBase = 'b';  // followed by the id of the snapshot it copies
inline constexpr size_t kMaxNameLength = 128;
// Memtables at least this large are flushed when the index closes (see
// ~SnapshotIndex): about 40,000 delta entries, which replay in some 20 ms.
inline constexpr uint64_t kFlushOnCloseBytes = 4 << 20;

inline Status Db(const rocksdb::Status& s, const std::string& what) {
  return Status::IoError("snapshot index " + what + ": " + s.ToString());
}

// Snapshot ids and lineage ids end up in RocksDB keys (where '|' separates
// fields) and in object keys, so they use the object-key alphabet minus '/'.
inline Status ValidateName(std::string_view kind, std::string_view name) {
  bool ok = !name.empty() && name.size() <= kMaxNameLength && name[0] != '.';
  for (char c : name) {
    ok = ok && ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                c == '_' || c == '-');
  }
  if (!ok) {
    return Status::InvalidArgument("invalid " + std::string(kind) + " '" + std::string(name) +
                                   "': 1-128 of A-Z a-z 0-9 . _ - (not starting with '.')");
  }
  return Status::Ok();
}

inline std::string RecordKey(std::string_view id) { return "s|" + std::string(id); }

inline std::string LineagePrefix(char family, std::string_view lineage) {
  std::string k;
  k += family;
  k += '|';
  k.append(lineage);
  k += '|';
  return k;
}
inline std::string MemberKey(std::string_view lineage, uint64_t seq) {
  std::string k = LineagePrefix('l', lineage);
  coding::PutBig64(&k, seq);
  return k;
}
inline std::string MapChunkPrefix(std::string_view lineage, uint64_t chunk) {
  std::string k = LineagePrefix('m', lineage);
  coding::PutBig64(&k, chunk);
  return k;
}
inline std::string MapKey(std::string_view lineage, uint64_t chunk, uint64_t seq) {
  std::string k = MapChunkPrefix(lineage, chunk);
  coding::PutBig64(&k, ~seq);  // newest first within a chunk
  return k;
}
inline std::string DeltaSeqPrefix(std::string_view lineage, uint64_t seq) {
  std::string k = LineagePrefix('d', lineage);
  coding::PutBig64(&k, seq);
  return k;
}
inline std::string DeltaKey(std::string_view lineage, uint64_t seq, uint64_t chunk) {
  std::string k = DeltaSeqPrefix(lineage, seq);
  coding::PutBig64(&k, chunk);
  return k;
}
inline std::string RefKey(const ContentHash& hash) {
  std::string k = "r|";
  k.append(hash.AsBytes());
  return k;
}

// The smallest key greater than every key starting with `prefix` (prefixes
// here never end in 0xff: they end in '|' or a be64 whose caller bounded it).
inline std::string PrefixEnd(std::string prefix) {
  while (!prefix.empty() && static_cast<unsigned char>(prefix.back()) == 0xff) prefix.pop_back();
  if (!prefix.empty()) prefix.back() = static_cast<char>(static_cast<unsigned char>(prefix.back()) + 1);
  return prefix;
}

inline Result<ContentHash> HashValue(const rocksdb::Slice& value, const rocksdb::Slice& key) {
  if (value.size() != 16) {
    return Status::IoError("snapshot index: corrupt entry (value of " + std::to_string(value.size()) +
                           " bytes, expected a 16-byte hash) at key of " + std::to_string(key.size()) + " bytes");
  }
  ContentHash h;
  std::memcpy(h.bytes.data(), value.data(), 16);
  return h;
}

// A lineage member's value: 'l', 'r', or 'b' + a snapshot id.
inline Result<LineageMember> MemberValue(uint64_t seq, std::string_view value, std::string_view lineage) {
  if (value.size() == 1 && (value[0] == kLive || value[0] == kRetired)) {
    return LineageMember{seq, value[0] == kRetired, {}};
  }
  if (value.size() > 1 && value[0] == kBase) return LineageMember{seq, false, std::string(value.substr(1))};
  return Status::IoError("snapshot index: corrupt lineage member " + std::string(lineage) + "/" + std::to_string(seq));
}

inline Result<uint64_t> CountValue(const std::string& value) {
  if (value.size() != 8) return Status::IoError("snapshot index: corrupt reference count");
  return coding::DecodeFixed64(value.data());
}

inline nlohmann::json RecordToJson(const SnapshotRecord& r) {
  return {{"id", r.id},
          {"state", std::string(SnapshotStateName(r.state))},
          {"volume_name", r.volume_name},
          {"volume_id", r.volume_id},
          {"lineage", r.lineage},
          {"seq", r.seq},
          {"parent_id", r.parent_id},
          {"volume_size", r.volume_size},
          {"chunk_size", r.chunk_size},
          {"logical_bytes", r.logical_bytes},
          {"changed_bytes", r.changed_bytes},
          {"stored_bytes", r.stored_bytes},
          {"new_bytes", r.new_bytes},
          {"created_at_ms", r.created_at_ms},
          {"description", r.description},
          {"error", r.error},
          {"key_name", r.key_name},
          {"key_id", r.key_id}};
}

inline Result<SnapshotRecord> RecordFromJson(std::string_view text) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Status::IoError("snapshot index: corrupt snapshot record (not JSON)");
  try {
    SnapshotRecord r;
    r.id = j.at("id").get<std::string>();
    auto state = ParseSnapshotState(j.at("state").get<std::string>());
    if (!state.ok()) return Status::IoError("snapshot index: record " + r.id + ": " + state.status().message());
    r.state = *state;
    r.volume_name = j.at("volume_name").get<std::string>();
    r.volume_id = j.at("volume_id").get<std::string>();
    r.lineage = j.at("lineage").get<std::string>();
    r.seq = j.at("seq").get<uint64_t>();
    r.parent_id = j.at("parent_id").get<std::string>();
    r.volume_size = j.at("volume_size").get<uint64_t>();
    r.chunk_size = j.at("chunk_size").get<uint32_t>();
    r.logical_bytes = j.at("logical_bytes").get<uint64_t>();
    r.changed_bytes = j.at("changed_bytes").get<uint64_t>();
    r.stored_bytes = j.at("stored_bytes").get<uint64_t>();
    r.new_bytes = j.value("new_bytes", uint64_t{0});  // absent in records of older versions
    r.created_at_ms = j.at("created_at_ms").get<int64_t>();
    r.description = j.at("description").get<std::string>();
    r.error = j.value("error", "");
    r.key_name = j.value("key_name", "");
    r.key_id = j.value("key_id", "");
    return r;
  } catch (const nlohmann::json::exception& e) {
    return Status::IoError(std::string("snapshot index: corrupt snapshot record: ") + e.what());
  }
}

}  // namespace index_internal

using namespace index_internal;  // NOLINT: the index's own files only

// One atomic change: the batch being built plus the net change to each
// reference count, applied to the stored counts when the batch is written.
// Used only under SnapshotIndex::mu_, which is what makes reading the counts
// and writing them back safe.
//
// Key order matters for speed, not correctness (no key is written twice in
// one mutation): the memtable is a skiplist that inserts ascending keys
// several times faster than scattered ones (a 1 M-chunk commit: 16 s
// interleaved, 2.4 s in order). So callers add to `batch` family by family
// in key order, d| then l| then m|, each ascending; Write() then adds the
// r| family sorted, and finally the s| records kept aside in `records`.
class SnapshotIndex::Mutation {
 public:
  rocksdb::WriteBatch batch;

  void Ref(const ContentHash& h, int64_t delta) {
    if (!h.IsZeroChunk()) refs_[h] += delta;  // zero chunks have no object
  }
  void ReserveRefs(size_t n) { refs_.reserve(refs_.size() + n); }
  void PutRecord(const SnapshotRecord& r) { records_.emplace_back(RecordKey(r.id), RecordToJson(r).dump()); }
  void DeleteRecord(std::string_view id) { records_.emplace_back(RecordKey(id), std::nullopt); }

  // Folds the reference counts into the batch and writes it durably. Fills
  // *released with hashes whose count reached zero, sorted. A count going
  // negative means the index is inconsistent: nothing is written.
  Status Write(rocksdb::DB* db, std::vector<ContentHash>* released) {
    std::vector<std::pair<ContentHash, int64_t>> refs(refs_.begin(), refs_.end());
    std::sort(refs.begin(), refs.end());
    std::string value;
    for (const auto& [hash, delta] : refs) {
      if (delta == 0) continue;
      std::string key = RefKey(hash);
      uint64_t count = 0;
      rocksdb::Status s = db->Get(rocksdb::ReadOptions(), key, &value);
      if (s.ok()) {
        auto c = CountValue(value);
        if (!c.ok()) return c.status();
        count = *c;
      } else if (!s.IsNotFound()) {
        return Db(s, "read reference count");
      }
      if (delta < 0 && count < static_cast<uint64_t>(-delta)) {
        return Status::IoError("snapshot index inconsistent: reference count of " + hash.ToHex() + " is " +
                               std::to_string(count) + ", cannot drop " + std::to_string(-delta));
      }
      count += static_cast<uint64_t>(delta);
      if (count == 0) {
        batch.Delete(key);
        if (released != nullptr) released->push_back(hash);
      } else {
        std::string v;
        coding::PutFixed64(&v, count);
        batch.Put(key, v);
      }
    }
    for (const auto& [key, record] : records_) {
      if (record.has_value()) {
        batch.Put(key, *record);
      } else {
        batch.Delete(key);
      }
    }
    rocksdb::WriteOptions wo;
    wo.sync = true;
    rocksdb::Status s = db->Write(wo, &batch);
    if (!s.ok()) return Db(s, "write");
    return Status::Ok();
  }

 private:
  std::unordered_map<ContentHash, int64_t, ContentHashHasher> refs_;
  std::vector<std::pair<std::string, std::optional<std::string>>> records_;
};

}  // namespace ebs::snapshot
