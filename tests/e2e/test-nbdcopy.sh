#!/usr/bin/env bash
# nbdcopy with several connections (multi-conn): 256 MiB of random data in,
# out again, volume to volume; byte-identical, and other volumes untouched.
source "$(dirname "$0")/lib.sh"
need nbdcopy nbdinfo cmp

M=$((1 << 20))
# 750 MiB/s: the copies are not throttle-bound should a throttle apply.
for v in src dst other; do
  ebs volume create "$v" --type gp3 --size 1G --throughput 750 >/dev/null
done
start_server

head -c $((256 * M)) /dev/urandom >"$T/in.img"
# same_as_input FILE [head]: FILE is the 1 GiB volume image: the input, then
# zeros (with "head", only the input part is compared).
same_as_input() {
  [ "$(stat -c %s "$1")" -eq $((1024 * M)) ] || fail "$1: size $(stat -c %s "$1")"
  cmp -n $((256 * M)) "$T/in.img" "$1" || fail "$1: data differs from the input"
  [ "${2:-}" = head ] ||
    cmp -n $((768 * M)) -i $((256 * M)):0 "$1" /dev/zero || fail "$1: not zero after the data"
}

# In, over 4 connections, then flush.
nbdcopy --connections=4 --flush "$T/in.img" "$(uri src)" || fail "nbdcopy file -> src"
pass "nbdcopy --connections=4 into the volume"

# Out again (the volume is 1 GiB: the first 256 MiB are the file, the rest zero).
nbdcopy --connections=4 "$(uri src)" "$T/out.img" || fail "nbdcopy src -> file"
same_as_input "$T/out.img"
pass "copied out byte-identical"

# Same through TCP, reading every byte (no extents: what is really stored).
rm -f "$T/out.img"
nbdcopy --connections=4 --no-extents "$(tcp_uri src)" "$T/out.img" || fail "nbdcopy over TCP"
same_as_input "$T/out.img"
pass "copy-out over TCP, no extents, identical"

# Volume to volume over 4 connections each side.
nbdcopy --connections=4 "$(uri src)" "$(tcp_uri dst)" || fail "nbdcopy src -> dst"
rm -f "$T/out.img"
nbdcopy --connections=2 "$(uri dst)" "$T/out.img" || fail "nbdcopy dst -> file"
same_as_input "$T/out.img" head
pass "volume to volume copy identical"

# The other volume stayed all zeros: every byte read, and the map agrees.
"$PY" - "$(uri other)" <<'PYEOF' || fail "other volume is not all zeros"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
chunk, zero = 4 << 20, bytes(4 << 20)
for off in range(0, h.get_size(), chunk):
    assert h.pread(chunk, off) == zero, f"non-zero data at {off}"
PYEOF
map=$(nbdinfo --map "$(uri other)")
[ "$map" = "$(printf '%10d  %10d    3  hole,zero' 0 $((1024 * M)))" ] || { echo "$map"; fail "other volume map"; }
pass "other volume untouched"

# And the data survives a restart.
stop_server
start_server
rm -f "$T/out.img"
nbdcopy --connections=4 "$(uri src)" "$T/out.img" || fail "nbdcopy after restart"
same_as_input "$T/out.img" head
pass "data identical after restart"
stop_server
