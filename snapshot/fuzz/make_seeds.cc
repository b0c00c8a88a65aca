// Writes the seed corpora of the chunk-object and manifest fuzzers:
//   make_seeds DIR  ->  DIR/chunk/{zstd,raw,zstd_encrypted,raw_encrypted}
//                       DIR/manifest/{first,delta,first_encrypted,delta_encrypted}
// The encrypted ones are sealed with the fuzzers' fixed key (fuzz_key.h).
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "ebs/snapshot/chunk_codec.h"
#include "ebs/snapshot/manifest.h"
#include "fuzz_key.h"

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
  const ChunkCrypto& crypto = fuzz::Crypto();
  ChunkCodec codec;
  std::string object;
  ContentHash text_address, noise_address;
  if (!codec.Encode(text.data(), text.size(), &object, &text_address, &crypto).ok()) return 1;
  Write(dir / "chunk" / "zstd_encrypted", object);
  if (!codec.Encode(noise.data(), noise.size(), &object, &noise_address, &crypto).ok()) return 1;
  Write(dir / "chunk" / "raw_encrypted", object);
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

  // The same chain, as an encrypted volume's: keyed addresses, a MAC.
  m.key_name = crypto.key_name();
  m.key_id = crypto.key_id();
  m.sequence = 1;
  m.snapshot_id = "snap-0123456789abcdef2";
  m.parent_snapshot_id.clear();
  m.delta = {{0, text_address}, {7, noise_address}};
  Write(dir / "manifest" / "first_encrypted", *EncodeManifest(m, &crypto));
  m.sequence = 2;
  m.parent_snapshot_id = m.snapshot_id;
  m.snapshot_id = "snap-0123456789abcdef3";
  m.delta = {{7, ContentHash::ZeroChunk()}};
  Write(dir / "manifest" / "delta_encrypted", *EncodeManifest(m, &crypto));
  return 0;
}
