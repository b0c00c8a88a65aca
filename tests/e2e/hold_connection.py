#!/usr/bin/python3
"""Hold an NBD connection open and report how the server ends it.

Usage: hold_connection.py URI STATUSFILE busy|idle|pipelined|raw [TIMEOUT]

After connecting (and writing then reading back one block), appends
"ready" to STATUSFILE. Then:
  busy:      issues a 4 KiB read every 50 ms;
  idle:      issues nothing, only watches the socket;
  pipelined: keeps 16 reads of 4 KiB in flight all the time (libnbd);
  raw:       the same with a raw socket client (URI must be nbd+unix), which
             sees every reply the server sends even after its own sends fail;
until the connection fails or is closed by the server. Then appends
"ended EPOCH_SECONDS HOW [DETAILS]" and exits 0. HOW is one of:
  eshutdown  a request got an NBD error reply ESHUTDOWN (108), and the server
             then closed the connection without answering anything else
             successfully;
  closed     the server closed the connection (requests it had not answered
             fail with ENOTCONN on the client side);
  bad:WHY    anything else: another errno, a request answered successfully
             after ESHUTDOWN, an ESHUTDOWN reply and then the connection left
             open, ... (the caller fails on it).
For pipelined and raw, DETAILS counts the outcomes: in the order sent, the
requests must be successes, then ESHUTDOWN replies, then requests never
answered (ENOTCONN for libnbd), each group possibly empty; raw also requires
that the answered requests are exactly the first N sent; its DETAILS end
with end=eof or end=reset (a reset would mean the server closed its socket
with request bytes it had not read).
Exits 2 if the connection is still alive after TIMEOUT seconds (default 15),
1 on an unexpected problem.

What ebs implements (nbd-server/src/connection.cc, a soft disconnect): once
the volume is deleted (noticed by a request, or by the loop's periodic check
every 0.5 s), every request read from then on is answered ESHUTDOWN while the
server goes on reading; when every request read is answered it shuts its
writing side, the client reads the replies and then the end of the stream,
and the connection ends when the client closes (or after 2 s).
"""

import errno
import os
import re
import select
import socket
import struct
import sys
import threading
import time

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from raw_nbd import RawClient  # noqa: E402

uri, status, mode = sys.argv[1], sys.argv[2], sys.argv[3]
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 15.0


def report(line):
    with open(status, "a") as f:
        f.write(line + "\n")


def raw_client(uri):
    m = re.fullmatch(r"nbd\+unix:///([^?]*)\?socket=(.*)", uri)
    assert m, f"raw mode needs an nbd+unix URI: {uri}"
    return RawClient.unix(m.group(2), m.group(1))


def dead(h):
    return h.aio_is_dead() or h.aio_is_closed()


block = b"held-connection!" * 256
h = nbd.NBD()
h.connect_uri(uri)
h.pwrite(block, 0)
assert h.pread(4096, 0) == block
if mode == "raw":
    h.shutdown()
    raw = raw_client(uri)
report("ready")

deadline = time.time() + timeout
how = None


def after_eshutdown():
    """After an ESHUTDOWN reply the server must close the connection, and
    answer nothing more successfully."""
    end = time.time() + 3
    while time.time() < end:
        try:
            h.pread(4096, 0)
        except nbd.Error as e:
            if dead(h):
                return "eshutdown"
            if e.errnum != errno.ESHUTDOWN:
                return f"bad:after-ESHUTDOWN-errno-{e.errnum}"
            continue
        return "bad:read-succeeded-after-ESHUTDOWN"
    return "bad:connection-open-3s-after-ESHUTDOWN"


if mode == "busy":
    while time.time() < deadline:
        try:
            got = h.pread(4096, 0)
        except nbd.Error as e:
            if e.errnum == errno.ESHUTDOWN and not dead(h):
                how = after_eshutdown()
            elif dead(h) and e.errnum == errno.ENOTCONN:
                how = "closed"
            else:
                how = f"bad:errno-{e.errnum}-dead-{dead(h)}"
            break
        if got != block:
            how = "bad:wrong-data"
            break
        time.sleep(0.05)
elif mode == "idle":
    fd = h.aio_get_fd()
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.05)
        if not r:
            continue
        try:
            h.aio_notify_read()
        except nbd.Error as e:
            how = "closed" if dead(h) else f"bad:errno-{e.errnum}"
            break
        if dead(h):
            how = "closed"
            break
