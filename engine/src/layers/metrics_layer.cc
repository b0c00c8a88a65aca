#include "layers/metrics_layer.h"

namespace ebs {

void MetricsLayer::Submit(EventLoop& loop, IoRequest* req) {
  if (req->kind != IoKind::kRead && req->kind != IoKind::kWrite) {
    next_->Submit(loop, req);
    return;
  }
  req->start_ns = clock_->NowNs();
  metrics_->OnStart(req->start_ns);
  // Borrow the completion: restored before the caller's callback runs.
  auto& saved = req->LayerState<Saved>(layer_index());
  req->InterceptCompletion(&MetricsLayer::Done, this, &saved.callback, &saved.owner);
  next_->Submit(loop, req);
}

void MetricsLayer::Done(IoRequest* req, int result) {
  auto* self = static_cast<MetricsLayer*>(req->owner);
  const auto& saved = req->LayerState<Saved>(self->layer_index());
  req->callback = saved.callback;
  req->owner = saved.owner;
  int64_t now = self->clock_->NowNs();
  self->metrics_->OnComplete(req->kind == IoKind::kWrite, req->length, now - req->start_ns, result < 0, now);
  req->callback(req, result);
}

}  // namespace ebs
