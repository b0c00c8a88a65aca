#!/usr/bin/env bash
# What deleting snapshots and volumes frees, through the real binary:
# - a deleted volume's newest snapshot, deleted, frees its objects at once
#   (it was kept only as the base of a next snapshot that will never come);
# - a snapshot deleted while newest, its volume deleted afterwards (or
#   replaced by a new volume of the same name): store gc frees it;
# - a restored volume's fork base goes with the volume's last snapshot;
# - a deleted newest snapshot folded into the next one loses its manifest
#   and tombstone, also when it had absorbed an earlier one, and reindex
#   rebuilds the same chain;
# - store gc removes upload temporaries a killed process left (old ones
#   only), and says how many;
# and store check is clean after every step.
source "$(dirname "$0")/lib.sh"
need nbdcopy

js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
image() { nbdcopy "$(uri "$1")" "$T/$2.img"; }  # sparse copy of a volume
CHUNK=524288
STORE="$EBS_DATA_DIR/store"
objects() { find "$STORE/chunks" -type f ! -name '.*' 2>/dev/null | wc -l; }
manifests() { find "$STORE/snapshots" -type f ! -name '.*' 2>/dev/null | sort | sed 's,.*/,,' | tr '\n' ' '; }
check() { local out; out=$("$EBS" store check --json) || fail "store check after $1: $out"; }
# Writes chunks FIRST..LAST of volume $1, each with its own content (tag $2).
fill() {
  nbdsh -u "$(uri "$1")" -c "
for c in range($3, $4 + 1):
    h.pwrite(bytes([($2 * 16 + c) % 251 + 1]) * $CHUNK, c * $CHUNK)"
}
snap() { "$EBS" snapshot create "$1" --json | js 'd[0]["id"]'; }
freed() { "$EBS" snapshot delete "$1" --json | js 'd["objects_freed"]'; }

for v in a b c d e; do "$EBS" volume create "$v" --size 1G >/dev/null; done
start_server

# --- The reported case: a volume's only snapshot, deleted after the volume
fill a 1 0 3
S=$(snap a)
[ "$(objects)" = 4 ] || fail "4 chunks stored $(objects) objects"
"$EBS" volume delete a >/dev/null
n=$(freed "$S")
[ "$n" = 4 ] || fail "deleting the only snapshot of a deleted volume freed $n objects, not 4"
[ "$(objects)" = 0 ] || fail "$(objects) objects left"
[ -z "$(manifests)" ] || fail "manifests left: $(manifests)"
check "deleting a deleted volume's only snapshot"
pass "a deleted volume's newest snapshot, deleted, frees its objects, manifest and tombstone"

# --- Snapshot deleted first (kept as the next one's base), volume later --
fill b 2 0 2
B1=$(snap b)
fill b 3 2 3   # chunk 2 rewritten, chunk 3 new
B2=$(snap b)
[ "$(objects)" = 5 ] || fail "b: $(objects) objects, not 5"
n=$(freed "$B2")
[ "$n" = 0 ] || fail "deleting b's newest freed $n: it is the base of b's next snapshot"
check "deleting b's newest"
"$EBS" volume delete b >/dev/null
"$EBS" volume create b --size 1G >/dev/null   # the same name, another volume
check "deleting volume b"
out=$("$EBS" store gc --json)
[ "$(echo "$out" | js 'd["objects_removed"]')" = 2 ] || fail "store gc after deleting volume b: $out"
[ "$(objects)" = 3 ] || fail "b: $(objects) objects left, not B1's 3"
[ "$(manifests)" = "$B1.manifest " ] || fail "manifests left: $(manifests)"
check "store gc of a deleted volume's retired snapshot"
"$EBS" snapshot verify "$B1" >/dev/null || fail "verify $B1"
n=$(freed "$B1")
[ "$n" = 3 ] || fail "deleting B1 (volume gone) freed $n, not 3"
[ "$(objects)" = 0 ] && [ -z "$(manifests)" ] || fail "left: $(objects) objects, manifests $(manifests)"
check "deleting B1"
pass "a retired snapshot of a volume deleted later (its name reused) is freed by store gc"

