#!/usr/bin/env bash
# nbdinfo against a running server: export list, sizes, advertised
# capabilities, allocation map after write and trim, and the TCP URI.
source "$(dirname "$0")/lib.sh"
need nbdinfo

ebs volume create alpha --type gp3 --size 1G >/dev/null
ebs volume create beta  --type gp3 --size 2G >/dev/null
ebs volume create gamma --type io2 --size 8G --iops 4000 >/dev/null
start_server

# --list names every volume, with its size.
list=$(nbdinfo --list "nbd+unix:///?socket=$SOCK")
for v in alpha beta gamma; do
  grep -q "^export=\"$v\":" <<<"$list" || { echo "$list"; fail "nbdinfo --list misses $v"; }
done
n=$(grep -c '^export=' <<<"$list")
[ "$n" -eq 3 ] || { echo "$list"; fail "nbdinfo --list shows $n exports, want 3"; }
pass "nbdinfo --list shows alpha beta gamma"

# --list --json: same names, and each size.
"$PY" - "$SOCK" <<'PYEOF' || fail "nbdinfo --list --json"
import json, subprocess, sys
out = subprocess.run(["nbdinfo", "--list", "--json", f"nbd+unix:///?socket={sys.argv[1]}"],
                     check=True, capture_output=True, text=True).stdout
doc = json.loads(out)
sizes = {e["export-name"]: e["export-size"] for e in doc["exports"]}
want = {"alpha": 1 << 30, "beta": 2 << 30, "gamma": 8 << 30}
assert sizes == want, f"got {sizes}, want {want}"
PYEOF
pass "nbdinfo --list --json sizes"

for spec in alpha:1073741824 beta:2147483648 gamma:8589934592; do
  v=${spec%%:*} want=${spec#*:}
  got=$(nbdinfo --size "$(uri "$v")")
  [ "$got" = "$want" ] || fail "nbdinfo --size $v: got $got, want $want"
done
pass "nbdinfo --size per volume"

for cap in flush fua trim zero fast-zero multi-conn df cache; do
  rc=0; nbdinfo --can "$cap" "$(uri alpha)" || rc=$?
  [ $rc -eq 0 ] || fail "nbdinfo --can $cap: exit $rc, want 0 (supported)"
done
# And the ones that must be false on a writable export.
rc=0; nbdinfo --is readonly "$(uri alpha)" || rc=$?
[ $rc -eq 2 ] || fail "nbdinfo --is readonly on a writable export: exit $rc, want 2 (false)"
pass "nbdinfo --can flush fua trim zero fast-zero multi-conn df cache"

# Block size constraints as advertised.
info=$(nbdinfo "$(uri alpha)")
grep -q 'block_size_minimum: 512$' <<<"$info" || { echo "$info"; fail "block_size_minimum"; }
grep -q 'block_size_preferred: 4096$' <<<"$info" || { echo "$info"; fail "block_size_preferred"; }
grep -q 'block_size_maximum: 67108864$' <<<"$info" || { echo "$info"; fail "block_size_maximum"; }
grep -q 'base:allocation' <<<"$info" || { echo "$info"; fail "base:allocation not listed"; }
pass "block sizes and base:allocation advertised"

# --map: a fresh volume is one hole; after writing 0..2M, then trimming
# 1M..2M, the map is data [0,1M), hole [1M, end).
map=$(nbdinfo --map "$(uri beta)")
[ "$map" = "$(printf '%10d  %10d    3  hole,zero' 0 2147483648)" ] ||
  { echo "$map"; fail "fresh volume map is not a single hole"; }
nbdsh -u "$(uri beta)" -c '
h.pwrite(b"\xaa" * (2 << 20), 0)
h.flush()
'
map=$(nbdinfo --map "$(uri beta)")
grep -Eq '^ +0 +2097152 +0 +data$' <<<"$map" || { echo "$map"; fail "map after write: want data 0..2M"; }
nbdsh -u "$(uri beta)" -c 'h.trim(1 << 20, 1 << 20); h.flush()'
map=$(nbdinfo --map "$(uri beta)")
expected=$(printf '%10d  %10d    0  data\n%10d  %10d    3  hole,zero' 0 1048576 1048576 $((2147483648 - 1048576)))
[ "$map" = "$expected" ] || { printf 'got:\n%s\nwant:\n%s\n' "$map" "$expected"; fail "map after trim"; }
# The trimmed range reads back as zeros, the rest is intact.
nbdsh -u "$(uri beta)" -c '
assert h.pread(1 << 20, 0) == b"\xaa" * (1 << 20)
assert h.pread(1 << 20, 1 << 20) == bytes(1 << 20)
' || fail "contents after trim"
pass "nbdinfo --map: data after write, hole after trim"

# A write in the middle of a larger volume shows as data between holes.
nbdsh -u "$(uri gamma)" -c 'h.pwrite(b"\x01" * 65536, 4 << 30); h.flush()'
map=$(nbdinfo --map=base:allocation "$(uri gamma)")
expected=$(printf '%10d  %10d    3  hole,zero\n%10d  %10d    0  data\n%10d  %10d    3  hole,zero' \
  0 $((4 << 30)) $((4 << 30)) 65536 $(((4 << 30) + 65536)) $(((4 << 30) - 65536)))
[ "$map" = "$expected" ] || { printf 'got:\n%s\nwant:\n%s\n' "$map" "$expected"; fail "map of gamma"; }
pass "nbdinfo --map: data island between holes"

# TCP URI.
got=$(nbdinfo --size "$(tcp_uri gamma)")
[ "$got" = 8589934592 ] || fail "nbdinfo over TCP: size $got"
list=$(nbdinfo --list "nbd://127.0.0.1:$PORT")
for v in alpha beta gamma; do grep -q "^export=\"$v\":" <<<"$list" || fail "TCP --list misses $v"; done
map=$(nbdinfo --map "$(tcp_uri beta)")
grep -Eq '^ +0 +1048576 +0 +data$' <<<"$map" || { echo "$map"; fail "TCP map"; }
pass "nbd://127.0.0.1:$PORT/NAME works"

# Unknown export: nbdinfo fails.
if nbdinfo --size "$(uri nosuch)" >/dev/null 2>&1; then fail "nbdinfo on unknown export succeeded"; fi
pass "unknown export refused"

stop_server
pass "server stopped cleanly"
