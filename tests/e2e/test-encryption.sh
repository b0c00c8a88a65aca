#!/usr/bin/env bash
# Encryption at rest through the real binary and real NBD clients:
# - master keys: `key create` (file mode 0600, duplicate names refused),
#   `key list --json`; `--key` alone implies `--encrypted`; `--encrypted`
#   alone uses the key `default`, made on first use;
# - an encrypted volume reads back byte-identical through NBD (aligned,
#   unaligned and boundary-straddling writes, write-zeroes, holes read as
#   zeros), and a marker written through NBD appears nowhere in its data file,
#   nor anywhere else under the data directory, while the same search finds it
#   in a plain volume's file and in the image copied out with nbdcopy;
# - snapshots of an encrypted volume are encrypted (describe shows the key),
#   their objects hold no plaintext and are not shared with a plain snapshot
#   of the same data; full, incremental, lazy and re-keyed (--key) restores
#   are byte-identical; `--encrypted` restores a plain snapshot encrypted;
# - a missing master key, or another key under the same name, makes the
#   export refuse to open (nothing is returned) and restores fail naming the
#   key; with the right key file back everything works again;
# - a flipped byte in an encrypted chunk object or in a manifest is reported
#   by `snapshot verify` and refused by `snapshot restore`, which leaves no
#   volume behind; `store check` ends clean.
source "$(dirname "$0")/lib.sh"
need nbdcopy nbdinfo cmp

js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$@"; }
expect_fail() {  # expect_fail PATTERN CMD...: fails, and says PATTERN (any case)
  local pattern=$1; shift
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  [ $rc -ne 0 ] || fail "'$*' succeeded"
  echo "$out" | grep -qi -- "$pattern" || fail "'$*' said '$out', expected it to mention '$pattern'"
}

KEYS="$EBS_DATA_DIR/keys"
STORE="$EBS_DATA_DIR/store"
VOLS="$EBS_DATA_DIR/volumes"
MARKER='EBS-ENCRYPTION-TEST-MARKER-0001!'  # 32 bytes
GIB=$((1 << 30))

# key_file NAME: the one file in the key directory that holds key NAME
# (NAME or NAME.something: the extension is the implementation's).
key_file() {
  local f
  f=$(ls -A "$KEYS" 2>/dev/null | grep -E "^$1(\$|\\.)" || true)
  [ -n "$f" ] && [ "$(echo "$f" | wc -l)" = 1 ] ||
    fail "expected one file for key '$1' in $KEYS, found: $(ls -A "$KEYS" 2>/dev/null | tr '\n' ' ')"
  echo "$KEYS/$f"
}
key_id() { "$EBS" key list --json | js '" ".join(str(k["id"]) for k in d if k["name"] == sys.argv[2])' "$1"; }
vol() { "$EBS" volume describe "$1" --json | js "$2"; }  # vol NAME EXPR
vol_id() {
  local id
  id=$(vol "$1" 'd["id"]') && [ -n "$id" ] || fail "no id for volume $1"
  [ -f "$VOLS/$id.img" ] || fail "volume $1 has no data file $VOLS/$id.img: $(ls "$VOLS" | tr '\n' ' ')"
  echo "$id"
}
snap() { "$EBS" snapshot describe "$1" --json | js "$2"; }  # snap ID EXPR
encrypted_under() {  # encrypted_under VOLUME KEY: describe says encrypted, under KEY
  local d
  d=$("$EBS" volume describe "$1" --json) || fail "volume describe $1"
  [ "$(echo "$d" | js 'd.get("encrypted")')" = True ] || fail "volume $1 is not described as encrypted"
  [ "$(echo "$d" | js 'd.get("key")')" = "$2" ] || fail "volume $1 is under key '$(echo "$d" | js 'd.get("key")')', not $2"
}
no_volume() {  # no_volume NAME: a refused restore left nothing behind
  "$EBS" volume describe "$1" >/dev/null 2>&1 && fail "a refused restore left volume $1 behind"
  [ "$("$EBS" volume list --json | js 'sys.argv[2] in [v["name"] for v in d]' "$1")" = False ] ||
    fail "volume list shows $1 after a refused restore"
}
chunk_objects() { find "$STORE/chunks" -type f 2>/dev/null | sort; }

