#!/usr/bin/env bash
# The snapshot store's integrity and lineage through the real binary:
# - a snapshot of a restored volume is incremental to its source (parent,
#   changed bytes, diff), and stays restorable when the source is deleted,
#   through gc, verify and reindex;
# - `store check` reports a missing manifest, a manifest no snapshot owns,
#   and exits non-zero;
# - `store reindex` refuses a store with a truncated manifest and leaves
#   the index unchanged, unless --force.
source "$(dirname "$0")/lib.sh"
need nbdcopy

W="$PY $E2E_DIR/snapshot_workload.py"
js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
image() { nbdcopy "$(uri "$1")" "$T/$2.img"; }  # sparse copy of a volume
CHUNK=524288

"$EBS" volume create a --size 1G >/dev/null
start_server
$W "$(uri a)" init
S=$("$EBS" snapshot create a --json | js 'd[0]["id"]')
image a a1

# --- A snapshot of a restored volume is incremental to its source ---------
"$EBS" snapshot restore "$S" --volume r >/dev/null
# One 4 KiB block in chunk 7 (byte 7.5 chunks in).
nbdsh -u "$(uri r)" -c "h.pwrite(b'\xab' * 4096, 7 * $CHUNK + $CHUNK // 2)"
image r r1
objects_before=$(find "$EBS_DATA_DIR/store/chunks" -type f | wc -l)
N=$("$EBS" snapshot create r --json | js 'd[0]["id"]')
d=$("$EBS" snapshot describe "$N" --json)
[ "$(echo "$d" | js 'd["parent"]')" = "$S" ] || fail "the restored volume's snapshot has parent $(echo "$d" | js 'd["parent"]'), not its source $S"
[ "$(echo "$d" | js 'd["changed_bytes"]')" = $CHUNK ] || fail "changed_bytes is $(echo "$d" | js 'd["changed_bytes"]'), not one chunk: $d"
[ "$(echo "$d" | js '0 < d["stored_bytes"] <= 524288 + 64')" = True ] || fail "stored_bytes is not one chunk's object: $d"
[ $(($(find "$EBS_DATA_DIR/store/chunks" -type f | wc -l) - objects_before)) = 1 ] || fail "more than one new object stored"
"$EBS" snapshot create r --json | js 'd[0]["parent"]' | grep -qx "$N" || fail "the next snapshot's parent is not $N"
out=$("$EBS" snapshot diff "$S" "$N" --json)
[ "$(echo "$out" | js 'd["chunks"]')" = "[7]" ] || fail "diff SOURCE NEW: $out"
[ "$("$EBS" snapshot diff "$N" "$S" --json | js 'd["chunks"]')" = "[7]" ] || fail "diff NEW SOURCE is not the same chunks"
"$EBS" snapshot restore "$N" --volume rn >/dev/null
image rn rn
cmp "$T/r1.img" "$T/rn.img" || fail "restore of the restored volume's snapshot differs from the volume"
pass "a snapshot of a restored volume: parent is its source, one changed chunk, diff lists it, restores identical"

# The same for an encrypted volume: the fork's base is sealed with its key.
"$EBS" key create k >/dev/null
"$EBS" volume create e --size 1G --key k >/dev/null
nbdsh -u "$(uri e)" -c "h.pwrite(b'\x11' * (3 * $CHUNK), 0)"
ES=$("$EBS" snapshot create e --json | js 'd[0]["id"]')
"$EBS" snapshot restore "$ES" --volume er >/dev/null
nbdsh -u "$(uri er)" -c "h.pwrite(b'\x22' * 4096, $CHUNK)"
image er er1
EN=$("$EBS" snapshot create er --json | js 'd[0]["id"]')
[ "$("$EBS" snapshot describe "$EN" --json | js 'd["parent"] + " " + str(d["changed_bytes"])')" = "$ES $CHUNK" ] \
  || fail "encrypted fork: $("$EBS" snapshot describe "$EN" --json)"
