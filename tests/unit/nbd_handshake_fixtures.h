// What the plain and the TLS handshake tests share: a directory of fixed
// exports that counts what the handshake asked of it, and the option
// messages a client sends and the replies it parses (NBD spec, "Option
// haggling").
#pragma once

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "ebs/nbd/handshake.h"
#include "ebs/nbd/protocol.h"

namespace ebs::nbd::fixtures {

// The handshake's only collaborator. The empty name finds "vol0" (the
// default export). `lookups` counts List and Find, `opened` counts Open.
class FixedDirectory : public ExportDirectory {
 public:
  explicit FixedDirectory(std::vector<ExportInfo> e) : exports(std::move(e)) {}
  std::vector<ExportInfo> List() override {
    ++lookups;
    return exports;
  }
  std::optional<ExportInfo> Find(const std::string& name) override {
    ++lookups;
    for (auto& e : exports) {
      if (e.name == name || (name.empty() && e.name == "vol0")) return e;
    }
    return std::nullopt;
  }
  Result<ExportInfo> Open(const std::string& name) override {
    ++opened;
    auto e = Find(name);
    if (!e) return Status::NotFound("no export " + name);
    return *e;
  }
  std::vector<std::string> DirtyBitmaps(const std::string& name) override {
    return name == "vol0" ? bitmaps : std::vector<std::string>();
  }
  std::vector<ExportInfo> exports;
  std::vector<std::string> bitmaps;  // vol0's dirty bitmaps
  int lookups = 0;
  int opened = 0;
};

struct OptReply {
  uint32_t option;
  uint32_t type;
  std::string data;
};

// Splits server output into option replies; all of it must be replies.
inline std::vector<OptReply> ParseReplies(const std::string& out) {
  std::vector<OptReply> r;
  size_t pos = 0;
  while (pos + 20 <= out.size()) {
    EXPECT_EQ(kOptReplyMagic, Load64(out.data() + pos));
    uint32_t len = Load32(out.data() + pos + 16);
    r.push_back({Load32(out.data() + pos + 8), Load32(out.data() + pos + 12), out.substr(pos + 20, len)});
    pos += 20 + len;
  }
  EXPECT_EQ(pos, out.size());
  return r;
}

// One option as the client sends it: IHAVEOPT, the option, its data.
inline std::string Option(uint32_t opt, const std::string& data = "") {
  std::string s;
  Append64(&s, kIHaveOpt);
  Append32(&s, opt);
  Append32(&s, static_cast<uint32_t>(data.size()));
  return s + data;
}

// The data of NBD_OPT_INFO / NBD_OPT_GO.
inline std::string InfoRequest(const std::string& name, const std::vector<uint16_t>& infos = {}) {
  std::string s;
  Append32(&s, static_cast<uint32_t>(name.size()));
  s += name;
  Append16(&s, static_cast<uint16_t>(infos.size()));
  for (auto i : infos) Append16(&s, i);
  return s;
}

// The data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.
inline std::string MetaRequest(const std::string& name, const std::vector<std::string>& queries) {
  std::string s;
  Append32(&s, static_cast<uint32_t>(name.size()));
  s += name;
  Append32(&s, static_cast<uint32_t>(queries.size()));
  for (auto& q : queries) {
    Append32(&s, static_cast<uint32_t>(q.size()));
    s += q;
  }
  return s;
}

}  // namespace ebs::nbd::fixtures
