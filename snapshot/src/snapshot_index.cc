#include "ebs/snapshot/snapshot_index.h"

#include "ebs/engine/rocks_db.h"
#include "index_internal.h"

namespace ebs::snapshot {

std::string_view SnapshotStateName(SnapshotState state) {
  switch (state) {
    case SnapshotState::kPending: return "pending";
    case SnapshotState::kCompleted: return "completed";
    case SnapshotState::kError: return "error";
  }
  return "unknown";
}

Result<SnapshotState> ParseSnapshotState(std::string_view name) {
  if (name == "pending") return SnapshotState::kPending;
  if (name == "completed") return SnapshotState::kCompleted;
  if (name == "error") return SnapshotState::kError;
  return Status::InvalidArgument("unknown snapshot state '" + std::string(name) + "'");
}

Result<std::unique_ptr<SnapshotIndex>> SnapshotIndex::Open(const std::string& path) {
  auto db = OpenRocksDb(path, "snapshot index", 256);
  if (!db.ok()) return db.status();
  rocksdb::DB* raw = db->release();
  std::unique_ptr<SnapshotIndex> index(new SnapshotIndex(raw));
  std::string format;
  rocksdb::Status s = raw->Get(rocksdb::ReadOptions(), kFormatKey, &format);
  if (s.IsNotFound()) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    s = raw->Put(wo, kFormatKey, kFormatVersion);
    if (!s.ok()) return Db(s, "initialise " + path);
  } else if (!s.ok()) {
    return Db(s, "read format of " + path);
  } else if (format != kFormatVersion) {
    return Status::IoError("snapshot index " + path + " has format '" + format + "', this build reads '" +
                           kFormatVersion + "'");
  }
  return index;
}

SnapshotIndex::~SnapshotIndex() {
  // What the memtables hold is only in the write-ahead log until a flush,
  // and the next open replays that log and flushes it before it returns:
  // after a snapshot of 1 M changed chunks (a 24 MB log), the next command
  // to open the index, a diff say, took 4.3 s instead of 0.5 s. The process
  // that wrote it flushes it instead. Small leftovers (a record or two)
  // replay in no time and are left to the log, so that short commands do
  // not each add a tiny table file.
  uint64_t held = 0;
  if (db_->GetIntProperty(rocksdb::DB::Properties::kCurSizeAllMemTables, &held) && held >= kFlushOnCloseBytes) {
    db_->Flush(rocksdb::FlushOptions()).PermitUncheckedError();  // on failure the log still has it all
  }
  db_->Close().PermitUncheckedError();
  delete db_;
}

// --- Snapshot records ---------------------------------------------------------

Status SnapshotIndex::PutSnapshot(const SnapshotRecord& record) {
  EBS_RETURN_IF_ERROR(ValidateName("snapshot id", record.id));
  EBS_RETURN_IF_ERROR(ValidateName("lineage id", record.lineage));
  std::lock_guard lock(mu_);
  Mutation m;
  m.PutRecord(record);
  return m.Write(db_, nullptr);
}

Result<SnapshotRecord> SnapshotIndex::GetSnapshot(std::string_view id) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), RecordKey(id), &value);
  if (s.IsNotFound()) {
    return Status::NotFound("InvalidSnapshot.NotFound: snapshot '" + std::string(id) + "' does not exist");
  }
  if (!s.ok()) return Db(s, "read");
  return RecordFromJson(value);
}

Result<std::vector<SnapshotRecord>> SnapshotIndex::ListSnapshots() {
  std::vector<SnapshotRecord> out;
  const std::string prefix = "s|";
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    auto r = RecordFromJson(it->value().ToStringView());
    if (!r.ok()) return r.status();
    out.push_back(std::move(*r));
  }
  if (!it->status().ok()) return Db(it->status(), "scan");
  return out;
}

// --- Chunk maps -----------------------------------------------------------------

Result<std::optional<LineageMember>> SnapshotIndex::GetMember(std::string_view lineage, uint64_t seq) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), MemberKey(lineage, seq), &value);
  if (s.IsNotFound()) return std::optional<LineageMember>();
  if (!s.ok()) return Db(s, "read lineage member");
  auto member = MemberValue(seq, value, lineage);
  if (!member.ok()) return member.status();
  return std::optional<LineageMember>(std::move(*member));
}

