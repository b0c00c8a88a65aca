#!/usr/bin/python3
"""Hold an NBD connection open and report when the server ends it.

Usage: hold_connection.py URI STATUSFILE busy|idle [TIMEOUT]

After connecting (and writing then reading back one block), appends
"ready" to STATUSFILE. Then:
  busy: issues a 4 KiB read every 50 ms;
  idle: issues nothing, only watches the socket;
until the connection fails or is closed by the server. Then appends
"ended EPOCH_SECONDS HOW" and exits 0. Exits 2 if the connection is still
alive after TIMEOUT seconds (default 15), 1 on an unexpected problem.
"""

import select
import sys
import time

import nbd

uri, status, mode = sys.argv[1], sys.argv[2], sys.argv[3]
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 15.0


def report(line):
    with open(status, "a") as f:
        f.write(line + "\n")


h = nbd.NBD()
h.connect_uri(uri)
block = b"held-connection!" * 256
h.pwrite(block, 0)
assert h.pread(4096, 0) == block
report("ready")

deadline = time.time() + timeout
how = None
if mode == "busy":
    while time.time() < deadline:
        try:
            h.pread(4096, 0)
        except nbd.Error as e:
            how = f"error:{e.errnum}"
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
            how = f"error:{e.errnum}"
            break
        if h.aio_is_dead() or h.aio_is_closed():
            how = "closed"
            break
else:
    sys.exit(f"bad mode {mode}")

if how is None:
    report("still-alive")
    sys.exit(2)
report(f"ended {time.time():.3f} {how}")
