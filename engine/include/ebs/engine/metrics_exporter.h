// Serves every volume's counters in the Prometheus text format at
// http://HOST:PORT/metrics (cpp-httplib), for `ebs serve --metrics`.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "ebs/engine/status.h"

namespace httplib {
class Server;
}

namespace ebs {

class VolumeManager;

class MetricsExporter {
 public:
  // Binds HOST:PORT (port 0 picks one) and starts serving on a thread.
  static Result<std::unique_ptr<MetricsExporter>> Start(const std::string& host_port, VolumeManager* volumes);
  ~MetricsExporter();
  const std::string& address() const { return address_; }

  // The /metrics document (also used by tests).
  static std::string Render(VolumeManager* volumes);

 private:
  MetricsExporter() = default;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  std::string address_;
};

}  // namespace ebs
