#!/usr/bin/env bash
# A full snapshot store: the snapshot fails cleanly (state error, a clear
# message), the volume keeps serving reads and writes (also writes that hit
# chunks the failed snapshot still guarded), the store checks clean, and a
# later snapshot succeeds once there is space.
source "$(dirname "$0")/lib.sh"
need nbdcopy
[ "$(id -u)" = 0 ] || skip "needs root to mount a small tmpfs"

js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
STORE="$T/store"
mkdir -p "$STORE"
mount -t tmpfs -o size=6m tmpfs "$STORE" 2>"$T/mount.err" || skip "cannot mount a tmpfs: $(cat "$T/mount.err")"
on_exit "umount -l '$STORE'"
E() { "$EBS" --store "$STORE" "$@"; }

E volume create a --size 1G >/dev/null
start_server --store "$STORE"
# 24 MiB of random data: it cannot fit in 6 MiB.
head -c 24M /dev/urandom >"$T/fill"
nbdcopy "$T/fill" "$(uri a)"

# A writer keeps going while the snapshot runs and fails.
"$PY" - "$(uri a)" "$T/writer.done" <<'PYEOF' &
import os, sys, time, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
n = 0
deadline = time.time() + 3
while time.time() < deadline:
    off = (n * 7919 % 48) * 524288 + 4096
    h.pwrite(b"w" * 4096, off)
    n += 1
h.flush()
h.shutdown()
open(sys.argv[2], "w").write(str(n))
PYEOF
WRITER=$!
out=$(E snapshot create a 2>&1) && fail "a snapshot larger than the store succeeded: $out"
echo "$out" | grep -qi "space" || fail "the failure does not say the store is full: $out"
wait $WRITER || fail "writes failed while the snapshot failed"
[ -s "$T/writer.done" ] || fail "the writer did not finish"
state=$(E snapshot list --json | js '[s["state"] for s in d][0]')
[ "$state" = error ] || fail "the failed snapshot is '$state', not error"
pass "snapshot into a full store fails with a clear error ($(echo "$out" | head -c 120)...)"

# The volume serves on: what the writer wrote reads back.
"$PY" - "$(uri a)" <<'PYEOF' || fail "the volume does not read back what was written during the failure"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for n in range(48):
    off = n * 524288 + 4096
    assert h.pread(4096, off) == b"w" * 4096, off
PYEOF
out=$(E store check --json)
[ "$(echo "$out" | js 'd["ok"]')" = True ] || fail "store check after the failure: $out"
pass "the volume keeps serving and the store checks clean"

mount -o remount,size=64m "$STORE"
id=$(E snapshot create a --json | js 'd[0]["id"]') || fail "the snapshot failed once space was free"
E snapshot restore "$id" --volume r >/dev/null
nbdcopy "$(uri a)" "$T/a.img"
nbdcopy "$(uri r)" "$T/r.img"
cmp "$T/a.img" "$T/r.img" || fail "the snapshot taken after freeing space differs from the volume"
pass "with space again, a snapshot succeeds and restores exactly"
stop_server
