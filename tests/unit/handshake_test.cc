// The NBD handshake state machine, byte for byte against the protocol.
#include "ebs/nbd/handshake.h"

#include <gtest/gtest.h>

#include "ebs/nbd/protocol.h"
#include "nbd_handshake_fixtures.h"

namespace ebs::nbd {
namespace {

using fixtures::FixedDirectory;
using fixtures::InfoRequest;
using fixtures::MetaRequest;
using fixtures::Option;
using fixtures::ParseReplies;

class HandshakeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    hs_.Start(&out_);
    ASSERT_EQ(18u, out_.size());
    EXPECT_EQ(kNbdMagic, Load64(out_.data()));
    EXPECT_EQ(kIHaveOpt, Load64(out_.data() + 8));
    EXPECT_EQ(kFlagFixedNewstyle | kFlagNoZeroes, Load16(out_.data() + 16));
    out_.clear();
  }
  // Feeds bytes; checks that everything was consumed.
  void Feed(const std::string& bytes) {
    size_t used = hs_.Consume(bytes.data(), bytes.size(), &out_);
    EXPECT_EQ(bytes.size(), used);
  }
  void ClientFlags(uint32_t flags) {
    std::string s;
    Append32(&s, flags);
    Feed(s);
  }
  FixedDirectory dir_{{{"vol0", "gp3 1 GiB", 1 << 30, false}, {"db", "io2", 4ull << 30, false}}};
  Handshake hs_{&dir_};
  std::string out_;
};

TEST_F(HandshakeTest, UnknownClientFlagsClose) {
  ClientFlags(1u << 7);
  EXPECT_EQ(Handshake::State::kClosed, hs_.state());
}

TEST_F(HandshakeTest, ListShowsEveryExportThenAck) {
  ClientFlags(kClientFixedNewstyle | kClientNoZeroes);
  Feed(Option(kOptList, ""));
  auto r = ParseReplies(out_);
  ASSERT_EQ(3u, r.size());
  EXPECT_EQ(kRepServer, r[0].type);
  EXPECT_EQ(4u, Load32(r[0].data.data()));
  EXPECT_EQ("vol0", r[0].data.substr(4, 4));
  EXPECT_EQ(kRepServer, r[1].type);
  EXPECT_EQ(kRepAck, r[2].type);
  EXPECT_EQ(Handshake::State::kOptions, hs_.state());
}

TEST_F(HandshakeTest, UnknownOptionIsUnsupportedAndNegotiationContinues) {
  ClientFlags(kClientFixedNewstyle | kClientNoZeroes);
  Feed(Option(99, "xyz") + Option(kOptStartTls, ""));
  auto r = ParseReplies(out_);
  ASSERT_EQ(2u, r.size());
  EXPECT_EQ(kRepErrUnsup, r[0].type);
  EXPECT_EQ(kRepErrUnsup, r[1].type);
  EXPECT_EQ(Handshake::State::kOptions, hs_.state());
}

TEST_F(HandshakeTest, InfoOnUnknownExportIsErrUnknown) {
  ClientFlags(kClientFixedNewstyle | kClientNoZeroes);
  Feed(Option(kOptInfo, InfoRequest("nope", {})));
  auto r = ParseReplies(out_);
  ASSERT_EQ(1u, r.size());
  EXPECT_EQ(kRepErrUnknown, r[0].type);
}

