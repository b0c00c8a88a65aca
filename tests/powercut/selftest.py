#!/usr/bin/python3
"""Self-test of powercut_fs against the real kernel, through a real mount.

  selftest.py POWERCUT_FS SYNCFS_SHIM

Mounts a fresh powercut_fs, does file and directory operations with and
without fsync/fdatasync/fsyncdir/syncfs, cuts, revives, and checks that
exactly the synced state survived (names, sizes, contents, holes): the
model in fs_model.h, case by case. Then the same with torn writeback
(keep=100: every unsynced block and size kept, no unsynced name), the
failures while cut, and handles opened before the cut. Exit 0 when every
check passed, 1 on the first mismatch; 77 when FUSE cannot be used here
(outside CI only: under CI=true that is a failure).
"""

import ctypes
import errno
import os
import subprocess
import sys
import tempfile
import time

FS, SHIM = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 1, 2, 16
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100
checks = 0


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def check(cond, msg):
    global checks
    checks += 1
    if not cond:
        fail(msg)


def cannot_run(why):
    if os.environ.get("CI") == "true":
        fail(f"cannot run under CI: {why}")
    print(f"SKIP: {why}")
    sys.exit(77)


def fallocate(fd, mode, off, n):
    if libc.fallocate(fd, mode, ctypes.c_long(off), ctypes.c_long(n)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def renameat2(a, b, flags):
    if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags) != 0:
        return ctypes.get_errno()
    return 0


