#!/usr/bin/python3
"""Hostile and greedy NBD clients for tests/e2e/test-security.sh (issue 26).

Usage: security_probe.py PROBE ARGS...

  flood SOCK PID EXPORT
      8 clients at a time send NBD_OPT_LIST options (32 MiB in all if the
      server takes them within 5 s) and never read a reply. A connection the
      server closes is replaced; one the server stops reading from is left
      waiting. Another client (nbdinfo) is served while the server works
      through what it took; then, within 8.5 s, the server goes quiet
      (under 20% of a CPU over 0.5 s) and, the waiting clients still there,
      serves another client again; its RSS, sampled throughout, never grows
      by 16 MiB. (Give the server many exports with long names: each
      option's reply is then kilobytes, and a connection's replies far more
      than the socket buffers hold.)
  idle SOCK MIN MAX
      Two connections that never finish the handshake: one sends nothing at
      all, one only its client flags. The server must close each between MIN
      and MAX seconds after connecting.
  cap SOCK EXPORT N
      N connections in transmission (OPT_GO), held open; one more is closed
      by the server at once; the N still answer NBD_CMD_READ; after one is
      closed a new connection is served, and the next one is refused again.
  fdstorm SOCK PID N LOG
      N connections opened and left waiting (the server runs out of file
      descriptors); once LOG says "cannot accept connections", the server's
      CPU time over 3 s stays under 0.5 s. Then all are closed and a new
      client (nbdinfo of vol0) is served within 5 s.
  samedata FILE1 FILE2
      The two files hold the same bytes (sparse-aware: only data is read).
  fragment SOCK EXPORT LENGTH
      Writes 4 KiB every 8 KiB over [0, LENGTH) (pipelined raw writes), flush.
  bstorm SOCK PID EXPORT LENGTH
      Structured replies + base:allocation; 128 NBD_CMD_BLOCK_STATUS requests
      over the fragmented range, sent before any reply is read, then read:
      every reply is one block status chunk of at most 1024 extents covering
      a prefix of what was asked, matching the written pattern; the server's
      RSS after the storm (connection open, idle) is within 16 MiB of before.

Each probe prints one summary line and exits 0, or prints "FAIL: ..." and
exits 1. Every socket operation has a timeout: a probe cannot hang.
"""

import errno
import fcntl
import os
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from raw_nbd import RawClient  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
OPT_LIST, OPT_GO, OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT = 3, 7, 8, 10
REP_ACK, REP_INFO, REP_META_CONTEXT = 1, 3, 4
CMD_READ, CMD_WRITE, CMD_FLUSH, CMD_BLOCK_STATUS = 0, 1, 3, 7
REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE, REPLY_TYPE_BLOCK_STATUS = 0, 5
STATE_HOLE = 1


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


# --- /proc ---------------------------------------------------------------------

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise Fail(f"no VmRSS for pid {pid}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- sockets -------------------------------------------------------------------

def unix_connect(path, timeout=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"server closed the connection ({len(buf)}/{n} bytes)")
        buf += chunk
    return buf


def greet(s):
    """Reads the greeting, sends the client flags; returns the handshake flags."""
    magic, opt, hflags = struct.unpack(">QQH", recv_exact(s, 18))
    check(magic == NBDMAGIC and opt == IHAVEOPT, f"bad greeting {magic:#x} {opt:#x}")
    s.sendall(struct.pack(">I", 3 if hflags & 2 else 1))
    return hflags


def wait_closed(s, timeout):
    """Reads until the server ends the stream. Returns (seconds, bytes read),
    seconds None if it was still open after `timeout`."""
    t0 = time.monotonic()
    got = 0
    while True:
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            return None, got
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return None, got
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - t0, got
        if not chunk:
            return time.monotonic() - t0, got
        got += len(chunk)


def still_open(s):
    """Has the server not ended this (non-blocking) connection yet?"""
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def unread(s):
    """Bytes waiting in a socket's receive queue."""
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def nbdinfo_ok(sock, export, timeout=10):
    """nbdinfo over the Unix socket: (ok, output)."""
    try:
        p = subprocess.run(["nbdinfo", f"nbd+unix:///{export}?socket={sock}"], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"nbdinfo timed out after {timeout} s"
    return p.returncode == 0 and "export-size" in p.stdout, (p.stdout + p.stderr).strip()


def raw_read(c, offset=0, length=4096, cookie=1):
    """NBD_CMD_READ on a RawClient (simple replies); returns the data."""
    c.s.settimeout(5)
    c.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ, cookie, offset, length))
    magic, err, got_cookie = struct.unpack(">IIQ", c.recv(16))
    check(magic == SIMPLE_REPLY_MAGIC, f"read reply magic {magic:#x}")
    check(got_cookie == cookie, f"read reply cookie {got_cookie}, want {cookie}")
    check(err == 0, f"read reply error {err}")
    return c.recv(length)