# --- A restored volume's fork base goes with the volume ------------------
fill c 4 0 2
C=$(snap c)
"$EBS" snapshot restore "$C" --volume r >/dev/null
fill r 5 5 5
R=$(snap r)
[ "$(objects)" = 4 ] || fail "c and r: $(objects) objects, not 4"
"$EBS" volume delete r >/dev/null
n=$(freed "$R")
[ "$n" = 1 ] || fail "deleting the restored volume's only snapshot freed $n, not its 1 object"
[ "$(manifests)" = "$C.manifest " ] || fail "manifests left (the fork base?): $(manifests)"
check "deleting a deleted restored volume's snapshot"
"$EBS" snapshot verify "$C" >/dev/null || fail "verify the source $C"
pass "a deleted restored volume's last snapshot goes with its fork base"

# --- A retired snapshot folded into the next one -------------------------
fill d 6 0 1
D1=$(snap d)
"$EBS" snapshot delete "$D1" >/dev/null
[ -e "$STORE/snapshots/$D1.deleted" ] || fail "no tombstone for the retired $D1"
fill d 7 1 2
image d d2
D2=$(snap d)
[ "$(manifests)" = "$(printf '%s\n' "$C.manifest" "$D2.manifest" | sort | tr '\n' ' ')" ] \
  || fail "after $D2 absorbed $D1, manifests: $(manifests)"
check "folding a retired snapshot into the next"
# A retired snapshot that absorbed an earlier one (deleted after it), then
# folded into the next one; reindex in between and at the end.
fill e 8 0 1
E1=$(snap e)
fill e 9 1 1
E2=$(snap e)
"$EBS" snapshot delete "$E2" >/dev/null
"$EBS" snapshot delete "$E1" >/dev/null
check "deleting e's two snapshots, newest first"
"$EBS" store reindex >/dev/null || fail "reindex with a retired snapshot that absorbed another: $("$EBS" store reindex 2>&1)"
check "reindex"
fill e 10 2 2
image e e3
E3=$(snap e)
for id in "$E1" "$E2"; do
  [ ! -e "$STORE/snapshots/$id.manifest" ] && [ ! -e "$STORE/snapshots/$id.deleted" ] \
    || fail "$id's manifest or tombstone left after $E3 absorbed it: $(manifests)"
done
check "folding e's retired snapshot into the next"
"$EBS" store reindex >/dev/null || fail "reindex: $("$EBS" store reindex 2>&1)"
check "the last reindex"
"$EBS" snapshot restore "$D2" --volume d2 >/dev/null
image d2 d2b
cmp "$T/d2.img" "$T/d2b.img" || fail "restore of $D2 differs"
"$EBS" snapshot restore "$E3" --volume e3 >/dev/null
image e3 e3b
cmp "$T/e3.img" "$T/e3b.img" || fail "restore of $E3 differs"
pass "a deleted newest snapshot folded into the next one loses its manifest and tombstone; reindex agrees"

# --- Upload temporaries left by a killed process -------------------------
mkdir -p "$STORE/chunks/ab/cd" "$STORE/snapshots"
old1="$STORE/chunks/ab/cd/.tmp.abcd.12345.1" old2="$STORE/snapshots/.tmp.snap-x.manifest.12345.2"
fresh="$STORE/chunks/ab/cd/.tmp.abcd.12345.3"
for f in "$old1" "$old2" "$fresh"; do head -c 1000 /dev/urandom >"$f"; done
touch -d '2 hours ago' "$old1" "$old2"
out=$("$EBS" store gc --json)
[ "$(echo "$out" | js 'd["temporaries_removed"]')" = 2 ] || fail "store gc: $out"
[ ! -e "$old1" ] && [ ! -e "$old2" ] || fail "old temporaries left"
[ -e "$fresh" ] || fail "store gc removed a temporary an upload may be writing"
[ -d "$STORE/index" ] && [ -n "$(ls "$STORE/index")" ] || fail "the index directory was touched"
rm "$fresh"
check "removing temporaries"
pass "store gc removes upload temporaries older than an hour, keeps fresh ones, reports how many"
