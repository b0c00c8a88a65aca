#!/usr/bin/env bash
# Fault injection (ebs serve --inject-fault, like nbdkit's error filter): the
# client gets the injected errno, the server keeps serving other requests and
# other volumes, and nothing already written is damaged.
source "$(dirname "$0")/lib.sh"

"$EBS" volume create flaky --size 1G >/dev/null
"$EBS" volume create full --size 1G >/dev/null
"$EBS" volume create good --size 1G >/dev/null
start_server \
  --inject-fault "volume=flaky,error=EIO,rate=0.3,ops=read,seed=42" \
  --inject-fault "volume=full,error=ENOSPC,ops=write,trigger=$T/disk-full"

"$PY" - "$SOCK" "$T/disk-full" <<'PYEOF'
import errno, os, sys
import nbd

sock, trigger = sys.argv[1], sys.argv[2]

def connect(name):
    h = nbd.NBD()
    h.connect_uri(f"nbd+unix:///{name}?socket={sock}")
    return h

# flaky: about 30% of reads fail with EIO; writes and the other reads work.
h = connect("flaky")
data = bytes(range(256)) * 16
for i in range(64):
    h.pwrite(data, i * 4096)
h.flush()
ok = failed = 0
for _ in range(4):
    for i in range(64):
        try:
            assert h.pread(4096, i * 4096) == data, "a successful read returned wrong data"
            ok += 1
        except nbd.Error as e:
            assert e.errnum == errno.EIO, f"expected EIO, got {e.errnum}"
            failed += 1
assert 40 <= failed <= 120, f"{failed} of 256 reads failed at a 30% rate"
print(f"ok: flaky volume: {failed} reads failed with EIO, {ok} returned the right data")

# full: writes fail with ENOSPC while the trigger exists; earlier data intact;
# writes work again once it is gone.
f = connect("full")
f.pwrite(b"A" * 65536, 0)
f.flush()
open(trigger, "w").close()
try:
    f.pwrite(b"B" * 65536, 0)
    raise SystemExit("FAIL: write succeeded while the disk was 'full'")
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, f"expected ENOSPC, got {e.errnum}"
assert f.pread(65536, 0) == b"A" * 65536, "data written before the fault changed"
g = connect("good")
g.pwrite(b"G" * 4096, 0)
assert g.pread(4096, 0) == b"G" * 4096
os.unlink(trigger)
f.pwrite(b"C" * 65536, 65536)
assert f.pread(65536, 65536) == b"C" * 65536
assert f.pread(65536, 0) == b"A" * 65536
print("ok: ENOSPC while triggered, nothing damaged, other volumes unaffected, writes resume")
for x in (h, f, g):
    x.shutdown()
PYEOF
errors=$("$EBS" volume stats flaky --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Errors"])')
[ "$errors" -gt 0 ] || fail "stats do not count the injected errors"
pass "volume stats count $errors failed requests"
stop_server
