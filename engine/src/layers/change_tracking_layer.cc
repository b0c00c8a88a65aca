// The layer that marks a write's chunks durably before the write goes on
// (change_tracker.h has the tracker and the layer's contract).
#include "layers/change_tracker.h"

namespace ebs {

void ChangeTrackingLayer::Submit(EventLoop& loop, IoRequest* req) {
  const bool changes =
      req->kind == IoKind::kWrite || req->kind == IoKind::kTrim || req->kind == IoKind::kWriteZeroes;
  if (!changes || req->length == 0) {
    next_->Submit(loop, req);
    return;
  }
  req->loop = &loop;
  req->layer = this;
  req->on_cqe = &ChangeTrackingLayer::Resume;
  switch (tracker_->MarkOrQueue(req)) {
    case ChangeTracker::MarkOutcome::kDurable:
      next_->Submit(loop, req);
      return;
    case ChangeTracker::MarkOutcome::kQueued:
      return;  // Resume continues it
    case ChangeTracker::MarkOutcome::kOutOfRange:
      loop.Post([req] { req->Finish(-EINVAL); });  // never complete inside Submit
      return;
  }
}

void ChangeTrackingLayer::Resume(IoRequest* req, int result) {
  auto* self = static_cast<ChangeTrackingLayer*>(req->layer);
  if (result < 0) {
    req->Finish(result);  // the marks are not durable: the data must not change
    return;
  }
  self->next_->Submit(*req->loop, req);
}

Status ChangeTrackingLayer::Resize(uint64_t new_size) {
  EBS_RETURN_IF_ERROR(tracker_->Resize(new_size));
  return next_->Resize(new_size);
}

}  // namespace ebs
