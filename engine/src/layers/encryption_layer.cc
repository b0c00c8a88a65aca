#include "layers/encryption_layer.h"

#include "keys/crypt_pool.h"

#include <unistd.h>

#include <bit>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace ebs {
namespace {

constexpr uint64_t kSector = SectorCipher::kSectorSize;

uint64_t Down(uint64_t v) { return v / kSector * kSector; }
uint64_t Up(uint64_t v) { return (v + kSector - 1) / kSector * kSector; }

// Scratch buffers of 2^k bytes, per thread: a request takes one on its
// loop's thread and gives it back there when it completes, so after warm-up
// the hot path allocates nothing.
class ScratchPool {
 public:
  ~ScratchPool() {
    for (auto& list : free_) {
      for (char* p : list) std::free(p);
    }
  }
  static unsigned ClassOf(uint64_t len) { return static_cast<unsigned>(std::bit_width(std::max<uint64_t>(len, kSector) - 1)); }
  char* Take(uint64_t len) {
    const unsigned c = ClassOf(len);
    if (c < kClasses && !free_[c].empty()) {
      char* p = free_[c].back();
      free_[c].pop_back();
      return p;
    }
    return static_cast<char*>(std::aligned_alloc(kSector, uint64_t{1} << c));
  }
  void Give(char* p, uint64_t len) {
    const unsigned c = ClassOf(len);
    if (c < kClasses && free_[c].size() < kKeep) {
      free_[c].push_back(p);
    } else {
      std::free(p);
    }
  }

 private:
  static constexpr unsigned kClasses = 27;  // up to 64 MiB
  static constexpr size_t kKeep = 64;       // a queue depth's worth per size
  std::vector<char*> free_[kClasses];
};

thread_local ScratchPool scratch;

// Jobs for the crypt pool, per thread like the scratch buffers: taken and
// given back on the loop thread that runs the request.
class JobPool {
 public:
  CryptPool::Job* Take() {
    if (free_.empty()) return new CryptPool::Job();
    CryptPool::Job* j = free_.back().release();
    free_.pop_back();
    return j;
  }
  void Give(CryptPool::Job* j) { free_.emplace_back(j); }

 private:
  std::vector<std::unique_ptr<CryptPool::Job>> free_;
};

thread_local JobPool jobs;

}  // namespace

void EncryptionLayer::FinishLater(EventLoop& loop, IoRequest* req, int result) {
  loop.Post([req, result] { req->Finish(result); });  // never complete inside Submit
}

void EncryptionLayer::Submit(EventLoop& loop, IoRequest* req) {
  Saved& saved = req->LayerState<Saved>(layer_index());
  saved.buf = nullptr;
  saved.length = 0;
  switch (req->kind) {
    case IoKind::kRead:
      if (req->length == 0) break;
      if (!SectorCipher::Aligned(req->offset, req->length)) {
        SubmitUnalignedRead(loop, req);
        return;
      }
      PassDown(loop, req);  // decrypted in place by Done
      return;
    case IoKind::kWrite:
      if (req->length == 0) break;
      SubmitWrite(loop, req);
      return;
    case IoKind::kTrim:
    case IoKind::kWriteZeroes:
      if (req->length == 0 || SectorCipher::Aligned(req->offset, req->length)) break;
      SubmitZeroOrTrim(loop, req);
      return;
    case IoKind::kFlush:
    case IoKind::kCache:
      break;
  }
  next_->Submit(loop, req);
}

void EncryptionLayer::SubmitWrite(EventLoop& loop, IoRequest* req) {
  if (!SectorCipher::Aligned(req->offset, req->length)) {
    FinishLater(loop, req, Patch(req->offset, req->buf, req->length, req->flags & kIoFua).ok() ? 0 : -EIO);
    return;
  }
  char* ct = scratch.Take(req->length);
  if (ct == nullptr) {
    FinishLater(loop, req, -ENOMEM);
    return;
  }
  Saved& saved = req->LayerState<Saved>(layer_index());
  saved.buf = req->buf;
  req->buf = ct;
  CryptPool::Job* job = jobs.Take();
  job->cipher = cipher_.get();
  job->encrypt = true;
  job->offset = req->offset;
  job->in = saved.buf;
  job->out = ct;
  job->len = req->length;
  job->loop = &loop;
  job->done = &EncryptionLayer::EncryptedLater;
  job->ctx = req;
  job->owner = this;
  if (CryptPool::Shared().Run(job)) Encrypted(job, /*inside_submit=*/true);
}

void EncryptionLayer::EncryptedLater(CryptPool::Job* job) { Encrypted(job, /*inside_submit=*/false); }

void EncryptionLayer::Encrypted(CryptPool::Job* job, bool inside_submit) {
  auto* req = static_cast<IoRequest*>(job->ctx);
  auto* self = static_cast<EncryptionLayer*>(job->owner);
  EventLoop& loop = *job->loop;
  const bool failed = job->failed.load(std::memory_order_relaxed);
  jobs.Give(job);
  if (failed) {
    Saved& saved = req->LayerState<Saved>(self->layer_index());
    scratch.Give(req->buf, req->length);
    req->buf = saved.buf;
    saved.buf = nullptr;
    if (inside_submit) {
      FinishLater(loop, req, -EIO);
    } else {
      req->Finish(-EIO);
    }
    return;
  }
  self->PassDown(loop, req);
}

