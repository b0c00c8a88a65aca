// Progress over the control channel: a request that asks for it receives
// progress lines from the handler's reporters (from several threads) before
// its one reply; a request that does not gets only the reply.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <vector>

#include "ebs/engine/control.h"
#include "ebs/engine/progress.h"
#include "test_util.h"

namespace ebs {
namespace {

TEST(ControlProgressTest, ProgressLinesPrecedeTheReplyOnlyWhenAskedFor) {
  testing::TempDir dir;
  CommandRegistry registry;
  registry.Register("work", [](const nlohmann::json&) -> Result<nlohmann::json> {
    ProgressReporter progress("working", 40);
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < 20; ++i) {
          progress.Add();
          std::this_thread::sleep_for(std::chrono::milliseconds(15));
        }
      });
    }
    for (auto& t : threads) t.join();
    return nlohmann::json{{"done", true}};
  });
  const std::string sock = dir.path() + "/control.sock";
  auto server = ControlServer::Start(sock, &registry);
  ASSERT_TRUE(server.ok()) << server.status().message();

  std::vector<nlohmann::json> seen;
  auto reply = ControlCall(sock, {{"cmd", "work"}, {"args", nlohmann::json::object()}, {"progress", true}},
                           [&](const nlohmann::json& p) { seen.push_back(p); });
  ASSERT_TRUE(reply.ok()) << reply.status().message();
  EXPECT_EQ(true, (*reply)["ok"]);
  EXPECT_EQ(true, (*reply)["result"]["done"]);
  ASSERT_GE(seen.size(), 3u) << "the first, some intermediate and the final update";
  EXPECT_EQ("working", seen.front()["stage"]);
  EXPECT_EQ(0u, seen.front()["done"].get<uint64_t>());
  EXPECT_EQ(40u, seen.back()["done"].get<uint64_t>());
  EXPECT_EQ(40u, seen.back()["total"].get<uint64_t>());
  for (size_t i = 1; i < seen.size(); ++i) {
    EXPECT_LE(seen[i - 1]["done"].get<uint64_t>(), seen[i]["done"].get<uint64_t>()) << "progress went back";
  }

  seen.clear();
  reply = ControlCall(sock, {{"cmd", "work"}, {"args", nlohmann::json::object()}},
                      [&](const nlohmann::json& p) { seen.push_back(p); });
  ASSERT_TRUE(reply.ok());
  EXPECT_EQ(true, (*reply)["ok"]);
  EXPECT_TRUE(seen.empty()) << "progress sent to a client that did not ask for it";
}

}  // namespace
}  // namespace ebs