Result<std::optional<uint64_t>> SnapshotIndex::NextMember(std::string_view lineage, uint64_t after_seq) {
  if (after_seq == std::numeric_limits<uint64_t>::max()) return std::optional<uint64_t>();
  const std::string prefix = LineagePrefix('l', lineage);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  it->Seek(MemberKey(lineage, after_seq + 1));
  if (it->Valid() && it->key().starts_with(prefix)) {
    return std::optional<uint64_t>(coding::DecodeBig64(it->key().data() + prefix.size()));
  }
  if (!it->status().ok()) return Db(it->status(), "scan lineage");
  return std::optional<uint64_t>();
}

Status SnapshotIndex::AddCommit(Mutation& m, std::string_view lineage, uint64_t seq,
                                std::span<const DeltaEntry> delta, std::string_view base_of) {
  EBS_RETURN_IF_ERROR(ValidateName("lineage id", lineage));
  if (!base_of.empty()) EBS_RETURN_IF_ERROR(ValidateName("snapshot id", base_of));
  if (seq == 0) return Status::InvalidArgument("snapshot sequence numbers start at 1");
  EBS_RETURN_IF_ERROR(ValidateDelta(delta, std::numeric_limits<uint64_t>::max()));
  // Deltas are relative to the newest member, so members must arrive in
  // order; this also refuses committing the same seq twice.
  const std::string prefix = LineagePrefix('l', lineage);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  it->SeekForPrev(MemberKey(lineage, std::numeric_limits<uint64_t>::max()));
  if (it->Valid() && it->key().starts_with(prefix)) {
    uint64_t newest = coding::DecodeBig64(it->key().data() + prefix.size());
    if (seq <= newest) {
      return Status::InvalidArgument("cannot commit seq " + std::to_string(seq) + " to lineage " +
                                     std::string(lineage) + ": seq " + std::to_string(newest) +
                                     " is already committed");
    }
  } else if (!it->status().ok()) {
    return Db(it->status(), "scan lineage");
  }
  // Key order: see Mutation. A full snapshot commits a million entries, so
  // each loop reuses one key buffer instead of allocating a key per entry.
  m.ReserveRefs(delta.size());
  std::string key = DeltaSeqPrefix(lineage, seq);
  const size_t d_base = key.size();
  for (const DeltaEntry& e : delta) {
    key.resize(d_base);
    coding::PutBig64(&key, e.chunk);
    m.batch.Put(key, rocksdb::Slice(e.hash.AsBytes()));
    m.Ref(e.hash, +1);
  }
  m.batch.Put(MemberKey(lineage, seq), base_of.empty() ? std::string(1, kLive) : kBase + std::string(base_of));
  key = LineagePrefix('m', lineage);
  const size_t m_base = key.size();
  for (const DeltaEntry& e : delta) {
    key.resize(m_base);
    coding::PutBig64(&key, e.chunk);
    coding::PutBig64(&key, ~seq);
    m.batch.Put(key, rocksdb::Slice(e.hash.AsBytes()));
  }
  return Status::Ok();
}

Status SnapshotIndex::CommitDelta(std::string_view lineage, uint64_t seq, std::span<const DeltaEntry> delta,
                                  std::string_view base_of) {
  std::lock_guard lock(mu_);
  Mutation m;
  EBS_RETURN_IF_ERROR(AddCommit(m, lineage, seq, delta, base_of));
  return m.Write(db_, nullptr);
}

Status SnapshotIndex::CompleteSnapshot(const SnapshotRecord& record, std::span<const DeltaEntry> delta,
                                       const ForkBase* base) {
  if (record.state != SnapshotState::kCompleted) {
    return Status::InvalidArgument("CompleteSnapshot of " + record.id + " in state " +
                                   std::string(SnapshotStateName(record.state)));
  }
  EBS_RETURN_IF_ERROR(ValidateName("snapshot id", record.id));
  if (base != nullptr && (base->source_id.empty() || base->seq >= record.seq)) {
    return Status::InvalidArgument("the base of " + record.id + " must name its source and come before it");
  }
  std::lock_guard lock(mu_);
  Mutation m;
  // AddCommit checks seqs against what is committed already, not against
  // this batch: the base's seq is checked against record.seq above.
  if (base != nullptr) EBS_RETURN_IF_ERROR(AddCommit(m, record.lineage, base->seq, base->map, base->source_id));
  EBS_RETURN_IF_ERROR(AddCommit(m, record.lineage, record.seq, delta));
  m.PutRecord(record);
  return m.Write(db_, nullptr);
}

