// The lineage rules (snapshot/src/lineage.h) on their own: a real RocksDB
// index in a temporary directory, an in-memory object store, and snapshots
// committed straight into both (manifest first, as the creator does). What
// deleting, folding and dropping leave in the index and the store, and that
// the store stays self-describing: a manifest for every live snapshot, each
// a delta against its live predecessor.
#include "lineage.h"

#include <gtest/gtest.h>

#include <map>

#include "ebs/snapshot/memory_object_store.h"
#include "ebs/snapshot/chunk_map.h"
#include "records.h"
#include "test_util.h"

namespace ebs::snapshot {
namespace {

using ebs::testing::TempDir;

constexpr uint64_t kVolumeSize = 64 * kDefaultChunkSize;

ContentHash HashOf(const std::string& content) { return ContentHash::Of(content.data(), content.size()); }

class LineageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto volumes = VolumeManager::Open(dir_.path() + "/data");
    ASSERT_TRUE(volumes.ok()) << volumes.status().message();
    volumes_ = std::move(*volumes);
    VolumeParams p;
    p.type = VolumeType::kGp3;
    p.size_bytes = kGiB;
    auto v = volumes_->Create("vol", p);
    ASSERT_TRUE(v.ok());
    live_lineage_ = v->record.id;
    ctx_.volumes = volumes_.get();
    ctx_.root = dir_.path();
    ctx_.store_id = "store-test";
    ctx_.store = store_;
    auto index = SnapshotIndex::Open(dir_.path() + "/index");
    ASSERT_TRUE(index.ok()) << index.status().message();
    ctx_.index = std::move(*index);
  }

  // Commits the next snapshot of `lineage` whose whole map is `map` (chunk ->
  // content name); objects for new contents are put first.
  std::string Commit(const std::string& lineage, const std::map<uint64_t, std::string>& map) {
    auto members = ctx_.index->ListLineage(lineage);
    EXPECT_TRUE(members.ok());
    SnapshotRecord rec;
    rec.id = NewSnapshotId();
    rec.volume_name = "vol";
    rec.volume_id = lineage;
    rec.lineage = lineage;
    rec.seq = members->empty() ? 1 : members->back().seq + 1;
    rec.volume_size = kVolumeSize;
    rec.chunk_size = kDefaultChunkSize;
    auto prev = ctx_.Predecessor(lineage, rec.seq);
    EXPECT_TRUE(prev.ok());
    rec.parent_id = prev->second;
    std::map<uint64_t, ContentHash> before;
    if (!members->empty()) {
      auto m = ctx_.index->ChangedChunks(lineage, 0, members->back().seq);
      for (const auto& e : *m) {
        if (!e.hash.IsZeroChunk()) before[e.chunk] = e.hash;
      }
    }
    std::vector<DeltaEntry> delta;
    MapDigest digest;
    for (const auto& [chunk, content] : map) {
      const ContentHash h = HashOf(content);
      EXPECT_TRUE(store_->Put(ChunkKey(h), content).ok());
      digest.Add(chunk, h);
      auto it = before.find(chunk);
      if (it == before.end() || !(it->second == h)) delta.push_back({chunk, h});
    }
    for (const auto& [chunk, h] : before) {
      if (!map.count(chunk)) delta.push_back({chunk, ContentHash::ZeroChunk()});
    }
    std::sort(delta.begin(), delta.end(), [](const DeltaEntry& a, const DeltaEntry& b) { return a.chunk < b.chunk; });
    auto encoded = EncodeManifest(ManifestOf(rec, delta, digest.value()));
    EXPECT_TRUE(encoded.ok());
    EXPECT_TRUE(store_->Put(ManifestKey(rec.id), *encoded).ok());
    rec.state = SnapshotState::kCompleted;
    EXPECT_TRUE(ctx_.index->CompleteSnapshot(rec, delta).ok());
    EXPECT_TRUE(lineages_.AbsorbRetired(rec).ok());
    return rec.id;
  }

