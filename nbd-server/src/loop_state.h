// What the server keeps per event loop. Touched only on that loop's thread.
#pragma once

#include <linux/time_types.h>

#include <unordered_set>

#include "ebs/engine/event_loop.h"

namespace ebs::nbd {

class Connection;
class Server;

struct LoopState {
  // Every half second: close connections whose volume was deleted, and end
  // those that have drained (Connection::RequestClose) for longer than this
  // without the client closing.
  static constexpr int64_t kMaxDrainNs = 2'000'000'000;
  struct Tick : IoCompletion {
    LoopState* state = nullptr;
    __kernel_timespec ts{0, 500'000'000};
    void OnComplete(int res, uint32_t flags) override;
    void Arm();
  };

  Server* server = nullptr;
  EventLoop* loop = nullptr;
  std::unordered_set<Connection*> connections;
  Tick tick;
  bool stopping = false;
};

}  // namespace ebs::nbd
