// The handshake's TLS rules (NBD spec, "TLS support"), credential loading,
// and a TLS session driven through memory buffers against a GnuTLS client.
#include <gnutls/gnutls.h>
#include <gtest/gtest.h>

#include <fstream>

#include "ebs/nbd/handshake.h"
#include "ebs/nbd/protocol.h"
#include "ebs/nbd/tls.h"
#include "nbd_handshake_fixtures.h"
#include "test_util.h"

namespace ebs::nbd {
namespace {

using fixtures::InfoRequest;
using fixtures::MetaRequest;
using fixtures::Option;
using fixtures::ParseReplies;

class TlsHandshakeTest : public ::testing::Test {
 protected:
  void Begin(TlsMode mode, uint32_t client_flags = kClientFixedNewstyle | kClientNoZeroes) {
    hs_ = std::make_unique<Handshake>(&dir_, mode);
    hs_->Start(&out_);
    out_.clear();
    std::string f;
    Append32(&f, client_flags);
    Feed(f);
  }
  void Feed(const std::string& bytes) { EXPECT_EQ(bytes.size(), hs_->Consume(bytes.data(), bytes.size(), &out_)); }
  // STARTTLS, its ACK, then the TLS handshake "succeeds".
  void UpgradeToTls() {
    Feed(Option(kOptStartTls));
    auto r = ParseReplies(out_);
    ASSERT_EQ(1u, r.size());
    EXPECT_EQ(kOptStartTls, r[0].option);
    EXPECT_EQ(kRepAck, r[0].type);
    EXPECT_TRUE(r[0].data.empty());
    ASSERT_EQ(Handshake::State::kStartTls, hs_->state());
    hs_->TlsEstablished();
    EXPECT_TRUE(hs_->tls());
    EXPECT_EQ(Handshake::State::kOptions, hs_->state());
    out_.clear();
  }
  // With TLS required and not started, nothing about the exports may be
  // looked up at all (dir_.lookups).
  fixtures::FixedDirectory dir_{{{"vol0", "gp3 1 GiB", 1 << 30, false}, {"secret", "io2", 4ull << 30, false}}};
  std::unique_ptr<Handshake> hs_;
  std::string out_;
};

TEST_F(TlsHandshakeTest, OffRefusesStartTlsAsUnsupported) {
  Begin(TlsMode::kOff);
  Feed(Option(kOptStartTls));
  auto r = ParseReplies(out_);
  ASSERT_EQ(1u, r.size());
  EXPECT_EQ(kRepErrUnsup, r[0].type);
  EXPECT_EQ(Handshake::State::kOptions, hs_->state());
  EXPECT_FALSE(hs_->tls());
}

TEST_F(TlsHandshakeTest, RequireRefusesEveryOptionButStartTlsWithTlsReqdAndRevealsNothing) {
  Begin(TlsMode::kRequire);
  Feed(Option(kOptList) + Option(kOptInfo, InfoRequest("secret")) + Option(kOptGo, InfoRequest("secret")) +
       Option(kOptStructuredReply) + Option(kOptListMetaContext, MetaRequest("secret", {kBaseAllocation})) +
       Option(kOptSetMetaContext, MetaRequest("secret", {kBaseAllocation})) + Option(kOptExtendedHeaders) +
       Option(99, "whatever"));
  auto r = ParseReplies(out_);
  ASSERT_EQ(8u, r.size());
  for (const auto& x : r) {
    EXPECT_EQ(kRepErrTlsReqd, x.type) << "option " << x.option;
    EXPECT_EQ(std::string::npos, x.data.find("secret")) << "an export name leaked: " << x.data;
  }
  EXPECT_EQ(0, dir_.lookups) << "no export may be looked up before TLS";
  EXPECT_EQ(Handshake::State::kOptions, hs_->state());
}

TEST_F(TlsHandshakeTest, RequireClosesOnExportNameBeforeTls) {
  Begin(TlsMode::kRequire);
  Feed(Option(kOptExportName, "vol0"));
  EXPECT_EQ(Handshake::State::kClosed, hs_->state());
  EXPECT_TRUE(out_.empty()) << "EXPORT_NAME has no error reply: nothing may be sent";
  EXPECT_EQ(0, dir_.lookups);
}

TEST_F(TlsHandshakeTest, RequireStillAcksAbort) {
  Begin(TlsMode::kRequire);
  Feed(Option(kOptAbort));
  auto r = ParseReplies(out_);
  ASSERT_EQ(1u, r.size());
  EXPECT_EQ(kRepAck, r[0].type);
  EXPECT_EQ(Handshake::State::kClosed, hs_->state());
}

TEST_F(TlsHandshakeTest, RequireClosesAClientWithoutFixedNewstyle) {
  Begin(TlsMode::kRequire, kClientNoZeroes);
  EXPECT_EQ(Handshake::State::kClosed, hs_->state());
}

TEST_F(TlsHandshakeTest, RequireRefusesAnOversizedOptionWithTlsReqd) {
  Begin(TlsMode::kRequire);
  Feed(Option(kOptInfo, std::string(kMaxOptionLength + 1, 'x')));
  auto r = ParseReplies(out_);
  ASSERT_EQ(1u, r.size());
  EXPECT_EQ(kRepErrTlsReqd, r[0].type);
}

TEST_F(TlsHandshakeTest, StartTlsStopsConsumingAtItsEnd) {
  Begin(TlsMode::kRequire);
  // A client (or a man in the middle) pipelines an option after STARTTLS:
  // those bytes belong to the TLS stream, never to option haggling.
  std::string bytes = Option(kOptStartTls) + Option(kOptList);
  size_t used = hs_->Consume(bytes.data(), bytes.size(), &out_);
  EXPECT_EQ(16u, used);
  EXPECT_EQ(Handshake::State::kStartTls, hs_->state());
  EXPECT_EQ(1u, ParseReplies(out_).size());
  out_.clear();
  EXPECT_EQ(0u, hs_->Consume(bytes.data() + used, bytes.size() - used, &out_));
  EXPECT_TRUE(out_.empty());
}

TEST_F(TlsHandshakeTest, RequireServesEverythingOnceTlsRuns) {
  Begin(TlsMode::kRequire);
  UpgradeToTls();
  Feed(Option(kOptList));
  auto r = ParseReplies(out_);
  ASSERT_EQ(3u, r.size());
  EXPECT_EQ(kRepServer, r[0].type);
  EXPECT_EQ(kRepAck, r[2].type);
  out_.clear();
  Feed(Option(kOptGo, InfoRequest("secret")));
  r = ParseReplies(out_);
  ASSERT_FALSE(r.empty());
  EXPECT_EQ(kRepAck, r.back().type);
  EXPECT_EQ(Handshake::State::kTransmission, hs_->state());
  EXPECT_EQ("secret", hs_->export_info().name);
}

TEST_F(TlsHandshakeTest, StartTlsInsideTlsIsInvalid) {
  Begin(TlsMode::kOn);
  UpgradeToTls();
  Feed(Option(kOptStartTls));
  auto r = ParseReplies(out_);
  ASSERT_EQ(1u, r.size());
  EXPECT_EQ(kRepErrInvalid, r[0].type);
  EXPECT_EQ(Handshake::State::kOptions, hs_->state());
}

TEST_F(TlsHandshakeTest, StartTlsWithDataIsInvalid) {
  Begin(TlsMode::kOn);
  Feed(Option(kOptStartTls, "x"));
  auto r = ParseReplies(out_);
  ASSERT_EQ(1u, r.size());
  EXPECT_EQ(kRepErrInvalid, r[0].type);
  EXPECT_EQ(Handshake::State::kOptions, hs_->state());
  EXPECT_FALSE(hs_->tls());
}

TEST_F(TlsHandshakeTest, StartTlsWithoutFixedNewstyleIsRefusedByPolicy) {
  Begin(TlsMode::kOn, 0);
  Feed(Option(kOptStartTls));
  auto r = ParseReplies(out_);
  ASSERT_EQ(1u, r.size());
  EXPECT_EQ(kRepErrPolicy, r[0].type);
}

TEST_F(TlsHandshakeTest, OnLetsAPlainClientThrough) {
  Begin(TlsMode::kOn);
  Feed(Option(kOptList) + Option(kOptGo, InfoRequest("vol0")));
  auto r = ParseReplies(out_);
  for (const auto& x : r) EXPECT_NE(kRepErrTlsReqd, x.type);
  EXPECT_EQ(Handshake::State::kTransmission, hs_->state());
  EXPECT_FALSE(hs_->tls());
}

TEST_F(TlsHandshakeTest, NothingNegotiatedInTheClearSurvivesStartTls) {
  // CVE-2021-3716 (nbdkit): a man in the middle must not be able to choose
  // structured replies or meta contexts for the TLS session.
  Begin(TlsMode::kOn);
  Feed(Option(kOptStructuredReply) + Option(kOptSetMetaContext, MetaRequest("vol0", {kBaseAllocation})));
  ASSERT_EQ(3u, ParseReplies(out_).size());
  out_.clear();
  UpgradeToTls();
  Feed(Option(kOptGo, InfoRequest("vol0")));
  EXPECT_EQ(Handshake::State::kTransmission, hs_->state());
  EXPECT_FALSE(hs_->structured_replies());
  EXPECT_FALSE(hs_->base_allocation());
  EXPECT_FALSE(hs_->transmission_flags() & kFlagSendDf);
}

TEST_F(TlsHandshakeTest, ExportNameInsideTlsEntersTransmission) {
  Begin(TlsMode::kRequire, kClientFixedNewstyle);
  UpgradeToTls();
  Feed(Option(kOptExportName, "vol0"));
  EXPECT_EQ(Handshake::State::kTransmission, hs_->state());
  EXPECT_EQ(8u + 2 + 124, out_.size());
}

// --- Credentials ---------------------------------------------------------------

std::string WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

TEST(TlsCredentialsTest, NeedsSomeCredentials) {
  auto c = TlsCredentials::Load(TlsConfig{});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string::npos, c.status().message().find("--tls-certs"));
}

TEST(TlsCredentialsTest, VerifyPeerNeedsCertificates) {
  testing::TempDir dir;
  TlsConfig config;
  config.psk_file = WriteFile(dir.path() + "/keys.psk", "alice:00112233\n");
  config.verify_peer = true;
  EXPECT_FALSE(TlsCredentials::Load(config).ok());
}

TEST(TlsCredentialsTest, MissingCertificatesNameTheFile) {
  testing::TempDir dir;
  TlsConfig config;
  config.certs_dir = dir.path();
  auto c = TlsCredentials::Load(config);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string::npos, c.status().message().find(dir.path() + "/server-cert.pem"));
  config.certs_dir = dir.path() + "/nope";
  c = TlsCredentials::Load(config);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string::npos, c.status().message().find("nope"));
}

