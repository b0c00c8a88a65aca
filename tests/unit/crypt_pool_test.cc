// The crypt pool against the cipher run on one thread: the same bytes, from
// many jobs at once on two loops, with the completion on the job's loop
// whenever a helper finishes last; small jobs and a pool without helpers run
// inline; a cipher failure is reported.
#include "keys/crypt_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "test_util.h"

namespace ebs {
namespace {

std::shared_ptr<SectorCipher> Cipher() {
  std::string key = testing::RandomBytes(SectorCipher::kKeySize, 5);
  auto c = SectorCipher::Create(key);
  EXPECT_TRUE(c.ok());
  return *c;
}

// Runs `job` from `loop`'s thread as a layer would; returns once it is done
// (inline or through job->done), with whether done ran on that loop.
struct Waiter {
  std::promise<bool> done;
};
bool RunOnLoop(CryptPool& pool, EventLoop& loop, CryptPool::Job* job) {
  Waiter w;
  job->loop = &loop;
  job->ctx = &w;
  job->done = [](CryptPool::Job* j) {
    static_cast<Waiter*>(j->ctx)->done.set_value(j->loop->InLoopThread());
  };
  loop.Post([&] {
    if (pool.Run(job)) static_cast<Waiter*>(job->ctx)->done.set_value(true);
  });
  return w.done.get_future().get();
}

TEST(CryptPoolTest, LargeJobsMatchTheCipherOnOneThread) {
  auto loop = testing::StartLoop("crypt-test", 64);
  ASSERT_NE(nullptr, loop);
  auto cipher = Cipher();
  CryptPool pool(1);
  for (uint64_t len : {CryptPool::kParallelMin, uint64_t{1} << 20, (uint64_t{1} << 20) + 3 * 4096, uint64_t{4} << 20}) {
    const std::string plain = testing::RandomBytes(len, len);
    std::string want(len, '\0');
    ASSERT_TRUE(cipher->Encrypt(8 << 20, plain.data(), want.data(), len).ok());
    std::string got(len, '\0');
    auto job = std::make_unique<CryptPool::Job>();
    job->cipher = cipher.get();
    job->encrypt = true;
    job->offset = 8 << 20;
    job->in = plain.data();
    job->out = got.data();
    job->len = len;
    EXPECT_TRUE(RunOnLoop(pool, *loop, job.get())) << "completion off its loop";
    EXPECT_FALSE(job->failed.load());
    EXPECT_TRUE(got == want) << len << " bytes encrypted differ";
    // And back, in place.
    job->encrypt = false;
    job->in = got.data();
    EXPECT_TRUE(RunOnLoop(pool, *loop, job.get()));
    EXPECT_TRUE(got == plain) << len << " bytes decrypted differ";
  }
  loop->Stop();
}

TEST(CryptPoolTest, ManyJobsFromTwoLoopsAtOnce) {
  auto a = testing::StartLoop("crypt-a", 64);
  auto b = testing::StartLoop("crypt-b", 64);
  ASSERT_NE(nullptr, a);
  ASSERT_NE(nullptr, b);
  auto cipher = Cipher();
  CryptPool pool(2);
  constexpr int kJobs = 64;
  constexpr uint64_t kLen = 512 << 10;
  const std::string plain = testing::RandomBytes(kLen, 99);
  std::vector<std::string> want(kJobs), got(kJobs, std::string(kLen, '\0'));
  std::vector<std::unique_ptr<CryptPool::Job>> jobs;
  std::vector<std::promise<bool>> done(kJobs);
  for (int i = 0; i < kJobs; ++i) {
    want[i].resize(kLen);
    ASSERT_TRUE(cipher->Encrypt(uint64_t(i) * kLen, plain.data(), want[i].data(), kLen).ok());
    auto j = std::make_unique<CryptPool::Job>();
    j->cipher = cipher.get();
    j->encrypt = true;
    j->offset = uint64_t(i) * kLen;
    j->in = plain.data();
    j->out = got[i].data();
    j->len = kLen;
    j->loop = i % 2 ? a.get() : b.get();
    j->ctx = &done[i];
    j->done = [](CryptPool::Job* job) {
      static_cast<std::promise<bool>*>(job->ctx)->set_value(job->loop->InLoopThread());
    };
    jobs.push_back(std::move(j));
  }
  for (int i = 0; i < kJobs; ++i) {
    CryptPool::Job* j = jobs[i].get();
    j->loop->Post([&pool, j] {
      if (pool.Run(j)) static_cast<std::promise<bool>*>(j->ctx)->set_value(true);
    });
  }
  for (int i = 0; i < kJobs; ++i) {
    EXPECT_TRUE(done[i].get_future().get()) << "job " << i << " completed off its loop";
    EXPECT_TRUE(got[i] == want[i]) << "job " << i;
  }
  a->Stop();
  b->Stop();
}

TEST(CryptPoolTest, SmallJobsAndAPoolWithoutHelpersRunInline) {
  auto cipher = Cipher();
  const std::string plain = testing::RandomBytes(1 << 20, 3);
  std::string want(plain.size(), '\0');
  ASSERT_TRUE(cipher->Encrypt(0, plain.data(), want.data(), plain.size()).ok());
  for (auto [helpers, len] : {std::pair<int, uint64_t>{2, 64 << 10}, {0, 1 << 20}}) {
    CryptPool pool(helpers);
    CryptPool::Job job;
    job.cipher = cipher.get();
    job.encrypt = true;
    job.in = plain.data();
    std::string got(len, '\0');
    job.out = got.data();
    job.len = len;
    job.done = [](CryptPool::Job*) { ADD_FAILURE() << "an inline job posted its completion"; };
    EXPECT_TRUE(pool.Run(&job));  // no loop: it must not need one
    EXPECT_TRUE(got == want.substr(0, len));
  }
}

TEST(CryptPoolTest, ACipherFailureIsReported) {
  auto loop = testing::StartLoop("crypt-fail", 64);
  ASSERT_NE(nullptr, loop);
  auto cipher = Cipher();
  CryptPool pool(1);
  std::string buf(1 << 20, 'x');
  CryptPool::Job job;
  job.cipher = cipher.get();
  job.offset = 512;  // not a sector boundary: the cipher refuses every piece
  job.in = buf.data();
  job.out = buf.data();
  job.len = buf.size();
  RunOnLoop(pool, *loop, &job);
  EXPECT_TRUE(job.failed.load());
  loop->Stop();
}

}  // namespace
}  // namespace ebs