Result<std::optional<ContentHash>> SnapshotIndex::ChunkAt(std::string_view lineage, uint64_t chunk, uint64_t seq) {
  EBS_RETURN_IF_ERROR(ValidateName("lineage id", lineage));
  const std::string prefix = MapChunkPrefix(lineage, chunk);
  // Bound the iterator to this chunk's keys, so a Seek past the last live
  // key does not wander through other chunks' tombstones.
  const std::string upper = PrefixEnd(prefix);
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  it->Seek(MapKey(lineage, chunk, seq));
  if (it->Valid() && it->key().starts_with(prefix)) {
    auto h = HashValue(it->value(), it->key());
    if (!h.ok()) return h.status();
    return std::optional<ContentHash>(*h);
  }
  if (!it->status().ok()) return Db(it->status(), "seek");
  return std::optional<ContentHash>();
}

Result<std::vector<DeltaEntry>> SnapshotIndex::ChangedChunks(std::string_view lineage, uint64_t from_seq,
                                                             uint64_t to_seq) {
  EBS_RETURN_IF_ERROR(ValidateName("lineage id", lineage));
  if (from_seq > to_seq) {
    return Status::InvalidArgument("diff from seq " + std::to_string(from_seq) + " to earlier seq " +
                                   std::to_string(to_seq));
  }
  std::vector<DeltaEntry> entries;
  if (from_seq == to_seq) return entries;
  entries.reserve(1 << 14);  // most diffs fit; a million-chunk one grows a few times
  const std::string prefix = LineagePrefix('d', lineage);
  const std::string upper =
      to_seq == std::numeric_limits<uint64_t>::max() ? PrefixEnd(prefix) : DeltaSeqPrefix(lineage, to_seq + 1);
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper_slice;
  ro.readahead_size = 1 << 20;  // a diff reads its range sequentially
  ro.fill_cache = false;        // once: not worth caching
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  // Keys come in (seq, chunk) order, so for a chunk changed several times the
  // last one seen is the newest, i.e. its content as of to_seq.
  for (it->Seek(DeltaSeqPrefix(lineage, from_seq + 1)); it->Valid(); it->Next()) {
    rocksdb::Slice key = it->key();
    if (key.size() != prefix.size() + 16) return Status::IoError("snapshot index: corrupt delta key");
    auto h = HashValue(it->value(), key);
    if (!h.ok()) return h.status();
    entries.push_back({coding::DecodeBig64(key.data() + prefix.size() + 8), *h});
  }
  if (!it->status().ok()) return Db(it->status(), "scan delta");
  // One seq's delta comes out sorted and unique: nothing to merge.
  if (std::adjacent_find(entries.begin(), entries.end(), [](const DeltaEntry& a, const DeltaEntry& b) {
        return a.chunk >= b.chunk;
      }) == entries.end()) {
    return entries;
  }
  std::stable_sort(entries.begin(), entries.end(),
                   [](const DeltaEntry& a, const DeltaEntry& b) { return a.chunk < b.chunk; });
  // Keep the last (newest) entry of each run of equal chunks.
  size_t out = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i + 1 < entries.size() && entries[i + 1].chunk == entries[i].chunk) continue;
    entries[out++] = entries[i];
  }
  entries.resize(out);
  return entries;
}

Result<std::vector<std::string>> SnapshotIndex::ListLineages() {
  std::vector<std::string> out;
  const std::string family = "l|";
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  // One seek per lineage, not one step per member: member keys are
  // l|<lineage>|be64(seq), and lineage ids cannot contain '|'.
  for (it->Seek(family); it->Valid() && it->key().starts_with(family);) {
    if (it->key().size() < family.size() + 10) return Status::IoError("snapshot index: corrupt lineage member key");
    std::string lineage(it->key().data() + family.size(), it->key().size() - family.size() - 9);
    out.push_back(lineage);
    it->Seek(PrefixEnd(LineagePrefix('l', lineage)));
  }
  if (!it->status().ok()) return Db(it->status(), "scan lineages");
  // Key order is not name order ("vol-a2|" sorts before "vol-a|").
  std::sort(out.begin(), out.end());
  return out;
}

Result<std::vector<LineageMember>> SnapshotIndex::ListLineage(std::string_view lineage) {
  EBS_RETURN_IF_ERROR(ValidateName("lineage id", lineage));
  std::vector<LineageMember> out;
  const std::string prefix = LineagePrefix('l', lineage);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    if (it->key().size() != prefix.size() + 8) {
      return Status::IoError("snapshot index: corrupt lineage member of " + std::string(lineage));
    }
    const uint64_t seq = coding::DecodeBig64(it->key().data() + prefix.size());
    auto member = MemberValue(seq, it->value().ToStringView(), lineage);
    if (!member.ok()) return member.status();
    out.push_back(std::move(*member));
  }
  if (!it->status().ok()) return Db(it->status(), "scan lineage");
  return out;
}

// --- Reference counts -------------------------------------------------------------

