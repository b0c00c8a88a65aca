// Micro-benchmarks of the snapshot hot paths: content hashing, chunk encode
// (hash + zstd + checksum) and decode (checksum + zstd + hash check) of a
// 512 KiB chunk, and the RocksDB index: one chunk lookup and the diff scan
// of a million changed chunks. Run: build/bin/micro_bench --benchmark_filter=Snapshot
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "ebs/snapshot/chunk_codec.h"
#include "ebs/snapshot/content_hash.h"
#include "ebs/snapshot/snapshot_index.h"

namespace ebs::snapshot {
namespace {

constexpr size_t kChunk = 512 * 1024;

// Random bytes, or text-like: lines of Zipf-distributed made-up words over a
// 30,000-word vocabulary (zstd compresses it about 2.5x, like the text
// quarter of bench/run's snapshot image).
std::string ChunkData(bool text) {
  std::string s(kChunk, '\0');
  std::mt19937_64 rng(42);
  if (!text) {
    for (size_t i = 0; i + 8 <= s.size(); i += 8) {
      uint64_t v = rng();
      std::memcpy(s.data() + i, &v, 8);
    }
    return s;
  }
  const std::string letters = "etaoinshrdlcumwfgypbvkjxqz";
  std::discrete_distribution<int> letter({12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8,
                                          2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07});
  std::vector<std::string> vocab(30000);
  std::vector<double> weights(vocab.size());
  for (size_t w = 0; w < vocab.size(); ++w) {
    for (size_t n = 2 + rng() % 9; n > 0; --n) vocab[w] += letters[static_cast<size_t>(letter(rng))];
    weights[w] = 1.0 / static_cast<double>(w + 1);
  }
  std::discrete_distribution<size_t> word(weights.begin(), weights.end());
  s.clear();
  while (s.size() < kChunk) {
    for (size_t n = 4 + rng() % 15; n > 0; --n) s += vocab[word(rng)] + (n > 1 ? " " : ".\n");
  }
  s.resize(kChunk);
  return s;
}

void BM_SnapshotContentHash512K(benchmark::State& state) {
  std::string data = ChunkData(false);
  for (auto _ : state) benchmark::DoNotOptimize(ContentHash::Of(data.data(), data.size()));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kChunk));
}
BENCHMARK(BM_SnapshotContentHash512K);

// Args: data (0 random, stored raw; 1 text, zstd), zstd level.
void BM_SnapshotChunkEncode512K(benchmark::State& state) {
  std::string data = ChunkData(state.range(0) == 1);
  ChunkCodec codec(static_cast<int>(state.range(1)));
  std::string object;
  for (auto _ : state) {
    Status s = codec.Encode(data.data(), data.size(), &object);
    if (!s.ok()) state.SkipWithError(s.message().c_str());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kChunk));
  state.counters["stored_ratio"] = static_cast<double>(object.size()) / kChunk;
}
BENCHMARK(BM_SnapshotChunkEncode512K)
    ->Args({0, kDefaultCompressionLevel})
    ->Args({1, 1})
    ->Args({1, 2})
    ->Args({1, 3});

void BM_SnapshotChunkDecode512K(benchmark::State& state) {
  std::string data = ChunkData(state.range(0) == 1);
  ChunkCodec codec;
  std::string object, out;
  ContentHash hash;
  if (!codec.Encode(data.data(), data.size(), &object, &hash).ok()) state.SkipWithError("encode failed");
  for (auto _ : state) {
    Status s = codec.Decode(object, hash, &out);
    if (!s.ok()) state.SkipWithError(s.message().c_str());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kChunk));
}
BENCHMARK(BM_SnapshotChunkDecode512K)->Arg(0)->Arg(1);

// One index shared by the index benchmarks: lineage "L", seq 1 changes
// every other chunk of 2 M (a million entries), seq 2 a thousand of them.
constexpr uint64_t kIndexEntries = 1'000'000;

class BenchIndex {
 public:
  static BenchIndex* Get() {
    static BenchIndex* index = new BenchIndex();
    return index->db ? index : nullptr;
  }
  std::unique_ptr<SnapshotIndex> db;

 private:
  BenchIndex() {
    char tmpl[] = "/tmp/ebs-micro-index-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return;
    dir_ = tmpl;
    auto opened = SnapshotIndex::Open(dir_);
    if (!opened.ok()) return;
    std::vector<DeltaEntry> delta(kIndexEntries);
    for (uint64_t i = 0; i < kIndexEntries; ++i) {
      uint64_t v = i * 2;
      delta[i].chunk = v;
      delta[i].hash = ContentHash::Of(&v, sizeof v);
    }
    if (!(*opened)->CommitDelta("L", 1, delta).ok()) return;
    delta.resize(1000);
    for (auto& e : delta) e.hash = ContentHash::Of(&e, sizeof e);
    if (!(*opened)->CommitDelta("L", 2, delta).ok()) return;
    db = std::move(*opened);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(Get()->dir_, ec);
    });
  }
  std::string dir_;
};

void BM_SnapshotIndexChunkAt(benchmark::State& state) {
  BenchIndex* index = BenchIndex::Get();
  if (index == nullptr) return state.SkipWithError("cannot build the index");
  uint64_t i = 0;
  for (auto _ : state) {
    i = (i + 7919) % (2 * kIndexEntries);
    auto r = index->db->ChunkAt("L", i, 2);
    if (!r.ok()) state.SkipWithError(r.status().message().c_str());
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_SnapshotIndexChunkAt);

// Arg 1: the diff of the million-entry snapshot (from 0); arg 2: the diff of
// the thousand-entry one (from 1). Time per diff; items = chunks listed.
void BM_SnapshotIndexDiffScan(benchmark::State& state) {
  BenchIndex* index = BenchIndex::Get();
  if (index == nullptr) return state.SkipWithError("cannot build the index");
  const uint64_t to = static_cast<uint64_t>(state.range(0));
  size_t listed = 0;
  for (auto _ : state) {
    auto r = index->db->ChangedChunks("L", to - 1, to);
    if (!r.ok()) return state.SkipWithError(r.status().message().c_str());
    listed += r->size();
  }
  state.SetItemsProcessed(static_cast<int64_t>(listed));
}
BENCHMARK(BM_SnapshotIndexDiffScan)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace ebs::snapshot
