// The RocksDB snapshot index against an in-memory model: chunk maps as of
// every snapshot, diffs between any two, deletion in every order, reference
// counts, and persistence across reopen.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <fcntl.h>
#include <rocksdb/db.h>
#include <unistd.h>

#include <filesystem>

#include "ebs/engine/volume_manager.h"
#include "ebs/snapshot/object_store.h"
#include "ebs/snapshot/snapshot_index.h"
#include "ebs/snapshot/snapshot_service.h"
#include "test_util.h"

namespace ebs::snapshot {
namespace {

using ebs::testing::TempDir;

constexpr uint64_t kChunks = 48;
constexpr uint64_t kSnapshots = 5;

// A small alphabet of contents, so the same hash shows up in many chunks,
// snapshots and lineages (what deduplication and reference counts are about).
ContentHash Content(int v) { return v == 0 ? ContentHash::ZeroChunk() : ContentHash::Of(&v, sizeof v); }

using RefCounts = std::map<ContentHash, uint64_t>;

// One lineage as the index should see it. `states[s]` is the volume as of
// snapshot s (states[0] = all zero). `deltas` / `members` simulate the index's
// entries under the documented deletion rule, which is what reference counts
// are checked against; everything else is checked against `states` and
// `written`, which no deletion rule can change.
struct LineageModel {
  std::string name;
  std::vector<std::vector<ContentHash>> states;
  std::vector<std::map<uint64_t, ContentHash>> written;  // original delta of each seq
  std::map<uint64_t, std::map<uint64_t, ContentHash>> deltas;
  std::map<uint64_t, bool> members;  // seq -> retired
  std::set<uint64_t> live;           // snapshots not deleted

  // Appends snapshot seq = states.size() with random writes; returns its delta.
  std::vector<DeltaEntry> Grow(std::mt19937& rng) {
    if (states.empty()) {
      states.emplace_back(kChunks, ContentHash::ZeroChunk());
      written.emplace_back();
    }
    std::vector<ContentHash> next = states.back();
    std::map<uint64_t, ContentHash> delta;
    int writes = 1 + static_cast<int>(rng() % (kChunks / 2));
    for (int w = 0; w < writes; ++w) {
      uint64_t c = rng() % kChunks;
      // Zero a chunk sometimes; rewrite it with the same content sometimes
      // (change tracking records writes, not differences).
      int r = static_cast<int>(rng() % 10);
      ContentHash h = r == 0 ? ContentHash::ZeroChunk() : r == 1 ? next[c] : Content(1 + static_cast<int>(rng() % 6));
      next[c] = h;
      delta[c] = h;
    }
    uint64_t seq = states.size();
    states.push_back(next);
    written.push_back(delta);
    deltas[seq] = delta;
    members[seq] = false;
    live.insert(seq);
    std::vector<DeltaEntry> out;
    for (auto& [c, h] : delta) out.push_back({c, h});
    return out;
  }

  void Absorb(uint64_t k, uint64_t n, uint64_t* moved, uint64_t* dropped) {
    for (auto& [c, h] : deltas[k]) {
      if (deltas[n].count(c)) {
        ++*dropped;
      } else {
        deltas[n][c] = h;
        ++*moved;
      }
    }
    deltas.erase(k);
    members.erase(k);
  }
  // The rule, as documented in snapshot_index.h.
  void Delete(uint64_t k, uint64_t* moved, uint64_t* dropped, bool* retired) {
    live.erase(k);
    auto next = members.upper_bound(k);
    *retired = next == members.end();
    if (*retired) {
      members[k] = true;
    } else {
      Absorb(k, next->first, moved, dropped);
    }
  }
  void AbsorbRetired() {
    std::vector<uint64_t> seqs;
    for (auto& [s, r] : members) seqs.push_back(s);
    for (size_t i = 0; i + 1 < seqs.size(); ++i) {
      uint64_t m = 0, d = 0;
      if (members[seqs[i]]) Absorb(seqs[i], seqs[i + 1], &m, &d);
    }
  }
  void DropRetiredTip() {
    while (!members.empty() && members.rbegin()->second) {
      deltas.erase(members.rbegin()->first);
      members.erase(std::prev(members.end()));
    }
  }
  void AddRefs(RefCounts* refs) const {
    for (auto& [s, d] : deltas)
      for (auto& [c, h] : d)
        if (!h.IsZeroChunk()) ++(*refs)[h];
  }
};

class SnapshotIndexTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }
  void Reopen() {
    index_.reset();
    auto opened = SnapshotIndex::Open(dir_.path() + "/index");
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    index_ = std::move(*opened);
  }

