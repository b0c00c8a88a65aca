#!/usr/bin/python3
"""NBD protocol conformance checks against a running ebs server.

Usage: nbd_protocol.py rw|ro SOCKET

The server must export (at least):
  disk   1 GiB, freshly created (all zeros, unallocated)
  vol0   2 GiB (the default export for the empty name)
  other  1 GiB
"rw" runs everything against a writable server, "ro" the checks for a server
started with --read-only (after "rw" has run on the same data directory).

Every check runs even when an earlier one failed; the script prints one line
per check and exits 1 if any failed.
"""

import errno
import os
import re
import socket
import struct
import sys
import traceback

import nbd

MODE, SOCK = sys.argv[1], sys.argv[2]
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
DISK_SIZE = 1 * GiB
VOL0_SIZE = 2 * GiB
MAX_BLOCK = 64 * MiB

failures = []


def uri(name):
    return f"nbd+unix:///{name}?socket={SOCK}"


def check(fn):
    """Run one check now; record (not raise) a failure."""
    try:
        fn()
        print(f"ok: {fn.__name__}")
    except Exception as e:  # noqa: BLE001 - we report everything
        failures.append(fn.__name__)
        print(f"FAIL: {fn.__name__}: {type(e).__name__}: {e}")
        traceback.print_exc(limit=3, file=sys.stdout)
    return fn


def connect(name="disk", meta=True, strict=True, structured=True, block_size=True):
    h = nbd.NBD()
    h.set_handle_name(f"t-{name}")
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.set_request_structured_replies(structured)
    h.set_request_block_size(block_size)
    h.connect_uri(uri(name))
    if not strict:
        h.set_strict_mode(0)
    return h


def expect_errno(want, f, what):
    """f() must fail with nbd.Error whose errnum is want."""
    try:
        f()
    except nbd.Error as e:
        if e.errnum != want:
            raise AssertionError(
                f"{what}: got errno {e.errnum} ({errno.errorcode.get(e.errnum)}: {e.string}), "
                f"want {want} ({errno.errorcode[want]})") from None
        return
    raise AssertionError(f"{what}: succeeded, want {errno.errorcode[want]}")


def still_works(h, what, off=0, data=None):
    """After an error reply the connection must keep working."""
    try:
        got = h.pread(4096, off)
    except nbd.Error as e:
        raise AssertionError(f"connection broken after {what}: {e}") from None
    if data is not None and got != data:
        raise AssertionError(f"data at {off} changed after {what}")


def extents(h, length, offset, flags=0):
    """block_status over base:allocation -> list of (offset, length, flags)."""
    out = []

    def cb(ctx, off, entries, err):
        assert ctx == nbd.CONTEXT_BASE_ALLOCATION, ctx
        pos = off
        for i in range(0, len(entries), 2):
            out.append((pos, entries[i], entries[i + 1]))
            pos += entries[i]
        return 0

    h.block_status(length, offset, cb, flags=flags)
    return out


def clipped(exts, offset, length):
    """Extents clipped to [offset, offset+length), adjacent equal ones merged."""
    end = offset + length
    res = []
    for o, l, f in exts:
        o2, e2 = max(o, offset), min(o + l, end)
        if o2 >= e2:
            continue
        if res and res[-1][2] == f and res[-1][0] + res[-1][1] == o2:
            res[-1] = (res[-1][0], res[-1][1] + e2 - o2, f)
        else:
            res.append((o2, e2 - o2, f))
    return res


def pattern(seed, n):
    b = bytes((seed + i * 7) & 0xFF for i in range(256))
    return (b * (n // 256 + 1))[:n]


HOLE_ZERO = nbd.STATE_HOLE | nbd.STATE_ZERO
REF = pattern(99, 4096)  # at offset 0 of "disk" from the error checks on

# --------------------------------------------------------------------------
# Raw protocol client (for what libnbd cannot send).

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
REPLY_FLAG_DONE = 1
REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE = 1, 2
REPLY_TYPE_ERROR = (1 << 15) + 1
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_META_CONTEXT = 4
OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT = 8, 10
INFO_NAME, INFO_DESCRIPTION = 1, 2
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
CMD_BLOCK_STATUS = 7
CMD_FLAG_DF = 1 << 2
# What the server says about an export (NBD_INFO_DESCRIPTION, OPT_LIST):
# "TYPE SIZE (VOLUME-ID)", e.g. "gp3 1 GiB (vol-0123456789abcdef0)".
VOLUME_ID = r"vol-[0-9a-f]{17}"


class Raw:
    def __init__(self):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(5)
        self.s.connect(SOCK)
        magic, opt = struct.unpack(">QQ", self.recv(16))
        assert magic == NBDMAGIC and opt == IHAVEOPT, (hex(magic), hex(opt))
        (self.hflags,) = struct.unpack(">H", self.recv(2))
        assert self.hflags & 1, "server lacks NBD_FLAG_FIXED_NEWSTYLE"
        # FIXED_NEWSTYLE | NO_ZEROES
        self.s.sendall(struct.pack(">I", 3 if self.hflags & 2 else 1))
        self.cookie = 0

    def recv(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"server closed the connection ({len(buf)}/{n} bytes)")
            buf += chunk
        return buf

    def closed_by_server(self, timeout=3):
        self.s.settimeout(timeout)
        try:
            return self.s.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def option(self, opt, data=b""):
        self.s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def opt_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv(20))
        assert magic == OPT_REPLY_MAGIC, hex(magic)
        return opt, rtype, self.recv(length)

    def go(self, name, infos=(), opt=OPT_GO):
        """NBD_OPT_GO/INFO; returns (final reply type, {info type: payload})."""
        n = name.encode()
        data = struct.pack(">I", len(n)) + n + struct.pack(">H", len(infos))
        data += b"".join(struct.pack(">H", i) for i in infos)
        self.option(opt, data)
        info = {}
        while True:
            o, rtype, payload = self.opt_reply()
            assert o == opt, (o, opt)
            if rtype == REP_INFO:
                (itype,) = struct.unpack(">H", payload[:2])
                info[itype] = payload[2:]
                continue
            return rtype, info

    def request(self, cmd, offset, length, flags=0, data=b""):
        self.cookie += 1
        self.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, self.cookie, offset, length) + data)
        return self.cookie

    def simple_reply(self, read_len=0):
        magic, err, cookie = struct.unpack(">IIQ", self.recv(16))
        assert magic == SIMPLE_REPLY_MAGIC, f"reply magic {magic:#x}, want simple reply"
        assert cookie == self.cookie, (cookie, self.cookie)
        data = self.recv(read_len) if err == 0 and read_len else b""
        return err, data

    def structured_reply(self):
        """NBD_OPT_STRUCTURED_REPLY, which must be acknowledged."""
        self.option(OPT_STRUCTURED_REPLY)
        o, rtype, data = self.opt_reply()
        assert o == OPT_STRUCTURED_REPLY and rtype == REP_ACK and data == b"", (o, hex(rtype), data)

    def chunks(self):
        """The structured reply chunks to the last request, up to the one with
        NBD_REPLY_FLAG_DONE: a list of (flags, type, payload)."""
        out = []
        while True:
            magic, flags, rtype, cookie, length = struct.unpack(">IHHQI", self.recv(20))
            assert magic == STRUCTURED_REPLY_MAGIC, f"reply magic {magic:#x}, want structured"
            assert cookie == self.cookie, (cookie, self.cookie)
            out.append((flags, rtype, self.recv(length)))
            if flags & REPLY_FLAG_DONE:
                return out

    def close(self):
        self.s.close()


