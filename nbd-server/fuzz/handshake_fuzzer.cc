// libFuzzer target: the handshake state machine fed any bytes by a client
// that reads replies only when the server stops taking options. The first
// input byte picks the reply budget; the rest is the client's stream. Checks
// what the server relies on to bound a connection's memory:
// - one Consume() call appends at most the budget plus one option's replies;
// - with the budget spent, nothing more is consumed (the connection then
//   stops receiving);
// - after Handshake::kMaxOptions options the handshake is closed.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "ebs/nbd/handshake.h"

namespace {

// Every option's replies to this directory stay well under this.
constexpr size_t kMaxRepliesOfOneOption = 4096;

class Directory : public ebs::nbd::ExportDirectory {
 public:
  std::vector<ebs::nbd::ExportInfo> List() override { return {vol0_, db_}; }
  std::optional<ebs::nbd::ExportInfo> Find(const std::string& name) override {
    if (name.empty() || name == "vol0") return vol0_;
    if (name == "db") return db_;
    return std::nullopt;
  }
  ebs::Result<ebs::nbd::ExportInfo> Open(const std::string& name) override {
    auto e = Find(name);
    if (!e) return ebs::Status::NotFound("no export " + name);
    return *e;
  }

 private:
  ebs::nbd::ExportInfo vol0_{"vol0", "gp3 1 GiB", 1u << 30, false};
  ebs::nbd::ExportInfo db_{"db", "io2 4 GiB", 4ull << 30, true};
};

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "handshake bound broken: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t budget = (size_t{data[0]} + 1) * 64;  // 64 B .. 16 KiB
  const char* in = reinterpret_cast<const char*>(data + 1);
  size_t len = size - 1;
  Directory dir;
  // TLS offered: STARTTLS stops the stream (what follows belongs to TLS).
  ebs::nbd::Handshake hs(&dir, data[0] & 1 ? ebs::nbd::TlsMode::kOn : ebs::nbd::TlsMode::kOff);
  std::string out;
  hs.Start(&out);
  out.clear();
  size_t pos = 0;
  while (pos < len) {
    using State = ebs::nbd::Handshake::State;
    if (hs.state() != State::kClientFlags && hs.state() != State::kOptions) break;
    size_t used = hs.Consume(in + pos, len - pos, &out, budget);
    Check(out.size() <= budget + kMaxRepliesOfOneOption, "one call appended more than its budget allows");
    if (out.size() >= budget) {
      // Spent: nothing more until the client reads.
      const size_t before = out.size();
      Check(hs.Consume(in + pos + used, len - pos - used, &out, 0) == 0, "consumed with no budget left");
      Check(out.size() == before, "replied with no budget left");
    } else if (hs.state() == State::kClientFlags || hs.state() == State::kOptions) {
      // Under budget, still negotiating: only a partial message is left.
      Check(used == len - pos || len - pos - used < 16 + 65536 + 1, "stopped under budget with whole options left");
      if (used == 0) break;
    }
    pos += used;
    out.clear();  // the client reads everything
  }
  return 0;
}
