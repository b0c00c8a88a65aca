#!/usr/bin/env bash
# Lazy restore through the real binary and real NBD clients: the volume is
# usable at once; reads and partial writes of chunks not yet loaded are
# correct; background loading proceeds at the given rate, is visible in
# `volume describe`, and resumes after the server is killed (-9) and
# restarted; a snapshot of a volume still loading is right; its source
# cannot be deleted meanwhile; the final image is identical.
source "$(dirname "$0")/lib.sh"
need nbdcopy

W="$PY $E2E_DIR/snapshot_workload.py"
js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
# Chunks loaded so far (all of them once loading has completed).
loaded() { "$EBS" volume describe "$1" --json | js 'd["initialization"].get("loaded_chunks", 1 << 40)'; }
init_state() { "$EBS" volume describe "$1" --json | js 'd["initialization"]["state"]'; }

"$EBS" volume create a --size 1G >/dev/null
start_server
$W "$(uri a)" init   # 40 scattered chunks of data
S=$("$EBS" snapshot create a --json | js 'd[0]["id"]')
nbdcopy "$(uri a)" "$T/want.img"

# --eager (the default, stated) copies everything first: nothing left to
# load; it cannot be combined with lazy loading.
"$EBS" volume create eager --snapshot "$S" --eager >/dev/null
"$EBS" volume describe eager --json | js '"initialization" not in d or d["initialization"] in (None, {}) or d["initialization"].get("state") != "loading"' \
  | grep -qx True || fail "an eager restore left chunks to load"
nbdcopy "$(uri eager)" "$T/eager.img" && cmp -s "$T/want.img" "$T/eager.img" || fail "the eager restore differs"
if "$EBS" snapshot restore "$S" --volume both --eager --lazy >/dev/null 2>&1; then fail "--eager with --lazy accepted"; fi
"$EBS" volume describe both >/dev/null 2>&1 && fail "a refused restore made a volume"
pass "--eager restores fully; --eager with --lazy is refused"

# 1 MiB/s: the 40 chunks (20 MiB) take far longer than this test's reads.
"$EBS" snapshot restore "$S" --volume lazy --lazy --initialization-rate 1 >/dev/null
[ "$(init_state lazy)" = loading ] || fail "a lazy restore is not loading"
pass "lazy restore returns at once (state loading)"

# Reads of chunks not loaded yet, and a partial write into one.
"$PY" - "$(uri lazy)" "$T/want.img" <<'PYEOF'
import sys, nbd
uri, want = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
with open(want, "r+b") as f:
    # Every 37th chunk's first and last 4 KiB, some of them data chunks.
    for c in range(0, size // 524288, 37):
        for off in (c * 524288, c * 524288 + 524288 - 4096):
            f.seek(off)
            if h.pread(4096, off) != f.read(4096):
                sys.exit(f"read at {off} differs from the snapshot before loading")
    # A partial write in the middle of a chunk that holds data (restored
    # content around it must survive).
    data_chunk = next(c for c in range(size // 524288) if any(h.pread(4096, c * 524288)))
    off = data_chunk * 524288 + 100 * 512
    h.pwrite(b"\xab" * 1024, off)
    f.seek(off)
    f.write(b"\xab" * 1024)
h.flush()
h.shutdown()
PYEOF
pass "reads and a partial write before loading completes are correct"
waited=$("$EBS" volume describe lazy --json | js 'd["initialization"]["reads_waited_for_fetch"]')
[ "$waited" -gt 0 ] || fail "volume describe counts no read that waited for a fetch"
described=$("$EBS" volume describe lazy)
grep -q "^first reads: .* waited for their chunk's fetch" <<<"$described" || fail "describe: no first-reads line"
"$EBS" volume stats lazy --json | js 'd["LazyLoad"]["reads_waited_for_fetch"]' | grep -qx "$waited" \
  || "$EBS" volume stats lazy --json | js 'd["LazyLoad"]["reads_waited_for_fetch"] >= 1' | grep -qx True \
  || fail "volume stats: no LazyLoad counters"
pass "volume describe and stats count the $waited reads that waited for a fetch"

n1=$(loaded lazy)
sleep 2.5
n2=$(loaded lazy)
[ "$n2" -gt "$n1" ] || fail "background loading made no progress ($n1 -> $n2 chunks in 2.5 s)"
[ "$(init_state lazy)" = loading ] || fail "loading finished too early for 1 MiB/s"
pass "background loading progresses ($n1 -> $n2 chunks)"

# The source cannot be deleted while a volume loads from it.
out=$("$EBS" snapshot delete "$S" 2>&1) && fail "deleted the source of a loading volume"
echo "$out" | grep -q "still loading" || fail "unclear refusal: $out"
pass "the source snapshot is kept while a volume loads from it"

# A snapshot of the volume while it loads.
S2=$("$EBS" snapshot create lazy --json | js 'd[0]["id"]')
"$EBS" snapshot restore "$S2" --volume copy >/dev/null
nbdcopy "$(uri copy)" "$T/copy.img"
cmp "$T/want.img" "$T/copy.img" || fail "a snapshot taken while loading differs from the volume"
rm -f "$T/copy.img"
pass "a snapshot of a volume still loading is exact"

# A crash (kill -9 in the middle of loading), then a restart: loading
# resumes where it was, and nothing loaded or written is lost.
kill -KILL "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
n3=$(loaded lazy)
[ "$n3" -ge "$n2" ] || fail "progress went back across the restart ($n2 -> $n3)"
start_server
sleep 2.5
n4=$(loaded lazy)
[ "$n4" -gt "$n3" ] || fail "loading did not resume after the restart ($n3 -> $n4)"
pass "loading resumes after a kill -9 and restart ($n3 -> $n4 chunks)"

# nbdcopy asks for block status: chunks of zeros in the snapshot must show
# as holes and chunks with data as data before they are loaded.
nbdcopy "$(uri lazy)" "$T/got.img"
cmp "$T/want.img" "$T/got.img" || fail "the lazily restored volume differs from the snapshot (plus the write)"
# Reading every chunk loads what is left.
"$PY" - "$(uri lazy)" <<'PYEOF'
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for off in range(0, h.get_size(), 1 << 20):
    h.pread(1 << 20, off)
h.shutdown()
PYEOF
[ "$(init_state lazy)" = completed ] || fail "after reading every chunk the initialization is $(init_state lazy)"
"$EBS" snapshot delete "$S" >/dev/null || fail "the source could not be deleted after loading completed"
pass "the final image is identical; completed; the source can then be deleted"
stop_server