def raw_go(name="disk", structured=False):
    """Raw connection in transmission phase with simple (or structured)
    replies, no block size request."""
    r = Raw()
    if structured:
        r.structured_reply()
    rtype, info = r.go(name, infos=())
    assert rtype == REP_ACK, f"OPT_GO {name!r}: reply {rtype:#x}"
    size, tflags = struct.unpack(">QH", info[INFO_EXPORT])
    r.size, r.tflags = size, tflags
    return r


# --------------------------------------------------------------------------
# Writable server.

def run_rw():
    @check
    def negotiated_info():
        h = connect()
        assert h.get_size() == DISK_SIZE, h.get_size()
        assert h.get_structured_replies_negotiated()
        assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        assert not h.is_read_only()
        for name in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero",
                     "can_multi_conn", "can_df", "can_cache"):
            assert getattr(h, name)(), f"{name} is false"
        assert h.get_block_size(nbd.SIZE_MINIMUM) == 512
        assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
        assert h.get_block_size(nbd.SIZE_MAXIMUM) == MAX_BLOCK
        h.shutdown()

    @check
    def fresh_volume_reads_zero_and_is_a_hole():
        h = connect()
        assert h.pread(MiB, 0) == bytes(MiB)
        assert h.pread(MiB, DISK_SIZE - MiB) == bytes(MiB)
        ex = extents(h, DISK_SIZE, 0)
        assert clipped(ex, 0, DISK_SIZE) == [(0, DISK_SIZE, HOLE_ZERO)], ex
        h.shutdown()

    @check
    def pwrite_fua_pread():
        h = connect()
        d = pattern(1, 1 * MiB)
        h.pwrite(d, 0, flags=nbd.CMD_FLAG_FUA)
        assert h.pread(len(d), 0) == d
        # Unaligned-in-the-middle but 512-aligned sub-ranges read back too.
        assert h.pread(4096, 512) == d[512:4608]
        d2 = pattern(2, 512)
        h.pwrite(d2, 1024)
        h.flush()
        assert h.pread(1536, 0) == d[:1024] + d2
        # The NBD reference tester's huge integrity test: up to ~48 MiB a request.
        huge = pattern(5, 48 * MiB)
        h.pwrite(huge, 128 * MiB)
        assert h.pread(48 * MiB, 128 * MiB) == huge
        # Largest allowed request, both ways.
        big = pattern(3, MAX_BLOCK)
        h.pwrite(big, 64 * MiB)
        assert h.pread(MAX_BLOCK, 64 * MiB) == big
        # The last block of the export.
        h.pwrite(pattern(4, 4096), DISK_SIZE - 4096, flags=nbd.CMD_FLAG_FUA)
        assert h.pread(4096, DISK_SIZE - 4096) == pattern(4, 4096)
        h.shutdown()

    @check
    def pread_df_single_chunk():
        h = connect()
        d = pattern(5, 64 * KiB)
        base = 200 * MiB
        h.pwrite(d, base)
        # A read spanning data and hole with DF: one chunk, zeros explicit.
        chunks = []

        def cb(buf, off, status, err):
            chunks.append((off, len(buf), status))
            return 0

        buf = h.pread_structured(128 * KiB, base, cb, flags=nbd.CMD_FLAG_DF)
        assert buf == d + bytes(64 * KiB)
        assert len(chunks) == 1 and chunks[0][2] == nbd.READ_DATA, chunks
        h.shutdown()

    @check
    def zero_default_no_hole_fast_fua():
        h = connect()
        base = 300 * MiB
        for i, flags in enumerate([0, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FUA,
                                   nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA]):
            off = base + i * 2 * MiB
            h.pwrite(pattern(10 + i, 2 * MiB), off)
            h.zero(MiB, off + 512 * KiB, flags=flags)
            got = h.pread(2 * MiB, off)
            want = pattern(10 + i, 2 * MiB)
            want = want[:512 * KiB] + bytes(MiB) + want[512 * KiB + MiB:]
            assert got == want, f"zero flags={flags:#x}: wrong contents"
            ex = clipped(extents(h, MiB, off + 512 * KiB), off + 512 * KiB, MiB)
            if flags & nbd.CMD_FLAG_NO_HOLE:
                # NO_HOLE: the area MUST be fully provisioned, so it is not a hole.
                assert all(not (f & nbd.STATE_HOLE) for _, _, f in ex), \
                    f"zero with NO_HOLE reported as a hole: {ex}"
        h.shutdown()

    @check
    def zero_fast_zero():
        h = connect()
        off = 320 * MiB
        h.pwrite(pattern(20, MiB), off)
        try:
            h.zero(MiB, off, flags=nbd.CMD_FLAG_FAST_ZERO)
        except nbd.Error as e:
            # Allowed: fail fast with ENOTSUP and leave the contents alone.
            assert e.errnum == errno.ENOTSUP, f"fast zero failed with {e.errnum}, want ENOTSUP"
            assert h.pread(MiB, off) == pattern(20, MiB), "failed fast zero changed data"
        else:
            assert h.pread(MiB, off) == bytes(MiB)
        # Fast zero of a range that is already a hole.
        try:
            h.zero(MiB, 330 * MiB, flags=nbd.CMD_FLAG_FAST_ZERO)
        except nbd.Error as e:
            assert e.errnum == errno.ENOTSUP, e
        assert h.pread(MiB, 330 * MiB) == bytes(MiB)
        h.shutdown()

    @check
    def trim_makes_hole():
        h = connect()
        off = 400 * MiB
        h.pwrite(pattern(30, 4 * MiB), off)
        h.flush()
        ex = clipped(extents(h, 4 * MiB, off), off, 4 * MiB)
        assert ex == [(off, 4 * MiB, 0)], f"after write: {ex}"
        h.trim(MiB, off + MiB)
        h.trim(MiB, off + 2 * MiB, flags=nbd.CMD_FLAG_FUA)
        ex = clipped(extents(h, 4 * MiB, off), off, 4 * MiB)
        assert ex == [(off, MiB, 0), (off + MiB, 2 * MiB, HOLE_ZERO), (off + 3 * MiB, MiB, 0)], \
            f"after trim: {ex}"
        assert h.pread(2 * MiB, off + MiB) == bytes(2 * MiB)
        assert h.pread(MiB, off) == pattern(30, 4 * MiB)[:MiB]
        assert h.pread(MiB, off + 3 * MiB) == pattern(30, 4 * MiB)[3 * MiB:]
        # Trim is not bound by the maximum block size (mkfs/fstrim send big ones).
        h.pwrite(pattern(31, MiB), 500 * MiB)
        h.trim(128 * MiB, 450 * MiB)
        assert h.pread(MiB, 500 * MiB) == bytes(MiB)
        h.shutdown()

    @check
    def flush_and_cache():
        h = connect()
        h.pwrite(pattern(40, 8192), 600 * MiB)
        h.flush()
        h.cache(MiB, 600 * MiB)
        h.cache(MAX_BLOCK, 0)
        assert h.pread(8192, 600 * MiB) == pattern(40, 8192)
        h.shutdown()

    @check
    def block_status_hole_data_req_one():
        h = connect()
        off = 700 * MiB
        h.pwrite(pattern(50, 64 * KiB), off + 64 * KiB)
        ex = clipped(extents(h, 192 * KiB, off), off, 192 * KiB)
        assert ex == [(off, 64 * KiB, HOLE_ZERO), (off + 64 * KiB, 64 * KiB, 0),
                      (off + 128 * KiB, 64 * KiB, HOLE_ZERO)], ex
        raw = extents(h, 192 * KiB, off)
        assert raw[0][0] == off, raw
        assert sum(l for _, l, _ in raw[:-1]) < 192 * KiB, f"extents after the final one: {raw}"
        # REQ_ONE: exactly one extent, not longer than the request.
        one = extents(h, 192 * KiB, off, flags=nbd.CMD_FLAG_REQ_ONE)
        assert one == [(off, 64 * KiB, HOLE_ZERO)], one
        one = extents(h, 192 * KiB, off + 64 * KiB, flags=nbd.CMD_FLAG_REQ_ONE)
        assert one == [(off + 64 * KiB, 64 * KiB, 0)], one
        one = extents(h, 4096, off + 128 * KiB, flags=nbd.CMD_FLAG_REQ_ONE)
        assert len(one) == 1 and one[0][0] == off + 128 * KiB and one[0][1] <= 4096 \
            and one[0][2] == HOLE_ZERO, one
        # The tail of the export, and a query running exactly to the end.
        ex = extents(h, 8192, DISK_SIZE - 8192)
        assert clipped(ex, DISK_SIZE - 8192, 8192) == [(DISK_SIZE - 8192, 4096, HOLE_ZERO),
                                                      (DISK_SIZE - 4096, 4096, 0)], ex
        assert all(o + l <= DISK_SIZE for o, l, _ in ex), f"extent past the end: {ex}"
        h.shutdown()

    @check
    def multi_conn_sees_writes():
        a, b = connect(), connect()
        a.pwrite(pattern(60, 4096), 800 * MiB, flags=nbd.CMD_FLAG_FUA)
        assert b.pread(4096, 800 * MiB) == pattern(60, 4096)
        b.pwrite(pattern(61, 4096), 800 * MiB + 4096)
        b.flush()
        assert a.pread(4096, 800 * MiB + 4096) == pattern(61, 4096)
        a.shutdown()
        b.shutdown()

    # ---- errors, with libnbd's client-side checks off ----
    h = connect(strict=False)
    h.pwrite(REF, 0, flags=nbd.CMD_FLAG_FUA)
    ref = REF

    def run_err(want, what, f):
        def fn():
            expect_errno(want, f, what)
            still_works(h, what, 0, ref)
        fn.__name__ = f"error_{errno.errorcode[want]}: {what}"
        check(fn)

    E, S, O = errno.EINVAL, errno.ENOSPC, errno.EOVERFLOW
    # misaligned (block sizes were requested, so 512 alignment is enforced)
    run_err(E, "read at offset 1", lambda: h.pread(512, 1))
    run_err(E, "read of 100 bytes", lambda: h.pread(100, 0))
    run_err(E, "write at offset 100", lambda: h.pwrite(b"x" * 512, 100))
    run_err(E, "write of 3 bytes", lambda: h.pwrite(b"xyz", 0))
    run_err(E, "trim at offset 1", lambda: h.trim(4096, 1))
    run_err(E, "zero of 100 bytes", lambda: h.zero(100, 0))
    # out of range
    run_err(E, "read at the end", lambda: h.pread(512, DISK_SIZE))
    run_err(E, "read straddling the end", lambda: h.pread(4096, DISK_SIZE - 512))
    run_err(E, "read far past the end", lambda: h.pread(512, 1 << 50))
    run_err(E, "read with offset+length wrapping 2^64", lambda: h.pread(1024, (1 << 64) - 512))
    run_err(S, "write at the end", lambda: h.pwrite(b"x" * 512, DISK_SIZE))
    run_err(S, "write straddling the end", lambda: h.pwrite(b"x" * 4096, DISK_SIZE - 512))
    run_err(S, "write with offset+length wrapping 2^64", lambda: h.pwrite(b"x" * 1024, (1 << 64) - 512))
    run_err(S, "zero past the end", lambda: h.zero(4096, DISK_SIZE - 512))
    # The spec: EINVAL for a trim beyond the end (ENOSPC is for writes).
    run_err(E, "trim past the end", lambda: h.trim(4096, DISK_SIZE - 512))
    run_err(E, "cache past the end", lambda: h.cache(4096, DISK_SIZE))
    run_err(E, "block status past the end", lambda: extents(h, 4096, DISK_SIZE))
    # too large: EINVAL as the spec says, EOVERFLOW only for a DF read
    # libnbd itself refuses to send more than 64 MiB: a raw client does.
    def too_large_requests():
        """64 MiB + 1 byte, read and write (its payload sent in full): EINVAL, and the connection goes on."""
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from raw_nbd import RawClient
        c = RawClient.unix(SOCK, "disk")
        def simple_reply(handle):
            magic, err, got = struct.unpack(">IIQ", c.recv(16))
            assert magic == 0x67446698 and got == handle, (hex(magic), got)
            return err
        # NBD_CMD_READ = 0, NBD_CMD_WRITE = 1.
        c.s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, MAX_BLOCK + 1))
        err = simple_reply(1)
        assert err == errno.EINVAL, f"read of 64 MiB + 1: error {err}, want EINVAL"
        c.s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 2, 0, MAX_BLOCK + 1) + bytes(MAX_BLOCK + 1))
        err = simple_reply(2)
        assert err == errno.EINVAL, f"write of 64 MiB + 1: error {err}, want EINVAL"
        c.s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, 3, 0, 4096))
        assert simple_reply(3) == 0
        assert c.recv(4096) == ref, "data at 0 changed after the refused write"
        c.s.close()
    check(too_large_requests)
    # flags not valid for the command
    run_err(E, "unknown flag bit 10 on read", lambda: h.pread(512, 0, flags=1 << 10))
    run_err(E, "unknown flag bit 15 on write", lambda: h.pwrite(b"x" * 512, 0, flags=1 << 15))
    run_err(E, "DF on write", lambda: h.pwrite(ref[:512], 0, flags=nbd.CMD_FLAG_DF))
    run_err(E, "REQ_ONE on read", lambda: h.pread(512, 0, flags=nbd.CMD_FLAG_REQ_ONE))
    run_err(E, "NO_HOLE on trim", lambda: h.trim(512, 8 * MiB, flags=nbd.CMD_FLAG_NO_HOLE))
    run_err(E, "FAST_ZERO on write", lambda: h.pwrite(ref[:512], 0, flags=nbd.CMD_FLAG_FAST_ZERO))
    run_err(E, "DF on block status", lambda: extents(h, 4096, 0, flags=nbd.CMD_FLAG_DF))
    h.shutdown()

    @check
    def fua_flag_accepted_on_every_command():
        # NBD spec, "Command flags": NBD_CMD_FLAG_FUA "is valid for all commands,
        # provided NBD_FLAG_SEND_FUA has been negotiated, in which case the server
        # MUST accept all commands with this bit set (even by ignoring the bit)".
        g = connect(strict=False)
        bad = []
        for what, f in [("read", lambda: g.pread(512, 0, flags=nbd.CMD_FLAG_FUA)),
                        ("flush", lambda: g.flush(flags=nbd.CMD_FLAG_FUA)),
                        ("cache", lambda: g.cache(4096, 0, flags=nbd.CMD_FLAG_FUA)),
                        ("block_status", lambda: extents(g, 4096, 0, flags=nbd.CMD_FLAG_FUA))]:
            try:
                f()
            except nbd.Error as e:
                bad.append(f"{what}+FUA -> {errno.errorcode.get(e.errnum)}")
            still_works(g, f"{what}+FUA", 0, ref)
        g.shutdown()
        assert not bad, "; ".join(bad)

    @check
    def zero_length_requests_keep_connection():
        # Unspecified result, but "the server SHOULD NOT disconnect".
        g = connect(strict=False)
        for what, f in [("read", lambda: g.pread(0, 0)), ("write", lambda: g.pwrite(b"", 0)),
                        ("trim", lambda: g.trim(0, 0)), ("zero", lambda: g.zero(0, 0)),
                        ("cache", lambda: g.cache(0, 0))]:
            try:
                f()
            except nbd.Error:
                pass
            still_works(g, f"zero-length {what}", 0, ref)
        g.shutdown()

    @check
    def block_status_without_meta_context_einval():
        g = connect(meta=False, strict=False)
        assert not g.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        expect_errno(errno.EINVAL, lambda: extents(g, 4096, 0), "block status, no context")
        still_works(g, "block status without context", 0, ref)
        g.shutdown()

    @check
    def simple_replies_only():
        g = connect(structured=False, meta=True)
        assert not g.get_structured_replies_negotiated()
        assert not g.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        assert g.pread(4096, 0) == ref
        assert g.pread(MAX_BLOCK, 64 * MiB) == pattern(3, MAX_BLOCK)
        g.pwrite(pattern(70, 4096), 900 * MiB, flags=nbd.CMD_FLAG_FUA)
        assert g.pread(4096, 900 * MiB) == pattern(70, 4096)
        g.zero(4096, 900 * MiB)
        assert g.pread(4096, 900 * MiB) == bytes(4096)
        # libnbd refuses block status client-side...
        try:
            extents(g, 4096, 0)
            raise AssertionError("block status allowed without structured replies")
        except nbd.Error:
            pass
        # ...and with checks off the server answers EINVAL in a simple reply.
        g.set_strict_mode(0)
        expect_errno(errno.EINVAL, lambda: extents(g, 4096, 0), "block status, simple replies")
        # An error reply to a read must carry no payload: the stream stays in sync.
        expect_errno(errno.EINVAL, lambda: g.pread(4096, DISK_SIZE), "read past end, simple")
        assert g.pread(4096, 0) == ref
        g.shutdown()

    # ---- handshake ----
    @check
    def opt_list_gives_all_names():
        g = nbd.NBD()
        g.set_opt_mode(True)
        g.connect_uri(uri(""))
        names = []
        g.opt_list(lambda name, desc: names.append(name))
        assert sorted(names) == ["disk", "other", "vol0"], names
        g.opt_abort()

    @check
    def opt_info_unknown_export_fails_then_go():
        g = nbd.NBD()
        g.set_opt_mode(True)
        g.connect_uri(uri("disk"))
        g.set_export_name("nosuch")
        try:
            g.opt_info()
            raise AssertionError("opt_info on unknown export succeeded")
        except nbd.Error:
            pass
        # The session stays in negotiation and usable.
        g.set_export_name("other")
        g.opt_info()
        assert g.get_size() == GiB, g.get_size()
        g.set_export_name("disk")
        g.opt_info()
        assert g.get_size() == DISK_SIZE
        assert g.get_block_size(nbd.SIZE_MAXIMUM) == MAX_BLOCK
        g.opt_go()
        assert g.aio_is_ready()
        assert g.get_size() == DISK_SIZE
        assert g.pread(4096, 0) == ref
        g.shutdown()

    @check
    def opt_list_meta_context():
        g = nbd.NBD()
        g.set_opt_mode(True)
        g.connect_uri(uri("disk"))
        ctxs = []
        n = g.opt_list_meta_context(lambda name: ctxs.append(name))
        assert "base:allocation" in ctxs, ctxs
        assert n == len(ctxs)
        g.opt_abort()

    @check
    def unknown_export_fails_cleanly():
        g = nbd.NBD()
        try:
            g.connect_uri(uri("nosuch"))
            raise AssertionError("connected to unknown export")
        except nbd.Error as e:
            assert "nosuch" in e.string or "unknown" in e.string.lower() or e.errnum, e
        # The server is fine afterwards.
        g2 = connect("other")
        assert g2.pread(512, 0) == bytes(512)
        g2.shutdown()

    @check
    def empty_export_name_is_vol0():
        g = nbd.NBD()
        g.connect_uri(uri(""))
        assert g.get_size() == VOL0_SIZE, g.get_size()
        g.pwrite(pattern(80, 4096), 0, flags=nbd.CMD_FLAG_FUA)
        g.shutdown()
        g = connect("vol0")
        assert g.pread(4096, 0) == pattern(80, 4096)
        g.shutdown()

    # ---- raw protocol ----
    @check
    def raw_unknown_option_unsup_then_go():
        r = Raw()
        r.option(999, b"")
        o, rtype, _ = r.opt_reply()
        assert o == 999 and rtype == REP_ERR_UNSUP, (o, hex(rtype))
        r.option(OPT_STARTTLS)
        o, rtype, _ = r.opt_reply()
        assert rtype in (REP_ERR_UNSUP, REP_ERR_POLICY), f"STARTTLS without TLS: {rtype:#x}"
        rtype, _ = r.go("nosuch")
        assert rtype == REP_ERR_UNKNOWN, f"OPT_GO unknown export: {rtype:#x}, want NBD_REP_ERR_UNKNOWN"
        rtype, info = r.go("disk", infos=(INFO_BLOCK_SIZE,))
        assert rtype == REP_ACK, hex(rtype)
        size, _ = struct.unpack(">QH", info[INFO_EXPORT])
        assert size == DISK_SIZE
        assert struct.unpack(">III", info[INFO_BLOCK_SIZE]) == (512, 4096, MAX_BLOCK)
        r.request(CMD_READ, 0, 4096)
        e, data = r.simple_reply(4096)
        assert e == 0 and data == ref
        r.request(CMD_DISC, 0, 0)
        assert r.closed_by_server(), "server did not close after NBD_CMD_DISC"
        r.close()

    @check
    def raw_unknown_command_einval():
        r = raw_go()
        for cmd in (42, 0xFFFF):
            r.request(cmd, 0, 0)
            e, _ = r.simple_reply()
            assert e == errno.EINVAL, f"unknown command {cmd}: error {e}"
            r.request(CMD_READ, 0, 4096)
            e, data = r.simple_reply(4096)
            assert e == 0 and data == ref, "read after unknown command"
        r.close()

    @check
    def raw_alignment_not_enforced_without_block_size_request():
        # The client did not request NBD_INFO_BLOCK_SIZE: default constraints
        # (minimum 1) apply and unaligned requests must work.
        r = raw_go()
        r.request(CMD_READ, 1, 100)
        e, data = r.simple_reply(100)
        assert e == 0, f"unaligned read: error {e}"
        assert data == ref[1:101]
        d = b"unaligned!"
        r.request(CMD_WRITE, 1000 * MiB + 3, len(d), data=d)
        e, _ = r.simple_reply()
        assert e == 0, f"unaligned write: error {e}"
        r.request(CMD_READ, 1000 * MiB, 16)
        e, data = r.simple_reply(16)
        assert e == 0 and data == b"\0\0\0" + d + b"\0\0\0", data
        r.close()
        # Same with libnbd when it does not request block sizes.
        g = connect(block_size=False, strict=False)
        assert g.pread(7, 1000 * MiB + 3) == d[:7]
        g.shutdown()

    @check
    def raw_export_name_option():
        r = Raw()
        r.option(OPT_EXPORT_NAME, b"")
        size, tflags = struct.unpack(">QH", r.recv(10))
        if not r.hflags & 2:
            r.recv(124)
        assert size == VOL0_SIZE, size
        assert tflags & 1, "NBD_FLAG_HAS_FLAGS"
        r.request(CMD_READ, 0, 4096)
        e, data = r.simple_reply(4096)
        assert e == 0 and data == pattern(80, 4096)
        r.close()
        r = Raw()
        r.option(OPT_EXPORT_NAME, b"nosuch")
        assert r.closed_by_server(), "EXPORT_NAME of unknown export must end the session"
        r.close()

    @check
    def raw_handshake_edge_cases():
        r = Raw()
        # OPT_LIST with data is syntactically invalid.
        r.option(OPT_LIST, b"junk")
        _, rtype, _ = r.opt_reply()
        assert rtype == REP_ERR_INVALID, f"OPT_LIST with data: {rtype:#x}"
        # A name length running past the option is invalid; the session goes on.
        r.option(OPT_GO, struct.pack(">I", 1000) + b"disk" + struct.pack(">H", 0))
        _, rtype, _ = r.opt_reply()
        assert rtype == REP_ERR_INVALID, f"OPT_GO with overrunning name: {rtype:#x}"
        # SET_META_CONTEXT needs structured replies first.
        q = b"base:allocation"
        r.option(OPT_SET_META_CONTEXT, struct.pack(">I", 4) + b"disk" + struct.pack(">II", 1, len(q)) + q)
        _, rtype, _ = r.opt_reply()
        assert rtype == REP_ERR_INVALID, f"SET_META_CONTEXT before structured replies: {rtype:#x}"
        # OPT_LIST still works, then INFO with name and description.
        r.option(OPT_LIST)
        names = []
        while True:
            _, rtype, data = r.opt_reply()
            if rtype != REP_SERVER:
                break
            (n,) = struct.unpack(">I", data[:4])
            names.append(data[4:4 + n].decode())
        assert rtype == REP_ACK and sorted(names) == ["disk", "other", "vol0"], (hex(rtype), names)
        rtype, info = r.go("", infos=(INFO_NAME, INFO_DESCRIPTION), opt=OPT_INFO)
        assert rtype == REP_ACK, hex(rtype)
        assert struct.unpack(">Q", info[INFO_EXPORT][:8])[0] == VOL0_SIZE
        # Requested, so present: the default export's canonical name.
        assert info.get(INFO_NAME) == b"vol0", info.get(INFO_NAME)
        assert re.fullmatch(rf"gp3 2 GiB \({VOLUME_ID}\)", info.get(INFO_DESCRIPTION, b"").decode()), \
            info.get(INFO_DESCRIPTION)
        # OPT_ABORT is acknowledged (then the client drops the connection).
        r.option(OPT_ABORT)
        o, rtype, _ = r.opt_reply()
        assert o == OPT_ABORT and rtype == REP_ACK, (o, hex(rtype))
        r.close()

    @check
    def raw_broken_clients_do_not_hurt_the_server():
        # A bad request magic ends that connection only.
        r = raw_go()
        r.s.sendall(b"\0" * 28)
        assert r.closed_by_server(), "server kept a connection with a bad request magic"
        r.close()
        # A client vanishing in the middle of a write payload.
        r = raw_go()
        r.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_WRITE, 1, 950 * MiB, MiB) + b"y" * 1000)
        r.close()
        # A client vanishing in the middle of the handshake.
        r = Raw()
        r.s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, 100) + b"\0\0")
        r.close()
        g = connect()
        assert g.pread(4096, 0) == ref
        assert g.pread(MiB, 950 * MiB) == bytes(MiB), "partial write payload was applied"
        g.shutdown()

    @check
    def raw_block_status_without_context_einval():
        r = raw_go()
        r.request(CMD_BLOCK_STATUS, 0, 4096)
        e, _ = r.simple_reply()
        assert e == errno.EINVAL, e
        r.request(CMD_FLUSH, 0, 0)
        e, _ = r.simple_reply()
        assert e == 0
        r.close()

    # ---- structured READ replies: holes ----
    HOLE_AT = 250 * MiB      # never written
    MIXED_AT = 260 * MiB     # 64 KiB of data, then a hole

    def read_chunks(r, offset, length, flags=0):
        """Structured READ: checks what every such reply must satisfy and
        returns [(type, offset, length, data or None)] in the order sent."""
        r.request(CMD_READ, offset, length, flags=flags)
        chunks = r.chunks()
        out = []
        for i, (cflags, ctype, payload) in enumerate(chunks):
            last = i == len(chunks) - 1
            assert bool(cflags & REPLY_FLAG_DONE) == last, f"DONE flag on chunk {i} of {len(chunks)}"
            assert ctype != REPLY_TYPE_ERROR, f"error chunk: {payload!r}"
            if ctype == REPLY_TYPE_OFFSET_DATA:
                (o,) = struct.unpack(">Q", payload[:8])
                out.append((ctype, o, len(payload) - 8, payload[8:]))
            elif ctype == REPLY_TYPE_OFFSET_HOLE:
                assert len(payload) == 12, f"OFFSET_HOLE payload of {len(payload)} bytes, want 12"
                o, n = struct.unpack(">QI", payload)
                out.append((ctype, o, n, None))
            else:
                raise AssertionError(f"chunk type {ctype} in a READ reply")
        # Together the chunks cover exactly the request, without overlap.
        pieces = sorted((o, n) for _, o, n, _ in out)
        pos = offset
        for o, n in pieces:
            assert n > 0, f"empty chunk: {out}"
            assert o == pos, f"chunks leave a gap or overlap at {pos}: {pieces}"
            pos += n
        assert pos == offset + length, f"chunks end at {pos}, request ends at {offset + length}"
        return out

    @check
    def raw_read_hole_without_df_is_offset_hole():
        r = raw_go(structured=True)
        # A hole, read without DF: one OFFSET_HOLE chunk for the whole request.
        out = read_chunks(r, HOLE_AT, 128 * KiB)
        assert [(t, o, n) for t, o, n, _ in out] == [(REPLY_TYPE_OFFSET_HOLE, HOLE_AT, 128 * KiB)], \
            f"hole read without DF: {[(t, o, n) for t, o, n, _ in out]}"
        # Also a single sector, and the last block of the hole before the end.
        out = read_chunks(r, HOLE_AT + 512, 512)
        assert [(t, o, n) for t, o, n, _ in out] == [(REPLY_TYPE_OFFSET_HOLE, HOLE_AT + 512, 512)], out
        out = read_chunks(r, DISK_SIZE - 8192, 4096)
        assert [(t, o, n) for t, o, n, _ in out] == [(REPLY_TYPE_OFFSET_HOLE, DISK_SIZE - 8192, 4096)], out
        # With DF the same read is one OFFSET_DATA chunk of zeros.
        out = read_chunks(r, HOLE_AT, 128 * KiB, flags=CMD_FLAG_DF)
        assert [(t, o, n) for t, o, n, _ in out] == [(REPLY_TYPE_OFFSET_DATA, HOLE_AT, 128 * KiB)], out
        assert out[0][3] == bytes(128 * KiB)
        # The connection goes on.
        r.request(CMD_READ, 0, 4096, flags=CMD_FLAG_DF)
        out = r.chunks()
        assert len(out) == 1 and out[0][1] == REPLY_TYPE_OFFSET_DATA and out[0][2][8:] == ref
        r.close()
        # The same through libnbd: a READ_HOLE callback covering the request.
        g = connect()
        seen = []

        def cb(buf, off, status, err):
            seen.append((off, len(buf), status))
            return 0

        assert g.pread_structured(128 * KiB, HOLE_AT, cb) == bytes(128 * KiB)
        assert seen == [(HOLE_AT, 128 * KiB, nbd.READ_HOLE)], seen
        g.shutdown()

    @check
    def raw_read_data_then_hole():
        g = connect()
        d = pattern(6, 64 * KiB)
        g.pwrite(d, MIXED_AT, flags=nbd.CMD_FLAG_FUA)
        g.shutdown()
        r = raw_go(structured=True)
        out = read_chunks(r, MIXED_AT, 128 * KiB)
        shape = [(t, o, n) for t, o, n, _ in out]
        # Every data chunk carries what is there; every hole chunk is in the
        # part that reads as zeros.
        want = d + bytes(64 * KiB)
        for t, o, n, data in out:
            rel = o - MIXED_AT
            if t == REPLY_TYPE_OFFSET_DATA:
                assert data == want[rel:rel + n], f"wrong data in chunk at {o}"
            else:
                assert rel >= 64 * KiB, f"OFFSET_HOLE over written data: {shape}"
        # The data comes first, as an OFFSET_DATA chunk starting at the request.
        assert out[0][0] == REPLY_TYPE_OFFSET_DATA and out[0][1] == MIXED_AT, shape
        # What ebs sends: one OFFSET_DATA for the whole request (zeros inline;
        # it sends OFFSET_HOLE only when the whole request reads as zeros), or
        # OFFSET_DATA then OFFSET_HOLE split where the data ends.
        allowed = ([(REPLY_TYPE_OFFSET_DATA, MIXED_AT, 128 * KiB)],
                   [(REPLY_TYPE_OFFSET_DATA, MIXED_AT, 64 * KiB),
                    (REPLY_TYPE_OFFSET_HOLE, MIXED_AT + 64 * KiB, 64 * KiB)])
        assert shape in allowed, f"data-then-hole read: {shape}"
        print(f"   data-then-hole read without DF: "
              f"{' + '.join(('DATA' if t == 1 else 'HOLE') + f' {n // KiB} KiB' for t, _, n in shape)}")
        # The other way round: a hole then data.
        out = read_chunks(r, MIXED_AT - 64 * KiB, 128 * KiB)
        got = b"".join(data if t == REPLY_TYPE_OFFSET_DATA else bytes(n) for t, _, n, data in
                       sorted(out, key=lambda c: c[1]))
        assert got == bytes(64 * KiB) + d, "hole-then-data read: wrong contents"
        r.close()

    # ---- export information ----
    @check
    def info_name_and_description_when_requested():
        r = Raw()
        descs = {}
        for opt in (OPT_INFO, OPT_GO):
            rtype, info = r.go("disk", infos=(INFO_NAME, INFO_DESCRIPTION), opt=opt)
            assert rtype == REP_ACK, f"option {opt}: {rtype:#x}"
            assert info.get(INFO_NAME) == b"disk", f"option {opt}: INFO_NAME {info.get(INFO_NAME)!r}"
            assert INFO_DESCRIPTION in info, f"option {opt}: no NBD_INFO_DESCRIPTION"
            desc = info[INFO_DESCRIPTION].decode("utf-8")
            assert re.fullmatch(rf"gp3 1 GiB \({VOLUME_ID}\)", desc), f"option {opt}: description {desc!r}"
            descs[opt] = desc
            assert struct.unpack(">QH", info[INFO_EXPORT])[0] == DISK_SIZE
        assert descs[OPT_INFO] == descs[OPT_GO], descs
        # After GO: transmission works.
        r.request(CMD_READ, 0, 4096)
        e, data = r.simple_reply(4096)
        assert e == 0 and data == ref
        r.close()
        # libnbd sees the same, and OPT_LIST gives the same descriptions.
        g = nbd.NBD()
        g.set_full_info(True)
        g.set_opt_mode(True)
        g.connect_uri(uri("disk"))
        listed = {}
        g.opt_list(lambda name, desc: listed.__setitem__(name, desc))
        assert listed["disk"] == descs[OPT_GO], (listed, descs)
        assert re.fullmatch(rf"gp3 2 GiB \({VOLUME_ID}\)", listed["vol0"]), listed
        assert re.fullmatch(rf"gp3 1 GiB \({VOLUME_ID}\)", listed["other"]), listed
        assert len({listed[n][-22:] for n in listed}) == 3, f"volume ids not distinct: {listed}"
        g.opt_go()
        assert g.get_canonical_export_name() == "disk"
        assert g.get_export_description() == descs[OPT_GO]
        g.shutdown()

    @check
    def opt_go_unknown_export_err_unknown_then_go():
        r = Raw()
        for opt in (OPT_GO, OPT_INFO, OPT_GO):
            for name in ("nosuch", "disk2", "x" * 200):
                rtype, info = r.go(name, infos=(INFO_NAME, INFO_DESCRIPTION), opt=opt)
                assert rtype == REP_ERR_UNKNOWN, \
                    f"option {opt} for {name!r}: {rtype:#x}, want NBD_REP_ERR_UNKNOWN (0x80000006)"
                assert not info, f"option {opt} for {name!r}: info replies before the error: {info}"
        # The error may carry a message: UTF-8, no NUL (the spec's strings).
        n = b"nosuch"
        r.option(OPT_GO, struct.pack(">I", len(n)) + n + struct.pack(">H", 0))
        o, rtype, msg = r.opt_reply()
        assert o == OPT_GO and rtype == REP_ERR_UNKNOWN, (o, hex(rtype))
        assert b"\0" not in msg and len(msg) <= 4096, msg
        msg.decode("utf-8")
        # Negotiation goes on: a GO for a real export works.
        rtype, info = r.go("other", infos=(INFO_NAME,))
        assert rtype == REP_ACK, f"OPT_GO after ERR_UNKNOWN: {rtype:#x}"
        assert info.get(INFO_NAME) == b"other"
        assert struct.unpack(">QH", info[INFO_EXPORT])[0] == GiB
        r.request(CMD_READ, 0, 4096)
        e, data = r.simple_reply(4096)
        assert e == 0 and data == bytes(4096)
        r.request(CMD_DISC, 0, 0)
        assert r.closed_by_server()
        r.close()


