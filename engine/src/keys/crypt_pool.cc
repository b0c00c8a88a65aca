#include "keys/crypt_pool.h"

#include <pthread.h>

#include <algorithm>

namespace ebs {

CryptPool& CryptPool::Shared() {
  static CryptPool pool(std::max(1, static_cast<int>(std::thread::hardware_concurrency()) - 1));
  return pool;
}

CryptPool::CryptPool(int helpers) {
  for (int i = 0; i < helpers; ++i) {
    helpers_.emplace_back([this] { HelperMain(); });
    pthread_setname_np(helpers_.back().native_handle(), "ebs-crypt");
  }
}

CryptPool::~CryptPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : helpers_) t.join();
}

void CryptPool::RunPiece(Piece* p) {
  Job* j = p->job;
  Status st = j->encrypt ? j->cipher->Encrypt(j->offset + p->begin, j->in + p->begin, j->out + p->begin, p->end - p->begin)
                         : j->cipher->Decrypt(j->offset + p->begin, j->in + p->begin, j->out + p->begin, p->end - p->begin);
  if (!st.ok()) j->failed.store(true, std::memory_order_relaxed);
}

void CryptPool::Unlink(Piece* p) {
  (p->prev ? p->prev->next : head_) = p->next;
  (p->next ? p->next->prev : tail_) = p->prev;
  p->prev = p->next = nullptr;
  p->queued = false;
}

bool CryptPool::Run(Job* job) {
  job->failed.store(false, std::memory_order_relaxed);
  int n = 1;
  if (job->len >= kParallelMin && !helpers_.empty()) {
    n = static_cast<int>(std::min<uint64_t>(kMaxPieces, job->len / kMinPiece));
  }
  // Pieces of whole sectors, the last one taking the rest.
  const uint64_t sector = SectorCipher::kSectorSize;
  const uint64_t step = (job->len / static_cast<uint64_t>(n) + sector - 1) / sector * sector;
  int used = 0;
  for (uint64_t at = 0; at < job->len; at += step) {
    Piece& p = job->pieces[used++];
    p.job = job;
    p.begin = at;
    p.end = std::min(job->len, at + step);
  }
  if (used <= 1) {
    if (used == 1) RunPiece(&job->pieces[0]);
    return true;
  }
  job->left.store(used, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int i = 1; i < used; ++i) {
      Piece* p = &job->pieces[i];
      p->queued = true;
      p->prev = tail_;
      p->next = nullptr;
      (tail_ ? tail_->next : head_) = p;
      tail_ = p;
    }
  }
  if (used - 1 >= static_cast<int>(helpers_.size())) {
    cv_.notify_all();
  } else {
    for (int i = 1; i < used; ++i) cv_.notify_one();
  }
  // This thread takes the first piece, then whatever no helper has taken.
  RunPiece(&job->pieces[0]);
  int mine = 1;
  for (int i = 1; i < used; ++i) {
    Piece* p = &job->pieces[i];
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!p->queued) continue;  // a helper has it
      Unlink(p);
    }
    RunPiece(p);
    ++mine;
  }
  // The last one done finishes the job: here, or a helper, which posts it.
  return job->left.fetch_sub(mine, std::memory_order_acq_rel) == mine;
}

void CryptPool::HelperMain() {
  for (;;) {
    Piece* p;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stop_ || head_ != nullptr; });
      if (head_ == nullptr) return;  // stopping, nothing left
      p = head_;
      Unlink(p);
    }
    Job* job = p->job;
    RunPiece(p);
    // After its own decrement a helper touches the job only if it was the
    // last: the loop thread (or another helper) may reuse it at once.
    if (job->left.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      job->loop->Post([job] { job->done(job); });
    }
  }
}

}  // namespace ebs
