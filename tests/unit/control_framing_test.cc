// The control socket's framing, through a real ControlServer: one request
// line of at most kMaxControlRequestBytes, one reply line; whatever a client
// sends, the server answers or hangs up, and keeps serving the next client.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "ebs/engine/control.h"
#include "test_util.h"

namespace ebs {
namespace {

// Sends `bytes` as one client, half-closes, and returns everything the
// server sends back until it closes (a send the server no longer reads is
// cut short, as a real client's would be).
std::string RawExchange(const std::string& socket_path, const std::string& bytes) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EXPECT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof(addr.sun_path) - 1);
  EXPECT_EQ(0, ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr))) << std::strerror(errno);
  for (size_t off = 0; off < bytes.size();) {
    ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
  std::string answer;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) answer.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return answer;
}

class ControlFramingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    registry_.Register("echo", [](const nlohmann::json& args) -> Result<nlohmann::json> { return args; });
    sock_ = dir_.path() + "/control.sock";
    auto server = ControlServer::Start(sock_, &registry_);
    ASSERT_TRUE(server.ok()) << server.status().message();
    server_ = std::move(*server);
  }

  // The server still answers a well-formed request.
  void ExpectServing() {
    auto reply = ControlCall(sock_, {{"cmd", "echo"}, {"args", {{"x", 1}}}});
    ASSERT_TRUE(reply.ok()) << reply.status().message();
    EXPECT_EQ(true, (*reply)["ok"]);
  }

  testing::TempDir dir_;
  CommandRegistry registry_;
  std::string sock_;
  std::unique_ptr<ControlServer> server_;
};

// Found when control_request_fuzzer was extended to the connection handler
// (its corpus seed progress_not_boolean reproduces it): a "progress" that was
// not a boolean threw out of the handler and terminated `ebs serve`.
TEST_F(ControlFramingTest, ProgressThatIsNotABooleanIsNotAskingForProgress) {
  for (const char* progress : {"\"yes\"", "1", "null", "{}", "[true]"}) {
    std::string answer =
        RawExchange(sock_, std::string("{\"cmd\":\"echo\",\"args\":{\"x\":2},\"progress\":") + progress + "}\n");
    auto reply = nlohmann::json::parse(answer, nullptr, false);
    ASSERT_FALSE(reply.is_discarded()) << "progress " << progress << ": " << answer;
    EXPECT_EQ(true, reply["ok"]) << answer;
    EXPECT_EQ(2, reply["result"]["x"]) << answer;
  }
  ExpectServing();
}

TEST_F(ControlFramingTest, OneRequestLineOneReplyLine) {
  // What follows the first newline is not read as a second request.
  std::string answer = RawExchange(sock_, "{\"cmd\":\"echo\",\"args\":{\"x\":3}}\n{\"cmd\":\"echo\"}\n");
  ASSERT_EQ(1, std::count(answer.begin(), answer.end(), '\n')) << answer;
  EXPECT_EQ(3, nlohmann::json::parse(answer)["result"]["x"]);
  // A request ended by the client closing, without a newline, is answered.
  answer = RawExchange(sock_, "{\"cmd\":\"echo\",\"args\":{\"x\":4}}");
  EXPECT_EQ(4, nlohmann::json::parse(answer)["result"]["x"]) << answer;
  // Invalid JSON gets an error reply; an empty request, nothing.
  auto bad = nlohmann::json::parse(RawExchange(sock_, "{\"cmd\":\n"));
  EXPECT_EQ(false, bad["ok"]);
  EXPECT_EQ(EINVAL, bad["code"]);
  EXPECT_EQ("", RawExchange(sock_, "\n"));
  EXPECT_EQ("", RawExchange(sock_, ""));
  ExpectServing();
}

TEST_F(ControlFramingTest, RequestsLongerThanTheLimitAreRefusedWithoutAReply) {
  const std::string head = "{\"cmd\":\"echo\",\"args\":{\"pad\":\"";
  const std::string tail = "\"}}\n";
  // Just under the limit: answered.
  std::string fits = head + std::string(kMaxControlRequestBytes - head.size() - tail.size(), 'p') + tail;
  auto reply = nlohmann::json::parse(RawExchange(sock_, fits), nullptr, false);
  ASSERT_FALSE(reply.is_discarded());
  EXPECT_EQ(true, reply["ok"]);
  EXPECT_EQ(fits.size() - head.size() - tail.size(), reply["result"]["pad"].get<std::string>().size());
  // Well over it (the server stops reading and hangs up): no reply, and the
  // next client is served.
  std::string over = head + std::string(kMaxControlRequestBytes + 65536, 'p') + tail;
  EXPECT_EQ("", RawExchange(sock_, over));
  ExpectServing();
}

}  // namespace
}  // namespace ebs
