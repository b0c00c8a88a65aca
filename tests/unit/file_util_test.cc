// File helpers on a real file system: durable mkdir -p.
#include "ebs/engine/file_util.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "test_util.h"

namespace ebs {
namespace {

using testing::TempDir;

TEST(MakeDurableDirectoriesTest, CreatesEveryMissingLevelWithTheMode) {
  TempDir dir;
  const std::string deep = dir.path() + "/a/b/c/";
  ASSERT_TRUE(MakeDurableDirectories(deep, 0700).ok());
  for (const std::string& p : {dir.path() + "/a", dir.path() + "/a/b", dir.path() + "/a/b/c"}) {
    struct stat st {};
    ASSERT_EQ(0, stat(p.c_str(), &st)) << p;
    EXPECT_TRUE(S_ISDIR(st.st_mode)) << p;
    EXPECT_EQ(0700u, st.st_mode & 0777) << p;
  }
  // Existing directories are fine.
  EXPECT_TRUE(MakeDurableDirectories(dir.path() + "/a/b", 0700).ok());
}

TEST(MakeDurableDirectoriesTest, AFileInThePathIsNotADirectory) {
  TempDir dir;
  std::ofstream(dir.path() + "/f") << "x";
  Status st = MakeDurableDirectories(dir.path() + "/f", 0700);
  EXPECT_EQ(ENOTDIR, st.code()) << st.message();
  st = MakeDurableDirectories(dir.path() + "/f/g", 0700);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string::npos, st.message().find(dir.path() + "/f")) << st.message();
  EXPECT_FALSE(MakeDurableDirectories("", 0700).ok());
}

}  // namespace
}  // namespace ebs