  // ChunkAt for every chunk of every live snapshot equals the volume as it
  // was; ChangedChunks between every pair of live snapshots (and from 0)
  // equals the union of the writes in between, with contents as of the later.
  void CheckQueries(const LineageModel& m) {
    for (uint64_t s : m.live) {
      for (uint64_t c = 0; c < kChunks; ++c) {
        auto got = index_->ChunkAt(m.name, c, s);
        ASSERT_TRUE(got.ok()) << got.status().ToString();
        ContentHash h = got->value_or(ContentHash::ZeroChunk());
        ASSERT_EQ(m.states[s][c], h) << m.name << " chunk " << c << " at seq " << s;
      }
    }
    std::vector<uint64_t> points = {0};
    points.insert(points.end(), m.live.begin(), m.live.end());
    for (size_t i = 0; i < points.size(); ++i) {
      for (size_t j = i; j < points.size(); ++j) {
        uint64_t from = points[i], to = points[j];
        std::map<uint64_t, ContentHash> want;
        for (uint64_t s = from + 1; s <= to; ++s)
          for (auto& [c, h] : m.written[s]) want[c] = m.states[to][c];
        auto got = index_->ChangedChunks(m.name, from, to);
        ASSERT_TRUE(got.ok()) << got.status().ToString();
        std::vector<DeltaEntry> want_v;
        for (auto& [c, h] : want) want_v.push_back({c, h});
        ASSERT_EQ(want_v, *got) << m.name << " diff " << from << ".." << to;
      }
    }
    auto members = index_->ListLineage(m.name);
    ASSERT_TRUE(members.ok());
    std::vector<LineageMember> want_members;
    for (auto& [s, r] : m.members) want_members.push_back({s, r, {}});
    EXPECT_EQ(want_members, *members) << m.name;
  }

  void CheckRefCounts(const std::vector<LineageModel>& models) {
    RefCounts want;
    for (const auto& m : models) m.AddRefs(&want);
    auto got = index_->ListRefCounts();
    ASSERT_TRUE(got.ok());
    RefCounts got_map(got->begin(), got->end());
    EXPECT_EQ(want, got_map);
    for (int v = 1; v <= 6; ++v) EXPECT_EQ(want[Content(v)], *index_->RefCount(Content(v))) << v;
  }

  TempDir dir_;
  std::unique_ptr<SnapshotIndex> index_;
};

SnapshotRecord Record(const std::string& id, const std::string& lineage, uint64_t seq) {
  SnapshotRecord r;
  r.id = id;
  r.state = SnapshotState::kCompleted;
  r.volume_name = "vol";
  r.volume_id = "vol-0123";
  r.lineage = lineage;
  r.seq = seq;
  r.parent_id = seq > 1 ? id + "-parent" : "";
  r.volume_size = kChunks * kDefaultChunkSize;
  r.chunk_size = kDefaultChunkSize;
  r.logical_bytes = 7 * kDefaultChunkSize;
  r.changed_bytes = 3 * kDefaultChunkSize;
  r.stored_bytes = 12345;
  r.created_at_ms = 1732530000000 + static_cast<int64_t>(seq);
  r.description = "snapshot \"" + std::to_string(seq) + "\"";
  return r;
}

TEST_F(SnapshotIndexTest, RecordsRoundTripListAndDelete) {
  SnapshotRecord a = Record("snap-a", "lin", 1);
  SnapshotRecord b = Record("snap-b", "lin", 2);
  b.state = SnapshotState::kError;
  b.error = "upload failed: ENOSPC";
  SnapshotRecord c = Record("snap-c", "lin", 3);
  c.state = SnapshotState::kPending;
  for (auto* r : {&c, &a, &b}) ASSERT_TRUE(index_->PutSnapshot(*r).ok());
  EXPECT_EQ(a, *index_->GetSnapshot("snap-a"));
  EXPECT_EQ(b, *index_->GetSnapshot("snap-b"));
  auto all = index_->ListSnapshots();
  ASSERT_TRUE(all.ok());
  EXPECT_EQ((std::vector<SnapshotRecord>{a, b, c}), *all);

  auto missing = index_->GetSnapshot("snap-x");
  EXPECT_EQ(ENOENT, missing.status().code());
  EXPECT_NE(std::string::npos, missing.status().message().find("InvalidSnapshot.NotFound"));
  EXPECT_EQ(EINVAL, index_->PutSnapshot(Record("bad|id", "lin", 1)).code());
  EXPECT_EQ(EINVAL, index_->PutSnapshot(Record("ok", "bad/lineage", 1)).code());
  EXPECT_EQ(EINVAL, index_->PutSnapshot(Record("", "lin", 1)).code());

  // A pending or failed snapshot has no entries: deleting it removes the record.
  auto outcome = index_->DeleteSnapshot("snap-c");
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  EXPECT_FALSE(outcome->retired);
  EXPECT_EQ(ENOENT, index_->GetSnapshot("snap-c").status().code());
  EXPECT_EQ(ENOENT, index_->DeleteSnapshot("snap-c").status().code());
}

