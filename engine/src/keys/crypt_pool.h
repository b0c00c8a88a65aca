// Large sector encryptions and decryptions shared between the event loop
// thread that asks for one and a few helper threads.
//
// AES-XTS costs about 180 us per MiB on one core here, as much as the rest
// of a 1 MiB request; done on the loop thread alone it halves what an
// encrypted volume delivers to one connection while the other core sits
// partly idle. A job is cut into pieces: the loop thread works through them
// itself and helpers take what it has not reached, so the work spreads over
// the cores that are free and the loop thread never waits for a helper: once
// it has run out of pieces to take, it goes on with other requests, and the
// last helper to finish posts the job's completion back to its loop.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "ebs/engine/event_loop.h"
#include "keys/sector_cipher.h"

namespace ebs {

class CryptPool {
 public:
  // Jobs shorter than this run on the calling thread alone: handing a piece
  // over costs a wake-up, more than encrypting 64 KiB.
  static constexpr uint64_t kParallelMin = 128 << 10;
  static constexpr uint64_t kMinPiece = 64 << 10;
  static constexpr int kMaxPieces = 8;

  struct Job;
  struct Piece {
    Job* job = nullptr;
    uint64_t begin = 0, end = 0;  // byte range within the job
    Piece* prev = nullptr;        // the pool's queue, under mu_
    Piece* next = nullptr;
    bool queued = false;
  };
  // One request's work. The caller fills the first block, keeps the job
  // alive until it completes, and owns it again then.
  struct Job {
    const SectorCipher* cipher = nullptr;
    bool encrypt = false;
    uint64_t offset = 0;  // volume offset of in[0]; sector-aligned, as is len
    const char* in = nullptr;
    char* out = nullptr;  // may be `in`
    uint64_t len = 0;
    EventLoop* loop = nullptr;      // where `done` runs when a helper finishes last
    void (*done)(Job*) = nullptr;
    void* ctx = nullptr;            // the caller's
    void* owner = nullptr;          // the caller's
    int64_t result = 0;             // the caller's
    // Set by the pool.
    std::atomic<bool> failed{false};
    std::atomic<int> left{0};
    Piece pieces[kMaxPieces];
  };

  // The process's pool, started on first use with one helper per core
  // beyond the first (at least one).
  static CryptPool& Shared();
  explicit CryptPool(int helpers);
  ~CryptPool();
  CryptPool(const CryptPool&) = delete;
  CryptPool& operator=(const CryptPool&) = delete;

  // Encrypts or decrypts job's range; `failed` says whether the cipher
  // failed. True: finished on the calling thread, which goes on with it.
  // False: helpers still work on it and the last of them posts job->done to
  // job->loop (never called from inside Run).
  bool Run(Job* job);

 private:
  void RunPiece(Piece* p);
  void Unlink(Piece* p);  // REQUIRES: mu_
  void HelperMain();

  std::mutex mu_;
  std::condition_variable cv_;
  Piece* head_ = nullptr;  // under mu_
  Piece* tail_ = nullptr;  // under mu_
  bool stop_ = false;      // under mu_
  std::vector<std::thread> helpers_;
};

}  // namespace ebs
