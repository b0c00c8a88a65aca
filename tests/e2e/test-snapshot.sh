#!/usr/bin/env bash
# Snapshots through the real binary and real NBD clients: a chain of five
# with random changes, deletes in the middle, restores byte-identical to the
# volume at each time; incremental and deduplicated storage; diff; verify and
# restore refusing a corrupt object; store check and gc; clear errors.
source "$(dirname "$0")/lib.sh"
need nbdcopy

W="$PY $E2E_DIR/snapshot_workload.py"
js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
objects() { find "$EBS_DATA_DIR/store/chunks" -type f 2>/dev/null | wc -l; }
image() { nbdcopy "$(uri "$1")" "$T/$2.img"; }  # sparse copy of a volume

"$EBS" volume create a --size 1G >/dev/null
start_server
$W "$(uri a)" init

declare -a IDS CHANGED
for i in 1 2 3 4 5; do
  IDS[$i]=$("$EBS" snapshot create a --description "step $i" --json | js 'd[0]["id"]')
  image a "a$i"
  CHANGED[$i]=$($W "$(uri a)" mutate "$((i + 10))" 3)
done
pass "five snapshots: ${IDS[*]}"

# Describe: completed, parent chain, sizes.
d=$("$EBS" snapshot describe "${IDS[3]}" --json)
[ "$(echo "$d" | js 'd["state"]')" = completed ] || fail "snapshot 3 not completed"
[ "$(echo "$d" | js 'd["parent"]')" = "${IDS[2]}" ] || fail "snapshot 3's parent is not snapshot 2"
[ "$(echo "$d" | js 'd["changed_bytes"] <= 3 * 524288')" = True ] || fail "snapshot 3 changed more than 3 chunks"
[ "$("$EBS" snapshot describe "${IDS[1]}" --json | js 'd["stored_bytes"] < d["logical_bytes"]')" = True ] \
  || fail "the first snapshot's text chunks were not compressed"
pass "describe: state, parent, changed and stored sizes"