TEST_F(SnapshotIndexTest, CommitRefusesBadInputAndWritesNothing) {
  std::vector<DeltaEntry> d = {{1, Content(1)}, {3, Content(2)}};
  ASSERT_TRUE(index_->CommitDelta("lin", 2, d).ok());
  EXPECT_EQ(EINVAL, index_->CommitDelta("lin", 2, d).code()) << "same seq twice";
  EXPECT_EQ(EINVAL, index_->CommitDelta("lin", 1, d).code()) << "older than the newest";
  EXPECT_EQ(EINVAL, index_->CommitDelta("lin2", 0, d).code()) << "seq 0";
  std::vector<DeltaEntry> unsorted = {{3, Content(1)}, {1, Content(2)}};
  EXPECT_EQ(EINVAL, index_->CommitDelta("lin", 3, unsorted).code());
  std::vector<DeltaEntry> dup = {{1, Content(1)}, {1, Content(2)}};
  EXPECT_EQ(EINVAL, index_->CommitDelta("lin", 3, dup).code());
  EXPECT_EQ(EINVAL, index_->CommitDelta("l|in", 3, d).code());
  SnapshotRecord pending = Record("s", "lin", 3);
  pending.state = SnapshotState::kPending;
  EXPECT_EQ(EINVAL, index_->CompleteSnapshot(pending, d).code());
  EXPECT_EQ(ENOENT, index_->GetSnapshot("s").status().code());
  // Only the first commit is there.
  EXPECT_EQ((std::vector<LineageMember>{{2, false, {}}}), *index_->ListLineage("lin"));
  EXPECT_EQ(1u, *index_->RefCount(Content(1)));
  EXPECT_EQ(1u, *index_->RefCount(Content(2)));
  EXPECT_EQ(EINVAL, index_->ChangedChunks("lin", 2, 1).status().code());
  EXPECT_TRUE(index_->ChangedChunks("lin", 2, 2)->empty());
  EXPECT_FALSE(index_->ChunkAt("lin", 1, 1)->has_value()) << "before the first snapshot";
  EXPECT_EQ(Content(1), index_->ChunkAt("lin", 1, 2)->value());
  EXPECT_EQ(Content(1), index_->ChunkAt("lin", 1, 1000)->value()) << "later seqs see the newest";
  EXPECT_FALSE(index_->ChunkAt("lin", 2, 2)->has_value()) << "never written";
  EXPECT_FALSE(index_->ChunkAt("other", 1, 2)->has_value()) << "other lineage";
}

// Five snapshots with random changes; every query against the model; then
// reopen and check everything again.
TEST_F(SnapshotIndexTest, ChunkAtAndChangedChunksMatchTheModelAndPersist) {
  std::mt19937 rng(11);
  std::vector<LineageModel> models(3);
  for (size_t l = 0; l < models.size(); ++l) {
    models[l].name = "lineage-" + std::to_string(l);
    for (uint64_t s = 1; s <= kSnapshots; ++s) {
      auto delta = models[l].Grow(rng);
      // Alternate the two commit paths.
      if (s % 2) {
        SnapshotRecord r = Record(models[l].name + "-s" + std::to_string(s), models[l].name, s);
        ASSERT_TRUE(index_->CompleteSnapshot(r, delta).ok());
      } else {
        ASSERT_TRUE(index_->CommitDelta(models[l].name, s, delta).ok());
      }
    }
  }
  for (const auto& m : models) CheckQueries(m);
  CheckRefCounts(models);

  Reopen();
  for (const auto& m : models) CheckQueries(m);
  CheckRefCounts(models);
  EXPECT_EQ(Record("lineage-1-s3", "lineage-1", 3), *index_->GetSnapshot("lineage-1-s3"));
  EXPECT_EQ(9u, index_->ListSnapshots()->size());
}