Result<uint64_t> SnapshotIndex::RefCount(const ContentHash& hash) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), RefKey(hash), &value);
  if (s.IsNotFound()) return uint64_t{0};
  if (!s.ok()) return Db(s, "read reference count");
  return CountValue(value);
}

Result<std::vector<ContentHash>> SnapshotIndex::ListUnreferenced(std::span<const ContentHash> hashes) {
  std::vector<ContentHash> out;
  std::string value;
  for (const ContentHash& h : hashes) {
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), RefKey(h), &value);
    if (s.IsNotFound()) {
      out.push_back(h);
    } else if (!s.ok()) {
      return Db(s, "read reference count");
    }
  }
  return out;
}

Result<std::vector<std::pair<ContentHash, uint64_t>>> SnapshotIndex::ListRefCounts() {
  std::vector<std::pair<ContentHash, uint64_t>> out;
  const std::string prefix = "r|";
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    auto h = ContentHash::FromBytes(std::string_view(it->key().data() + prefix.size(), it->key().size() - prefix.size()));
    if (!h.ok()) return Status::IoError("snapshot index: corrupt reference count key");
    auto c = CountValue(it->value().ToString());
    if (!c.ok()) return c.status();
    out.emplace_back(*h, *c);
  }
  if (!it->status().ok()) return Db(it->status(), "scan reference counts");
  return out;
}

Result<ReferenceAudit> SnapshotIndex::AuditReferences() {
  // One consistent view of all three families: a mutation committed during
  // the scans would otherwise look like a mismatch.
  const rocksdb::Snapshot* snapshot = db_->GetSnapshot();
  struct Release {
    rocksdb::DB* db;
    const rocksdb::Snapshot* s;
    ~Release() { db->ReleaseSnapshot(s); }
  } release{db_, snapshot};
  struct Counted {
    uint64_t deltas = 0;
    uint64_t maps = 0;
  };
  // Keyed by hash, so bounded by the distinct chunks of the store (a
  // 100 GiB volume of 512 KiB chunks: 200 K entries, ~15 MiB), not by how
  // many snapshots name them.
  std::unordered_map<ContentHash, Counted, ContentHashHasher> counted;
  ReferenceAudit audit;
  auto scan = [&](std::string_view family, uint64_t Counted::*field) -> Status {
    const std::string prefix(family);
    const std::string upper = PrefixEnd(prefix);
    rocksdb::Slice upper_slice(upper);
    rocksdb::ReadOptions ro;
    ro.snapshot = snapshot;
    ro.iterate_upper_bound = &upper_slice;
    ro.readahead_size = 1 << 20;
    ro.fill_cache = false;  // a whole-index scan would only evict what queries use
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
    for (it->Seek(prefix); it->Valid(); it->Next()) {
      auto h = HashValue(it->value(), it->key());
      if (!h.ok()) return h.status();
      if (h->IsZeroChunk()) continue;  // zero chunks have no object and no count
      ++(counted[*h].*field);
    }
    if (!it->status().ok()) return Db(it->status(), "scan " + prefix);
    return Status::Ok();
  };
  EBS_RETURN_IF_ERROR(scan("d|", &Counted::deltas));
  EBS_RETURN_IF_ERROR(scan("m|", &Counted::maps));
  audit.hashes = counted.size();
  for (const auto& [hash, c] : counted) audit.entries += c.deltas;
  // The stored counts in key (hash) order; each one met is taken out, so
  // what is left at the end is named by entries but has no count.
  const std::string prefix = "r|";
  const std::string upper = PrefixEnd(prefix);
  rocksdb::Slice upper_slice(upper);
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  for (it->Seek(prefix); it->Valid(); it->Next()) {
    auto h = ContentHash::FromBytes(it->key().ToStringView().substr(prefix.size()));
    if (!h.ok()) return Status::IoError("snapshot index: corrupt reference count key");
    auto stored = CountValue(it->value().ToString());
    if (!stored.ok()) return stored.status();
    Counted c;
    if (auto found = counted.find(*h); found != counted.end()) {
      c = found->second;
      counted.erase(found);
    }
    if (c.deltas != *stored || c.maps != *stored) audit.problems.push_back({*h, *stored, c.deltas, c.maps});
  }
  if (!it->status().ok()) return Db(it->status(), "scan reference counts");
  for (const auto& [hash, c] : counted) audit.problems.push_back({hash, 0, c.deltas, c.maps});
  std::sort(audit.problems.begin(), audit.problems.end(),
            [](const ReferenceProblem& a, const ReferenceProblem& b) { return a.hash < b.hash; });
  return audit;
}

}  // namespace ebs::snapshot
