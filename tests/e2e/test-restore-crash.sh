#!/usr/bin/env bash
# An eager restore killed part way (SIGKILL, no server running, so the CLI
# owns the data directory) must never leave a half-written volume behind:
# after a restart the volume is gone, or it is complete and equal to the
# snapshot. Each round kills the restore at another moment, from right after
# the volume's data file appears to well into the copy.
source "$(dirname "$0")/lib.sh"
need nbdinfo

ROUNDS=${RESTORE_CRASH_ROUNDS:-4}
ebs volume create src --type gp3 --size 1G >/dev/null
start_server
# 256 MiB of incompressible data: a restore takes long enough to be killed in.
"$PY" - "$(uri src)" <<'EOF'
import nbd, os, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
piece = 4 << 20
for off in range(0, 256 << 20, piece):
    h.pwrite(os.urandom(piece), off)
h.flush()
h.shutdown()
EOF
SNAP=$(ebs snapshot create src --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
stop_server

killed_inside=0
base=$(du -B1 -s "$EBS_DATA_DIR/volumes" | cut -f1)  # src's own data
for round in $(seq 1 "$ROUNDS"); do
  name="half$round"
  "$EBS" --data-dir "$EBS_DATA_DIR" snapshot restore "$SNAP" --volume "$name" >/dev/null 2>"$T/restore.err" &
  pid=$!
  # Kill once the data file holds round * 16 MiB (or when the restore ends).
  want=$((base + (round * 16 << 20)))
  while kill -0 "$pid" 2>/dev/null; do
    used=$(du -B1 -s "$EBS_DATA_DIR/volumes" 2>/dev/null | cut -f1)
    [ "${used:-0}" -lt "$want" ] || { kill -KILL "$pid" 2>/dev/null && killed_inside=$((killed_inside + 1)); break; }
    sleep 0.01
  done
  wait "$pid" 2>/dev/null || true

  # Any command opens the directory and finishes what the kill left.
  listed=$(ebs volume list --json 2>"$T/list.err" | "$PY" -c 'import json,sys; print(" ".join(v["name"] + "=" + v["state"] for v in json.load(sys.stdin)))')
  [ -n "$listed" ] || fail "round $round: volume list after the kill failed: $(cat "$T/list.err")"
  case " $listed " in
    *" $name="*)
      start_server
      "$PY" "$E2E_DIR/crash_client.py" compare "$(uri src)" "$(uri "$name")" \
        || fail "round $round: volume $name was left after the kill ($listed) and differs from the snapshot"
      stop_server
      pass "round $round: the restore had finished; $name equals the snapshot"
      ebs volume delete "$name" >/dev/null
      ;;
    *) pass "round $round: the interrupted restore left no volume ($listed)" ;;
  esac
  ls "$EBS_DATA_DIR/volumes" | grep -q . || fail "round $round: src's files are gone"
done
[ "$killed_inside" -ge 1 ] || fail "no kill landed inside a restore (the restores finished too fast to test)"
pass "$killed_inside of $ROUNDS kills landed inside the restore"
