// The host errno -> NBD wire error mapping (nbd-server/src/wire_error.cc).
// The wire values are fixed by the NBD protocol (doc/proto.md, "Error
// values"), independent of the host's errno numbering.
#include <cerrno>
#include <cstdint>

#include <gtest/gtest.h>

#include "ebs/nbd/protocol.h"

namespace ebs::nbd {
namespace {

TEST(WireErrorTest, WireValuesAreTheProtocols) {
  // doc/proto.md: EPERM 1, EIO 5, ENOMEM 12, EINVAL 22, ENOSPC 28,
  // EOVERFLOW 75, ENOTSUP 95, ESHUTDOWN 108.
  EXPECT_EQ(kEperm, 1u);
  EXPECT_EQ(kEio, 5u);
  EXPECT_EQ(kEnomem, 12u);
  EXPECT_EQ(kEinval, 22u);
  EXPECT_EQ(kEnospc, 28u);
  EXPECT_EQ(kEoverflow, 75u);
  EXPECT_EQ(kEnotsup, 95u);
  EXPECT_EQ(kEshutdown, 108u);
}

TEST(WireErrorTest, SuccessIsZero) { EXPECT_EQ(ToWireError(0), 0u); }

TEST(WireErrorTest, DirectMappings) {
  EXPECT_EQ(ToWireError(EPERM), kEperm);
  EXPECT_EQ(ToWireError(EIO), kEio);
  EXPECT_EQ(ToWireError(ENOMEM), kEnomem);
  EXPECT_EQ(ToWireError(EINVAL), kEinval);
  EXPECT_EQ(ToWireError(ENOSPC), kEnospc);
  EXPECT_EQ(ToWireError(EOVERFLOW), kEoverflow);
  EXPECT_EQ(ToWireError(ESHUTDOWN), kEshutdown);
}

TEST(WireErrorTest, ReadOnlyIsEperm) {
  // The spec: EPERM for a write to a read-only export.
  EXPECT_EQ(ToWireError(EROFS), kEperm);
}

TEST(WireErrorTest, OutOfSpaceVariantsAreEnospc) {
  EXPECT_EQ(ToWireError(EDQUOT), kEnospc);
  EXPECT_EQ(ToWireError(EFBIG), kEnospc);
}

TEST(WireErrorTest, NotSupportedIsEnotsup) {
  EXPECT_EQ(ToWireError(EOPNOTSUPP), kEnotsup);
  // On Linux ENOTSUP and EOPNOTSUPP are the same value.
  EXPECT_EQ(ToWireError(ENOTSUP), kEnotsup);
}

TEST(WireErrorTest, UnmappedErrnoIsEio) {
  // protocol.h: "EIO for anything unmapped".
  for (int err : {EAGAIN, EBADF, ENOENT, EACCES, EEXIST, ETIMEDOUT, ECONNRESET, EPIPE, EBUSY,
                  ENODEV, ENXIO, ERANGE, EINTR, ECANCELED}) {
    EXPECT_EQ(ToWireError(err), kEio) << "errno " << err;
  }
  // Values outside the errno range, including negatives (e.g. a -errno
  // passed through unnegated), never leak onto the wire as themselves.
  EXPECT_EQ(ToWireError(-EINVAL), kEio);
  EXPECT_EQ(ToWireError(-1), kEio);
  EXPECT_EQ(ToWireError(100000), kEio);
}

TEST(WireErrorTest, EveryResultIsAProtocolValue) {
  // Whatever the host errno, the reply carries one of the spec's values.
  for (int err = -200; err < 200; ++err) {
    uint32_t w = ToWireError(err);
    if (err == 0) {
      EXPECT_EQ(w, 0u);
      continue;
    }
    EXPECT_TRUE(w == kEperm || w == kEio || w == kEnomem || w == kEinval || w == kEnospc ||
                w == kEoverflow || w == kEnotsup || w == kEshutdown)
        << "errno " << err << " -> " << w;
  }
}

}  // namespace
}  // namespace ebs::nbd
