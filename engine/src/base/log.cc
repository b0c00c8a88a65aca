#include "ebs/engine/log.h"

#include <cstdio>
#include <mutex>
#include <string>

namespace ebs {
namespace {

std::mutex& SinkMutex() {
  static std::mutex mu;
  return mu;
}

LogSink& Sink() {
  static LogSink sink;  // under SinkMutex()
  return sink;
}

}  // namespace

void SetLogSink(LogSink sink) {
  std::lock_guard<std::mutex> lock(SinkMutex());
  Sink() = std::move(sink);
}

void Log(LogLevel level, std::string_view message) {
  std::lock_guard<std::mutex> lock(SinkMutex());
  if (Sink()) {
    Sink()(level, message);
    return;
  }
  // One write per line, so lines of concurrent threads never interleave.
  std::string line = "ebs: " + std::string(message) + "\n";
  fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace ebs
