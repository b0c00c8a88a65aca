// Writes the seed corpora of the chunk-object and manifest fuzzers:
//   make_seeds DIR  ->  DIR/chunk/{zstd,raw}  DIR/manifest/{first,delta}
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "ebs/snapshot/chunk_codec.h"
#include "ebs/snapshot/manifest.h"

namespace fs = std::filesystem;
using namespace ebs::snapshot;

static void Write(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  fs::path dir = argv[1];
  std::string text;
  while (text.size() < 8192) text += "a compressible line of text for the seed corpus\n";
  std::string noise(4096, '\0');
  std::mt19937 rng(7);
  for (auto& c : noise) c = static_cast<char>(rng());
  Write(dir / "chunk" / "zstd", *EncodeChunk(text.data(), text.size()));
  Write(dir / "chunk" / "raw", *EncodeChunk(noise.data(), noise.size()));
  Manifest m;
  m.snapshot_id = "snap-0123456789abcdef0";
  m.volume_name = "vol0";
  m.volume_id = "vol-0123456789abcdef0";
  m.lineage_id = m.volume_id;
  m.sequence = 1;
  m.volume_size = 1ull << 30;
  m.created_at_ms = 1764000000000;
  m.description = "seed";
  m.delta = {{0, ContentHash::Of(text.data(), text.size())}, {7, ContentHash::Of(noise.data(), noise.size())}};
  Write(dir / "manifest" / "first", *EncodeManifest(m));
  m.sequence = 2;
  m.parent_snapshot_id = m.snapshot_id;
  m.snapshot_id = "snap-0123456789abcdef1";
  m.delta = {{7, ContentHash::ZeroChunk()}};
  Write(dir / "manifest" / "delta", *EncodeManifest(m));
  return 0;
}