// Deleting any subset of the five snapshots, in a random order, keeps every
// survivor's map and every diff between survivors exactly as they were;
// reference counts follow the rule; deleting all but the newest leaves
// references for exactly the newest snapshot's content.
TEST_F(SnapshotIndexTest, DeletingAnySubsetKeepsSurvivorsIntact) {
  std::vector<LineageModel> models;
  for (uint32_t subset = 1; subset < (1u << kSnapshots); ++subset) {
    std::mt19937 rng(subset);
    LineageModel m;
    m.name = "sub-" + std::to_string(subset);
    for (uint64_t s = 1; s <= kSnapshots; ++s) {
      auto delta = m.Grow(rng);
      ASSERT_TRUE(index_->CommitDelta(m.name, s, delta).ok());
    }
    std::vector<uint64_t> order;
    for (uint64_t s = 1; s <= kSnapshots; ++s)
      if (subset & (1u << (s - 1))) order.push_back(s);
    std::shuffle(order.begin(), order.end(), rng);
    for (uint64_t k : order) {
      uint64_t moved = 0, dropped = 0;
      bool retired = false;
      m.Delete(k, &moved, &dropped, &retired);
      auto outcome = index_->DeleteSnapshotEntries(m.name, k);
      ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
      EXPECT_EQ(retired, outcome->retired);
      EXPECT_EQ(moved, outcome->moved);
      EXPECT_EQ(dropped, outcome->dropped);
      EXPECT_EQ(ENOENT, index_->DeleteSnapshotEntries(m.name, k).status().code()) << "already deleted";
      for (const ContentHash& h : outcome->released) EXPECT_EQ(0u, *index_->RefCount(h));
      ASSERT_NO_FATAL_FAILURE(CheckQueries(m)) << "after deleting " << k << " of subset " << subset;
    }
    models.push_back(std::move(m));
  }
  CheckRefCounts(models);
  Reopen();  // deletions are durable too
  for (const auto& m : models) ASSERT_NO_FATAL_FAILURE(CheckQueries(m));
  CheckRefCounts(models);

  // Lineage "sub-15" deleted 1..4: only snapshot 5 is left, so the only
  // references are its non-zero chunks (model-independent check).
  const LineageModel& only5 = models[15 - 1];
  ASSERT_EQ(std::set<uint64_t>{5}, only5.live);
  std::map<ContentHash, uint64_t> want;
  for (const ContentHash& h : only5.states[5])
    if (!h.IsZeroChunk()) ++want[h];
  std::map<ContentHash, uint64_t> got;
  auto full = index_->ChangedChunks(only5.name, 0, 5);  // named: *temporary in a range-for would dangle
  ASSERT_TRUE(full.ok());
  for (const DeltaEntry& e : *full)
    if (!e.hash.IsZeroChunk()) ++got[e.hash];
  EXPECT_EQ(want, got);
}

// Deleting the newest snapshot retires it: the next snapshot (a delta
// against it) still resolves; AbsorbRetired folds it in afterwards;
// DropRetiredTip frees a tip nobody will build on.
TEST_F(SnapshotIndexTest, DeletingTheNewestRetiresItUntilTheNextSnapshot) {
  std::mt19937 rng(99);
  std::vector<LineageModel> models(1);
  LineageModel& m = models[0];
  m.name = "tip";
  for (uint64_t s = 1; s <= 3; ++s) ASSERT_TRUE(index_->CommitDelta(m.name, s, m.Grow(rng)).ok());
  uint64_t moved = 0, dropped = 0;
  bool retired = false;
  m.Delete(3, &moved, &dropped, &retired);
  auto out = index_->DeleteSnapshotEntries(m.name, 3);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(out->retired);
  EXPECT_TRUE(out->released.empty()) << "a retired snapshot releases nothing";
  CheckQueries(m);

  // Snapshot 4 is a delta against the (deleted) 3 and must read correctly.
  ASSERT_TRUE(index_->CommitDelta(m.name, 4, m.Grow(rng)).ok());
  CheckQueries(m);
  CheckRefCounts(models);

  m.AbsorbRetired();
  auto absorbed = index_->AbsorbRetired(m.name);
  ASSERT_TRUE(absorbed.ok());
  ASSERT_EQ(1u, absorbed->size());
  EXPECT_EQ(3u, (*absorbed)[0].seq);
  EXPECT_EQ(4u, (*absorbed)[0].absorbed_into.value_or(0));
  CheckQueries(m);
  CheckRefCounts(models);

  // Delete 4 (retired), then 2 (absorbed into the retired 4), then give up
  // on the lineage's future: only snapshot 1's entries remain.
  m.Delete(4, &moved, &dropped, &retired);
  ASSERT_TRUE(index_->DeleteSnapshotEntries(m.name, 4).ok());
  m.Delete(2, &moved, &dropped, &retired);
  ASSERT_TRUE(index_->DeleteSnapshotEntries(m.name, 2).ok());
  CheckQueries(m);
  CheckRefCounts(models);
  m.DropRetiredTip();
  auto released = index_->DropRetiredTip(m.name);
  ASSERT_TRUE(released.ok());
  CheckQueries(m);
  CheckRefCounts(models);
  for (const ContentHash& h : *released) EXPECT_EQ(0u, *index_->RefCount(h));
  auto unreferenced = index_->ListUnreferenced(*released);
  EXPECT_EQ(*released, *unreferenced);
  EXPECT_EQ((std::vector<LineageMember>{{1, false, {}}}), *index_->ListLineage(m.name));

  // Deleting the last one and dropping the tip leaves no references at all.
  m.Delete(1, &moved, &dropped, &retired);
  ASSERT_TRUE(index_->DeleteSnapshotEntries(m.name, 1).ok());
  m.DropRetiredTip();
  ASSERT_TRUE(index_->DropRetiredTip(m.name).ok());
  EXPECT_TRUE(index_->ListRefCounts()->empty());
  EXPECT_TRUE(index_->ListLineage(m.name)->empty());
  EXPECT_TRUE(index_->ChangedChunks(m.name, 0, 100)->empty());
}

