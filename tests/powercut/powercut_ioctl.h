// The one ioctl powercut_fs answers: make everything durable, as syncfs(2)
// would. FUSE never tells its server about syncfs (the kernel forwards it to
// virtiofs servers only), so the preload shim (syncfs_preload.cc) turns a
// syncfs on this file system into this ioctl; without it a program relying on
// syncfs, as the snapshot store does for batched chunk objects, would lose at
// every cut what a real file system keeps.
#pragma once

#include <sys/ioctl.h>

#define POWERCUT_IOC_SYNCFS _IO('p', 0x5c)
// statfs(2) f_type of every FUSE file system.
#define POWERCUT_FUSE_SUPER_MAGIC 0x65735546
