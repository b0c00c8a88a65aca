#!/usr/bin/env bash
# Changed-block maps as qemu:dirty-bitmap:SNAP-ID meta contexts. On snapshot
# export B, qemu:dirty-bitmap:A marks exactly what `ebs snapshot diff A B`
# lists (nbdinfo --map and libnbd's block_status); on a volume export, what
# changed since A, a later snapshot or not, including writes made while the
# client is connected. LIST_META_CONTEXT with "qemu:dirty-bitmap:" offers
# the snapshots. An incremental backup with standard tools (a full copy of
# A, then only the dirty ranges of B copied onto it) is byte-identical to B;
# the same from the volume's map gives the volume. After kill -9 the
# volume's map still covers every acknowledged write.
source "$(dirname "$0")/lib.sh"
need nbdcopy nbdinfo

W="$PY $E2E_DIR/snapshot_workload.py"
js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

# dirty_chunks URI BITMAP: the chunks the bitmap marks (libnbd block_status), one line.
dirty_chunks() { "$PY" "$E2E_DIR/dirty_map.py" "$1" "$2"; }
CHUNK=524288
# diff_chunks FROM TO: `ebs snapshot diff`'s chunks, one line.
diff_chunks() { ebs --json snapshot diff "$1" "$2" | js '" ".join(str(c) for c in d["chunks"])'; }
union() { tr ' ' '\n' <<<"$*" | grep . | sort -n -u | tr '\n' ' ' | sed 's/ $//'; }

ebs volume create a --size 1G >/dev/null
start_server
$W "$(uri a)" init
S1=$(ebs snapshot create a --json | js 'd[0]["id"]')
$W "$(uri a)" mutate 3 12 >/dev/null
S2=$(ebs snapshot create a --json | js 'd[0]["id"]')
C3=$($W "$(uri a)" mutate 5 9)   # written after S2, not snapshotted

# --- the contexts offered -------------------------------------------------------
"$PY" - "$(uri a)" "$(uri "$S2")" "$S1" "$S2" <<'PYEOF' || fail "LIST_META_CONTEXT"
import sys, nbd
vol, snap, s1, s2 = sys.argv[1:5]
def listed(uri, query):
    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(uri)
    got = []
    h.add_meta_context(query)
    h.opt_list_meta_context(lambda name: got.append(name) or 0)
    h.opt_abort()
    return set(got)
p = "qemu:dirty-bitmap:"
v = listed(vol, p)
assert v == {p + s1, p + s2}, f"volume a offers {v}"
s = listed(snap, p)
assert s == {p + s1}, f"snapshot {s2} offers {s}"
assert listed(vol, p + s1) == {p + s1}
assert listed(vol, p + "snap-00000000000000000") == set()
assert "base:allocation" in listed(vol, "base:allocation")
PYEOF
pass "LIST_META_CONTEXT qemu:dirty-bitmap: offers the volume's snapshots; a snapshot export offers the others"

# --- snapshot export: the map equals the diff ----------------------------------
want=$(diff_chunks "$S1" "$S2")
[ -n "$want" ] || fail "the diff $S1 $S2 is empty"
got=$(dirty_chunks "$(uri "$S2")" "$S1")
[ "$got" = "$want" ] || fail "qemu:dirty-bitmap:$S1 on $S2: [$got], snapshot diff: [$want]"
# nbdinfo --map: its dirty ranges are the diff's byte ranges.
nbdinfo --map="qemu:dirty-bitmap:$S1" --json "$(uri "$S2")" >"$T/map.json"
ebs --json snapshot diff "$S1" "$S2" --ranges >"$T/diff.json"
"$PY" - "$T/map.json" "$T/diff.json" <<'PYEOF' || fail "nbdinfo --map differs from snapshot diff --ranges"
import json, sys
m = json.load(open(sys.argv[1]))
d = json.load(open(sys.argv[2]))
dirty = [(e["offset"], e["length"]) for e in m if e["type"] & 1]
want = list(zip(d["ranges"]["offsets"], d["ranges"]["lengths"]))
assert dirty == want, f"nbdinfo --map dirty {dirty[:4]}..., diff --ranges {want[:4]}..."
PYEOF
pass "snapshot export $S2: qemu:dirty-bitmap:$S1 = snapshot diff (libnbd block_status and nbdinfo --map)"

# --- volume export: changed since S1 and since S2 ------------------------------
got=$(dirty_chunks "$(uri a)" "$S2")
[ "$got" = "$(union $C3)" ] || fail "volume a since $S2: [$got], written since: [$(union $C3)]"
got=$(dirty_chunks "$(uri a)" "$S1")
[ "$got" = "$(union $want $C3)" ] || fail "volume a since $S1: [$got], want [$(union $want $C3)]"
pass "volume export: qemu:dirty-bitmap:$S2 = the writes since it, :$S1 = the diff to $S2 plus those"

# --- several contexts in one query ---------------------------------------------
want1=$(dirty_chunks "$(uri a)" "$S1")
want2=$(dirty_chunks "$(uri a)" "$S2")
"$PY" - "$(uri a)" "$S1" "$S2" "$want1" "$want2" <<'PYEOF' || fail "base:allocation and two bitmaps in one BLOCK_STATUS"
import sys, nbd
uri, s1, s2, want1, want2 = sys.argv[1:6]
CHUNK = 524288
ctxs = [nbd.CONTEXT_BASE_ALLOCATION, "qemu:dirty-bitmap:" + s1, "qemu:dirty-bitmap:" + s2]
h = nbd.NBD()
for c in ctxs:
    h.add_meta_context(c)
