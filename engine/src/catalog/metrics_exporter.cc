#include "ebs/engine/metrics_exporter.h"

#include <httplib.h>

#include <fmt/format.h>

#include "ebs/engine/volume_manager.h"

namespace ebs {
namespace {

struct Metric {
  const char* name;    // Prometheus name, without the ebs_volume_ prefix
  const char* key;     // field of the stats document
  const char* type;    // counter | gauge
  const char* help;
};

constexpr Metric kMetrics[] = {
    {"read_ops_total", "VolumeReadOps", "counter", "Completed read operations (VolumeReadOps)"},
    {"write_ops_total", "VolumeWriteOps", "counter", "Completed write operations (VolumeWriteOps)"},
    {"read_bytes_total", "VolumeReadBytes", "counter", "Bytes read (VolumeReadBytes)"},
    {"write_bytes_total", "VolumeWriteBytes", "counter", "Bytes written (VolumeWriteBytes)"},
    {"read_time_seconds_total", "VolumeTotalReadTime", "counter", "Time spent in reads (VolumeTotalReadTime)"},
    {"write_time_seconds_total", "VolumeTotalWriteTime", "counter", "Time spent in writes (VolumeTotalWriteTime)"},
    {"idle_time_seconds_total", "VolumeIdleTime", "counter", "Time with no I/O in flight (VolumeIdleTime)"},
    {"queue_length", "VolumeQueueLength", "gauge", "Average requests outstanding over the last minute (VolumeQueueLength)"},
    {"in_flight", "InFlight", "gauge", "Requests outstanding now"},
    {"consumed_ops_total", "VolumeConsumedReadWriteOps", "counter",
     "Reads and writes in 256 KiB units, each at least 1, before merging (VolumeConsumedReadWriteOps; io1, io2)"},
    {"throughput_percentage", "VolumeThroughputPercentage", "gauge",
     "IOPS delivered over the last minute as a percentage of provisioned, idle time 100% (VolumeThroughputPercentage; io1, io2)"},
    {"iops_exceeded_check", "VolumeIOPSExceededCheck", "gauge",
     "1 if requests were held back on the IOPS limit in at least 30 of the last 60 seconds"},
    {"throughput_exceeded_check", "VolumeThroughputExceededCheck", "gauge",
     "1 if requests were held back on the throughput limit in at least 30 of the last 60 seconds"},
    {"throttled_seconds_total", "ThrottledTime", "counter", "Time requests spent waiting in the throttle"},
    {"throttled_requests_total", "ThrottledRequests", "counter", "Requests that waited in the throttle"},
    {"burst_balance_percent", "BurstBalance", "gauge", "Burst credits left, percent of the bucket (BurstBalance)"},
    {"errors_total", "Errors", "counter", "Reads and writes that failed"},
};

std::string Escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

std::string MetricsExporter::Render(VolumeManager* volumes) {
  auto all = volumes->AllStats();
  std::string out;
  if (!all.ok()) return "# error: " + all.status().message() + "\n";
  for (const Metric& m : kMetrics) {
    out += fmt::format("# HELP ebs_volume_{} {}\n# TYPE ebs_volume_{} {}\n", m.name, m.help, m.name, m.type);
    for (const auto& v : *all) {
      if (!v.contains(m.key)) continue;
      out += fmt::format("ebs_volume_{}{{volume=\"{}\",type=\"{}\"}} {}\n", m.name,
                         Escape(v["name"].get<std::string>()), v["type"].get<std::string>(), v[m.key].dump());
    }
  }
  out += "# HELP ebs_volume_latency_microseconds Request latency percentiles\n"
         "# TYPE ebs_volume_latency_microseconds gauge\n";
  for (const auto& v : *all) {
    // Prometheus quantile labels are fractions: p99.9 is quantile="0.999".
    const std::pair<const char*, const char*> quantiles[] = {
        {"p50", "0.5"}, {"p90", "0.9"}, {"p99", "0.99"}, {"p99.9", "0.999"}};
    for (const auto& [key, q] : quantiles) {
      out += fmt::format("ebs_volume_latency_microseconds{{volume=\"{}\",quantile=\"{}\"}} {}\n",
                         Escape(v["name"].get<std::string>()), q, v["LatencyMicroseconds"][key].dump());
    }
  }
  return out;
}

Result<std::unique_ptr<MetricsExporter>> MetricsExporter::Start(const std::string& host_port, VolumeManager* volumes) {
  size_t colon = host_port.rfind(':');
  if (colon == std::string::npos) return Status::InvalidArgument("--metrics wants HOST:PORT, got '" + host_port + "'");
  std::string host = host_port.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = 0;
  try {
    port = std::stoi(host_port.substr(colon + 1));
  } catch (...) {
    return Status::InvalidArgument("--metrics: bad port in '" + host_port + "'");
  }
  std::unique_ptr<MetricsExporter> e(new MetricsExporter());
  e->http_ = std::make_unique<httplib::Server>();
  e->http_->Get("/metrics", [volumes](const httplib::Request&, httplib::Response& res) {
    res.set_content(Render(volumes), "text/plain; version=0.0.4");
  });
  int bound = port == 0 ? e->http_->bind_to_any_port(host) : (e->http_->bind_to_port(host, port) ? port : -1);
  if (bound <= 0) return Status::Error(EADDRINUSE, "--metrics: cannot listen on " + host_port);
  e->address_ = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(bound);
  httplib::Server* http = e->http_.get();
  e->thread_ = std::thread([http] { http->listen_after_bind(); });
  return e;
}

MetricsExporter::~MetricsExporter() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace ebs
