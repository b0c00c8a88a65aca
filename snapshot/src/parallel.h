// The snapshot library's pipelines (upload, restore, verify) as a parallel
// loop over positions.
#pragma once

#include <atomic>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

#include "ebs/engine/status.h"

namespace ebs::snapshot {

// Runs fn(i) for every i in [0, n) on `workers` threads (the caller's among
// them) and returns the first error; after one, no new i is started.
template <typename Fn>
Status ParallelFor(size_t n, int workers, Fn fn) {
  std::atomic<size_t> next{0};
  std::mutex mu;
  Status first = Status::Ok();
  std::atomic<bool> failed{false};
  auto run = [&] {
    while (!failed.load()) {
      size_t i = next.fetch_add(1);
      if (i >= n) return;
      Status st = fn(i);
      if (!st.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (first.ok()) first = st;
        failed = true;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 1; t < workers; ++t) threads.emplace_back(run);
  run();
  for (auto& t : threads) t.join();
  return first;
}

}  // namespace ebs::snapshot