# marker_in PATH...: the regular files among / under PATH... (files or
# directories) that hold the marker, one a line; only allocated extents are
# read. With SKIP set, files whose path starts with $SKIP are left out.
marker_in() {
  "$PY" - "$MARKER" "${SKIP:-}" "$@" <<'PYEOF'
import os, stat, sys
marker, skip, paths = sys.argv[1].encode(), sys.argv[2], sys.argv[3:]
BLOCK = 4 << 20

def files():
    for p in paths:
        if os.path.isdir(p):
            for root, _, names in os.walk(p):
                for n in sorted(names):
                    yield os.path.join(root, n)
        else:
            yield p

def holds(path):
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False  # sockets, links
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False  # a temporary file that went away
    try:
        size = os.fstat(fd).st_size
        off = 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break  # no data after off
            end = os.lseek(fd, start, os.SEEK_HOLE)
            tail, pos = b"", start
            while pos < end:
                buf = os.pread(fd, min(BLOCK, end - pos), pos)
                if not buf:
                    break
                if marker in tail + buf:
                    return True
                tail = buf[-(len(marker) - 1):]
                pos += len(buf)
            off = end
    finally:
        os.close(fd)
    return False

for f in files():
    if skip and f.startswith(skip):
        continue
    if holds(f):
        print(f)
PYEOF
}

# fill URI MODEL STEP: writes STEP's data through NBD and the same into the
# local model image MODEL (made sparse, of the volume's size, if missing),
# then reads the written regions back through NBD and compares them with the
# model. The same STEP writes the same bytes into every volume.
fill() {
  "$PY" - "$@" "$MARKER" <<'PYEOF' || fail "fill $3 on $1"
import os, random, sys
import nbd
uri, model, step, marker = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].encode()
M = 1 << 20
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
if not os.path.exists(model):
    with open(model, "wb") as f:
        f.truncate(size)
f = open(model, "r+b")
rng = random.Random("ebs-encryption-" + step)
done = []

