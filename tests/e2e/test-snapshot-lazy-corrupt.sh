#!/usr/bin/env bash
# A lazily restored volume whose source has one corrupt chunk object
# (docs/snapshots.md, "Lazy restore"): that chunk is never served (a read,
# a partial write, a read across its edge fail with EIO, before and after the
# background loading reached it), every other chunk reads back the
# snapshot's content (loaded on demand, also past the bad one), and `volume
# describe` shows that background loading stopped, naming the chunk.
source "$(dirname "$0")/lib.sh"
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed"

js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
CHUNK=524288
NCHUNKS=12   # chunks 0..11 hold data, each its own
BAD=5        # the chunk whose object is corrupted
objects() { find "$EBS_DATA_DIR/store/chunks" -type f 2>/dev/null | sort; }

"$EBS" volume create src --size 1G >/dev/null
start_server
# Every chunk but BAD first, a snapshot of that, then BAD: the object the
# second snapshot adds is BAD's alone.
fill() {  # fill CHUNK...: seeded random content, its own per chunk
  "$PY" - "$(uri src)" "$@" <<'PYEOF'
import random, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for c in map(int, sys.argv[2:]):
    h.pwrite(random.Random(c).randbytes(524288), c * 524288)
h.flush()
h.shutdown()
PYEOF
}
fill $(seq 0 $((NCHUNKS - 1)) | grep -vx "$BAD")
"$EBS" snapshot create src >/dev/null
objects >"$T/objects.before"
fill "$BAD"
S=$("$EBS" snapshot create src --json | js 'd[0]["id"]')
objects >"$T/objects.after"
obj=$(comm -13 "$T/objects.before" "$T/objects.after")
[ "$(echo "$obj" | grep -c .)" = 1 ] || fail "the second snapshot added $(echo "$obj" | grep -c .) objects, want 1 (chunk $BAD's): $obj"
"$EBS" snapshot verify "$S" >/dev/null || fail "snapshot $S does not verify before the corruption"
"$PY" - "$obj" <<'PYEOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 0x5A
open(p, "wb").write(bytes(b))
PYEOF
out=$("$EBS" snapshot verify "$S" 2>&1) && fail "snapshot verify does not notice the corrupt object: $out"
pass "chunk $BAD's object ${obj##*/} corrupted (verify: $(echo "$out" | grep -m1 'bad' || echo "$out" | head -n1))"

# 1 MiB/s: background loading reaches chunk BAD after ~2.5 s, so the reads
# below come before it, and again after it stopped there.
"$EBS" snapshot restore "$S" --volume lazy --lazy --initialization-rate 1 >/dev/null
[ "$(js 'd["initialization"]["state"]' < <("$EBS" volume describe lazy --json))" = loading ] \
  || fail "the lazy restore is not loading"

# check WHEN: chunk BAD fails with EIO (read whole, a read of its last sector,
# a read across the edge from the chunk before, a partial write), and never
# reads as anything; every other chunk reads the snapshot's content, loaded
# on demand if the background has not got there.
check() {
  "$PY" - "$(uri lazy)" "$BAD" "$NCHUNKS" "$1" <<'PYEOF'
import errno, random, sys, nbd
uri, bad, n, when = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
C = 524288
h = nbd.NBD()
h.connect_uri(uri)
def must_eio(what, f):
    try:
        f()
    except nbd.Error as e:
        if e.errnum != errno.EIO:
            sys.exit(f"{when}: {what} of the corrupt chunk {bad} failed with errno {e.errnum}, want EIO ({e})")
        return
    sys.exit(f"{when}: {what} of the corrupt chunk {bad} succeeded")
must_eio("a read", lambda: h.pread(C, bad * C))
must_eio("a read of its last sector", lambda: h.pread(512, bad * C + C - 512))
must_eio("a read across its edge", lambda: h.pread(8192, bad * C - 4096))
must_eio("a partial write", lambda: h.pwrite(b"\x77" * 4096, bad * C + 8192))
# Others, in an order that takes chunks past the bad one before the
# background loader could have reached them.
for c in sorted(range(n + 2), key=lambda c: (c < bad, c)):
    if c == bad:
        continue
    want = random.Random(c).randbytes(C) if c < n else bytes(C)
    if h.pread(C, c * C) != want:
        sys.exit(f"{when}: chunk {c} does not read the snapshot's content")
# The failure did not break the connection or the volume: a write and a
# read elsewhere work, and the bad chunk still fails.
h.pwrite(b"\x55" * 4096, (n + 3) * C)
assert h.pread(4096, (n + 3) * C) == b"\x55" * 4096
must_eio("a read (again)", lambda: h.pread(4096, bad * C))
h.shutdown()
print(f"{when}: chunk {bad} EIO for reads and a write; the {n + 1} other chunks read right")
PYEOF
}
# (Whether the background loader has reached it yet is read, not assumed.)
err=$("$EBS" volume describe lazy --json | js 'd["initialization"].get("error") or ""')
when="before background loading reached it"
[ -z "$err" ] || when="as soon as the restore returned (background loading had already stopped at it)"
out=$(check "$when" 2>&1) || fail "$out"
pass "$out"

# Background loading stops at the bad chunk, and describe says why.
for _ in $(seq 1 200); do
  err=$("$EBS" volume describe lazy --json | js 'd["initialization"].get("error") or ""')
  [ -z "$err" ] || break
  sleep 0.05
done
[ -n "$err" ] || fail "volume describe shows no loading error 10 s after the restore: $("$EBS" volume describe lazy)"
echo "$err" | grep -q "chunk $BAD " || fail "the loading error does not name chunk $BAD: $err"
echo "$err" | grep -qi "corrupt\|checksum\|mismatch\|damaged" || fail "the loading error does not say the object is corrupt: $err"
read -r st loaded total < <("$EBS" volume describe lazy --json \
  | js 'd["initialization"]["state"], d["initialization"]["loaded_chunks"], d["initialization"]["total_chunks"]' | tr -d "(),'")
[ "$st" = loading ] || fail "a volume with a chunk it cannot load is '$st', want loading"
[ "$loaded" -lt "$total" ] || fail "all $total chunks counted loaded, chunk $BAD cannot be"
text=$("$EBS" volume describe lazy)
echo "$text" | grep -q "stopped: .*chunk $BAD " || fail "volume describe (text) does not show why loading stopped: $text"
pass "describe: $st, $loaded of $total chunks, stopped: $err"

out=$(check "after background loading stopped at it" 2>&1) || fail "$out"
pass "$out"
stop_server
