// A set of a volume's chunks as a bitmap: what a snapshot's cut hands over
// (the chunks changed since the previous cut; engine/src/layers/change_tracker.h).
#pragma once

#include <cstdint>
#include <vector>

namespace ebs {

inline constexpr uint64_t kDefaultChangeChunkSize = 512 * 1024;

// A set of chunks as a bitmap: chunk i is bit (i % 64) of words[i / 64].
// Chunk i covers bytes [i * chunk_size, (i + 1) * chunk_size) of the volume.
struct ChangeSet {
  uint64_t generation = 0;  // the epoch these changes belong to
  uint64_t chunk_size = 0;
  uint64_t chunk_count = 0;  // chunks of the volume when the set was taken
  std::vector<uint64_t> words;

  bool Contains(uint64_t chunk) const {
    return chunk / 64 < words.size() && (words[chunk / 64] >> (chunk % 64)) & 1;
  }
  uint64_t Count() const;
  // The marked chunk indexes in ascending order. For a large set prefer
  // walking `words`: a fully changed 64 TiB volume has 128 M chunks.
  std::vector<uint64_t> Chunks() const;
};

}  // namespace ebs