def write_file(path, data, sync=None, off=0):
    """Writes data at off; sync: None, 'fsync' or 'fdatasync'."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    os.pwrite(fd, data, off)
    if sync:
        getattr(os, sync)(fd)
    os.close(fd)


def sync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)


def tree(root):
    """{relative path: 'dir' | ('sock',) | bytes} of everything under root."""
    out = {}
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        for n in dirs:
            out[os.path.normpath(os.path.join(rel, n))] = "dir"
        for n in files:
            p = os.path.join(d, n)
            key = os.path.normpath(os.path.join(rel, n))
            if os.path.stat.S_ISSOCK(os.lstat(p).st_mode):
                out[key] = ("sock",)
            else:
                with open(p, "rb") as f:
                    out[key] = f.read()
    return out


def short(v):
    if isinstance(v, bytes):
        return f"{len(v)} bytes {v[:24]!r}{'...' if len(v) > 24 else ''}"
    return repr(v)


def compare(got, want, what):
    for k in sorted(set(got) | set(want)):
        check(k in got, f"{what}: {k} is missing (want {short(want.get(k))})")
        check(k in want, f"{what}: {k} should not exist (holds {short(got.get(k))})")
        check(got[k] == want[k], f"{what}: {k} holds {short(got[k])}, want {short(want[k])}")


class Mount:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="powercut-selftest.")
        self.mnt = os.path.join(self.dir, "mnt")
        self.ctl = os.path.join(self.dir, "ctl.sock")
        os.mkdir(self.mnt)
        self.log = open(os.path.join(self.dir, "fs.log"), "w+")
        self.proc = subprocess.Popen([FS, self.mnt, "--control", self.ctl], stdout=self.log, stderr=self.log)
        for _ in range(200):
            if os.path.ismount(self.mnt):
                return
            if self.proc.poll() is not None:
                self.log.seek(0)
                cannot_run(f"powercut_fs could not mount: {self.log.read().strip()}")
            time.sleep(0.025)
        cannot_run("powercut_fs did not mount within 5 s")

    def ctl_cmd(self, *words):
        r = subprocess.run([FS, "ctl", self.ctl, *words], capture_output=True, text=True)
        check(r.returncode == 0, f"ctl {' '.join(words)}: {r.stderr.strip()}")
        return r.stdout

    def close(self):
        subprocess.run(["umount", "-l", self.mnt], capture_output=True)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        subprocess.run(["rm", "-rf", self.dir])


def scenario(M):
    """Operations of every kind; returns the tree that must survive a cut
    without torn writeback, and the one that must survive with keep=100."""
    d = os.path.join(M, "d")
    os.mkdir(d)
    sync_dir(M)
    want = {"d": "dir"}
    # Content synced, then more written: the synced content survives.
    write_file(f"{d}/synced", b"A" * 5000, "fsync")
    write_file(f"{d}/synced", b"B" * 100, off=10000)
    write_file(f"{d}/datasynced", b"C" * 8192, "fdatasync")
    write_file(f"{d}/datasynced", b"D" * 4096)  # overwrite block 0 unsynced
    # Named durably, content never synced: empty.
    write_file(f"{d}/nodata", b"E" * 3000)
    # A write with RWF_DSYNC (ebs's FUA) is durable when it returns, and so
    # is every write to a file opened O_DSYNC.
    fd = os.open(f"{d}/dsync", os.O_CREAT | os.O_WRONLY, 0o644)
    os.pwritev(fd, [b"W" * 6000], 0, os.RWF_DSYNC)
    os.pwrite(fd, b"w" * 10, 0)
    os.close(fd)
    fd = os.open(f"{d}/osync", os.O_CREAT | os.O_WRONLY | os.O_DSYNC, 0o644)
    os.pwrite(fd, b"O" * 10, 0)
    os.close(fd)
    # Content synced, name never synced (the directory is synced before it
    # is created, below): lost.
    sync_dir(d)
    write_file(f"{d}/noname", b"F" * 100, "fsync")
    want.update({"d/synced": b"A" * 5000, "d/datasynced": b"C" * 8192, "d/nodata": b"",
                 "d/dsync": b"W" * 6000, "d/osync": b"O" * 10})
    torn = dict(want)
    torn.update({"d/synced": b"A" * 5000 + bytes(5000) + b"B" * 100,
                 "d/datasynced": b"D" * 4096 + b"C" * 4096, "d/nodata": b"E" * 3000,
                 "d/dsync": b"w" * 10 + b"W" * 5990})

    # Renames: with the directory synced after it, and without.
    r = os.path.join(M, "r")
    os.mkdir(r)
    sync_dir(M)
    for n, c in (("r1", b"1"), ("r3", b"3"), ("t", b"old"), ("tmp", b"new"), ("u1", b"u"), ("u2", b"v"),
                 ("x1", b"x"), ("x2", b"y"), ("n1", b"n"), ("n2", b"m")):
        write_file(f"{r}/{n}", c, "fsync")
    sync_dir(r)
    os.rename(f"{r}/r1", f"{r}/r2")
    os.unlink(f"{r}/u1")
    check(renameat2(f"{r}/x1", f"{r}/x2", RENAME_EXCHANGE) == 0, "RENAME_EXCHANGE refused")
    check(renameat2(f"{r}/n1", f"{r}/n2", RENAME_NOREPLACE) == errno.EEXIST, "RENAME_NOREPLACE over a name did not fail with EEXIST")
    sync_dir(r)
    os.rename(f"{r}/r3", f"{r}/r4")       # not synced: r3 stays
    os.rename(f"{r}/tmp", f"{r}/t")       # over an existing name, not synced: old t, tmp stays
    os.unlink(f"{r}/u2")                  # not synced: comes back
    os.link(f"{r}/r2", f"{r}/l")          # not synced: gone
    for k, v in {"r": "dir", "r/r2": b"1", "r/r3": b"3", "r/t": b"old", "r/tmp": b"new", "r/u2": b"v",
                 "r/x1": b"y", "r/x2": b"x", "r/n1": b"n", "r/n2": b"m"}.items():
        want[k] = torn[k] = v

    # A directory named durably, its new file not: the directory is empty.
    os.mkdir(f"{M}/sub")
    sync_dir(M)
    os.mkdir(f"{M}/sub/inner")
    write_file(f"{M}/sub/inner/f", b"G", "fsync")
    os.mkdir(f"{M}/sub/gone")             # synced, but its parent never is: gone with its file
    write_file(f"{M}/sub/gone/f", b"H", "fsync")
    sync_dir(f"{M}/sub/gone")
    want["sub"] = torn["sub"] = "dir"

    # Sparse files, truncation, holes: 4 KiB blocks, nothing stored for holes.
    s = os.path.join(M, "s")
    os.mkdir(s)
    sync_dir(M)
    fd = os.open(f"{s}/sparse", os.O_CREAT | os.O_RDWR, 0o644)
    os.pwrite(fd, b"S" * 4096, 1 << 26)
    os.pwrite(fd, b"s" * 10, 4096 * 3 + 5)
    os.fsync(fd)
    check(os.lseek(fd, 0, os.SEEK_DATA) == 4096 * 3, "SEEK_DATA did not find the first data block")
    check(os.lseek(fd, 4096 * 3, os.SEEK_HOLE) == 4096 * 4, "SEEK_HOLE did not find the hole after it")
    check(os.lseek(fd, 4096 * 4, os.SEEK_DATA) == 1 << 26, "SEEK_DATA did not find the far block")
    os.ftruncate(fd, 4096 * 3 + 7)        # not synced: the size comes back
    os.close(fd)
    write_file(f"{s}/punched", b"P" * 16384, "fsync")
    fd = os.open(f"{s}/punched", os.O_RDWR)
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 4096)
    fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 100, 200)
    os.fsync(fd)
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8192, 4096)  # not synced
    fallocate(fd, 0, 0, 65536)            # plain allocate grows the size: not synced
    os.close(fd)
    sync_dir(s)
    sparse = bytes(4096 * 3 + 5) + b"s" * 10 + bytes((1 << 26) - 4096 * 3 - 15) + b"S" * 4096
    punched = b"P" * 100 + bytes(200) + b"P" * 3796 + bytes(4096) + b"P" * 8192
    want.update({"s": "dir", "s/sparse": sparse, "s/punched": punched})
    torn.update({"s": "dir", "s/sparse": sparse[:4096 * 3 + 7],
                 "s/punched": punched[:8192] + bytes(4096) + b"P" * 4096 + bytes(65536 - 16384)})

    # A socket (ebs binds its NBD and control sockets in the data directory).
    import socket
    so = socket.socket(socket.AF_UNIX)
    so.bind(f"{M}/sock")
    so.close()
    sync_dir(M)
    want["sock"] = torn["sock"] = ("sock",)

    # O_DIRECT opens work (ebs and the store use them).
    fd = os.open(f"{M}/direct", os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
    os.close(fd)
    return want, torn


def scenario_syncfs(M):
    """syncfs through the shim makes everything durable: file data, sizes
    and names never synced one by one; what comes after it is not."""
    os.mkdir(f"{M}/dir")
    write_file(f"{M}/dir/f", b"Z" * 5000)
    write_file(f"{M}/moved", b"m")
    os.rename(f"{M}/moved", f"{M}/dir/moved")
    r = subprocess.run([sys.executable, "-c", f"import ctypes, os; fd = os.open({M!r}, os.O_RDONLY); "
                        "os._exit(ctypes.CDLL(None).syncfs(fd) != 0)"], env={**os.environ, "LD_PRELOAD": SHIM})
    check(r.returncode == 0, "syncfs through the shim failed")
    want = {"dir": "dir", "dir/f": b"Z" * 5000, "dir/moved": b"m"}
    write_file(f"{M}/after", b"Y")
    write_file(f"{M}/dir/f", b"z" * 10, off=0)
    os.unlink(f"{M}/dir/moved")
    return want, None


def run(keep, scenario=scenario):
    m = Mount()
    try:
        M = m.mnt
        want, torn = scenario(M)
        held = os.open(f"{M}/{next(k for k, v in want.items() if isinstance(v, bytes))}", os.O_RDWR)  # open across the cut
        out = m.ctl_cmd("cut", f"keep={keep}", "seed=7")
        check('"cut":true' in out, f"cut did not report the cut: {out}")
        for what, op in (("stat", lambda: os.stat(M + "/dir" if scenario is scenario_syncfs else M + "/d")), ("read", lambda: os.pread(held, 10, 0)),
                         ("write", lambda: os.pwrite(held, b"q", 0)), ("mkdir", lambda: os.mkdir(f"{M}/cutdir"))):
            try:
                op()
                fail(f"{what} succeeded after the cut")
            except OSError as e:
                check(e.errno == errno.EIO, f"{what} after the cut failed with {e}, not EIO")
        m.ctl_cmd("revive")
        try:
            os.pwrite(held, b"q", 0)
            fail("a handle opened before the cut could still write after the revive")
        except OSError as e:
            check(e.errno == errno.EIO, f"a write through a handle from before the cut failed with {e}, not EIO")
        os.close(held)
        compare(tree(M), torn if keep == 100 else want, f"after a cut with keep={keep}")
        # It works again, and a second cut drops only what came after.
        write_file(f"{M}/again", b"again", "fsync")
        sync_dir(M)
        write_file(f"{M}/again", b"AGAIN-not-synced")
        m.ctl_cmd("cut")
        m.ctl_cmd("revive")
        with open(f"{M}/again", "rb") as f:
            check(f.read() == b"again", "after a second cut, 'again' does not hold its synced content")
        stats = m.ctl_cmd("stats")
        check('"live_bytes":' in stats and '"cuts":2' in stats, f"stats: {stats}")
        print(f"ok: {scenario.__name__}, keep={keep}: exactly the synced state survived ({checks} checks so far); {stats.strip()}")
    finally:
        m.close()


def main():
    if not os.path.exists("/dev/fuse"):
        cannot_run("no /dev/fuse")
    run(0)
    run(100)
    run(0, scenario_syncfs)
    print(f"powercut selftest: {checks} checks passed")


main()
