// An in-memory ChunkSource standing in for the snapshot store in unit tests
// of the layers and devices that read one.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "ebs/engine/chunk_source.h"

namespace ebs::testing {

class MemoryChunkSource final : public ChunkSource {
 public:
  Status Fetch(uint64_t chunk, std::string* data) override {
    fetches.fetch_add(1);
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    std::lock_guard<std::mutex> lock(mu);
    ++fetched[chunk];
    if (broken.count(chunk)) return Status::IoError("object missing");
    auto it = chunks.find(chunk);
    if (it == chunks.end()) {
      data->clear();
    } else {
      *data = it->second;
    }
    return Status::Ok();
  }
  bool HasData(uint64_t chunk) const override {
    std::lock_guard<std::mutex> lock(mu);
    return chunks.count(chunk) != 0;
  }
  std::string Describe() const override { return "test source"; }
  // Fetches of `chunk` so far.
  int FetchesOf(uint64_t chunk) {
    std::lock_guard<std::mutex> lock(mu);
    return fetched[chunk];
  }

  mutable std::mutex mu;
  std::map<uint64_t, std::string> chunks;  // under mu: chunks with data
  std::map<uint64_t, int> fetched;         // under mu
  std::set<uint64_t> broken;               // under mu: fetches fail
  std::atomic<int> fetches{0};
  std::atomic<int> delay_ms{0};  // each fetch takes this long
};

}  // namespace ebs::testing