// ListLineages names each lineage with members once (store gc walks them
// to find tips whose volume is gone), and forgets one whose tip was dropped.
TEST_F(SnapshotIndexTest, ListLineagesNamesEachOnce) {
  EXPECT_TRUE(index_->ListLineages()->empty());
  const std::vector<DeltaEntry> delta = {{0, Content(1)}, {3, Content(2)}};
  for (const char* l : {"vol-b", "vol-a", "vol-a2"}) {
    for (uint64_t seq = 1; seq <= 3; ++seq) ASSERT_TRUE(index_->CommitDelta(l, seq, delta).ok());
  }
  EXPECT_EQ((std::vector<std::string>{"vol-a", "vol-a2", "vol-b"}), *index_->ListLineages());
  for (uint64_t seq = 1; seq <= 3; ++seq) ASSERT_TRUE(index_->DeleteSnapshotEntries("vol-a", seq).ok());
  ASSERT_TRUE(index_->DropRetiredTip("vol-a").ok());
  EXPECT_EQ((std::vector<std::string>{"vol-a2", "vol-b"}), *index_->ListLineages());
}

// DeleteSnapshot removes the record and the entries in one step, and a
// completed snapshot's record never exists without its entries.
TEST_F(SnapshotIndexTest, DeleteSnapshotRemovesRecordAndEntriesTogether) {
  std::vector<DeltaEntry> d1 = {{0, Content(1)}, {1, Content(2)}};
  std::vector<DeltaEntry> d2 = {{1, Content(3)}};
  ASSERT_TRUE(index_->CompleteSnapshot(Record("s1", "lin", 1), d1).ok());
  ASSERT_TRUE(index_->CompleteSnapshot(Record("s2", "lin", 2), d2).ok());
  auto out = index_->DeleteSnapshot("s1");
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(2u, out->absorbed_into.value_or(0));
  EXPECT_EQ(1u, out->moved);    // chunk 0 still needed by s2
  EXPECT_EQ(1u, out->dropped);  // chunk 1 rewritten by s2
  EXPECT_EQ(std::vector<ContentHash>{Content(2)}, out->released);
  EXPECT_EQ(ENOENT, index_->GetSnapshot("s1").status().code());
  EXPECT_EQ(Content(1), index_->ChunkAt("lin", 0, 2)->value());
  EXPECT_EQ(Content(3), index_->ChunkAt("lin", 1, 2)->value());
  EXPECT_EQ((std::vector<DeltaEntry>{{0, Content(1)}, {1, Content(3)}}), *index_->ChangedChunks("lin", 0, 2));
  EXPECT_EQ(0u, *index_->RefCount(Content(2)));
  std::vector<ContentHash> probe = {Content(1), Content(2), Content(3)};
  EXPECT_EQ(std::vector<ContentHash>{Content(2)}, *index_->ListUnreferenced(probe));
}

// Commits and deletions on different lineages from several threads, all
// sharing contents: reference counts are read-modify-write, so this is what
// the internal mutex is for.
TEST_F(SnapshotIndexTest, ConcurrentMutationsKeepReferenceCountsExact) {
  std::vector<LineageModel> models(4);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < models.size(); ++t) {
    models[t].name = "thread-" + std::to_string(t);
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<uint32_t>(100 + t));
      LineageModel& m = models[t];
      for (uint64_t s = 1; s <= kSnapshots; ++s) EXPECT_TRUE(index_->CommitDelta(m.name, s, m.Grow(rng)).ok());
      for (uint64_t k : {2, 4}) {
        uint64_t moved = 0, dropped = 0;
        bool retired = false;
        m.Delete(k, &moved, &dropped, &retired);
        EXPECT_TRUE(index_->DeleteSnapshotEntries(m.name, k).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& m : models) ASSERT_NO_FATAL_FAILURE(CheckQueries(m));
  CheckRefCounts(models);
}