TEST(TlsCredentialsTest, MalformedCertificatesAreRefused) {
  testing::TempDir dir;
  WriteFile(dir.path() + "/server-cert.pem", "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n");
  WriteFile(dir.path() + "/server-key.pem", "garbage\n");
  TlsConfig config;
  config.certs_dir = dir.path();
  auto c = TlsCredentials::Load(config);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string::npos, c.status().message().find("server-key.pem"));
}

TEST(TlsCredentialsTest, MalformedPskFilesSayWhichLine) {
  testing::TempDir dir;
  struct Case {
    std::string text;
    std::string expect;
  } cases[] = {
      {"", "no keys"},
      {"\n\n", "no keys"},
      {"alice\n", "line 1"},
      {"alice:0011\nbob:xyz0\n", "line 2"},
      {"alice:001\n", "even number"},
      {":0011\n", "empty username"},
      {"alice:0011\nalice:2233\n", "twice"},
      {"alice:\n", "line 1"},
  };
  for (const auto& k : cases) {
    TlsConfig config;
    config.psk_file = WriteFile(dir.path() + "/keys.psk", k.text);
    auto c = TlsCredentials::Load(config);
    ASSERT_FALSE(c.ok()) << "accepted: " << k.text;
    EXPECT_NE(std::string::npos, c.status().message().find(k.expect)) << c.status().message();
  }
  TlsConfig config;
  config.psk_file = dir.path() + "/missing.psk";
  auto c = TlsCredentials::Load(config);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string::npos, c.status().message().find("missing.psk"));
}

