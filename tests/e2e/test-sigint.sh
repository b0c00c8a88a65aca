#!/usr/bin/env bash
# SIGINT (Ctrl-C) stops the server as cleanly as SIGTERM: with requests in
# flight on a Unix socket and a TCP connection, it answers every request it
# had read, closes the connections, flushes, and exits 0 with its stop
# message; writes acknowledged before the signal (FUA or not) read back after
# a restart. The volume is throttled (io1, 100 IOPS) so that the requests
# really are in flight in the server when the signal comes.
source "$(dirname "$0")/lib.sh"
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed"

ebs volume create slow --type io1 --iops 100 --size 4G >/dev/null
start_server

"$PY" - "$SOCK" "$PORT" "$SERVER_PID" "$T/server.log" "$E2E_DIR" <<'EOF' || fail "requests in flight at SIGINT"
import os, signal, socket, struct, sys, time

sys.path.insert(0, sys.argv[5])
from raw_nbd import RawClient

SOCK, PORT, PID, LOG = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
KiB = 1024
READ, WRITE, FLUSH = 0, 1, 3
FUA = 1


def pattern(seed, n=4096):
    b = bytes((seed * 31 + i * 7) & 0xFF for i in range(256))
    return (b * (n // 256 + 1))[:n]


class Client:
    def __init__(self, kind, base):
        self.kind, self.base = kind, base
        raw = RawClient.unix(SOCK, "slow") if kind == "unix" else RawClient.tcp("127.0.0.1", PORT, "slow")
        self.s, self.recv = raw.s, raw.recv
        self.s.settimeout(20)
        self.cookie, self.kinds, self.answers = 0, {}, {}

    def req(self, cmd, offset, length, flags=0, data=b""):
        self.cookie += 1
        self.kinds[self.cookie] = cmd
        return struct.pack(">IHHQQI", 0x25609513, flags, cmd, self.cookie, offset, length) + data

    def reply(self):
        magic, err, cookie = struct.unpack(">IIQ", self.recv(16))
        assert magic == 0x67446698, f"{self.kind}: reply magic {magic:#x}"
        assert cookie in self.kinds and cookie not in self.answers, f"{self.kind}: reply for cookie {cookie}"
        data = self.recv(4096) if err == 0 and self.kinds[cookie] == READ else None
        self.answers[cookie] = (err, data)
        return cookie

    def drain(self):
        """Every reply until the server closes the connection."""
        try:
            while True:
                self.reply()
        except (EOFError, ConnectionResetError) as e:
            return type(e).__name__


clients = [Client("unix", 0), Client("tcp", 1 << 30)]

# Acknowledged before the signal: one plain write (no FUA, no flush) and one
# FUA write per connection.
for c in clients:
    c.s.sendall(c.req(WRITE, c.base, 4096, data=pattern(1)))
    c.s.sendall(c.req(WRITE, c.base + 4096, 4096, flags=FUA, data=pattern(2)))
    c.reply(), c.reply()
    assert all(e == 0 for e, _ in c.answers.values()), c.answers

# A batch per connection, sent in one piece: 40 writes (every 4th with FUA),
# 8 reads of what was acknowledged, a flush. At 100 IOPS they take about
# 0.5 s per connection: most are still in flight when the signal comes.
batch_start = {}
for c in clients:
    batch_start[c.kind] = c.cookie + 1
    msg = b""
    for i in range(40):
        msg += c.req(WRITE, c.base + (i + 2) * 64 * KiB, 4096, flags=FUA if i % 4 == 0 else 0,
                     data=pattern(10 + i))
        if i % 5 == 0:
            msg += c.req(READ, c.base, 4096)
    msg += c.req(FLUSH, 0, 0)
    c.s.sendall(msg)
# The server is working on them (and, a moment later, has read them all).
for c in clients:
    c.reply()
time.sleep(0.05)
outstanding = sum(c.cookie - len(c.answers) for c in clients)
assert outstanding >= 10, f"only {outstanding} requests in flight at the signal: the test proves nothing"
os.kill(PID, signal.SIGINT)
t0 = time.time()
print(f"SIGINT with {outstanding} requests in flight")

# While it finishes them: the log says so, and new connections are refused.
while b"SIGINT received" not in open(LOG, "rb").read():
    assert time.time() - t0 < 5, "no 'SIGINT received' in the log"
    time.sleep(0.01)
for kind in ("unix", "tcp"):
    try:
        s = socket.socket(socket.AF_UNIX) if kind == "unix" else socket.socket()
        s.settimeout(5)
        s.connect(SOCK if kind == "unix" else ("127.0.0.1", PORT))
        got = s.recv(18)
        # Accepted by the kernel before the listener was shut: never served.
        assert len(got) == 0, f"{kind}: a new connection got a handshake while stopping"
        print(f"{kind}: new connection while stopping: closed unserved")
    except (ConnectionRefusedError, FileNotFoundError, ConnectionResetError) as e:
        print(f"{kind}: new connection while stopping: {type(e).__name__}")
    finally:
        s.close()

ok = True
for c in clients:
    end = c.drain()
    missing = [k for k in range(1, c.cookie + 1) if k not in c.answers]
    errors = {k: e for k, (e, _) in c.answers.items() if e}
    bad_reads = [k for k, (e, d) in c.answers.items() if c.kinds[k] == READ and d != pattern(1)]
    print(f"{c.kind}: {len(c.answers)}/{c.cookie} answered, end of connection: {end}")
    if missing or errors or bad_reads:
        print(f"{c.kind}: unanswered {missing}, errors {errors}, wrong reads {bad_reads}")
        ok = False
print(f"all replies in {time.time() - t0:.2f} s after SIGINT")
sys.exit(0 if ok else 1)
EOF
pass "SIGINT: every request in flight on both connections answered, then the connections closed"

# The server exits by itself, 0, with its stop message.
pid=$SERVER_PID; SERVER_PID=""
for _ in $(seq 1 400); do
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)" = Z ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
if kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat")" != Z ]; then
  kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
  fail "server still running 20 s after SIGINT"
fi
rc=0; wait "$pid" || rc=$?
[ $rc -eq 0 ] || fail "server exited with status $rc after SIGINT"
grep -q '^ebs: SIGINT received: finishing in-flight requests$' "$T/server.log" || fail "no SIGINT message in the log"
[ "$(tail -n1 "$T/server.log")" = "ebs: stopped" ] || fail "last log line is not 'ebs: stopped': $(tail -n1 "$T/server.log")"
[ ! -e "$SOCK" ] || fail "Unix socket left behind after SIGINT"
pass "server exited 0 after SIGINT with its stop message"

# Everything acknowledged reads back after a restart.
start_server
nbdsh -u "$(uri slow)" -c '
def pattern(seed, n=4096):
    b = bytes((seed * 31 + i * 7) & 0xFF for i in range(256))
    return (b * (n // 256 + 1))[:n]
for base in (0, 1 << 30):
    assert h.pread(4096, base) == pattern(1), f"plain write acknowledged before SIGINT lost at {base}"
    assert h.pread(4096, base + 4096) == pattern(2), f"FUA write acknowledged before SIGINT lost at {base}"
    for i in range(40):
        off = base + (i + 2) * 65536
        assert h.pread(4096, off) == pattern(10 + i), f"write {i} answered during the stop lost at {off}"
' || fail "acknowledged writes after restart"
stop_server
pass "writes acknowledged before and during the SIGINT stop read back after restart"
