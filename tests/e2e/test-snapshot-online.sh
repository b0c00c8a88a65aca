#!/usr/bin/env bash
# Snapshots of volumes in use: while a client writes sequence-numbered blocks
# (one request in flight), `snapshot create` cuts the volume; the restored
# snapshot must equal the volume after exactly one prefix of the writes,
# never a mix, and the writes must have kept going during the snapshot. The
# first snapshot is full (chunks the writer overwrites during the upload are
# copied out first), the second incremental (only tracked changes are read);
# two volumes snapshotted together show one instant across both.
source "$(dirname "$0")/lib.sh"
need nbdcopy

SW="$PY $E2E_DIR/sequence_writer.py"
js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

"$EBS" volume create p --size 1G >/dev/null
"$EBS" volume create q --size 1G >/dev/null
start_server --no-throttle
# Half the volume random data, so the full snapshot takes a while to upload.
head -c 64M /dev/urandom >"$T/fill"
truncate -s 1G "$T/fill"
nbdcopy "$T/fill" "$(uri p)"
rm -f "$T/fill"

# snapshot_during_writes SEED VOLUME...: prints "IDS... N ACKED"
snapshot_during_writes() {
  local seed=$1; shift
  local stop="$T/stop.$seed" uris=() ids acked n i=0 images=()
  for v in "$@"; do uris+=("$(uri "$v")"); done
  $SW write "$seed" "$stop" "${uris[@]}" >"$T/acked.$seed" &
  local writer=$!
  for _ in $(seq 1 600); do [ -e "$stop.started" ] && break; sleep 0.05; done
  [ -e "$stop.started" ] || { touch "$stop"; wait $writer; fail "the writer made no progress"; }
  ids=$("$EBS" snapshot create "$@" --json | js '" ".join(s["id"] for s in d)') \
    || { touch "$stop"; wait $writer; fail "snapshot create $* failed"; }
  touch "$stop"
  wait $writer || fail "the writer failed"
  acked=$(cat "$T/acked.$seed")
  for id in $ids; do
    "$EBS" snapshot restore "$id" --volume "r$seed-$i" >/dev/null
    nbdcopy "$(uri "r$seed-$i")" "$T/r$seed-$i.img"
    images+=("$T/r$seed-$i.img")
    i=$((i + 1))
  done
  n=$($SW check "$seed" "$acked" "${images[@]}") || fail "seed $seed: $n"
  rm -f "${images[@]}"
  [ "$n" -ge 1 ] || fail "seed $seed: the snapshot holds none of the writes (they should have started before it)"
  [ "$n" -lt "$acked" ] || fail "seed $seed: no write was acknowledged after the cut ($n of $acked): were writes blocked?"
  echo "$ids $n $acked"
}

read -r S1 N1 A1 < <(snapshot_during_writes 1 p)
pass "full snapshot under writes is the volume after write $N1 of $A1"
d=$("$EBS" snapshot describe "$S1" --json)
[ "$(echo "$d" | js 'd["state"]')" = completed ] || fail "snapshot $S1 is not completed"

read -r S2 N2 A2 < <(snapshot_during_writes 2 p)
d=$("$EBS" snapshot describe "$S2" --json)
[ "$(echo "$d" | js 'd["parent"]')" = "$S1" ] || fail "the second snapshot's parent is not the first"
# Changes since the first cut: writer 1's writes after that cut (A1 - N1)
# and writer 2's A2 writes, each one aligned 4 KiB block, so at most that
# many chunks; the snapshot read only the chunks tracking marked, far fewer
# than the volume's 2048.
since=$((A1 - N1 + A2))
changed=$(echo "$d" | js 'd["changed_bytes"] // 524288')
[ "$changed" -le "$since" ] || fail "the incremental snapshot changed $changed chunks for $since writes since the first cut"
[ "$changed" -lt 2048 ] || fail "the incremental snapshot reread the whole volume ($changed chunks)"
pass "incremental snapshot under writes is the volume after write $N2 of $A2 ($changed chunks changed for $since writes since the first cut)"

read -r S3 S4 N3 A3 < <(snapshot_during_writes 3 p q)
pass "two volumes cut at one instant: both after write $N3 of $A3 ($S3, $S4)"

out=$("$EBS" store check --json)
[ "$(echo "$out" | js 'd["ok"]')" = True ] || fail "store check: $out"
pass "store check clean"
stop_server
