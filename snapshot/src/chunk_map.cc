#include "ebs/snapshot/chunk_map.h"

#include <xxhash.h>

#include <bit>

namespace ebs::snapshot {

Status ValidateChunkSize(uint64_t chunk_size) {
  if (chunk_size < kMinChunkSize || chunk_size > kMaxChunkSize || !std::has_single_bit(chunk_size)) {
    return Status::InvalidArgument("chunk size " + std::to_string(chunk_size) +
                                   " must be a power of two from 64 KiB to 4 MiB");
  }
  return Status::Ok();
}

Status ValidateDelta(std::span<const DeltaEntry> delta, uint64_t chunk_count) {
  for (size_t i = 0; i < delta.size(); ++i) {
    if (delta[i].chunk >= chunk_count) {
      return Status::InvalidArgument("delta entry " + std::to_string(i) + ": chunk " +
                                     std::to_string(delta[i].chunk) + " is beyond the volume's " +
                                     std::to_string(chunk_count) + " chunks");
    }
    if (i > 0 && delta[i].chunk <= delta[i - 1].chunk) {
      return Status::InvalidArgument("delta entry " + std::to_string(i) + ": chunk " +
                                     std::to_string(delta[i].chunk) +
                                     " is not after the previous entry (entries must be sorted and unique)");
    }
  }
  return Status::Ok();
}

uint64_t MapDigest::Term(uint64_t chunk, const ContentHash& hash) {
  if (hash.IsZeroChunk()) return 0;
  // Seeding with the index binds the hash to its position, so moving content
  // between chunks changes the digest.
  return XXH3_64bits_withSeed(hash.bytes.data(), hash.bytes.size(), chunk);
}

}  // namespace ebs::snapshot
