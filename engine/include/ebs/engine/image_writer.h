// Writes an image into a file once, chunk by chunk, outside the request
// path: an eager restore into a new volume's data file, or a snapshot
// exported to a raw file. Direct I/O where the file system allows it (the
// whole image is written once: copying it through the page cache, then
// writing that back, costs more than decoding it), buffered writes in
// kDataWritePiece pieces otherwise. With a cipher (an encrypted volume), the
// file receives the ciphertext: the one place besides the volume's own
// layers where a volume's bytes are encrypted.
//
// Thread-safe: Write may run on several threads at once for different ranges.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "ebs/engine/status.h"

namespace ebs {

class SectorCipher;

class ImageWriter {
 public:
  // Takes ownership of `fd` (open for writing). `what` names the file in errors.
  ImageWriter(int fd, std::shared_ptr<SectorCipher> cipher, std::string what);
  ~ImageWriter();
  ImageWriter(const ImageWriter&) = delete;
  ImageWriter& operator=(const ImageWriter&) = delete;

  // Writes `n` bytes of plaintext at `buf` to `offset` (4 KiB aligned). `buf`
  // is kDirectIoAlign-aligned (AlignedBuffer) and holds `capacity` >= n bytes,
  // rounded up to whole sectors: it may be encrypted or padded in place.
  Status Write(uint64_t offset, char* buf, size_t n, size_t capacity);
  // Makes everything written durable (fdatasync).
  Status Sync();
  // Whether writes still go direct (the file system took them), for tests.
  bool direct() const;

 private:
  const int fd_;
  int direct_fd_ = -1;  // a second descriptor with O_DIRECT, or -1
  const std::shared_ptr<SectorCipher> cipher_;
  const std::string what_;
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ebs
