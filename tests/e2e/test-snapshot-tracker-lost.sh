#!/usr/bin/env bash
# A lost or damaged change-tracking file (docs/snapshots.md, "Incremental:
# change tracking"): the volume's next snapshot reads every allocated chunk,
# so it still holds the writes whose marks were in the file, and restores to
# exactly the volume. Three ways to lose it, each after writes the last
# snapshot has not got: the file deleted, truncated to a few bytes, and cut
# short inside its bitmap. The server warns when it finds one damaged.
source "$(dirname "$0")/lib.sh"
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed"

js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
# write ROUND CHUNK...: seeded random 64 KiB in the middle of each chunk.
write() {
  "$PY" - "$(uri a)" "$@" <<'PYEOF'
import random, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
r = int(sys.argv[2])
for c in map(int, sys.argv[3:]):
    h.pwrite(random.Random(r * 100000 + c).randbytes(65536), c * 524288 + 200704)
h.flush()
h.shutdown()
PYEOF
}
# same_as_volume ID: snapshot ID restores to exactly what volume a holds.
same_as_volume() {
  local out
  "$EBS" snapshot restore "$1" --volume chk >/dev/null || fail "restore of $1 failed"
  out=$("$PY" "$E2E_DIR/crash_client.py" compare "$(uri a)" "$(uri chk)" 2>&1) \
    || fail "$2: snapshot $1 does not restore to the volume: $out"
  "$EBS" volume delete chk >/dev/null
}

"$EBS" volume create a --size 1G >/dev/null
ID=$("$EBS" volume describe a --json | js 'd["id"]')
CHANGES=$EBS_DATA_DIR/volumes/$ID.changes
start_server
write 1 $(seq 0 3 200)
S=$("$EBS" snapshot create a --json | js 'd[0]["id"]')
same_as_volume "$S" "first snapshot"
[ -f "$CHANGES" ] || fail "no change tracking file at $CHANGES"

round=1
for how in deleted "truncated to 10 bytes" "cut inside its bitmap"; do
  round=$((round + 1))
  # Writes the last snapshot has not got: their marks are in the file only.
  chunks=$(seq $((round * 7)) 11 $((round * 7 + 300)) | tr '\n' ' ')
  write "$round" $chunks
  stop_server
  size=$(stat -c %s "$CHANGES")
  case $how in
    deleted) rm "$CHANGES" ;;
    "truncated to 10 bytes") truncate -s 10 "$CHANGES" ;;
    "cut inside its bitmap") truncate -s $((size - 8)) "$CHANGES" ;;
  esac
  start_server
  # The next snapshot: full, so it has the writes the file's marks named.
  S=$("$EBS" snapshot create a --json | js 'd[0]["id"]')
  if [ "$how" != deleted ]; then
    grep -q "change tracking file damaged" "$T/server.log" \
      || fail "the server did not warn about the $how tracking file: $(cat "$T/server.log")"
  fi
  [ "$("$EBS" snapshot describe "$S" --json | js 'd["state"]')" = completed ] || fail "snapshot $S is not completed"
  same_as_volume "$S" "after the tracking file was $how"
  # And tracking works again: the snapshot after it is incremental and right.
  write "$((round + 50))" 1 100
  S2=$("$EBS" snapshot create a --json | js 'd[0]["id"]')
  changed=$("$EBS" snapshot describe "$S2" --json | js 'd["changed_bytes"]')
  [ "$changed" -le $((2 * 524288)) ] || fail "after the rebuilt tracker, a snapshot of 2 written chunks changed $changed bytes"
  same_as_volume "$S2" "the snapshot after the one that followed the $how tracking file"
  pass "tracking file $how: the next snapshot has the $(echo $chunks | wc -w) chunks written before and restores to the volume; the one after is incremental ($changed bytes) and right"
done
stop_server
