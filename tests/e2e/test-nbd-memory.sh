#!/usr/bin/env bash
# The per-connection memory bound (docs/design.md, "NBD connection";
# docs/security.md, "Input from outside"): at most 64 MiB of payload in flight
# per connection, past which the server stops reading that connection. A
# client pipelines 16 writes of 32 MiB (512 MiB) without reading a reply into
# a volume throttled to 125 MiB/s, so nearly all of it must wait in the
# socket: the server's peak RSS (VmHWM, reset before) may grow by the 64 MiB
# in flight plus 32 MiB for everything else. Meanwhile another connection, to
# another volume, is served: 4 KiB write + read round trips, each within 1 s,
# and a new connection's handshake. Over the Unix socket.
source "$(dirname "$0")/lib.sh"
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed"

# Under AddressSanitizer freed memory waits in a quarantine (256 MiB by
# default) before it is reused or unmapped, which would count every freed
# 32 MiB buffer; without one a freed large buffer is unmapped at once, as
# with glibc. (Ignored by a build without ASan.)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0"

"$EBS" volume create flood --type gp3 --size 1G --iops 3000 --throughput 125 >/dev/null
"$EBS" volume create other --type gp3 --size 1G >/dev/null
start_server
[ -w "/proc/$SERVER_PID/clear_refs" ] || skip "cannot reset the server's peak RSS (/proc/PID/clear_refs)"

out=$(PYTHONPATH="$E2E_DIR" "$PY" - "$SOCK" "$SERVER_PID" "$(uri other)" "$(uri flood)" 2>&1 <<'PYEOF'
import os, struct, sys, threading, time
import nbd
from raw_nbd import RawClient

sock, pid, other_uri, flood_uri = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
MiB = 1 << 20
N, SIZE = 16, 32 * MiB
IN_FLIGHT, ALLOWANCE = 64 * MiB, 32 * MiB

def status_kib(field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/{pid}/status")

# A warm server: the other connection has run once, so its buffers and
# threads are there before the baseline.
o = nbd.NBD()
o.connect_uri(other_uri)
o.pwrite(b"\x01" * 4096, 0)
o.pread(4096, 0)
time.sleep(0.2)
with open(f"/proc/{pid}/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
base = status_kib("VmHWM")

payload = os.urandom(SIZE)
c = RawClient.unix(sock, "flood")
result = {}

def flood():
    t0 = time.monotonic()
    for i in range(N):
        c.s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, i, i * SIZE, SIZE))  # WRITE
        c.s.sendall(payload)
    result["sent"] = time.monotonic() - t0
    # Only now the replies (simple replies: none was negotiated).
    errors = {}
    for _ in range(N):
        magic, err, handle = struct.unpack(">IIQ", c.recv(16))
        assert magic == 0x67446698, hex(magic)
        errors[handle] = err
    result["done"] = time.monotonic() - t0
    result["errors"] = errors

t = threading.Thread(target=flood)
t.start()
rtts, handshakes, samples = [], 0, []
i = 0
while t.is_alive():
    i += 1
    blk = struct.pack(">Q", i) * 512
    t0 = time.monotonic()
    o.pwrite(blk, (i % 1000) * 4096)
    if o.pread(4096, (i % 1000) * 4096) != blk:
        raise SystemExit(f"the other connection read back wrong data (round trip {i})")
    rtts.append(time.monotonic() - t0)
    samples.append(status_kib("VmRSS"))
    if i % 20 == 0:  # a new connection is taken and served as well
        h = nbd.NBD()
        h.connect_uri(flood_uri)
        assert h.get_size() == 1 << 30
        h.shutdown()
        handshakes += 1
    time.sleep(0.01)
t.join()
peak = status_kib("VmHWM")
bad = {h: e for h, e in result["errors"].items() if e != 0}
if bad:
    raise SystemExit(f"flood writes failed: {bad}")
if len(result["errors"]) != N:
    raise SystemExit(f"{len(result['errors'])} replies to {N} writes")
# The writes happened: the last one reads back.
h = nbd.NBD()
h.connect_uri(flood_uri)
if h.pread(SIZE, (N - 1) * SIZE) != payload:
    raise SystemExit("the last flood write does not read back")
h.shutdown()
o.shutdown()

grow = (peak - base) * 1024
report = (f"{N} x 32 MiB sent in {result['sent']:.1f} s, all answered after {result['done']:.1f} s; "
          f"server RSS {base // 1024} MiB before, peak {peak // 1024} MiB (+{grow / MiB:.0f} MiB, "
          f"{max(samples) // 1024} MiB sampled); other connection: {len(rtts)} round trips, "
          f"slowest {max(rtts) * 1000:.0f} ms, {handshakes} new connections")
# At 125 MiB/s the 512 MiB take ~4 s: had the server been fast enough to
# keep up, nothing would have waited and the bound would say nothing.
if result["done"] < 2.5:
    raise SystemExit(f"the flood was not held back by the throttle, the test shows nothing: {report}")
if grow > IN_FLIGHT + ALLOWANCE:
    raise SystemExit(f"server RSS grew by more than 64 MiB in flight + 32 MiB: {report}")
if len(rtts) < 20 or max(rtts) > 1.0:
    raise SystemExit(f"the other connection was not served during the flood: {report}")
if handshakes < 1:
    raise SystemExit(f"no new connection during the flood: {report}")
print(report)
PYEOF
) || fail "$out"
pass "$out"
stop_server