TEST_F(HandshakeTest, GoEntersTransmissionWithExportAndBlockSizes) {
  ClientFlags(kClientFixedNewstyle | kClientNoZeroes);
  Feed(Option(kOptStructuredReply, "") + Option(kOptGo, InfoRequest("db", {kInfoName, kInfoBlockSize})));
  auto r = ParseReplies(out_);
  ASSERT_EQ(5u, r.size());
  EXPECT_EQ(kRepAck, r[0].type);  // structured reply
  EXPECT_EQ(kRepInfo, r[1].type);
  EXPECT_EQ(kInfoExport, Load16(r[1].data.data()));
  EXPECT_EQ(4ull << 30, Load64(r[1].data.data() + 2));
  uint16_t flags = Load16(r[1].data.data() + 10);
  EXPECT_TRUE(flags & kFlagCanMultiConn);
  EXPECT_TRUE(flags & kFlagSendDf);
  EXPECT_TRUE(flags & kFlagSendFastZero);
  EXPECT_FALSE(flags & kFlagReadOnly);
  EXPECT_EQ(kInfoName, Load16(r[2].data.data()));
  EXPECT_EQ("db", r[2].data.substr(2));
  EXPECT_EQ(kInfoBlockSize, Load16(r[3].data.data()));
  EXPECT_EQ(512u, Load32(r[3].data.data() + 2));
  EXPECT_EQ(4096u, Load32(r[3].data.data() + 6));
  EXPECT_EQ(64u << 20, Load32(r[3].data.data() + 10));
  EXPECT_EQ(kRepAck, r[4].type);
  EXPECT_EQ(Handshake::State::kTransmission, hs_.state());
  EXPECT_TRUE(hs_.structured_replies());
  EXPECT_TRUE(hs_.block_size_negotiated());
  EXPECT_EQ("db", hs_.export_info().name);
}

TEST_F(HandshakeTest, ExportNameWithoutNoZeroesPads) {
  ClientFlags(kClientFixedNewstyle);
  Feed(Option(kOptExportName, ""));  // empty name: the default export
  ASSERT_EQ(8u + 2 + 124, out_.size());
  EXPECT_EQ(1ull << 30, Load64(out_.data()));
  EXPECT_FALSE(Load16(out_.data() + 8) & kFlagSendDf) << "DF needs structured replies";
  EXPECT_EQ(std::string(124, '\0'), out_.substr(10));
  EXPECT_EQ(Handshake::State::kTransmission, hs_.state());
}

TEST_F(HandshakeTest, ExportNameOfUnknownExportCloses) {
  ClientFlags(kClientFixedNewstyle | kClientNoZeroes);
  Feed(Option(kOptExportName, "missing"));
  EXPECT_EQ(Handshake::State::kClosed, hs_.state());
  EXPECT_TRUE(out_.empty());
}

TEST_F(HandshakeTest, MetaContextNeedsStructuredRepliesThenSelectsBaseAllocation) {
  ClientFlags(kClientFixedNewstyle | kClientNoZeroes);
  Feed(Option(kOptSetMetaContext, MetaRequest("vol0", {kBaseAllocation})));
  auto r = ParseReplies(out_);
  ASSERT_EQ(1u, r.size());
  EXPECT_EQ(kRepErrInvalid, r[0].type);
  out_.clear();
  Feed(Option(kOptListMetaContext, MetaRequest("vol0", {})));
  r = ParseReplies(out_);
  ASSERT_EQ(2u, r.size());
  EXPECT_EQ(kRepMetaContext, r[0].type);
  EXPECT_EQ(kBaseAllocation, r[0].data.substr(4));
  out_.clear();
  Feed(Option(kOptStructuredReply, "") +
       Option(kOptSetMetaContext, MetaRequest("vol0", {"qemu:dirty-bitmap:x", kBaseAllocation})) +
       Option(kOptGo, InfoRequest("vol0", {})));
  r = ParseReplies(out_);
  ASSERT_GE(r.size(), 3u);
  EXPECT_EQ(kRepMetaContext, r[1].type);
  EXPECT_EQ(kBaseAllocationId, Load32(r[1].data.data()));
  EXPECT_EQ(Handshake::State::kTransmission, hs_.state());
  EXPECT_TRUE(hs_.base_allocation());
  EXPECT_FALSE(hs_.block_size_negotiated());
}