TEST(TlsCredentialsTest, PskFileAsPsktoolWritesIt) {
  testing::TempDir dir;
  TlsConfig config;
  config.psk_file = WriteFile(dir.path() + "/keys.psk",
                              "alice:c367d13d01b6b2d594ca830c301f3346a1707a584b03d340322cbd68ee983a32\r\n"
                              "bob:730F07F43266CB280A9F2CFFBC51AEBF\n");
  auto c = TlsCredentials::Load(config);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_NE(std::string::npos, (*c)->description().find("2 users"));
}

// --- A session through memory ------------------------------------------------------

// A GnuTLS PSK client whose transport is two strings.
class MemoryClient {
 public:
  MemoryClient(const std::string& user, const std::string& key) {
    gnutls_psk_allocate_client_credentials(&cred_);
    gnutls_datum_t k{reinterpret_cast<unsigned char*>(const_cast<char*>(key.data())),
                     static_cast<unsigned>(key.size())};
    gnutls_psk_set_client_credentials(cred_, user.c_str(), &k, GNUTLS_PSK_KEY_RAW);
    gnutls_init(&session_, GNUTLS_CLIENT | GNUTLS_NONBLOCK);
    gnutls_priority_set_direct(session_, "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK", nullptr);
    gnutls_credentials_set(session_, GNUTLS_CRD_PSK, cred_);
    gnutls_transport_set_ptr(session_, this);
    gnutls_transport_set_push_function(session_, [](gnutls_transport_ptr_t p, const void* d, size_t n) -> ssize_t {
      static_cast<MemoryClient*>(p)->to_server.append(static_cast<const char*>(d), n);
      return static_cast<ssize_t>(n);
    });
    gnutls_transport_set_pull_function(session_, [](gnutls_transport_ptr_t p, void* d, size_t n) -> ssize_t {
      auto* c = static_cast<MemoryClient*>(p);
      if (c->from_server.empty()) {
        gnutls_transport_set_errno(c->session_, EAGAIN);
        return -1;
      }
      n = std::min(n, c->from_server.size());
      std::memcpy(d, c->from_server.data(), n);
      c->from_server.erase(0, n);
      return static_cast<ssize_t>(n);
    });
    gnutls_transport_set_pull_timeout_function(session_, [](gnutls_transport_ptr_t p, unsigned) -> int {
      return static_cast<MemoryClient*>(p)->from_server.empty() ? 0 : 1;
    });
    gnutls_handshake_set_timeout(session_, 0);
  }
  ~MemoryClient() {
    gnutls_deinit(session_);
    gnutls_psk_free_client_credentials(cred_);
  }
  int Handshake() { return gnutls_handshake(session_); }
  void Send(const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = gnutls_record_send(session_, s.data() + off, s.size() - off);
      ASSERT_GT(n, 0);
      off += static_cast<size_t>(n);
    }
  }
  std::string ReadAll() {
    std::string got;
    char buf[65536];
    while (true) {
      ssize_t n = gnutls_record_recv(session_, buf, sizeof(buf));
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    return got;
  }

  std::string to_server, from_server;

 private:
  gnutls_psk_client_credentials_t cred_ = nullptr;
  gnutls_session_t session_ = nullptr;
};

