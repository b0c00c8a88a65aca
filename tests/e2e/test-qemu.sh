#!/usr/bin/env bash
# qemu's NBD client: qemu-io pattern write/read/zero/discard over TCP and the
# Unix socket, qemu-img map of the resulting allocation, qemu-img info,
# convert in and out, and compare.
source "$(dirname "$0")/lib.sh"
need qemu-io qemu-img

ebs volume create qtcp  --type gp3 --size 1G >/dev/null
ebs volume create qunix --type gp3 --size 1G >/dev/null
ebs volume create qconv --type gp3 --size 1G >/dev/null
start_server

# qemu_io URI CMDS...: run qemu-io, fail on a non-zero exit or any failed
# verification or I/O error in its output.
qemu_io() {
  local u=$1; shift
  local args=() c out rc=0
  for c in "$@"; do args+=(-c "$c"); done
  out=$(qemu-io -f raw "${args[@]}" "$u" 2>&1) || rc=$?
  if [ $rc -ne 0 ] || grep -Eqi 'Pattern verification failed|error|failed' <<<"$out"; then
    echo "$out"
    fail "qemu-io on $u exited $rc"
  fi
}

# Layout written on each volume (M = MiB):
#   [0,1M)  0xaa            [1M,2M) write -z (no unmap: stays allocated)
#   [2M,3M) write -z -u     [3M,4M) 0x55, then discarded
#   [4M,5M) 0x33 with FUA   [5M,6M) 0xcc written as 4k pieces, then flush
#   rest never written
layout=(
  'write -P 0xaa 0 1M'
  'read -P 0xaa 0 1M'
  'write -P 0x11 1M 1M'
  'write -z 1M 1M'
  'read -P 0 1M 1M'
  'write -P 0x22 2M 1M'
  'write -z -u 2M 1M'
  'read -P 0 2M 1M'
  'write -P 0x55 3M 1M'
  'read -P 0x55 3M 1M'
  'discard 3M 1M'
  'read -P 0 3M 1M'
  'write -f -P 0x33 4M 1M'
  'read -P 0x33 4M 1M'
  'aio_write -P 0xcc 5M 4k'
  'aio_write -P 0xcc 5124k 1020k'
  'aio_flush'
  'flush'
  'read -P 0xcc 5M 1M'
  'readv -P 0xaa 0 4k 4k 8k'
  'read -P 0 6M 1M'
  'read -P 0 1023M 1M'
)
verify=(
  'read -P 0xaa 0 1M'
  'read -P 0 1M 3M'
  'read -P 0x33 4M 1M'
  'read -P 0xcc 5M 1M'
  'read -P 0 6M 26M'
  'read -P 0 992M 32M'
)

qemu_io "$(tcp_uri qtcp)" "${layout[@]}"
pass "qemu-io write/read/zero/discard over nbd://127.0.0.1:$PORT/qtcp"
qemu_io "$(uri qunix)" "${layout[@]}"
pass "qemu-io write/read/zero/discard over nbd+unix"

# Each volume seen through the other transport, in a new process.
qemu_io "$(uri qtcp)" "${verify[@]}"
qemu_io "$(tcp_uri qunix)" "${verify[@]}"
pass "data visible over the other transport"

# A verification that must fail does fail (the checks above are meaningful).
out=$(qemu-io -f raw -c 'read -P 0xab 0 1M' "$(uri qtcp)" 2>&1) || true
grep -q 'Pattern verification failed' <<<"$out" || { echo "$out"; fail "qemu-io did not detect a wrong pattern"; }
pass "wrong pattern detected"

# qemu-img map: data where written, zero (and unallocated) where zeroed with
# unmap, discarded, or never written.
check_map() {
  qemu-img map --output=json -f raw "$1" >"$T/map.json" || fail "qemu-img map $1"
  "$PY" - "$T/map.json" <<'PYEOF' || { cat "$T/map.json"; fail "qemu-img map $1"; }
import json, sys
M = 1 << 20
ents = json.load(open(sys.argv[1]))
# The map covers the whole export, contiguously.
pos = 0
for e in ents:
    assert e["start"] == pos, ("gap/overlap at", pos, e)
    pos += e["length"]
assert pos == 1024 * M, pos

def props(lo, hi):
    out = set()
    for e in ents:
        s, t = e["start"], e["start"] + e["length"]
        if s < hi and t > lo:
            out.add((e["data"], e["zero"]))
    return out

def want(lo, hi, expect, what):
    got = props(lo * M, hi * M)
    assert got == expect, f"[{lo}M,{hi}M) {what}: got (data, zero) {got}, want {expect}"

want(0, 1, {(True, False)}, "written 0xaa")
# write -z without -u sends NO_HOLE: allocated, reads as zero; the server
# may or may not report it as known-zero.
got = props(1 * M, 2 * M)
assert got <= {(True, False), (True, True)} and got, f"[1M,2M) zeroed no-unmap: {got}"
want(2, 4, {(False, True)}, "zeroed with unmap / discarded")
want(4, 6, {(True, False)}, "written")
want(6, 1024, {(False, True)}, "never written")
PYEOF
}
check_map "$(tcp_uri qtcp)"
check_map "$(uri qunix)"
pass "qemu-img map --output=json shows data and zero regions"

info=$(qemu-img info --output=json -f raw "$(uri qtcp)")
"$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["virtual-size"] == 1 << 30, d' "$info" ||
  fail "qemu-img info: $info"
pass "qemu-img info virtual size"

# convert a sparse file in (qemu-img uses fast zero and block status), then
# out again, and compare both ways.
src="$T/src.img"
"$PY" - "$src" <<'PYEOF'
import os, sys
M = 1 << 20
with open(sys.argv[1], "wb") as f:
    f.truncate(1024 * M)
    for off in (0, 5 * M, 100 * M, 1023 * M):
        f.seek(off); f.write(os.urandom(M))
PYEOF
qemu-img convert -n -f raw -O raw "$src" "$(uri qconv)" || fail "qemu-img convert into the volume"
qemu-img compare -f raw -F raw "$src" "$(tcp_uri qconv)" >/dev/null || fail "qemu-img compare after convert"
qemu-img convert -f raw -O raw "$(uri qconv)" "$T/out.img" || fail "qemu-img convert out of the volume"
cmp "$src" "$T/out.img" || fail "converted image differs"
# Overwriting with a different image replaces everything (including making
# formerly written areas zero again).
"$PY" -c 'import sys; f=open(sys.argv[1],"wb"); f.truncate(1<<30); f.seek(7<<20); f.write(b"\x77"*65536)' "$T/src2.img"
qemu-img convert -n -f raw -O raw "$T/src2.img" "$(tcp_uri qconv)" || fail "second convert"
qemu-img compare -f raw -F raw "$T/src2.img" "$(uri qconv)" >/dev/null || fail "compare after second convert"
qemu_io "$(uri qconv)" 'read -P 0 0 7M' 'read -P 0x77 7M 64k' 'read -P 0 1023M 1M'
pass "qemu-img convert in/out and compare"

stop_server
pass "server stopped cleanly"
