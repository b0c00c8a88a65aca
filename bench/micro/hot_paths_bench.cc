// Micro-benchmarks of the per-request hot paths: NBD request decoding and
// reply encoding, the handshake, the throttle's accounting and admission,
// per-volume metrics (snapshot paths: snapshot_bench.cc). Run: build/bin/micro_bench
#include <benchmark/benchmark.h>

#include <cstring>
#include <string>
#include <vector>

#include "ebs/engine/clock.h"
#include "ebs/engine/performance_model.h"
#include "ebs/engine/volume_metrics.h"
#include "ebs/nbd/handshake.h"
#include "ebs/nbd/protocol.h"

namespace ebs {
namespace {

void BM_DecodeRequestHeader(benchmark::State& state) {
  char buf[nbd::kRequestHeaderSize];
  nbd::Store32(buf, nbd::kRequestMagic);
  nbd::Store16(buf + 4, nbd::kCmdFlagFua);
  nbd::Store16(buf + 6, nbd::kCmdWrite);
  nbd::Store64(buf + 8, 42);
  nbd::Store64(buf + 16, 1 << 20);
  nbd::Store32(buf + 24, 4096);
  for (auto _ : state) {
    benchmark::DoNotOptimize(buf);
    nbd::RequestHeader h = nbd::DecodeRequest(buf);
    benchmark::DoNotOptimize(h);
  }
}
BENCHMARK(BM_DecodeRequestHeader);

void BM_EncodeStructuredReadReply(benchmark::State& state) {
  char reply[32];
  uint64_t cookie = 0;
  for (auto _ : state) {
    nbd::Store32(reply, nbd::kStructuredReplyMagic);
    nbd::Store16(reply + 4, nbd::kReplyFlagDone);
    nbd::Store16(reply + 6, nbd::kReplyOffsetData);
    nbd::Store64(reply + 8, ++cookie);
    nbd::Store32(reply + 16, 8 + 4096);
    nbd::Store64(reply + 20, cookie << 12);
    benchmark::DoNotOptimize(reply);
  }
}
BENCHMARK(BM_EncodeStructuredReadReply);

class OneExport : public nbd::ExportDirectory {
 public:
  std::vector<nbd::ExportInfo> List() override { return {info}; }
  std::optional<nbd::ExportInfo> Find(const std::string&) override { return info; }
  Result<nbd::ExportInfo> Open(const std::string&) override { return info; }
  nbd::ExportInfo info{"vol0", "gp3", 1ull << 30, false};
};

void BM_HandshakeToTransmission(benchmark::State& state) {
  std::string in;
  nbd::Append32(&in, nbd::kClientFixedNewstyle | nbd::kClientNoZeroes);
  auto opt = [&](uint32_t code, const std::string& data) {
    nbd::Append64(&in, nbd::kIHaveOpt);
    nbd::Append32(&in, code);
    nbd::Append32(&in, static_cast<uint32_t>(data.size()));
    in += data;
  };
  opt(nbd::kOptStructuredReply, "");
  std::string go;
  nbd::Append32(&go, 4);
  go += "vol0";
  nbd::Append16(&go, 1);
  nbd::Append16(&go, nbd::kInfoBlockSize);
  opt(nbd::kOptGo, go);
  OneExport dir;
  std::string out;
  for (auto _ : state) {
    nbd::Handshake hs(&dir);
    out.clear();
    hs.Start(&out);
    hs.Consume(in.data(), in.size(), &out);
    benchmark::DoNotOptimize(out);
  }
}
BENCHMARK(BM_HandshakeToTransmission);

void BM_ThrottleAdmitRandom4K(benchmark::State& state) {
  PerformanceLimits limits;
  limits.baseline_iops = limits.burst_iops = 256000;
  limits.baseline_throughput_mibps = limits.burst_throughput_mibps = 4000;
  limits.io_unit_bytes = 256 * 1024;
  int64_t now = 0;
  PerformanceModel model(limits, now);
  uint64_t n = 0;
  for (auto _ : state) {
    now += 4000;  // 250k requests per simulated second: always admitted
    IoCost c = model.Account((n++ * 7919 % 100000) * 4096, 4096);
    if (model.WaitNs(c, now) == 0) model.Consume(c, now);
    benchmark::DoNotOptimize(c);
  }
}
BENCHMARK(BM_ThrottleAdmitRandom4K);

void BM_MetricsStartComplete(benchmark::State& state) {
  VolumeMetrics m(0);
  int64_t now = 0;
  for (auto _ : state) {
    m.OnStart(now);
    now += 1000;
    m.OnComplete(false, 4096, 20000, false, now);
  }
}
BENCHMARK(BM_MetricsStartComplete)->Threads(1)->Threads(2);

void BM_SteadyClock(benchmark::State& state) {
  const Clock* c = SteadyClock::Default();
  for (auto _ : state) benchmark::DoNotOptimize(c->NowNs());
}
BENCHMARK(BM_SteadyClock);

}  // namespace
}  // namespace ebs

BENCHMARK_MAIN();