// Runs both handshakes to completion (or failure) by shuttling bytes.
bool Converse(MemoryClient& client, TlsSession& server, std::string& sink) {
  int c = GNUTLS_E_AGAIN;
  ssize_t s = TlsSession::kAgain;
  for (int round = 0; round < 20; ++round) {
    if (c == GNUTLS_E_AGAIN) c = client.Handshake();
    server.Feed(client.to_server.data(), client.to_server.size());
    client.to_server.clear();
    if (s == TlsSession::kAgain) s = server.Handshake();
    client.from_server += sink;
    sink.clear();
    if (c == 0 && s == 0) return true;
    if ((c < 0 && c != GNUTLS_E_AGAIN) || s == TlsSession::kFailed) return false;
  }
  return false;
}

class TlsSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TlsConfig config;
    config.psk_file = WriteFile(dir_.path() + "/keys.psk", "alice:" + std::string(64, 'a') + "\n");
    auto c = TlsCredentials::Load(config);
    ASSERT_TRUE(c.ok()) << c.status().message();
    creds_ = *c;
  }
  testing::TempDir dir_;
  std::shared_ptr<const TlsCredentials> creds_;
};

TEST_F(TlsSessionTest, RoundTripThroughMemoryWithCorkedReplies) {
  std::string sink;
  auto server = TlsSession::Create(creds_, &sink);
  ASSERT_TRUE(server.ok()) << server.status().message();
  MemoryClient client("alice", std::string(32, '\xaa'));
  ASSERT_TRUE(Converse(client, **server, sink)) << (*server)->error();
  EXPECT_TRUE((*server)->handshake_done());

  // Client to server: a large message arrives whole, in order, through Read.
  std::string big(300000, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7);
  client.Send(big);
  (*server)->Feed(client.to_server.data(), client.to_server.size());
  client.to_server.clear();
  std::string got;
  char buf[10000];
  while (true) {
    ssize_t n = (*server)->Read(buf, sizeof(buf));
    if (n == TlsSession::kAgain) break;
    ASSERT_GT(n, 0);
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(big, got);
  EXPECT_FALSE((*server)->has_pending_input());

  // Server to client: header + payload pieces corked together.
  (*server)->Cork();
  ASSERT_TRUE((*server)->Write("header", 6));
  ASSERT_TRUE((*server)->Write(big.data(), big.size()));
  ASSERT_TRUE((*server)->Uncork());
  client.from_server += sink;
  sink.clear();
  EXPECT_EQ("header" + big, client.ReadAll());

  // close_notify reaches the client; the client's reaches the server as kClosed.
  (*server)->Bye();
  EXPECT_FALSE(sink.empty());
}

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

TEST_F(TlsSessionTest, HandshakeNeverWaitsWithInputLeft) {
  // Found by nbd_stream_fuzzer (corpus/regress-tls-split-client-hello): a
  // ClientHello split over records made GnuTLS answer E_AGAIN with input
  // unread; the connection then waited for the socket forever.
  std::string bytes = FromHex(
      "160303002f010000fefffff500034903484156454f500000160303002f010000fefffff500034903484156454f505400"
      "00000000160303002f0100002b03000000034903484156454f5054000000060000001200000004765400000000001603"
      "03002f0100002b03000000034903484156454f5054000000060000001200000004766f6c000000000030000400000001"
      "0002006203494841000000000030000400000001000200034948410000d57f000a000100000000046e6f706500ff7c48"
      "4156454f5054000000020000000000");
  std::string sink;
  auto server = TlsSession::Create(creds_, &sink);
  ASSERT_TRUE(server.ok());
  (*server)->Feed(bytes.data(), bytes.size());
  ssize_t r = (*server)->Handshake();
  EXPECT_TRUE(r != TlsSession::kAgain || !(*server)->has_pending_input())
      << "kAgain with input left: the caller would wait for more forever";
  EXPECT_EQ(TlsSession::kFailed, r);
}

TEST_F(TlsSessionTest, WrongKeyFailsTheHandshake) {
  std::string sink;
  auto server = TlsSession::Create(creds_, &sink);
  ASSERT_TRUE(server.ok());
  MemoryClient client("alice", std::string(32, '\xbb'));
  EXPECT_FALSE(Converse(client, **server, sink));
  EXPECT_FALSE((*server)->handshake_done());
  EXPECT_NE("", (*server)->error()) << "the server itself must refuse";
}

TEST_F(TlsSessionTest, UnknownUserFailsTheHandshake) {
  std::string sink;
  auto server = TlsSession::Create(creds_, &sink);
  ASSERT_TRUE(server.ok());
  MemoryClient client("mallory", std::string(32, '\xaa'));
  EXPECT_FALSE(Converse(client, **server, sink));
  EXPECT_FALSE((*server)->handshake_done());
  EXPECT_NE("", (*server)->error()) << "the server itself must refuse";
}

}  // namespace
}  // namespace ebs::nbd