// AuditReferences recounts references from the entries: clean on an index
// only the API wrote, and after the entries or counts are damaged behind its
// back (what `store check` must report), it names each miscounted hash.
TEST_F(SnapshotIndexTest, AuditReferencesFindsEveryMiscountedHash) {
  std::mt19937 rng(7);
  std::vector<LineageModel> models(2);
  for (size_t i = 0; i < models.size(); ++i) {
    models[i].name = "audit-" + std::to_string(i);
    for (uint64_t s = 1; s <= kSnapshots; ++s) {
      ASSERT_TRUE(index_->CommitDelta(models[i].name, s, models[i].Grow(rng)).ok());
    }
  }
  uint64_t moved = 0, dropped = 0;
  bool retired = false;
  models[0].Delete(2, &moved, &dropped, &retired);
  ASSERT_TRUE(index_->DeleteSnapshotEntries(models[0].name, 2).ok());
  RefCounts want;
  for (const auto& m : models) m.AddRefs(&want);
  auto clean = index_->AuditReferences();
  ASSERT_TRUE(clean.ok()) << clean.status().ToString();
  EXPECT_TRUE(clean->problems.empty());
  EXPECT_EQ(want.size(), clean->hashes);
  uint64_t entries = 0;
  for (const auto& [h, n] : want) entries += n;
  EXPECT_EQ(entries, clean->entries);

  // Damage: a count one too high, a count gone, and a snapshot's entries
  // deleted without their references (as a lost write would).
  const uint64_t c1 = want[Content(1)], c2 = want[Content(2)];
  ASSERT_GT(c1, 0u);
  ASSERT_GT(c2, 0u);
  auto seq5 = index_->ChangedChunks(models[1].name, 4, 5);
  ASSERT_TRUE(seq5.ok());
  ASSERT_FALSE(seq5->empty());
  index_.reset();
  {
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), dir_.path() + "/index", &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    auto ref_key = [](const ContentHash& h) { return "r|" + std::string(h.AsBytes()); };
    std::string v(8, '\0');
    const uint64_t bumped = c1 + 1;
    std::memcpy(v.data(), &bumped, 8);  // little-endian, as the index stores it
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), ref_key(Content(1)), v).ok());
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), ref_key(Content(2))).ok());
    // Every d| and m| entry of seq 5 of the second lineage.
    auto be64 = [](uint64_t x) {
      std::string out(8, '\0');
      for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(x >> (56 - 8 * i));
      return out;
    };
    for (const auto& e : *seq5) {
      const std::string lineage = models[1].name + "|";
      ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), "d|" + lineage + be64(5) + be64(e.chunk)).ok());
      ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), "m|" + lineage + be64(e.chunk) + be64(~uint64_t{5})).ok());
    }
    ASSERT_TRUE(db->Close().ok());
  }
  Reopen();
  RefCounts counted = want;  // what the entries now say
  for (const auto& e : *seq5) {
    if (!e.hash.IsZeroChunk()) --counted[e.hash];
  }
  std::vector<ReferenceProblem> expected;
  for (const auto& [h, n] : want) {
    uint64_t stored = h == Content(1) ? c1 + 1 : h == Content(2) ? 0 : n;
    if (stored != counted[h]) expected.push_back({h, stored, counted[h], counted[h]});
  }
  auto audit = index_->AuditReferences();
  ASSERT_TRUE(audit.ok()) << audit.status().ToString();
  EXPECT_EQ(expected, audit->problems);
  bool saw1 = false, saw2 = false;
  for (const auto& p : audit->problems) {
    saw1 = saw1 || (p.hash == Content(1) && p.stored == c1 + 1);
    saw2 = saw2 || (p.hash == Content(2) && p.stored == 0 && p.in_deltas == counted[Content(2)]);
  }
  EXPECT_TRUE(saw1 && saw2);
}