TEST_F(HandshakeTest, DirtyBitmapsAreListedByPrefixAndSelectedByExactName) {
  dir_.bitmaps = {"snap-a", "snap-b"};
  ClientFlags(kClientFixedNewstyle | kClientNoZeroes);
  auto names = [](const std::vector<fixtures::OptReply>& r) {
    std::vector<std::string> out;
    for (const auto& x : r) {
      if (x.type == kRepMetaContext) out.push_back(x.data.substr(4));
    }
    return out;
  };
  Feed(Option(kOptListMetaContext, MetaRequest("vol0", {"qemu:dirty-bitmap:"})));
  EXPECT_EQ((std::vector<std::string>{"qemu:dirty-bitmap:snap-a", "qemu:dirty-bitmap:snap-b"}),
            names(ParseReplies(out_)));
  out_.clear();
  Feed(Option(kOptListMetaContext, MetaRequest("vol0", {})));
  EXPECT_EQ((std::vector<std::string>{kBaseAllocation, "qemu:dirty-bitmap:snap-a", "qemu:dirty-bitmap:snap-b"}),
            names(ParseReplies(out_)))
      << "no query lists every context";
  out_.clear();
  Feed(Option(kOptListMetaContext, MetaRequest("db", {"qemu:dirty-bitmap:"})));
  EXPECT_TRUE(names(ParseReplies(out_)).empty()) << "another export has no bitmaps";
  out_.clear();
  Feed(Option(kOptStructuredReply, "") +
       Option(kOptSetMetaContext,
              MetaRequest("vol0", {"qemu:dirty-bitmap:snap-b", "qemu:dirty-bitmap:snap-x", "qemu:dirty-bitmap:",
                                   kBaseAllocation})) +
       Option(kOptGo, InfoRequest("vol0", {})));
  auto r = ParseReplies(out_);
  std::vector<std::pair<uint32_t, std::string>> selected;
  for (const auto& x : r) {
    if (x.type == kRepMetaContext) selected.emplace_back(Load32(x.data.data()), x.data.substr(4));
  }
  // Only exact names select a bitmap (a prefix is for LIST), an unknown one is left out.
  ASSERT_EQ(2u, selected.size());
  EXPECT_EQ(kBaseAllocationId, selected[0].first);
  EXPECT_EQ((std::pair<uint32_t, std::string>{kFirstBitmapId, "qemu:dirty-bitmap:snap-b"}), selected[1]);
  EXPECT_EQ(Handshake::State::kTransmission, hs_.state());
  EXPECT_TRUE(hs_.base_allocation());
  EXPECT_EQ(std::vector<std::string>{"snap-b"}, hs_.dirty_bitmaps());
}

TEST_F(HandshakeTest, MetaContextForAnotherExportDoesNotCarryOver) {
  ClientFlags(kClientFixedNewstyle | kClientNoZeroes);
  Feed(Option(kOptStructuredReply, "") + Option(kOptSetMetaContext, MetaRequest("db", {kBaseAllocation})) +
       Option(kOptGo, InfoRequest("vol0", {})));
  EXPECT_EQ(Handshake::State::kTransmission, hs_.state());
  EXPECT_FALSE(hs_.base_allocation());
}

TEST_F(HandshakeTest, MalformedOptionsGetErrInvalid) {
  ClientFlags(kClientFixedNewstyle | kClientNoZeroes);
  std::string bad_info = InfoRequest("vol0", {1});
  bad_info.pop_back();  // truncated info list
  Feed(Option(kOptList, "x") + Option(kOptStructuredReply, "x") + Option(kOptGo, bad_info) +
       Option(kOptInfo, "\xff\xff\xff\xff\0\0"));
  auto r = ParseReplies(out_);
  ASSERT_EQ(4u, r.size());
  for (const auto& x : r) EXPECT_EQ(kRepErrInvalid, x.type);
  EXPECT_EQ(Handshake::State::kOptions, hs_.state());
}