# --- probes --------------------------------------------------------------------

def probe_flood(sock, pid, export):
    pid = int(pid)
    ok, out = nbdinfo_ok(sock, export)  # warm: the first client's allocations are not growth
    check(ok, f"nbdinfo before the flood failed: {out}")
    rss0 = rss_kib(pid)
    option = struct.pack(">QII", IHAVEOPT, OPT_LIST, 0)
    block = memoryview(option * 4096)  # 64 KiB of options
    # K connections flood at once; one the server closes is replaced, one it
    # stops reading from (no progress for stall_s) is left waiting, and the
    # flood ends when K wait, 32 MiB are sent or the budget is spent.
    total, budget, stall_s, k = 32 * MiB, 5.0, 0.5, 8
    sent = closed = conns = 0
    active = {}  # socket -> [position in block, last progress]
    held = []
    peak = [rss0, 0.0]

    def sample():  # the peak, not only what is left at the end: closed connections free theirs
        if time.monotonic() - peak[1] >= 0.02:
            peak[0], peak[1] = max(peak[0], rss_kib(pid)), time.monotonic()

    t0 = time.monotonic()
    while sent < total and len(held) < k and time.monotonic() - t0 < budget:
        while len(active) + len(held) < k:
            c = unix_connect(sock)
            conns += 1
            greet(c)
            c.setblocking(False)
            active[c] = [0, time.monotonic()]
        sample()
        _, writable, _ = select.select([], list(active), [], 0.05)
        now = time.monotonic()
        for c in list(active):
            st = active[c]
            if c in writable:
                try:
                    n = c.send(block[st[0]:])
                    sent += n
                    st[0] = (st[0] + n) % len(block)
                    st[1] = now
                    continue
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    closed += 1  # the server ended it (an option cap): fine, another takes its place
                    del active[c]
                    c.close()
                    continue
            if now - st[1] >= stall_s:
                held.append(c)  # the server stopped reading it: keep it waiting
                del active[c]
    elapsed = time.monotonic() - t0
    held += list(active)  # out of budget or done while still taking bytes: waiting too
    # Meanwhile, while the server works through what it took: another client.
    t_other = time.monotonic()
    ok, out = nbdinfo_ok(sock, export)
    t_other = time.monotonic() - t_other
    check(ok, f"another client was not served during the flood: {out}")
    # Then the server must go quiet, RSS sampled all along: by 8.5 s, before
    # the default handshake deadline (10 s) could have closed any of them.
    t_quiet, busy = None, []
    while time.monotonic() - t0 < 8.5:
        cpu0, w0 = cpu_seconds(pid), time.monotonic()
        for _ in range(10):
            time.sleep(0.05)
            peak[1] = 0
            sample()
        busy.append((cpu_seconds(pid) - cpu0) / (time.monotonic() - w0))
        if busy[-1] < 0.2:
            t_quiet = time.monotonic() - t0
            break
    alive = sum(1 for c in held if still_open(c))
    queued = sum(unread(c) for c in held)
    rss1 = rss_kib(pid)
    ok2, out2 = nbdinfo_ok(sock, export)
    rss2 = rss_kib(pid)
    for c in held:
        c.close()
    growth = (max(peak[0], rss1, rss2) - rss0) / 1024
    summary = (f"{sent / MiB:.1f} MiB of NBD_OPT_LIST sent in {elapsed:.1f} s over {conns} connections, "
               f"{k} at a time ({closed} closed by the server, {len(held)} left waiting); another client served "
               f"in {t_other:.2f} s meanwhile; server busy "
               f"{', '.join('%.0f%%' % (100 * b) for b in busy)} of a CPU per 0.5 s, then quiet "
               f"{'never' if t_quiet is None else '%.1f s after the flood began' % t_quiet}, {alive} "
               f"still open; server RSS {rss0 / 1024:.1f} MiB before, at most {peak[0] / 1024:.1f} "
               f"(+{growth:.1f} MiB); replies left unread in the clients' sockets: {queued / MiB:.1f} MiB")
    check(growth < 16, f"server RSS grew by {growth:.1f} MiB (limit 16) [{summary}]")
    # Kernel memory, which RSS does not show: replies parked in the socket
    # (the handshake's small send buffer bounds them).
    per_conn = queued / max(1, len(held))
    check(per_conn <= MiB, f"{per_conn / MiB:.1f} MiB of replies queued in the kernel per waiting connection "
                           f"(limit 1) [{summary}]")
    check(t_quiet is not None, f"the server was still busy 8.5 s after the flood began [{summary}]")
    check(ok2, f"another client was not served with the flooding clients waiting: {out2} [{summary}]")
    return summary