[ "$("$EBS" snapshot diff "$ES" "$EN" --json | js 'd["chunks"]')" = "[1]" ] || fail "encrypted fork: diff"
"$EBS" snapshot verify "$EN" >/dev/null || fail "encrypted fork: verify"
"$EBS" snapshot restore "$EN" --volume ern >/dev/null
image ern ern
cmp "$T/er1.img" "$T/ern.img" || fail "encrypted fork: restore differs"
if grep -rqa "$(printf '\x22%.0s' $(seq 64))" "$EBS_DATA_DIR/store"; then fail "plaintext in the store"; fi
pass "an encrypted restored volume's snapshot is incremental to its source too"

# A volume restored from that snapshot forks again; deleting both sources
# and collecting garbage leaves every snapshot of the forks restorable.
nbdsh -u "$(uri rn)" -c "h.pwrite(b'\xcd' * 4096, 9 * $CHUNK)"
image rn rn2
N2=$("$EBS" snapshot create rn --json | js 'd[0]["id"]')
[ "$("$EBS" snapshot diff "$N" "$N2" --json | js 'd["chunks"]')" = "[9]" ] || fail "diff of a fork of a fork"
"$EBS" snapshot delete "$S" >/dev/null
"$EBS" snapshot delete "$N" >/dev/null
"$EBS" store gc >/dev/null
out=$("$EBS" store check --json) || fail "store check after deleting fork sources: $out"
"$EBS" snapshot verify "$N2" >/dev/null || fail "verify $N2 after its sources were deleted"
"$EBS" snapshot restore "$N2" --volume rn2 >/dev/null
image rn2 rn2b
cmp "$T/rn2.img" "$T/rn2b.img" || fail "a fork's snapshot is not restorable after its source was deleted"
[ "$("$EBS" snapshot describe "$N2" --json | js 'd["parent"]')" = "$N" ] || fail "the parent changed"
pass "forks stay restorable after their sources are deleted and garbage collected"

# Deleting the first snapshot of a fork while a later one exists: the later
# one is then incremental to the fork's source.
nbdsh -u "$(uri r)" -c "h.pwrite(b'\xef' * 4096, 11 * $CHUNK)"
image r r3
N3=$("$EBS" snapshot create r --json | js 'd[0]["id"]')
mid=$("$EBS" snapshot describe "$N3" --json | js 'd["parent"]')
"$EBS" snapshot delete "$mid" >/dev/null
[ "$("$EBS" snapshot describe "$N3" --json | js 'd["parent"]')" = "$S" ] || fail "after deleting its parent, $N3's parent is not the fork source"
"$EBS" store reindex >/dev/null || fail "store reindex of a store with forks: $("$EBS" store reindex 2>&1)"
"$EBS" store check >/dev/null || fail "store check after reindex: $("$EBS" store check)"
[ "$("$EBS" snapshot describe "$N3" --json | js 'd["parent"] + " " + str(d["changed_bytes"])')" = "$S $((2 * CHUNK))" ] \
  || fail "after reindex: $("$EBS" snapshot describe "$N3" --json)"
"$EBS" snapshot restore "$N3" --volume r3 >/dev/null
image r3 r3b
cmp "$T/r3.img" "$T/r3b.img" || fail "restore after deleting a fork's first snapshot and reindexing"
pass "deletes within a fork, reindex and check keep it whole"

# Deleting a fork's newest snapshot keeps it as the base of the next one,
# which then is incremental to the fork's source.
"$EBS" snapshot delete "$N3" >/dev/null
nbdsh -u "$(uri r)" -c "h.pwrite(b'\x12' * 4096, 13 * $CHUNK)"
image r r4
N4=$("$EBS" snapshot create r --json | js 'd[0]["id"]')
[ "$("$EBS" snapshot describe "$N4" --json | js 'd["parent"] + " " + str(d["changed_bytes"])')" = "$S $((3 * CHUNK))" ] \
  || fail "after deleting the fork's newest: $("$EBS" snapshot describe "$N4" --json)"