h.connect_uri(uri)
seen = {c: set() for c in ctxs}
calls = {c: 0 for c in ctxs}
pos = {}
def cb(m, off, entries, err):
    calls[m] += 1
    p = off
    for i in range(0, len(entries), 2):
        if entries[i + 1] & 1:
            seen[m].update(range(p // CHUNK, (p + entries[i] + CHUNK - 1) // CHUNK))
        p += entries[i]
    pos[m] = p
    return 0
size, off = h.get_size(), 0
while off < size:
    pos.clear()
    h.block_status(size - off, off, cb)
    assert set(pos) == set(ctxs), f"a reply without every context: {sorted(pos)}"
    off = min(pos.values())
assert " ".join(map(str, sorted(seen[ctxs[1]]))) == want1, "bitmap 1 differs when asked with others"
assert " ".join(map(str, sorted(seen[ctxs[2]]))) == want2, "bitmap 2 differs when asked with others"
PYEOF
pass "base:allocation and two dirty bitmaps answered together, each as when asked alone"

# --- a connection open across a snapshot and more writes -----------------------
"$PY" - "$E2E_DIR" "$(uri a)" "$S1" "$T/go" "$T/held" <<'PYEOF' &
import os, sys, time
sys.path.insert(0, sys.argv[1])
import dirty_map
uri, s1, go, out = sys.argv[2:6]
h, ctx = dirty_map.connect(uri, s1)
open(out + ".ready", "w").close()
while not os.path.exists(go):
    time.sleep(0.05)
open(out, "w").write(" ".join(str(c) for c in dirty_map.dirty_chunks(h, ctx)))
h.shutdown()
PYEOF
held=$!
for _ in $(seq 1 200); do [ -e "$T/held.ready" ] && break; sleep 0.05; done
S3=$(ebs snapshot create a --json | js 'd[0]["id"]')
C4=$($W "$(uri a)" mutate 9 7)
touch "$T/go"
wait "$held" || fail "the held connection's query failed"
all=$(union $want $C3 $C4)
[ "$(cat "$T/held")" = "$all" ] || fail "a connection opened before $S3: since $S1 [$(cat "$T/held")], want [$all]"
pass "a connection opened before snapshot $S3 still reports everything since $S1, later writes included"

# --- incremental backups with standard tools ------------------------------------
# copy_dirty SRC-URI BITMAP TARGET-FILE: nbdinfo's map, then each dirty range copied.
copy_dirty() {
  nbdinfo --map="qemu:dirty-bitmap:$2" --json "$1" >"$T/cmap.json"
  "$PY" - "$1" "$T/cmap.json" "$3" <<'PYEOF'
import json, sys, nbd
uri, mapfile, target = sys.argv[1:4]
h = nbd.NBD()
h.connect_uri(uri)
n = 0
with open(target, "r+b") as f:
    for e in json.load(open(mapfile)):
        if not e["type"] & 1:
            continue
        for off in range(e["offset"], e["offset"] + e["length"], 1 << 22):
            ln = min(1 << 22, e["offset"] + e["length"] - off)
            f.seek(off)
            f.write(h.pread(ln, off))
            n += ln
h.shutdown()
print(n)
PYEOF
}
nbdcopy "$(uri "$S1")" "$T/backup.img"
copied=$(copy_dirty "$(uri "$S2")" "$S1" "$T/backup.img")
ebs snapshot export "$S2" "$T/s2.img" >/dev/null
cmp "$T/backup.img" "$T/s2.img" || fail "full($S1) + dirty ranges of $S2 differs from $S2"
[ "$copied" -lt $((64 * CHUNK)) ] || fail "the incremental copied $copied bytes: more than the changes"
pass "incremental backup: full copy of $S1 + $copied dirty bytes of $S2 = $S2, byte for byte"
ebs snapshot export "$S3" "$T/vol-backup.img" >/dev/null
copy_dirty "$(uri a)" "$S3" "$T/vol-backup.img" >/dev/null
nbdcopy "$(uri a)" "$T/vol-now.img"
cmp "$T/vol-backup.img" "$T/vol-now.img" || fail "$S3 + the volume's dirty ranges differs from the volume"
pass "incremental backup of the live volume: $S3 + its dirty ranges = the volume"

# --- kill -9: acknowledged writes stay in the map ------------------------------
# Acknowledged, never flushed: the server is killed with the connection open.
"$PY" - "$(uri a)" "$T/c5" <<'PYEOF' &
import os, random, sys, time, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
chunks = sorted(random.Random(11).sample(range(h.get_size() // 524288), 10))
for c in chunks:
    h.pwrite(os.urandom(4096), c * 524288 + 8192)  # returns once the server acknowledged it
with open(sys.argv[2] + ".chunks", "w") as f:
    f.write(" ".join(map(str, chunks)))
open(sys.argv[2], "w").close()
time.sleep(30)
PYEOF
writer=$!
for _ in $(seq 1 200); do [ -e "$T/c5" ] && break; sleep 0.05; done
[ -e "$T/c5" ] || fail "the writer did not finish its writes"
kill -9 "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null || true
SERVER_PID=""
kill "$writer" 2>/dev/null || true
wait "$writer" 2>/dev/null || true
C5=$(cat "$T/c5.chunks")
start_server
got=$(dirty_chunks "$(uri a)" "$S3")
for c in $C4 $C5; do
  grep -qw "$c" <<<"$got" || fail "after kill -9, chunk $c written since $S3 is missing from the map [$got]"
done
pass "after kill -9 the volume's map since $S3 still covers every acknowledged write"