# --------------------------------------------------------------------------
# Read-only server (started with --read-only, after run_rw on the same data).

def run_ro():
    ref = REF

    @check
    def read_only_flags_and_reads():
        h = connect()
        assert h.is_read_only()
        assert h.pread(4096, 0) == ref
        assert h.get_size() == DISK_SIZE
        h.shutdown()

    h = connect(strict=False)
    for what, f in [("write", lambda: h.pwrite(b"x" * 4096, 0)),
                    ("write FUA", lambda: h.pwrite(b"x" * 4096, 0, flags=nbd.CMD_FLAG_FUA)),
                    ("trim", lambda: h.trim(4096, 0)),
                    ("zero", lambda: h.zero(4096, 0))]:
        def fn(what=what, f=f):
            expect_errno(errno.EPERM, f, what)
            still_works(h, what, 0, ref)
        fn.__name__ = f"read-only EPERM: {what}"
        check(fn)

    @check
    def read_only_flush_and_data_intact():
        h.flush() if h.can_flush() else None
        assert h.pread(4096, 0) == ref

    h.shutdown()


if MODE == "rw":
    run_rw()
elif MODE == "ro":
    run_ro()
else:
    sys.exit(f"usage: {sys.argv[0]} rw|ro SOCKET")

if failures:
    print(f"{len(failures)} check(s) failed: " + ", ".join(failures))
    sys.exit(1)
print("all checks passed")