def data_ranges(fd, size):
    """[(start, end)] of the data (not holes) of a file."""
    out, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        pos = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, pos))
    return out


def probe_samedata(a, b):
    """Files a and b hold the same bytes; only where either has data is read
    (holes read as zeros): two sparse 1 GiB images compare in no time."""
    fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    size = os.fstat(fa).st_size
    check(size == os.fstat(fb).st_size, f"{a} is {size} bytes, {b} {os.fstat(fb).st_size}")
    ranges = sorted(data_ranges(fa, size) + data_ranges(fb, size))
    merged = []
    for s0, e0 in ranges:
        if merged and s0 <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e0))
        else:
            merged.append((s0, e0))
    compared = 0
    for s0, e0 in merged:
        for off in range(s0, e0, 4 * MiB):
            n = min(4 * MiB, e0 - off)
            da, db = os.pread(fa, n, off), os.pread(fb, n, off)
            check(da == db, f"{a} and {b} differ in [{off}, {off + n})")
            compared += n
    return f"{size} bytes alike ({compared} bytes of data compared, the rest holes in both)"


def probe_idle(sock, tmin, tmax):
    tmin, tmax = float(tmin), float(tmax)
    results = {}

    def one(kind):
        try:
            s = unix_connect(sock)
            t0 = time.monotonic()
            if kind == "after-flags":
                greet(s)
            t, _ = wait_closed(s, tmax + 3 - (time.monotonic() - t0))
            results[kind] = None if t is None else time.monotonic() - t0
            s.close()
        except Exception as e:  # noqa: BLE001
            results[kind] = e

    threads = [threading.Thread(target=one, args=(k,)) for k in ("silent", "after-flags")]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    def what(v):
        if isinstance(v, Exception):
            return repr(v)
        return f"still open after {tmax + 3:.0f} s" if v is None else f"closed after {v:.2f} s"

    desc = ", ".join(f"{k}: {what(v)}" for k, v in results.items())
    for k, v in results.items():
        check(not isinstance(v, Exception), f"{k} connection: {v!r}")
        check(v is not None, f"a handshake that never ends was not closed ({desc})")
        check(tmin <= v <= tmax, f"{k} connection closed after {v:.2f} s, want {tmin}..{tmax} s ({desc})")
    return desc


def probe_cap(sock, export, n):
    n = int(n)
    held = [RawClient(unix_connect(sock), export) for _ in range(n)]

    def refused(what):
        s = unix_connect(sock)
        t, got = wait_closed(s, 2.0)
        s.close()
        check(t is not None, f"{what}: connection {n + 1} left open by the server ({got} bytes received) "
                             f"with --max-connections {n}")
        check(t < 1.0, f"{what}: connection {n + 1} closed only after {t:.2f} s")
        return f"closed after {t * 1000:.0f} ms, {got} byte(s) before EOF"

    first = refused(f"{n} open")
    for i, c in enumerate(held):
        raw_read(c, offset=i * 4096, cookie=100 + i)
    held.pop(0).s.close()
    t0 = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        try:
            c = RawClient(unix_connect(sock), export)
            raw_read(c, cookie=7)
            break
        except (EOFError, ConnectionResetError, BrokenPipeError, socket.timeout) as e:
            check(time.monotonic() - t0 < 3, f"after one of {n} was closed, no new connection was served "
                                             f"within 3 s ({attempts} attempts, last: {e!r})")
            time.sleep(0.05)
    held.append(c)
    again = refused(f"{n} open again")
    for i, c in enumerate(held):
        raw_read(c, offset=i * 4096, cookie=200 + i)
    for c in held:
        c.s.close()
    return (f"connection {n + 1}: {first}; the {n} answered reads; after closing one a new one was served "
            f"(attempt {attempts}, {time.monotonic() - t0:.2f} s); the next was refused again ({again})")