# Diff between 3 and 5 = the chunks changed after taking 3 and after taking 4.
want=$(echo "${CHANGED[3]} ${CHANGED[4]}" | tr ' ' '\n' | sort -n | uniq | tr '\n' ' ')
"$EBS" snapshot diff "${IDS[3]}" "${IDS[5]}" --json --ranges >"$T/diff.json"
"$EBS" snapshot diff "${IDS[3]}" "${IDS[5]}" --json | js '"ranges" not in d and d["chunks"]' >"$T/diff.plain"
[ "$(cat "$T/diff.plain")" = "$(js 'd["chunks"]' <"$T/diff.json")" ] || fail "diff --json without --ranges: $(cat "$T/diff.plain")"
got=$(js '" ".join(str(c) for c in d["chunks"])' <"$T/diff.json")
[ "$got " = "$want" ] || fail "diff 3..5: got '$got', want '$want' (ascending)"
# Byte ranges: the changed chunks with adjacent ones merged; the chunk zeroed
# after snapshot 4 is listed as zeroed.
[ "$(js '(lambda r, cs: len(r) > 0 and all(o % cs == 0 and l > 0 for o, l in r) and
  [c for o, l in r for c in range(o // cs, (o + l) // cs)] == d["chunks"] and
  all(a[0] + a[1] < b[0] for a, b in zip(r, r[1:])))(list(zip(d["ranges"]["offsets"], d["ranges"]["lengths"])), d["chunk_size"])' <"$T/diff.json")" = True ] \
  || fail "diff ranges do not cover exactly the changed chunks, merged: $(cat "$T/diff.json")"
[ "$(js 'len(d["zeroed_chunks"]) >= 1 and set(d["zeroed_chunks"]) <= set(d["chunks"])' <"$T/diff.json")" = True ] \
  || fail "diff does not list the zeroed chunk: $(cat "$T/diff.json")"
n=$(js 'd["changed_chunks"]' <"$T/diff.json")
"$EBS" snapshot diff "${IDS[3]}" "${IDS[5]}" | head -1 | grep -q "^$n chunks of 512 KiB changed" \
  || fail "diff text output: $("$EBS" snapshot diff "${IDS[3]}" "${IDS[5]}")"
pass "diff lists exactly the changed chunks, their byte ranges and which became zero"

# Incremental: k changed chunks store at most k objects; zeros store nothing;
# the same data in another volume stores nothing new.
"$EBS" snapshot create a >/dev/null  # takes in the changes made after snapshot 5
before=$(objects)
$W "$(uri a)" mutate 99 3 >/dev/null
"$EBS" snapshot create a >/dev/null
after=$(objects)
[ $((after - before)) -le 2 ] || fail "3 changed chunks (one zeroed) stored $((after - before)) objects"
$W "$(uri a)" zero-chunk 1500
before=$(objects); "$EBS" snapshot create a >/dev/null; after=$(objects)
[ "$after" = "$before" ] || fail "a zero chunk was stored"
"$EBS" volume create b --size 1G >/dev/null
nbdcopy "$(uri a)" "$(uri b)"
before=$(objects); "$EBS" snapshot create b >/dev/null; after=$(objects)
[ "$after" = "$before" ] || fail "identical data in a second volume stored $((after - before)) new objects"
pass "incremental and deduplicated"

# Delete 2 and 4, restore 1, 3 and 5: byte-identical to the volume then.
"$EBS" snapshot delete "${IDS[2]}" >/dev/null
"$EBS" snapshot delete "${IDS[4]}" >/dev/null
for i in 1 3 5; do
  "$EBS" snapshot restore "${IDS[$i]}" --volume "r$i" >/dev/null
  image "r$i" "r$i"
  cmp "$T/a$i.img" "$T/r$i.img" || fail "restore of snapshot $i differs from the volume at its time"
done
"$EBS" volume create r5b --snapshot "${IDS[5]}" >/dev/null
image r5b r5b
cmp "$T/a5.img" "$T/r5b.img" || fail "volume create --snapshot differs"
[ "$("$EBS" volume describe r3 --json | js 'd["source_snapshot"]')" = "${IDS[3]}" ] || fail "source snapshot not recorded"
pass "restores after deleting snapshots 2 and 4 are byte-identical"

"$EBS" store check >/dev/null || fail "store check not clean: $("$EBS" store check)"
[ "$("$EBS" store gc --json | js 'd["objects_removed"]')" = 0 ] || fail "gc found garbage that delete should have freed"
"$EBS" store check >/dev/null || fail "store check not clean after gc"
pass "store check clean, gc leaves exactly what the snapshots need"

# Clear errors for bad input; nothing changes.
expect_fail() {  # expect_fail PATTERN CMD...
  local pattern=$1; shift
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  [ $rc -ne 0 ] || fail "'$*' succeeded"
  echo "$out" | grep -q -- "$pattern" || fail "'$*' said '$out', expected '$pattern'"
}
expect_fail "does not exist" "$EBS" snapshot describe snap-00000000000000000
expect_fail "does not exist" "$EBS" snapshot restore snap-00000000000000000 --volume x
expect_fail "already exists" "$EBS" snapshot restore "${IDS[1]}" --volume r1
expect_fail "different volumes" "$EBS" snapshot diff "${IDS[1]}" "$("$EBS" snapshot list --json | js '[s["id"] for s in d if s["volume"]=="b"][0]')"
pass "clear errors"

# Export and import: raw images in and out, byte-identical, no overwrite
# without --force, and an imported image dedups against what is stored.
"$EBS" snapshot export "${IDS[5]}" "$T/exp.img"
cmp "$T/a5.img" "$T/exp.img" || fail "the exported image differs from the volume at snapshot 5"
echo keep >"$T/exists.img"
expect_fail "exists" "$EBS" snapshot export "${IDS[5]}" "$T/exists.img"
[ "$(cat "$T/exists.img")" = keep ] || fail "a refused export changed the existing file"
"$EBS" snapshot export "${IDS[5]}" "$T/exists.img" --force >/dev/null
cmp "$T/a5.img" "$T/exists.img" || fail "export --force did not write the image"
before=$(objects)
imp=$("$EBS" snapshot import "$T/exp.img" --name fromfile --json | js 'd["id"]')
[ "$(objects)" = "$before" ] || fail "importing an image of stored data stored new objects"
"$EBS" snapshot restore "$imp" --volume imported >/dev/null
image imported imported
cmp "$T/a5.img" "$T/imported.img" || fail "a restored import differs from its image"
rm -f "$T/exp.img" "$T/exists.img" "$T/imported.img"
expect_fail "No such file" "$EBS" snapshot import "$T/missing.img"
pass "export and import round-trip, refuse to overwrite, deduplicate"

# Reindex: the index rebuilt from the store alone answers as before (records,
# diffs, restores), including after the deletions above.
"$EBS" snapshot list --json | js '"\n".join(sorted(s["id"] + " " + str(s["parent"]) for s in d if s["state"] == "completed"))' >"$T/list.before"
"$EBS" snapshot diff "${IDS[3]}" "${IDS[5]}" --json | js 'd["chunks"]' >"$T/diff.before"
"$EBS" store reindex >/dev/null || fail "store reindex reported problems"
"$EBS" snapshot list --json | js '"\n".join(sorted(s["id"] + " " + str(s["parent"]) for s in d if s["state"] == "completed"))' >"$T/list.after"
diff "$T/list.before" "$T/list.after" || fail "the snapshot list changed across a reindex"
"$EBS" snapshot diff "${IDS[3]}" "${IDS[5]}" --json | js 'd["chunks"]' >"$T/diff.after"
diff "$T/diff.before" "$T/diff.after" || fail "a diff changed across a reindex"
"$EBS" snapshot restore "${IDS[5]}" --volume reindexed >/dev/null
image reindexed reindexed
cmp "$T/a5.img" "$T/reindexed.img" || fail "a restore after reindex differs"
out=$("$EBS" store check --json)
[ "$(echo "$out" | js 'd["ok"]')" = True ] || fail "store check after reindex: $out"
pass "store reindex rebuilds the same index from the manifests"

# Corruption: one flipped byte in an object of snapshot 5.
obj=$(find "$EBS_DATA_DIR/store/chunks" -type f | sort | head -n 1)
"$PY" - "$obj" <<'PYEOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 0x5A
open(p, "wb").write(bytes(b))
PYEOF
bad_in=""
for i in 1 3 5; do
  rc=0; out=$("$EBS" snapshot verify "${IDS[$i]}" 2>&1) || rc=$?
  if [ $rc -ne 0 ]; then
    echo "$out" | grep -q "bad: chunk" || fail "verify did not name the bad chunk: $out"
    bad_in="$bad_in $i"
    expect_fail "corrupt\|checksum\|mismatch" "$EBS" snapshot restore "${IDS[$i]}" --volume "bad$i"
    "$EBS" volume describe "bad$i" >/dev/null 2>&1 && fail "a refused restore left volume bad$i behind"
  fi
done
[ -n "$bad_in" ] || fail "no snapshot's verify noticed the flipped byte"
pass "a flipped byte is reported by verify (snapshots$bad_in) and restore refuses"
# store check compares the index with the store, not the objects' contents
# (docs/snapshots.md, "Store check"): the flipped byte is verify's to find,
# and the structure is still whole, so it exits 0. An object that is gone
# is its business: exit 2, naming the object, and clean once it is back.
rc=0; out=$("$EBS" store check 2>&1) || rc=$?
[ $rc = 0 ] || fail "store check exited $rc after a flipped byte (structure intact, contents are verify's): $out"
key=${obj#"$EBS_DATA_DIR/store/"}
mv "$obj" "$T/moved-object"
rc=0; out=$("$EBS" store check --json 2>&1) || rc=$?
[ $rc = 2 ] || fail "store check exited $rc with object $key missing, want 2: $out"
echo "$out" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
assert not d["ok"], d
assert any(p["object"] == sys.argv[1] and "missing" in p["error"] for p in d["problems"]), d["problems"]
' "$key" || fail "store check does not name the missing object $key: $out"
mv "$T/moved-object" "$obj"
rc=0; out=$("$EBS" store check 2>&1) || rc=$?
[ $rc = 0 ] || fail "store check exited $rc once the object was back: $out"
pass "store check: exit 0 with the flipped byte (contents are verify's), 2 naming $key while it is missing"
stop_server

# Stores keep their chunk size: another one is refused, clearly, and a new
# store can be made with a smaller one that works end to end.
expect_fail "has chunk size 512 KiB" "$EBS" --store-chunk-size 1M snapshot list
expect_fail "power of two" "$EBS" --store "$T/store64" --store-chunk-size 100K snapshot list
id=$("$EBS" --store "$T/store64" --store-chunk-size 64K snapshot create a --json | js 'd[0]["id"]')
[ "$("$EBS" --store "$T/store64" snapshot describe "$id" --json | js 'd["chunk_size"]')" = 65536 ] \
  || fail "the new store does not use 64 KiB chunks"
"$EBS" --store "$T/store64" snapshot verify "$id" >/dev/null || fail "verify in a 64 KiB store"
# The volume's tracker counts from its last cut in the other store: the
# first snapshot here must still hold everything.
"$EBS" --store "$T/store64" snapshot restore "$id" --volume from64 >/dev/null
file_of() { echo "$EBS_DATA_DIR/volumes/$("$EBS" volume describe "$1" --json | js 'd["id"]').img"; }
cmp "$(file_of a)" "$(file_of from64)" || fail "the first snapshot in a second store misses data"
pass "store chunk size: fixed per store, refused when it differs, 64 KiB works"
