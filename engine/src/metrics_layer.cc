#include "ebs/engine/metrics_layer.h"

namespace ebs {

void MetricsLayer::Submit(EventLoop& loop, IoRequest* req) {
  if (req->kind != IoKind::kRead && req->kind != IoKind::kWrite) {
    next_->Submit(loop, req);
    return;
  }
  req->start_ns = clock_->NowNs();
  metrics_->OnStart(req->start_ns);
  // Borrow the completion: restored before the caller's callback runs.
  req->upper_callback = req->callback;
  req->upper_owner = req->owner;
  req->callback = &MetricsLayer::Done;
  req->owner = this;
  next_->Submit(loop, req);
}

void MetricsLayer::Done(IoRequest* req, int result) {
  auto* self = static_cast<MetricsLayer*>(req->owner);
  req->callback = req->upper_callback;
  req->owner = req->upper_owner;
  int64_t now = self->clock_->NowNs();
  self->metrics_->OnComplete(req->kind == IoKind::kWrite, req->length, now - req->start_ns, result < 0, now);
  req->callback(req, result);
}

}  // namespace ebs