def probe_fdstorm(sock, pid, n, log):
    pid, n = int(pid), int(n)
    fds0 = fd_count(pid)
    conns, connect_errors = [], 0
    for _ in range(n):
        try:
            conns.append(unix_connect(sock, timeout=1.0))
        except (socket.timeout, OSError):
            connect_errors += 1  # the backlog is full: enough
            break
    t0 = time.monotonic()
    while True:
        with open(log, errors="replace") as f:
            if "cannot accept connections" in f.read():
                break
        check(time.monotonic() - t0 < 5, f"{len(conns)} connections opened (server had {fds0} fds, now "
                                         f"{fd_count(pid)}): the log never said 'cannot accept connections'")
        time.sleep(0.05)
    fds = fd_count(pid)
    time.sleep(0.2)
    c0, w0 = cpu_seconds(pid), time.monotonic()
    time.sleep(3.0)
    cpu, wall = cpu_seconds(pid) - c0, time.monotonic() - w0
    summary = (f"{len(conns)} connections opened (connect failures: {connect_errors}); server fds "
               f"{fds0} -> {fds}; CPU {cpu:.2f} s over {wall:.1f} s while out of descriptors")
    check(cpu < 0.5, f"the server spins out of file descriptors: {summary}")
    for s in conns:
        s.close()
    t1 = time.monotonic()
    while True:
        ok, out = nbdinfo_ok(sock, "vol0", timeout=5)
        if ok:
            break
        check(time.monotonic() - t1 < 5,
              f"not served 5 s after the connections were closed: {out} [{summary}]")
        time.sleep(0.1)
    return summary + f"; served again {time.monotonic() - t1:.2f} s after they were closed"


def go_structured(sock, export):
    """A raw connection with structured replies and base:allocation, in
    transmission. Returns (socket, context id)."""
    s = unix_connect(sock, timeout=10)
    greet(s)

    def option(opt, data=b""):
        s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def reply():
        magic, opt, rtype, length = struct.unpack(">QIII", recv_exact(s, 20))
        check(magic == OPT_REPLY_MAGIC, f"option reply magic {magic:#x}")
        return opt, rtype, recv_exact(s, length)

    option(OPT_STRUCTURED_REPLY)
    _, rtype, _ = reply()
    check(rtype == REP_ACK, f"OPT_STRUCTURED_REPLY: reply {rtype:#x}")
    name = export.encode()
    query = b"base:allocation"
    option(OPT_SET_META_CONTEXT,
           struct.pack(">I", len(name)) + name + struct.pack(">II", 1, len(query)) + query)
    ctx = None
    while True:
        _, rtype, data = reply()
        if rtype == REP_META_CONTEXT:
            ctx = struct.unpack(">I", data[:4])[0]
            check(data[4:] == query, f"meta context {data[4:]!r}")
            continue
        check(rtype == REP_ACK, f"OPT_SET_META_CONTEXT: reply {rtype:#x}")
        break
    check(ctx is not None, "base:allocation not negotiated")
    option(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    while True:
        _, rtype, _ = reply()
        if rtype == REP_INFO:
            continue
        check(rtype == REP_ACK, f"OPT_GO: reply {rtype:#x}")
        break
    return s, ctx


def probe_fragment(sock, export, length):
    length = int(length)
    c = RawClient(unix_connect(sock, timeout=30), export)
    data = bytes(range(256)) * 16  # 4 KiB, not zeros
    offsets = list(range(0, length, 8 * KiB))
    errors = []

    def reader():
        try:
            for _ in offsets:
                magic, err, _ = struct.unpack(">IIQ", c.recv(16))
                if magic != SIMPLE_REPLY_MAGIC or err:
                    errors.append((hex(magic), err))
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    t0 = time.monotonic()
    th = threading.Thread(target=reader)
    th.start()
    for i, off in enumerate(offsets):
        c.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_WRITE, i + 1, off, len(data)) + data)
    th.join(60)
    check(not th.is_alive(), "writes not all answered within 60 s")
    check(not errors, f"write errors: {errors[:5]}")
    c.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_FLUSH, 0, 0, 0))
    magic, err, _ = struct.unpack(">IIQ", c.recv(16))
    check(magic == SIMPLE_REPLY_MAGIC and err == 0, f"flush: {magic:#x} {err}")
    c.s.close()
    return (f"{len(offsets)} writes of 4 KiB every 8 KiB over {length // MiB} MiB "
            f"in {time.monotonic() - t0:.1f} s")


