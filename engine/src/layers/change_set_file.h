// The change tracking file format: a header page (magic "EBSCHANG",
// version, chunk size, chunk count, generation, flags, FNV-1a checksum), then
// a little-endian bitmap of one bit per chunk, page by page. A tracker keeps
// its current set in `base` and each cut it has not yet forgotten in
// `base.<generation>`.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <string>
#include <vector>

#include "ebs/engine/status.h"

namespace ebs::change_file {

static_assert(std::endian::native == std::endian::little, "the bitmap file is little-endian");

constexpr uint64_t kHeaderBytes = 4096;  // the bitmap starts on the second page
constexpr uint64_t kPageBytes = 4096;
constexpr uint64_t kWordsPerPage = kPageBytes / 8;
constexpr uint64_t kFlagCutSet = 1;  // the file is a cut set, not the current set

inline uint64_t WordsFor(uint64_t chunks) { return (chunks + 63) / 64; }
inline uint64_t PagesFor(uint64_t words) { return (words + kWordsPerPage - 1) / kWordsPerPage; }
inline uint64_t FileBytes(uint64_t chunks) { return kHeaderBytes + PagesFor(WordsFor(chunks)) * kPageBytes; }
inline uint64_t ChunksFor(uint64_t bytes, uint64_t chunk_size) { return (bytes + chunk_size - 1) / chunk_size; }

// Bits [first, last] (chunk indexes) that fall in word `w`.
inline uint64_t MaskFor(uint64_t w, uint64_t first, uint64_t last) {
  const unsigned lo = w == first / 64 ? first % 64 : 0;
  const unsigned hi = w == last / 64 ? last % 64 : 63;
  return (~uint64_t{0} >> (63 - hi)) & (~uint64_t{0} << lo);
}

// The bits of word `w` that are real chunks (the last word may be partial).
inline uint64_t ValidMask(uint64_t w, uint64_t chunk_count) {
  if ((w + 1) * 64 <= chunk_count) return ~uint64_t{0};
  if (w * 64 >= chunk_count) return 0;
  return MaskFor(w, w * 64, chunk_count - 1);
}

// A tracking file's content: the current set or a cut set.
struct SetFile {
  uint64_t generation = 0;
  uint64_t chunk_size = 0;
  uint64_t chunk_count = 0;
  uint64_t flags = 0;
  std::vector<uint64_t> words;
};

// What a file in the tracking file's directory is to the tracker of `base`:
// `base` itself, a cut set `base.<generation>`, a temporary file
// (`base.tmp`, `base.<generation>.tmp`: an unfinished atomic write), or not
// ours.
enum class FileRole { kOther, kMain, kCut, kTemporary };

// Calls set_word(w, mask) for the words of a bitmap of `dst_count` chunks of
// `dst_cs` bytes that must be marked to cover every chunk marked in `src`.
template <typename F>
void ForEachCoveringWord(const SetFile& src, uint64_t dst_cs, uint64_t dst_count, F set_word) {
  if (src.chunk_size == dst_cs) {
    const uint64_t n = std::min<uint64_t>(src.words.size(), WordsFor(dst_count));
    for (uint64_t w = 0; w < n; ++w) {
      const uint64_t mask = src.words[w] & ValidMask(w, dst_count);
      if (mask != 0) set_word(w, mask);
    }
    return;
  }
  // Another chunk size: each old chunk marks every new chunk it overlaps.
  for (uint64_t w = 0; w < src.words.size(); ++w) {
    for (uint64_t bits = src.words[w]; bits != 0; bits &= bits - 1) {
      const uint64_t chunk = w * 64 + static_cast<uint64_t>(std::countr_zero(bits));
      const uint64_t first = chunk * src.chunk_size / dst_cs;
      if (first >= dst_count) continue;
      const uint64_t last = std::min((chunk + 1) * src.chunk_size - 1, dst_count * dst_cs - 1) / dst_cs;
      for (uint64_t dw = first / 64; dw <= last / 64; ++dw) set_word(dw, MaskFor(dw, first, last));
    }
  }
}

// Chunks of `dst_cs` bytes needed to cover `count` chunks of `cs` bytes.
inline uint64_t CoveringChunks(uint64_t count, uint64_t cs, uint64_t dst_cs) { return ChunksFor(count * cs, dst_cs); }

// Encodes the header page (magic, version, sizes, generation, flags,
// checksum) of `s` into `page` (kHeaderBytes).
void EncodeHeader(const SetFile& s, char* page);

// Reads and checks a tracking file; a damaged one is EBADMSG naming `path`.
Result<SetFile> ReadSetFile(int fd, const std::string& path);
Result<SetFile> ReadSetFile(const std::string& path);

// Writes `s` to `path` atomically: a temporary file, synced, then renamed
// over `path` and the directory synced. Pages of zeros are left as holes.
Status WriteSetFile(const std::string& path, const SetFile& s);

FileRole RoleOf(const std::string& base, const std::string& name);

// The directory holding `path` ("." for a bare name).
std::string DirOf(const std::string& path);

}  // namespace ebs::change_file