# The server takes requests in whole 512-byte blocks (its advertised
# minimum): "unaligned" below means not on a 4 KiB sector, the unit the
# volume is encrypted in, so each write is widened to 512-byte blocks.
def put(off, data):
    lo, hi = off - off % 512, -(-(off + len(data)) // 512) * 512
    f.seek(lo)
    old = bytearray(f.read(hi - lo))
    old[off - lo:off - lo + len(data)] = data
    off, data = lo, bytes(old)
    h.pwrite(data, off)
    f.seek(off)
    f.write(data)
    done.append((off, len(data)))

def zero(off, n):
    assert off % 512 == 0 and n % 512 == 0
    h.zero(n, off)
    f.seek(off)
    f.write(bytes(n))
    done.append((off, n))

if step == "pattern":
    # 8 MiB of markers: aligned at 0, at an odd 4 KiB, unaligned, at the very end.
    for off in (0, 64 * M + 4096, 300 * M + 12345, size - 2 * M):
        put(off, marker * (2 * M // len(marker)))
    # Random data with markers inside it at unaligned places.
    data = bytearray(rng.randbytes(2 * M))
    for i in range(1000, len(data) - len(marker), 99991):
        data[i:i + len(marker)] = marker
    put(700 * M + 333, bytes(data))
elif step == "unaligned":
    put(4096 * 3 + 17, rng.randbytes(100))          # inside written data, within one 4 KiB block
    put(5 * 4096 - 200, rng.randbytes(513))         # straddles a 4 KiB boundary in written data
    put(100 * M + 4096 - 300, rng.randbytes(513))   # straddles a 4 KiB boundary in a hole
    put(size - 2 * M - 77, rng.randbytes(154))      # straddles the start of the last marker region
    put(1, rng.randbytes(1))                        # a single byte
elif step == "more":
    put(20 * M + 5, rng.randbytes(3 * M))           # new data across 512 KiB chunk boundaries
    put(300 * M + 12345 + 4001, marker * 1000)      # rewrites markers out of phase, unaligned
    zero(64 * M + 1536, M + 8192)                   # write-zeroes over a hole and part of a region, unaligned
    put(512 * M - 7, rng.randbytes(14))             # straddles a chunk boundary in a hole
elif step == "tail":
    put(900 * M + 1, rng.randbytes(4096))
else:
    sys.exit("unknown step " + step)
h.flush()
for off, n in done:
    # The write and a 4 KiB block either side of it, from the volume.
    lo = max(0, off - off % 4096 - 4096)
    hi = min(size, (off + n + 4095) // 4096 * 4096 + 4096)
    f.seek(lo)
    if h.pread(hi - lo, lo) != f.read(hi - lo):
        sys.exit(f"{uri}: bytes {lo}..{hi} read back differ from what was written")
h.shutdown()
f.close()
PYEOF
}

# same VOLUME FILE: the volume copied out whole with nbdcopy equals FILE.
same() {
  rm -f "$T/got.img"
  nbdcopy "$(uri "$1")" "$T/got.img" || fail "nbdcopy could not read volume $1"
  cmp "$T/got.img" "$2" || fail "volume $1 differs from $(basename "$2")"
}

# refused VOLUME: the export does not open without its key; nothing is read;
# the client or the server log says why, naming the key.
refused() {
  # LIBNBD_DEBUG: libnbd prints the server's error message only there.
  if LIBNBD_DEBUG=1 nbdinfo "$(uri "$1")" >/dev/null 2>"$T/refused.err"; then
    fail "nbdinfo opened export $1 without its master key"
  fi
  local rc=0
  nbdcopy "$(uri "$1")" - >"$T/refused.out" 2>>"$T/refused.err" || rc=$?
  [ $rc -ne 0 ] || fail "nbdcopy read export $1 without its master key"
  [ ! -s "$T/refused.out" ] || fail "nbdcopy returned $(stat -c %s "$T/refused.out") bytes of $1 without its key"
  grep -q "export refused: volume '$1' cannot be opened: .*key" "$T/server.log" ||
    fail "the server log does not say the key is why $1 is refused"
  # The client learns that, not which key or where keys live (issue 26).
  grep -q "server error message: volume '$1' cannot be opened" "$T/refused.err" ||
    fail "the client is not told $1 cannot be opened: $(cat "$T/refused.err")"
  local told
  told=$(grep "server error message" "$T/refused.err")
  if grep -qi "k1\|k2\|key\|/" <<<"$told"; then
    fail "the client is told a key name or path: $told"
  fi
}

# 1. Master keys.
"$EBS" key create k1 >/dev/null || fail "key create k1"
KF1=$(key_file k1)
[ "$(stat -c %a "$KF1")" = 600 ] || fail "key file $KF1 has mode $(stat -c %a "$KF1"), not 600"
K1_ID=$(key_id k1)
[ -n "$K1_ID" ] && [ "$(echo "$K1_ID" | wc -w)" = 1 ] || fail "key list --json: k1 listed as '$K1_ID'"
[ -n "$("$EBS" key list --json | js '[k["created"] for k in d if k["name"] == "k1"][0]')" ] || fail "k1 has no created time"
sum=$(sha256sum "$KF1")
"$EBS" key create k1 >/dev/null 2>&1 && fail "a second key create k1 succeeded"
[ "$(sha256sum "$KF1")" = "$sum" ] || fail "a refused key create changed the key file"
[ "$(key_id k1)" = "$K1_ID" ] || fail "a refused key create changed k1's id"
"$EBS" key create k2 >/dev/null || fail "key create k2"
KF2=$(key_file k2)
[ "$(stat -c %a "$KF2")" = 600 ] || fail "key file $KF2 has mode $(stat -c %a "$KF2")"
[ "$(key_id k2)" != "$K1_ID" ] || fail "k1 and k2 have the same id"
cmp -s "$KF1" "$KF2" && fail "k1 and k2 are the same key"
pass "key create (mode 600, duplicate refused), key list --json"

# 2. Volumes: encrypted under k1, --key alone, --encrypted alone, plain.
"$EBS" volume create e --size 1G --encrypted --key k1 >/dev/null
"$EBS" volume create e2 --size 1G --key k2 >/dev/null
"$EBS" volume create z --size 1G --encrypted >/dev/null
"$EBS" volume create p --size 1G >/dev/null
encrypted_under e k1
encrypted_under e2 k2
encrypted_under z default
[ "$(vol p 'd["encrypted"]')" = False ] && [ "$(vol p 'd.get("key")')" = None ] || fail "plain volume p describes as encrypted"
[ "$(stat -c %a "$(key_file default)")" = 600 ] || fail "the default key file is not mode 600"
[ -n "$(key_id default)" ] || fail "key list does not show the default key made on first use"
E_ID=$(vol_id e); P_ID=$(vol_id p)
expect_fail "in place" "$EBS" volume modify p --encrypted
expect_fail "in place" "$EBS" volume modify e --key k2
encrypted_under e k1
pass "volume create --encrypted/--key; describe shows encrypted and key; modify cannot change encryption"

start_server --no-throttle
fill "$(uri e)" "$T/e.model" pattern
fill "$(uri e)" "$T/e.model" unaligned
fill "$(uri p)" "$T/p.model" pattern
fill "$(uri p)" "$T/p.model" unaligned
cmp -s "$T/e.model" "$T/p.model" || fail "the two models differ: the writer is not deterministic"
same e "$T/e.model"
[ -n "$(marker_in "$T/got.img")" ] || fail "the marker is not in e's image copied out (the search is broken)"
same p "$T/p.model"
pass "encrypted volume: aligned, unaligned and straddling writes read back byte-identical"

# 3. At rest: no plaintext in the encrypted volume's files; the same search
# finds it in the plain volume's file. Holes read as zeros.
found=$(marker_in "$VOLS/$E_ID"*)
[ -z "$found" ] || fail "the marker is in the encrypted volume's files: $found"
[ "$(marker_in "$VOLS/$P_ID.img")" = "$VOLS/$P_ID.img" ] || fail "the marker is not in the plain volume's data file"
nbdcopy --no-extents "$(uri z)" - | cmp -n "$GIB" - /dev/zero || fail "a fresh encrypted volume does not read as zeros"
pass "no plaintext in the encrypted volume's data file; a fresh one reads as zeros"

# 4. Snapshots: encrypted, no plaintext in the store, not shared with a plain
# snapshot of the same data.
cp --sparse=always "$T/e.model" "$T/s1.want"
S1=$("$EBS" snapshot create e --json | js 'd[0]["id"]')
[ "$(snap "$S1" 'd["encrypted"]')" = True ] || fail "snapshot of e not described as encrypted"
[ "$(snap "$S1" 'd["key"]')" = k1 ] || fail "snapshot of e not described with key k1"
chunk_objects >"$T/s1.objects"
[ -s "$T/s1.objects" ] || fail "the snapshot of e stored no chunk objects under $STORE/chunks"
found=$(marker_in "$STORE")
[ -z "$found" ] || fail "the marker is in the store: $found"
found=$(SKIP="$VOLS/$P_ID" marker_in "$EBS_DATA_DIR")
[ -z "$found" ] || fail "the marker is under the data directory outside the plain volume: $found"
before=$(wc -l <"$T/s1.objects")
SP=$("$EBS" snapshot create p --json | js 'd[0]["id"]')
[ "$(snap "$SP" 'd.get("encrypted", False)')" = False ] && [ "$(snap "$SP" 'd.get("key")')" = None ] ||
  fail "the plain snapshot is described as encrypted"
after=$(chunk_objects | wc -l)
[ "$after" -gt "$before" ] || fail "a plain snapshot of the same data stored no new objects: it shares encrypted ones"
pass "snapshot encrypted under k1; no plaintext anywhere in the store or data directory"

# 5. Restores: same key, another key, lazy; a plain snapshot restored encrypted.
"$EBS" snapshot restore "$S1" --volume r1 >/dev/null
"$EBS" snapshot restore "$S1" --volume r2 --key k2 >/dev/null
"$EBS" snapshot restore "$S1" --volume rl --lazy >/dev/null
"$EBS" snapshot restore "$SP" --volume pe --encrypted >/dev/null
same r1 "$T/s1.want"
same r2 "$T/s1.want"
same rl "$T/s1.want"
same pe "$T/p.model"
encrypted_under r1 k1
encrypted_under r2 k2
encrypted_under rl k1
encrypted_under pe default
for _ in $(seq 1 200); do
  [ "$(vol rl 'd["initialization"]["state"]')" = completed ] && break
  sleep 0.1
done
[ "$(vol rl 'd["initialization"]["state"]')" = completed ] || fail "the lazy restore of an encrypted snapshot did not complete"
same rl "$T/s1.want"
found=$(marker_in "$VOLS/$(vol_id r1)"* "$VOLS/$(vol_id r2)"* "$VOLS/$(vol_id rl)"* "$VOLS/$(vol_id pe)"*)
[ -z "$found" ] || fail "the marker is in a restored encrypted volume's files: $found"
pass "restores (same key, --key k2, --lazy, plain with --encrypted) byte-identical and encrypted"

# 6. More writes, an incremental snapshot, its restore.
fill "$(uri e)" "$T/e.model" more
same e "$T/e.model"
cp --sparse=always "$T/e.model" "$T/s2.want"
chunk_objects >"$T/before-s2.objects"
S2=$("$EBS" snapshot create e --json | js 'd[0]["id"]')
[ "$(snap "$S2" 'd["parent"]')" = "$S1" ] || fail "the second snapshot of e is not incremental on the first"
[ "$(snap "$S2" 'd["encrypted"]')" = True ] && [ "$(snap "$S2" 'd["key"]')" = k1 ] || fail "second snapshot not encrypted under k1"
# Objects new since the plain snapshot: the second encrypted snapshot's own.
chunk_objects | comm -13 "$T/before-s2.objects" - >"$T/new.objects"
[ -s "$T/new.objects" ] || fail "the incremental snapshot stored no new objects"
# shellcheck disable=SC2046
found=$(marker_in $(cat "$T/new.objects"))
[ -z "$found" ] || fail "the marker is in the incremental snapshot's new objects: $found"
"$EBS" snapshot restore "$S2" --volume r6 >/dev/null
same r6 "$T/s2.want"
"$EBS" snapshot verify "$S1" >/dev/null || fail "verify of the first encrypted snapshot"
"$EBS" snapshot verify "$S2" >/dev/null || fail "verify of the second encrypted snapshot"
pass "incremental encrypted snapshot restores byte-identical; verify clean"

# 7a. The master key missing: the export refuses, restores fail naming the key;
# volumes under other keys are unaffected. With the file back, all works.
stop_server
mv "$KF1" "$T/k1.saved"
start_server --no-throttle
refused e
expect_fail key "$EBS" snapshot restore "$S1" --volume r3
no_volume r3
expect_fail key "$EBS" snapshot restore "$S1" --volume r4 --key k2
no_volume r4
same r2 "$T/s1.want"
same p "$T/p.model"
stop_server
mv "$T/k1.saved" "$KF1"
start_server --no-throttle
same e "$T/e.model"
"$EBS" snapshot restore "$S1" --volume r3 >/dev/null || fail "restore with the key file back"
same r3 "$T/s1.want"
pass "without k1: export refused, restore fails naming the key; other keys fine; with it back all works"

# 7b. Another key under the same name: the same refusals.
stop_server
mv "$KF1" "$T/k1.saved"
"$EBS" key create k1 >/dev/null || fail "key create k1 after its file was moved away"
[ "$(key_file k1)" = "$KF1" ] || fail "the new k1 is in $(key_file k1), not $KF1"
cmp -s "$KF1" "$T/k1.saved" && fail "the new k1 is the same key as the old one"
[ "$(key_id k1)" != "$K1_ID" ] || fail "the new k1 has the old k1's id"
start_server --no-throttle
refused e
expect_fail key "$EBS" snapshot restore "$S1" --volume r5
no_volume r5
stop_server
mv -f "$T/k1.saved" "$KF1"
[ "$(key_id k1)" = "$K1_ID" ] || fail "k1's id is not the original one after putting its file back"
start_server --no-throttle
same e "$T/e.model"
pass "another key named k1: export refused, restore fails naming the key; the original file fixes it"

# 8a. A flipped byte in the manifest of an encrypted snapshot.
flip() {  # flip FILE: XOR the middle byte
  "$PY" - "$1" <<'PYEOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 0x5A
open(p, "wb").write(bytes(b))
PYEOF
}
# tampered SNAPSHOT FILE WHAT: with FILE's middle byte flipped, verify fails
# and restore refuses, leaving no volume; with FILE put back, verify passes.
tampered() {
  local snap=$1 file=$2 what=$3 rc out
  [ -f "$file" ] || fail "no $what $file for $snap"
  "$EBS" snapshot verify "$snap" >/dev/null || fail "verify of $snap before the flip"
  cp -p "$file" "$T/tampered.saved"
  flip "$file"
  rc=0; out=$("$EBS" snapshot verify "$snap" 2>&1) || rc=$?
  [ $rc -ne 0 ] || fail "verify did not notice a flipped byte in the $what: $out"
  rc=0; out=$("$EBS" snapshot restore "$snap" --volume tampered 2>&1) || rc=$?
  [ $rc -ne 0 ] || fail "restore used a snapshot whose $what has a flipped byte"
  no_volume tampered
  cp -p "$T/tampered.saved" "$file"
  "$EBS" snapshot verify "$snap" >/dev/null || fail "verify after putting the $what back"
}
fill "$(uri e)" "$T/e.model" tail
S3=$("$EBS" snapshot create e --json | js 'd[0]["id"]')
tampered "$S3" "$STORE/snapshots/$S3.manifest" manifest
pass "a flipped byte in an encrypted snapshot's manifest: verify reports it, restore refuses"

# 8b. A flipped byte in a chunk object of the first encrypted snapshot.
tampered "$S1" "$(head -n 1 "$T/s1.objects")" "encrypted chunk object"
"$EBS" store check >/dev/null || fail "store check not clean: $("$EBS" store check 2>&1)"
pass "a flipped byte in an encrypted chunk object: verify reports it, restore refuses; store check clean"
stop_server