// A fork (a volume restored from another lineage's snapshot): its base is a
// copy of the source's map with no record; the first snapshot is a delta
// against it, diffs from the base are only the changes, and the base is
// never absorbed, retired or deleted by the lineage's deletions.
TEST_F(SnapshotIndexTest, ForkBaseServesItsLineageAndIsNeverAbsorbed) {
  std::vector<DeltaEntry> source = {{0, Content(1)}, {1, Content(2)}, {2, Content(3)}};
  ASSERT_TRUE(index_->CompleteSnapshot(Record("src", "orig", 1), source).ok());
  std::vector<DeltaEntry> change = {{1, Content(4)}};
  ForkBase base{1, "src", source};
  SnapshotRecord child = Record("child", "fork", 2);
  ASSERT_TRUE(index_->CompleteSnapshot(child, change, &base).ok());
  EXPECT_EQ((std::vector<LineageMember>{{1, false, "src"}, {2, false, ""}}), *index_->ListLineage("fork"));
  EXPECT_EQ(change, *index_->ChangedChunks("fork", 1, 2));
  EXPECT_EQ((std::vector<DeltaEntry>{{0, Content(1)}, {1, Content(4)}, {2, Content(3)}}),
            *index_->ChangedChunks("fork", 0, 2));
  EXPECT_EQ(2u, *index_->RefCount(Content(1)));  // the source's entry and the base's copy
  // The base is no snapshot: it cannot be deleted as one, and a bad base is refused.
  EXPECT_EQ(ENOENT, index_->DeleteSnapshotEntries("fork", 1).status().code());
  ForkBase late{3, "src", source};
  EXPECT_EQ(EINVAL, index_->CompleteSnapshot(Record("c3", "fork", 3), change, &late).code());

  // Deleting the source leaves the fork whole.
  ASSERT_TRUE(index_->DeleteSnapshot("src").ok());
  EXPECT_EQ(Content(1), index_->ChunkAt("fork", 0, 2)->value());
  // The child, deleted as the newest, is retired; the next snapshot absorbs
  // it, not the base.
  ASSERT_TRUE(index_->DeleteSnapshot("child").value().retired);
  std::vector<DeltaEntry> change3 = {{2, Content(5)}};
  ASSERT_TRUE(index_->CompleteSnapshot(Record("c3", "fork", 3), change3).ok());
  ASSERT_TRUE(index_->AbsorbRetired("fork").ok());
  EXPECT_EQ((std::vector<LineageMember>{{1, false, "src"}, {3, false, ""}}), *index_->ListLineage("fork"));
  EXPECT_EQ((std::vector<DeltaEntry>{{1, Content(4)}, {2, Content(5)}}), *index_->ChangedChunks("fork", 1, 3));
  auto audit = index_->AuditReferences();
  ASSERT_TRUE(audit.ok());
  EXPECT_TRUE(audit->problems.empty());
  // Once no snapshot of the fork is left and it will not grow, the base goes too.
  ASSERT_TRUE(index_->DeleteSnapshot("c3").value().retired);
  ASSERT_TRUE(index_->DropRetiredTip("fork").ok());
  EXPECT_TRUE(index_->ListLineage("fork")->empty());
  ASSERT_TRUE(index_->DropRetiredTip("orig").ok());  // the source, retired when deleted
  EXPECT_TRUE(index_->ListRefCounts()->empty());
}