def probe_bstorm(sock, pid, export, length):
    pid, length = int(pid), int(length)
    s, ctx = go_structured(sock, export)
    s.settimeout(60)  # 128 replies of up to 1024 extents each take a while
    cookie = 0

    def request(offset, count):
        nonlocal cookie
        cookie += 1
        return struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_BLOCK_STATUS, cookie, offset, count)

    asked = {}

    def read_replies(n):
        """n complete replies: {cookie: [extents...]} as (offset, length, flags)."""
        pending = {}
        done = {}
        while len(done) < n:
            magic, flags, rtype, ck, plen = struct.unpack(">IHHQI", recv_exact(s, 20))
            check(magic == STRUCTURED_REPLY_MAGIC, f"reply magic {magic:#x}")
            payload = recv_exact(s, plen)
            check(ck in asked and ck not in done, f"reply to cookie {ck}, not pending")
            check(not rtype & 0x8000, f"error reply {rtype:#x} to BLOCK_STATUS {asked[ck]}: {payload!r}")
            if rtype == REPLY_TYPE_BLOCK_STATUS:
                check(ck not in pending, f"cookie {ck}: more than one block status chunk")
                (cid,) = struct.unpack(">I", payload[:4])
                check(cid == ctx, f"context id {cid}, want {ctx}")
                check((plen - 4) % 8 == 0, f"block status payload of {plen} bytes")
                off = asked[ck][0]
                exts = []
                for i in range(4, plen, 8):
                    elen, eflags = struct.unpack(">II", payload[i:i + 8])
                    exts.append((off, elen, eflags))
                    off += elen
                pending[ck] = exts
            else:
                check(rtype == REPLY_TYPE_NONE, f"unexpected chunk type {rtype}")
            if flags & REPLY_FLAG_DONE:
                check(ck in pending, f"cookie {ck}: done without a block status chunk")
                done[ck] = pending.pop(ck)
        return done

    def verify(ck, exts):
        off, count = asked[ck]
        check(1 <= len(exts) <= 1024, f"request {asked[ck]}: {len(exts)} extents (want 1..1024)")
        covered = sum(e[1] for e in exts)
        check(all(e[1] > 0 for e in exts), f"request {asked[ck]}: an empty extent")
        check(covered <= count, f"request {asked[ck]}: extents cover {covered} bytes, more than asked")
        # The range holds 4 KiB of data every 8 KiB: more extents than a
        # reply may carry, so no reply can cover it all.
        check(covered < count, f"request {asked[ck]}: {len(exts)} extents cover all {count} bytes of a range "
                               f"written in {count // 4096} pieces (not fragmented?)")
        for eo, el, ef in exts[:-1]:  # the last may be cut short
            data = eo % (8 * KiB) == 0
            check(el == 4 * KiB and bool(ef & STATE_HOLE) != data,
                  f"request {asked[ck]}: extent ({eo}, {el}, flags {ef}) does not match 4 KiB written "
                  f"every 8 KiB")
        return covered

    # Warm up one slot, then measure.
    s.sendall(request(0, length))
    asked[cookie] = (0, length)
    for ck, exts in read_replies(1).items():
        verify(ck, exts)
    asked.clear()
    time.sleep(0.3)
    rss0 = rss_kib(pid)
    reqs = []
    for i in range(128):
        off = i * 64 * KiB
        reqs.append(request(off, length - off))
        asked[cookie] = (off, length - off)
    s.sendall(b"".join(reqs))  # 3.5 KiB: all sent before any reply is read
    time.sleep(1.5)
    rss_peak = rss_kib(pid)
    replies = read_replies(128)
    nexts = [len(e) for e in replies.values()]
    covered = [verify(ck, e) for ck, e in replies.items()]
    time.sleep(0.5)  # connection open and idle
    rss1 = rss_kib(pid)
    growth = (rss1 - rss0) / 1024
    summary = (f"128 pipelined requests over {length // MiB} MiB: {min(nexts)}..{max(nexts)} extents per "
               f"reply, "
               f"each covering a prefix of {min(covered) // KiB}..{max(covered) // KiB} KiB; server RSS "
               f"{rss0 / 1024:.1f} MiB before, {rss_peak / 1024:.1f} with the replies unread, "
               f"{rss1 / 1024:.1f} after (+{growth:.1f} MiB)")
    check(growth < 16, f"server RSS after the storm {growth:.1f} MiB above before (limit 16) [{summary}]")
    s.close()
    return summary


PROBES = {"flood": probe_flood, "samedata": probe_samedata, "idle": probe_idle, "cap": probe_cap,
          "fdstorm": probe_fdstorm, "fragment": probe_fragment, "bstorm": probe_bstorm}

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in PROBES:
        sys.exit(__doc__)
    try:
        print(PROBES[sys.argv[1]](*sys.argv[2:]))
    except (Fail, AssertionError, EOFError, OSError) as e:
        print(f"FAIL: {sys.argv[1]}: {e}")
        sys.exit(1)