  bool HasObject(const std::string& content) { return *store_->Exists(ChunkKey(HashOf(content))); }
  bool HasKey(const std::string& key) { return *store_->Exists(key); }
  Manifest ManifestOfId(const std::string& id) {
    auto bytes = store_->Get(ManifestKey(id));
    EXPECT_TRUE(bytes.ok()) << "no manifest for " << id;
    auto m = DecodeManifest(bytes.ok() ? *bytes : std::string());
    EXPECT_TRUE(m.ok());
    return m.ok() ? *m : Manifest{};
  }
  // The whole map of snapshot `id` as its manifest chain in the store says.
  std::map<uint64_t, ContentHash> MapFromManifests(const std::string& id) {
    std::vector<Manifest> chain;
    for (std::string at = id; !at.empty();) {
      chain.push_back(ManifestOfId(at));
      at = chain.back().parent_snapshot_id;
    }
    std::map<uint64_t, ContentHash> map;
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      for (const auto& e : it->delta) {
        if (e.hash.IsZeroChunk()) {
          map.erase(e.chunk);
        } else {
          map[e.chunk] = e.hash;
        }
      }
    }
    return map;
  }
  std::map<uint64_t, ContentHash> Expect(const std::map<uint64_t, std::string>& m) {
    std::map<uint64_t, ContentHash> out;
    for (const auto& [c, content] : m) out[c] = HashOf(content);
    return out;
  }

  TempDir dir_;
  std::unique_ptr<VolumeManager> volumes_;
  std::shared_ptr<MemoryObjectStore> store_ = std::make_shared<MemoryObjectStore>();
  StoreContext ctx_;
  Lineages lineages_{ctx_};
  std::string live_lineage_;
};

TEST_F(LineageTest, DeletingAMiddleSnapshotFoldsItIntoTheNextAndKeepsTheStoreSelfDescribing) {
  const std::string& L = live_lineage_;
  const std::string s1 = Commit(L, {{0, "a"}, {1, "b"}});
  const std::string s2 = Commit(L, {{0, "a2"}, {1, "b"}, {2, "c"}});
  const std::string s3 = Commit(L, {{0, "a3"}, {2, "c"}});
  auto out = lineages_.Delete(s2);
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_FALSE(HasObject("a2")) << "only s2 had a2";
  EXPECT_TRUE(HasObject("a") && HasObject("b") && HasObject("c") && HasObject("a3"));
  EXPECT_EQ(1u, (*out)["objects_freed"].get<uint64_t>());
  EXPECT_FALSE(HasKey(ManifestKey(s2)));
  EXPECT_FALSE(HasKey(TombstoneKey(s2)));
  EXPECT_EQ(s1, ManifestOfId(s3).parent_snapshot_id) << "s3's manifest now a delta against s1";
  EXPECT_EQ(Expect({{0, "a3"}, {2, "c"}}), MapFromManifests(s3));
  EXPECT_EQ(Expect({{0, "a"}, {1, "b"}}), MapFromManifests(s1));
  auto r3 = ctx_.index->GetSnapshot(s3);
  ASSERT_TRUE(r3.ok());
  EXPECT_EQ(s1, r3->parent_id);
  EXPECT_EQ(2 * kDefaultChunkSize, r3->changed_bytes) << "a3 and c changed since s1 (b became zero)";
}

TEST_F(LineageTest, TheNewestSnapshotOfALiveVolumeStaysRetiredUntilTheNextOneFoldsItIn) {
  const std::string& L = live_lineage_;
  const std::string s1 = Commit(L, {{0, "a"}});
  const std::string s2 = Commit(L, {{0, "a"}, {1, "only-s2"}, {2, "kept"}});
  ASSERT_TRUE(lineages_.Delete(s2).ok());
  // Retired: the base of the next snapshot, with its objects and manifest.
  EXPECT_TRUE(HasObject("only-s2"));
  EXPECT_TRUE(HasKey(ManifestKey(s2)) && HasKey(TombstoneKey(s2)));
  EXPECT_EQ(ENOENT, ctx_.index->GetSnapshot(s2).status().code());
  // The next snapshot is a delta against the retired one, then folds it in.
  const std::string s3 = Commit(L, {{0, "a"}, {2, "kept"}, {3, "d"}});
  EXPECT_FALSE(HasObject("only-s2"));
  EXPECT_TRUE(HasObject("kept"));
  EXPECT_FALSE(HasKey(ManifestKey(s2)) || HasKey(TombstoneKey(s2)));
  EXPECT_EQ(s1, ManifestOfId(s3).parent_snapshot_id);
  EXPECT_EQ(Expect({{0, "a"}, {2, "kept"}, {3, "d"}}), MapFromManifests(s3));
}