elif mode == "pipelined":
    # Outcomes in submission order: successes, then ESHUTDOWN replies (the
    # requests the server read once the volume was gone), then ENOTCONN
    # (sent after the server had answered everything it read and shut its
    # writing side: libnbd fails them when it reads the end of the stream).
    inflight, outcomes, seq = {}, [], 0
    bufs = {}
    while time.time() < deadline and how is None:
        while len(inflight) < 16 and not dead(h):
            try:
                buf = bytearray(4096)
                c = h.aio_pread(buf, 0)
            except nbd.Error:
                break
            bufs[c] = buf
            inflight[c] = seq
            seq += 1
        if not inflight:
            break
        try:
            h.poll(100)
        except nbd.Error:
            pass
        for c in sorted(inflight):
            try:
                if not h.aio_command_completed(c):
                    continue
                ok = bytes(bufs.pop(c)) == block
                outcomes.append((inflight.pop(c), "ok" if ok else "wrong-data"))
            except nbd.Error as e:
                bufs.pop(c, None)
                outcomes.append((inflight.pop(c), e.errnum))
        if dead(h) and not inflight:
            break
    if how is None and dead(h) and not inflight:
        outcomes.sort()
        seqd = [o for _, o in outcomes]
        n_ok = 0
        while n_ok < len(seqd) and seqd[n_ok] == "ok":
            n_ok += 1
        rest = seqd[n_ok:]
        n_esd = 0
        while n_esd < len(rest) and rest[n_esd] == errno.ESHUTDOWN:
            n_esd += 1
        details = f"ok={n_ok} eshutdown={n_esd} enotconn={rest.count(errno.ENOTCONN)}"
        if not rest:
            how = f"bad:no-request-failed {details}"
        elif any(o != errno.ENOTCONN for o in rest[n_esd:]):
            how = f"bad:outcomes {details} sequence-after-ok={rest[:20]}"
        else:
            how = ("eshutdown " if n_esd else "closed ") + details
elif mode == "raw":
    # A sender thread keeps 16 reads in flight until its sends fail (the
    # server shut its reading side); this thread reads every reply to EOF.
    lock = threading.Lock()
    sent, answers, stop = [0], {}, threading.Event()

    def sender():
        try:
            while not stop.is_set():
                with lock:
                    room = sent[0] - len(answers) < 16
                    if room:
                        sent[0] += 1
                        raw.s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, sent[0], 0, 4096))
                if not room:
                    time.sleep(0.0005)
        except OSError:
            pass  # EPIPE/ECONNRESET: the connection has ended

    threading.Thread(target=sender, daemon=True).start()
    raw.s.settimeout(max(0.1, deadline - time.time()))
    eof = None
    try:
        while True:
            magic, err, cookie = struct.unpack(">IIQ", raw.recv(16))
            if magic != 0x67446698:
                how = f"bad:reply-magic-{magic:#x}"
                break
            if err == 0 and raw.recv(4096) != block:
                how = f"bad:wrong-data-cookie-{cookie}"
                break
            with lock:
                answers[cookie] = err
    except EOFError:
        eof = "eof"
    except ConnectionResetError:
        # The server closed its socket with request bytes it had not read
        # (after it stopped reading): the kernel reports a reset instead of
        # EOF, after every reply already received has been read.
        eof = "reset"
    except socket.timeout:
        pass
    stop.set()
    if eof and how is None:
        with lock:
            n, errs = len(answers), {c: e for c, e in answers.items() if e}
            details = f"answered={n} sent={sent[0]} errors={errs} end={eof}"
            if sorted(answers) != list(range(1, n + 1)):
                missing = sorted(set(range(1, max(answers, default=0) + 1)) - set(answers))
                how = f"bad:answered-not-a-prefix missing={missing[:10]} {details}"
            elif set(errs.values()) - {errno.ESHUTDOWN} or (errs and min(errs) + len(errs) != n + 1):
                how = f"bad:errors {details}"  # not ESHUTDOWN, or not every answer after the first one
            else:
                how = ("eshutdown " if errs else "closed ") + details
else:
    sys.exit(f"bad mode {mode}")

if how is None:
    report("still-alive")
    sys.exit(2)
report(f"ended {time.time():.3f} {how}")