// `store check` over a real service: clean after a snapshot; a reference
// count changed behind the index's back and a removed manifest are each
// reported, naming the object, and the check is not ok.
TEST(SnapshotStoreCheckTest, ReportsMiscountedReferencesAndMissingManifests) {
  TempDir dir;
  auto volumes = VolumeManager::Open(dir.path() + "/data");
  ASSERT_TRUE(volumes.ok()) << volumes.status().ToString();
  VolumeParams params;
  params.type = VolumeType::kGp3;
  params.size_bytes = kGiB;
  auto volume = (*volumes)->Create("v", params);
  ASSERT_TRUE(volume.ok()) << volume.status().ToString();
  {
    // Two chunks of the same content and one other: counts of 2 and 1.
    const std::string a = ebs::testing::RandomBytes(kDefaultChunkSize, 1);
    const std::string data = a + a + ebs::testing::RandomBytes(kDefaultChunkSize, 2);
    int fd = ::open((*volumes)->DataFilePath(volume->record.id).c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(static_cast<ssize_t>(data.size()), ::pwrite(fd, data.data(), data.size(), 0));
    ::close(fd);
  }
  const std::string store = dir.path() + "/store";
  std::string id;
  {
    auto service = SnapshotService::Open(store, volumes->get());
    ASSERT_TRUE(service.ok()) << service.status().ToString();
    auto snaps = (*service)->Create({"v"}, "");
    ASSERT_TRUE(snaps.ok()) << snaps.status().ToString();
    id = (*snaps)[0].id;
    auto check = (*service)->Check();
    ASSERT_TRUE(check.ok()) << check.status().ToString();
    EXPECT_TRUE((*check)["ok"].get<bool>()) << check->dump();
    EXPECT_EQ(3u, (*check)["reference_entries"].get<uint64_t>()) << check->dump();
  }
  // Every stored count one higher than the entries say, as after a lost
  // delete: gc would then keep garbage forever (one lower, delete data).
  std::vector<std::string> objects;
  {
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), store + "/index", &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
    std::vector<std::pair<std::string, uint64_t>> counts;
    for (it->Seek("r|"); it->Valid() && it->key().starts_with("r|"); it->Next()) {
      uint64_t n = 0;
      std::memcpy(&n, it->value().data(), 8);
      counts.emplace_back(it->key().ToString(), n);
      objects.push_back(ChunkKey(*ContentHash::FromBytes(it->key().ToStringView().substr(2))));
    }
    it.reset();
    ASSERT_EQ(2u, counts.size());
    for (auto& [key, n] : counts) {
      const uint64_t bumped = n + 1;
      ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), key, std::string(reinterpret_cast<const char*>(&bumped), 8)).ok());
    }
    ASSERT_TRUE(db->Close().ok());
  }
  ASSERT_TRUE(std::filesystem::remove(store + "/" + ManifestKey(id)));
  auto service = SnapshotService::Open(store, volumes->get());
  ASSERT_TRUE(service.ok()) << service.status().ToString();
  auto check = (*service)->Check();
  ASSERT_TRUE(check.ok()) << check.status().ToString();
  EXPECT_FALSE((*check)["ok"].get<bool>());
  std::map<std::string, std::string> problems;
  for (const auto& p : (*check)["problems"]) problems[p["object"].get<std::string>()] += p["error"].get<std::string>();
  ASSERT_EQ(3u, problems.size()) << check->dump();
  EXPECT_NE(std::string::npos, problems[ManifestKey(id)].find("missing")) << check->dump();
  std::set<std::string> counted;
  for (const auto& object : objects) counted.insert(problems[object]);
  EXPECT_EQ((std::set<std::string>{"reference count 2 but 1 index entries name it",
                                   "reference count 3 but 2 index entries name it"}),
            counted)
      << check->dump();
}

TEST_F(SnapshotIndexTest, InvalidLineageIsRefusedOnReadsToo) {
  EXPECT_EQ(EINVAL, index_->ChunkAt("a|b", 0, 1).status().code());
  EXPECT_EQ(EINVAL, index_->ChangedChunks("", 0, 1).status().code());
  EXPECT_EQ(EINVAL, index_->ListLineage("x/y").status().code());
  EXPECT_EQ(EINVAL, index_->DeleteSnapshotEntries("..", 1).status().code());
}

// A large commit is flushed to a table file when the index closes, so the
// next open has no log to replay: a snapshot of 1 M chunks left a 24 MB log,
// and the next command to open the index (a diff) took 8x as long replaying
// and flushing it. A small one stays in the log. Both read back.
TEST_F(SnapshotIndexTest, CloseFlushesALargeCommitAndLeavesASmallOneToTheLog) {
  const std::string path = dir_.path() + "/index";
  auto log_bytes = [&] {
    uint64_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator(path)) {
      if (e.path().extension() == ".log") n += e.file_size();
    }
    return n;
  };
  std::vector<DeltaEntry> small = {{1, Content(1)}};
  ASSERT_TRUE(index_->CompleteSnapshot(Record("snap-small", "lin", 1), small).ok());
  index_.reset();
  EXPECT_GT(log_bytes(), 0u) << "one record is left to the log";
  Reopen();
  std::vector<DeltaEntry> big;
  for (uint64_t i = 0; i < 100000; ++i) big.push_back({i, ContentHash::Of(&i, sizeof i)});
  ASSERT_TRUE(index_->CompleteSnapshot(Record("snap-big", "lin", 2), big).ok());
  index_.reset();
  EXPECT_EQ(0u, log_bytes()) << "100,000 entries are flushed at close, not left to the next open";
  Reopen();
  EXPECT_EQ(SnapshotState::kCompleted, index_->GetSnapshot("snap-small")->state);
  auto changed = index_->ChangedChunks("lin", 1, 2);
  ASSERT_TRUE(changed.ok());
  EXPECT_EQ(big.size(), changed->size());
  EXPECT_EQ(big.back().hash, changed->back().hash);
}

TEST_F(SnapshotIndexTest, SecondOpenIsBusy) {
  auto second = SnapshotIndex::Open(dir_.path() + "/index");
  EXPECT_EQ(EBUSY, second.status().code()) << second.status().ToString();
}

}  // namespace
}  // namespace ebs::snapshot