TEST_F(LineageTest, TheNewestSnapshotOfAVolumeThatIsGoneIsFreedWithEverythingItKept) {
  const std::string L = "vol-0000000000000dead";  // no such volume
  const std::string s1 = Commit(L, {{0, "x"}, {1, "y"}});
  const std::string s2 = Commit(L, {{0, "x2"}, {1, "y"}});
  ASSERT_TRUE(lineages_.Delete(s1).ok());
  EXPECT_FALSE(HasObject("x"));
  auto out = lineages_.Delete(s2);
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_FALSE(HasObject("x2") || HasObject("y"));
  EXPECT_EQ(0u, store_->List("chunks/")->size());
  EXPECT_EQ(0u, store_->List("snapshots/")->size()) << "no manifest or tombstone left";
  EXPECT_TRUE(ctx_.index->ListLineage(L)->empty());
}

TEST_F(LineageTest, ManifestsAnInterruptedDeletionLeftAreRemovedAfterTheirAbsorberIsRewritten) {
  const std::string& L = live_lineage_;
  const std::string s1 = Commit(L, {{0, "a"}});
  const std::string s2 = Commit(L, {{0, "b"}});
  const std::string s3 = Commit(L, {{0, "b"}, {1, "c"}});
  // What a crash after the index dropped s2, before its manifest went, leaves:
  // the tombstone, s2's manifest, and s3's manifest still a delta against s2.
  ASSERT_TRUE(store_->Put(TombstoneKey(s2), s2).ok());
  ASSERT_TRUE(ctx_.index->DeleteSnapshot(s2).ok());
  EXPECT_EQ(s2, ManifestOfId(s3).parent_snapshot_id);
  ASSERT_TRUE(lineages_.RemoveSupersededManifests("").ok());
  EXPECT_FALSE(HasKey(ManifestKey(s2)) || HasKey(TombstoneKey(s2)));
  EXPECT_EQ(s1, ManifestOfId(s3).parent_snapshot_id);
  EXPECT_EQ(Expect({{0, "b"}, {1, "c"}}), MapFromManifests(s3));
}

TEST_F(LineageTest, DiffListsChangedChunksAndThoseThatBecameZero) {
  const std::string& L = live_lineage_;
  const std::string s1 = Commit(L, {{0, "a"}, {1, "b"}, {5, "e"}});
  const std::string s2 = Commit(L, {{0, "a"}, {1, "b2"}, {6, "f"}});
  auto d = lineages_.Diff(s1, s2, /*with_ranges=*/true);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ((std::vector<uint64_t>{1, 5, 6}), (*d)["chunks"].get<std::vector<uint64_t>>());
  EXPECT_EQ((std::vector<uint64_t>{5}), (*d)["zeroed_chunks"].get<std::vector<uint64_t>>());
  EXPECT_EQ((std::vector<uint64_t>{kDefaultChunkSize, 5 * kDefaultChunkSize}),
            (*d)["ranges"]["offsets"].get<std::vector<uint64_t>>());
  EXPECT_EQ((std::vector<uint64_t>{kDefaultChunkSize, 2 * kDefaultChunkSize}),
            (*d)["ranges"]["lengths"].get<std::vector<uint64_t>>());
  EXPECT_EQ(ENOENT, lineages_.Diff(s1, "snap-00000000000000000", false).status().code());
}

}  // namespace
}  // namespace ebs::snapshot