void EncryptionLayer::SubmitUnalignedRead(EventLoop& loop, IoRequest* req) {
  const uint64_t start = Down(req->offset);
  const uint64_t end = Up(req->offset + req->length);
  char* ct = scratch.Take(end - start);
  if (ct == nullptr) {
    FinishLater(loop, req, -ENOMEM);
    return;
  }
  Saved& saved = req->LayerState<Saved>(layer_index());
  saved.buf = req->buf;
  saved.offset = req->offset;
  saved.length = req->length;
  req->buf = ct;
  req->offset = start;
  req->length = end - start;
  PassDown(loop, req);
}

void EncryptionLayer::SubmitZeroOrTrim(EventLoop& loop, IoRequest* req) {
  const uint64_t offset = req->offset;
  const uint64_t end = offset + req->length;
  const uint64_t inner_start = Up(offset);
  const uint64_t inner_end = std::max(inner_start, Down(end));
  if (req->kind == IoKind::kWriteZeroes) {
    if (req->flags & kIoFastZero) {  // zeroing part of a sector means rewriting it
      FinishLater(loop, req, -EOPNOTSUPP);
      return;
    }
    const bool fua = req->flags & kIoFua;
    Status st = Status::Ok();
    if (inner_start >= inner_end) {
      st = Patch(offset, nullptr, req->length, fua);
    } else {
      if (offset < inner_start) st = Patch(offset, nullptr, inner_start - offset, fua);
      if (st.ok() && inner_end < end) st = Patch(inner_end, nullptr, end - inner_end, fua);
    }
    if (!st.ok() || inner_start >= inner_end) {
      FinishLater(loop, req, st.ok() ? 0 : -EIO);
      return;
    }
  } else if (inner_start >= inner_end) {
    FinishLater(loop, req, 0);  // a trim inside one sector: nothing whole to drop
    return;
  }
  Saved& saved = req->LayerState<Saved>(layer_index());
  saved.offset = req->offset;
  saved.length = req->length;
  req->offset = inner_start;
  req->length = inner_end - inner_start;
  PassDown(loop, req);
}

Status EncryptionLayer::Patch(uint64_t offset, const char* data, uint64_t len, bool fua) {
  const uint64_t start = Down(offset);
  const uint64_t span = Up(offset + len) - start;
  std::string buf(span, '\0');
  std::lock_guard<std::mutex> lock(rmw_mu_);
  for (uint64_t done = 0; done < span;) {
    ssize_t n = pread(fd_, buf.data() + done, span - done, static_cast<off_t>(start + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, "read for read-modify-write");
    if (n == 0) break;  // past the end of the file: zeros
    done += static_cast<uint64_t>(n);
  }
  EBS_RETURN_IF_ERROR(cipher_->Decrypt(start, buf.data(), buf.data(), span));
  if (data != nullptr) {
    std::memcpy(buf.data() + (offset - start), data, len);
  } else {
    std::memset(buf.data() + (offset - start), 0, len);
  }
  EBS_RETURN_IF_ERROR(cipher_->Encrypt(start, buf.data(), buf.data(), span));
  for (uint64_t done = 0; done < span;) {
    ssize_t n = pwrite(fd_, buf.data() + done, span - done, static_cast<off_t>(start + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, "write for read-modify-write");
    done += static_cast<uint64_t>(n);
  }
  if (fua && fdatasync(fd_) != 0) return Status::FromErrno(errno, "sync");
  return Status::Ok();
}

void EncryptionLayer::PassDown(EventLoop& loop, IoRequest* req) {
  Saved& saved = req->LayerState<Saved>(layer_index());
  req->InterceptCompletion(&EncryptionLayer::Done, this, &saved.callback, &saved.owner);
  next_->Submit(loop, req);
}

void EncryptionLayer::Done(IoRequest* req, int result) {
  auto* self = static_cast<EncryptionLayer*>(req->owner);
  const Saved& saved = req->LayerState<Saved>(self->layer_index());
  req->callback = saved.callback;
  req->owner = saved.owner;
  if (req->kind == IoKind::kRead && result >= 0) {
    CryptPool::Job* job = jobs.Take();
    job->cipher = self->cipher_.get();
    job->encrypt = false;
    job->offset = req->offset;
    job->in = req->buf;
    job->out = req->buf;
    job->len = req->length;
    job->loop = req->loop;
    job->done = &EncryptionLayer::Decrypted;
    job->ctx = req;
    job->owner = self;
    job->result = result;
    if (CryptPool::Shared().Run(job)) Decrypted(job);
    return;
  }
  Finished(req, self->layer_index(), result);
}

void EncryptionLayer::Decrypted(CryptPool::Job* job) {
  auto* req = static_cast<IoRequest*>(job->ctx);
  const uint8_t layer = static_cast<EncryptionLayer*>(job->owner)->layer_index();
  const int result = job->failed.load(std::memory_order_relaxed) ? -EIO : static_cast<int>(job->result);
  jobs.Give(job);
  Finished(req, layer, result);
}

void EncryptionLayer::Finished(IoRequest* req, uint8_t layer, int result) {
  Saved& saved = req->LayerState<Saved>(layer);
  if (req->kind == IoKind::kRead) {
    if (saved.buf != nullptr) {  // unaligned: the caller's part of the sectors read
      if (result >= 0) std::memcpy(saved.buf, req->buf + (saved.offset - req->offset), saved.length);
      scratch.Give(req->buf, req->length);
      req->buf = saved.buf;
    }
  } else if (req->kind == IoKind::kWrite && saved.buf != nullptr) {
    scratch.Give(req->buf, req->length);
    req->buf = saved.buf;
  }
  if (saved.length != 0) {
    req->offset = saved.offset;
    req->length = saved.length;
  }
  saved.buf = nullptr;
  saved.length = 0;
  req->Finish(result);
}

}  // namespace ebs