"$EBS" snapshot restore "$N4" --volume r4 >/dev/null
image r4 r4b
cmp "$T/r4.img" "$T/r4b.img" || fail "restore after deleting a fork's newest snapshot"
"$EBS" store check >/dev/null || fail "store check after deleting a fork's newest: $("$EBS" store check)"
N3=$N4
pass "deleting a fork's newest snapshot: the next one absorbs it, incremental to the source"

# --- store check: manifests against snapshots -----------------------------
"$EBS" store check >/dev/null || fail "store check not clean before damage: $("$EBS" store check)"
M="$EBS_DATA_DIR/store/snapshots/$N3.manifest"
mv "$M" "$T/saved.manifest"
rc=0; out=$("$EBS" store check 2>&1) || rc=$?
[ $rc -ne 0 ] || fail "store check is clean with a manifest missing: $out"
echo "$out" | grep -q "snapshots/$N3.manifest: missing" || fail "store check did not name the missing manifest: $out"
mv "$T/saved.manifest" "$M"
cp "$M" "$EBS_DATA_DIR/store/snapshots/snap-0123456789abcdef0.manifest"
rc=0; out=$("$EBS" store check 2>&1) || rc=$?
[ $rc -ne 0 ] || fail "store check is clean with a manifest of no snapshot: $out"
echo "$out" | grep -q "snapshots/snap-0123456789abcdef0.manifest: .*not in the index" \
  || fail "store check did not name the stray manifest: $out"
rm "$EBS_DATA_DIR/store/snapshots/snap-0123456789abcdef0.manifest"
"$EBS" store check >/dev/null || fail "store check not clean after repair"
pass "store check reports a missing manifest and one that belongs to no snapshot"

# --- store reindex refuses a truncated manifest ---------------------------
"$EBS" snapshot list --json | js 'sorted((s["id"], s["parent"], s["changed_bytes"]) for s in d)' >"$T/list.before"
cp "$M" "$T/saved.manifest"
truncate -s 100 "$M"
rc=0; out=$("$EBS" store reindex 2>&1) || rc=$?
[ $rc -ne 0 ] || fail "store reindex accepted a truncated manifest: $out"
echo "$out" | grep -q "snapshots/$N3.manifest: .*truncated" || fail "store reindex did not name the truncated manifest: $out"
echo "$out" | grep -q -- "--force" || fail "the refusal does not say how to go on: $out"
"$EBS" snapshot list --json | js 'sorted((s["id"], s["parent"], s["changed_bytes"]) for s in d)' >"$T/list.after"
diff "$T/list.before" "$T/list.after" || fail "a refused reindex changed the snapshots"
[ ! -e "$EBS_DATA_DIR/store/index.reindex" ] || fail "a refused reindex left its new index behind"
out=$("$EBS" store check --json) || fail "a refused reindex changed reference counts: $out"
stop_server
# The same without a server (the CLI opens the store itself).
rc=0; out=$("$EBS" store reindex --json 2>&1) || rc=$?
[ $rc -ne 0 ] && echo "$out" | grep -q "truncated" || fail "store reindex without a server: rc $rc: $out"
diff "$T/list.before" <("$EBS" snapshot list --json | js 'sorted((s["id"], s["parent"], s["changed_bytes"]) for s in d)') \
  || fail "a refused reindex (no server) changed the snapshots"
# --force rebuilds without it, says so, and exits 2.
rc=0; out=$("$EBS" store reindex --force 2>&1) || rc=$?
[ $rc = 2 ] || fail "store reindex --force: rc $rc: $out"
echo "$out" | grep -q "snapshots/$N3.manifest" || fail "store reindex --force did not name the skipped manifest: $out"
"$EBS" snapshot describe "$N3" >/dev/null 2>&1 && fail "reindex --force kept the snapshot of the truncated manifest"
"$EBS" store reindex --help | grep -q -- "--force" || fail "--force is not in store reindex --help"
pass "store reindex refuses a truncated manifest, index unchanged; --force rebuilds without it"