TEST_F(HandshakeTest, OversizedOptionIsSkippedAndRefused) {
  ClientFlags(kClientFixedNewstyle | kClientNoZeroes);
  std::string big(kMaxOptionLength + 1, 'x');
  Feed(Option(kOptInfo, big) + Option(kOptList, ""));
  auto r = ParseReplies(out_);
  ASSERT_EQ(4u, r.size());
  EXPECT_EQ(kRepErrTooBig, r[0].type);
  EXPECT_EQ(kRepAck, r[3].type);
}

TEST_F(HandshakeTest, PartialMessagesWaitForMoreBytes) {
  std::string flags;
  Append32(&flags, kClientFixedNewstyle | kClientNoZeroes);
  std::string all = flags + Option(kOptList, "");
  size_t used = hs_.Consume(all.data(), 3, &out_);
  EXPECT_EQ(0u, used);
  used = hs_.Consume(all.data(), 10, &out_);
  EXPECT_EQ(4u, used);
  EXPECT_TRUE(out_.empty());
  used = hs_.Consume(all.data() + 4, all.size() - 4, &out_);
  EXPECT_EQ(all.size() - 4, used);
  EXPECT_EQ(3u, ParseReplies(out_).size());
}

TEST_F(HandshakeTest, ReplyBudgetStopsConsumingUntilTheClientReads) {
  ClientFlags(kClientFixedNewstyle | kClientNoZeroes);
  std::string lists;
  for (int i = 0; i < 1000; ++i) lists += Option(kOptList, "");
  // Each LIST answers 3 replies (two exports and the ACK).
  const size_t one = [&] {
    std::string o;
    Handshake probe(&dir_);
    probe.Start(&o);
    std::string flags;
    Append32(&flags, kClientFixedNewstyle | kClientNoZeroes);
    std::string in = flags + Option(kOptList, "");
    o.clear();
    probe.Consume(in.data(), in.size(), &o);
    return o.size();
  }();
  const size_t budget = 10 * one + 1;
  size_t used = hs_.Consume(lists.data(), lists.size(), &out_, budget);
  // Stops after the option that reached the budget: 11 answered, the rest left.
  EXPECT_EQ(11u * 16, used);
  EXPECT_EQ(11 * one, out_.size());
  EXPECT_EQ(Handshake::State::kOptions, hs_.state());
  // Nothing more while the budget is spent; the rest once the client read.
  EXPECT_EQ(0u, hs_.Consume(lists.data() + used, lists.size() - used, &out_, 0));
  out_.clear();
  EXPECT_EQ(lists.size() - used, hs_.Consume(lists.data() + used, lists.size() - used, &out_));
  EXPECT_EQ(3u * (1000 - 11), ParseReplies(out_).size());
}

TEST_F(HandshakeTest, TooManyOptionsClose) {
  ClientFlags(kClientFixedNewstyle | kClientNoZeroes);
  std::string opts;
  for (size_t i = 0; i < Handshake::kMaxOptions; ++i) opts += Option(99, "");
  Feed(opts);
  EXPECT_EQ(Handshake::State::kOptions, hs_.state());
  EXPECT_EQ(Handshake::kMaxOptions, ParseReplies(out_).size());
  // A partial option does not count until it is whole.
  std::string last = Option(kOptList, "");
  EXPECT_EQ(0u, hs_.Consume(last.data(), 10, &out_));
  EXPECT_EQ(Handshake::State::kOptions, hs_.state());
  hs_.Consume(last.data(), last.size(), &out_);
  EXPECT_EQ(Handshake::State::kClosed, hs_.state());
  EXPECT_NE(std::string::npos, hs_.close_reason().find("options"));
}

TEST_F(HandshakeTest, AbortAcksAndCloses) {
  ClientFlags(kClientFixedNewstyle | kClientNoZeroes);
  Feed(Option(kOptAbort, ""));
  auto r = ParseReplies(out_);
  ASSERT_EQ(1u, r.size());
  EXPECT_EQ(kRepAck, r[0].type);
  EXPECT_EQ(Handshake::State::kClosed, hs_.state());
}

}  // namespace
}  // namespace ebs::nbd
