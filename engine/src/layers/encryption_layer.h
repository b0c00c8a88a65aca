// Encryption at rest in the volume I/O path: the layer just above the data
// file, so everything above it (change tracking, lazy loading, copy-on-write,
// the throttle, NBD) sees plaintext and the file holds only AES-256-XTS
// ciphertext (sector_cipher.h).
//
// Aligned requests (whole 4 KiB sectors) take the fast path: a write is
// encrypted into a scratch buffer from a per-thread pool (the caller's
// buffer is never changed), a read is decrypted in place when it completes.
// Requests of 128 KiB and more are encrypted and decrypted in pieces by the
// loop thread and the crypt pool's helpers together (crypt_pool.h).
// Unaligned requests read the sectors they touch: a read through a scratch
// buffer; a write, and the partial sectors of a write-zeroes, by
// read-modify-write done synchronously under the layer's lock, so two
// unaligned writes into one sector never lose each other's bytes. That path
// is slow by design; clients that follow the advertised 4 KiB preferred
// block size do not take it. A trim drops its partial sectors (the spec lets
// a trimmed range read as anything; punching part of a sector would turn
// the rest of it into garbage) and trims the whole ones.
#pragma once

#include <memory>
#include <mutex>

#include "ebs/engine/block_device.h"
#include "keys/crypt_pool.h"
#include "keys/sector_cipher.h"

namespace ebs {

class EncryptionLayer final : public DeviceLayer {
 public:
  // `fd`: the data file beneath (for read-modify-write), open while the
  // layer lives.
  EncryptionLayer(std::shared_ptr<BlockDevice> next, std::shared_ptr<SectorCipher> cipher, int fd)
      : DeviceLayer(std::move(next)), cipher_(std::move(cipher)), fd_(fd) {}

  void Submit(EventLoop& loop, IoRequest* req) override;
  const std::shared_ptr<SectorCipher>& cipher() const { return cipher_; }

 private:
  // Per request (IoRequest::LayerState): the completion this layer replaced
  // and, while a buffer of ciphertext or an aligned range stands in for the
  // caller's, the caller's buffer and range.
  struct Saved {
    IoCallback callback;
    void* owner;
    char* buf;
    uint64_t offset;
    uint64_t length;
  };
  void SubmitWrite(EventLoop& loop, IoRequest* req);
  void SubmitUnalignedRead(EventLoop& loop, IoRequest* req);
  void SubmitZeroOrTrim(EventLoop& loop, IoRequest* req);
  // Read-modify-write of [offset, offset + len) within the sectors it
  // touches: `data` (or zeros when null) replaces those bytes.
  Status Patch(uint64_t offset, const char* data, uint64_t len, bool fua);
  // Sends `req` down; Done undoes what Submit changed and decrypts reads.
  void PassDown(EventLoop& loop, IoRequest* req);
  static void Done(IoRequest* req, int result);
  // The crypt pool's completions (crypt_pool.h): a write's ciphertext is
  // ready (inside Submit, or later on the loop), a read's plaintext is.
  static void Encrypted(CryptPool::Job* job, bool inside_submit);
  static void EncryptedLater(CryptPool::Job* job);
  static void Decrypted(CryptPool::Job* job);
  // Puts the caller's buffer and range back and completes (`layer`: this layer's index).
  static void Finished(IoRequest* req, uint8_t layer, int result);
  static void FinishLater(EventLoop& loop, IoRequest* req, int result);

  const std::shared_ptr<SectorCipher> cipher_;
  const int fd_;
  std::mutex rmw_mu_;  // one read-modify-write at a time
};

}  // namespace ebs
