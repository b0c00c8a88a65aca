#!/usr/bin/env bash
# Volume lifecycle while serving: create is exported at once, growth is seen
# by new connections, delete is refused while connected and --force ends the
# connections (ESHUTDOWN to requests, then close), and SIGTERM answers what it
# read, keeps flushed data.
source "$(dirname "$0")/lib.sh"
need nbdinfo
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed"

G=$((1 << 30))
ebs volume create keep --type gp3 --size 1G >/dev/null
start_server

exports() { nbdinfo --list "nbd+unix:///?socket=$SOCK" | sed -n 's/^export="\(.*\)":$/\1/p' | sort | xargs; }

# how FILE: what a hold client reported about the end of its connection
# (first word: eshutdown, closed, or bad:...; see hold_connection.py).
how() { sed -n 's/^ended [0-9.]* \([^ ]*\).*/\1/p' "$1"; }

# hold NAME MODE: background client holding a connection to NAME; sets
# HOLD_PID and HOLD_STATUS (a file), returns once it is connected.
hold() {
  HOLD_STATUS="$T/hold.$1.$2"
  : >"$HOLD_STATUS"
  "$PY" "$E2E_DIR/hold_connection.py" "$(uri "$1")" "$HOLD_STATUS" "$2" 20 &
  HOLD_PID=$!
  on_exit "kill $HOLD_PID"
  for _ in $(seq 1 100); do
    grep -q '^ready$' "$HOLD_STATUS" && return 0
    kill -0 "$HOLD_PID" 2>/dev/null || fail "hold $1 $2: client exited before connecting"
    sleep 0.05
  done
  fail "hold $1 $2: client did not connect"
}

# --- create while serving -------------------------------------------------------
[ "$(exports)" = "keep" ] || fail "exports at start: $(exports)"
ebs volume create live --type gp3 --size 1G >/dev/null || fail "volume create while serving"
[ "$(exports)" = "keep live" ] || fail "exports after create: $(exports), want 'keep live'"
[ "$(nbdinfo --size "$(uri live)")" -eq $G ] || fail "size of the new volume"
ebs volume list --json | "$PY" -c 'import json,sys; n=[v["name"] for v in json.load(sys.stdin)]; assert sorted(n)==["keep","live"], n' ||
  fail "volume list --json while serving"
# Creating a name that exists is refused, and changes nothing.
if ebs volume create live --type gp3 --size 2G >/dev/null 2>&1; then fail "duplicate create succeeded"; fi
[ "$(nbdinfo --size "$(uri live)")" -eq $G ] || fail "duplicate create changed the volume"
pass "volume created while serving is exported without restart"

# --- grow while serving ---------------------------------------------------------
nbdsh -u "$(uri live)" -c '
h.pwrite(b"\x5a" * 65536, (1 << 30) - 65536)
h.flush()
'
ebs volume modify live --size 2G >/dev/null || fail "volume modify --size 2G"
[ "$(nbdinfo --size "$(uri live)")" -eq $((2 * G)) ] || fail "new connection does not see 2 GiB: $(nbdinfo --size "$(uri live)")"
[ "$(ebs volume describe live --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["size_bytes"])')" -eq $((2 * G)) ] ||
  fail "describe does not show 2 GiB"
nbdsh -u "$(uri live)" -c '
G = 1 << 30
assert h.get_size() == 2 * G
assert h.pread(65536, G - 65536) == b"\x5a" * 65536, "data before the old end"
assert h.pread(1 << 20, G) == bytes(1 << 20), "grown area is not zero"
h.pwrite(b"\xa5" * 4096, 2 * G - 4096, flags=nbd.CMD_FLAG_FUA)
assert h.pread(4096, 2 * G - 4096) == b"\xa5" * 4096
' || fail "I/O on the grown volume"
# Shrinking is not allowed (EBS volumes only grow).
if ebs volume modify live --size 1G >/dev/null 2>&1; then fail "shrinking succeeded"; fi
[ "$(nbdinfo --size "$(uri live)")" -eq $((2 * G)) ] || fail "refused shrink changed the size"
pass "grown volume: new connections see the new size, data kept, new space usable"

# --- type change defaults (ModifyVolume), while serving --------------------------
# gp2 -> gp3 with no options keeps the gp2 volume's performance when it is
# higher than gp3's 3,000/125 (2,000 GiB: 6,000 IOPS, 250 MiB/s); a change to
# io1 with no --iops gets 3,000.
describe() { ebs volume describe "$1" --json | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d["type"], d["iops"], d["throughput_mibps"])'; }
ebs volume create big --type gp2 --size 2000G >/dev/null || fail "create a 2000 GiB gp2"
[ "$(nbdinfo --size "$(uri big)")" -eq $((2000 * G)) ] || fail "big is not served"
ebs volume modify big --type gp3 >/dev/null || fail "gp2 -> gp3 with no options"
[ "$(describe big)" = "gp3 6000 250" ] || fail "gp2 2000 GiB -> gp3: $(describe big), want gp3 6000 250"
ebs volume create small --type gp2 --size 100G >/dev/null
ebs volume modify small --type io1 >/dev/null || fail "gp2 -> io1 with no --iops refused"
[ "$(describe small)" = "io1 3000 None" ] || fail "gp2 -> io1: $(describe small), want io1 3000"
ebs volume delete big --force >/dev/null && ebs volume delete small --force >/dev/null || fail "delete big, small"
pass "type change defaults: gp2 2000 GiB -> gp3 6000/250, gp2 -> io1 3000"

# --- delete with open connections ----------------------------------------------------
hold live busy;  BUSY_PID=$HOLD_PID BUSY=$HOLD_STATUS
hold live idle;  IDLE_PID=$HOLD_PID IDLE=$HOLD_STATUS
hold live pipelined;  PIPE_PID=$HOLD_PID PIPE=$HOLD_STATUS
hold live raw;   RAW_PID=$HOLD_PID RAW=$HOLD_STATUS
hold keep busy;  OTHER_PID=$HOLD_PID OTHER=$HOLD_STATUS
hold keep raw;   OTHER_RAW_PID=$HOLD_PID OTHER_RAW=$HOLD_STATUS

rc=0; msg=$(ebs volume delete live 2>&1) || rc=$?
[ $rc -ne 0 ] || fail "delete of a volume with open connections succeeded"
grep -Eqi 'in use|open connection|attached|connected' <<<"$msg" || fail "refusal message is not clear: $msg"
grep -q 'live' <<<"$msg" || fail "refusal message does not name the volume: $msg"
echo "refused: $msg"
[ "$(exports)" = "keep live" ] || fail "exports after refused delete: $(exports)"
sleep 0.3
for s in "$BUSY" "$IDLE" "$PIPE" "$RAW"; do grep -q '^ended' "$s" && fail "refused delete ended a connection ($s)"; done
pass "delete refused while connected: $msg"

t0=$(date +%s.%N)
ebs volume delete live --force >/dev/null || fail "delete --force"
for p in $BUSY_PID $IDLE_PID $PIPE_PID $RAW_PID; do
  rc=0; wait "$p" || rc=$?
  [ $rc -eq 0 ] || fail "client connection was not ended (hold exit $rc)"
done
for s in "$BUSY" "$IDLE" "$PIPE" "$RAW"; do
  t1=$(sed -n 's/^ended \([0-9.]*\) .*/\1/p' "$s")
  "$PY" -c "import sys; d=$t1-$t0; print(f'{sys.argv[1]}: ended after {d:.2f} s'); sys.exit(0 if d < 2 else 1)" \
    "$(basename "$s") $(sed -n 's/^ended [0-9.]* //p' "$s")" ||
    fail "connection ended too late after delete --force"
done
# What the server does (nbd-server/src/connection.cc, a soft disconnect):
# from the delete on, every request it reads gets ESHUTDOWN (108) while it goes
# on reading; once every request read is answered it shuts its writing side
# and the client sees the end of the stream. Nothing else: no other errno, no
# success after ESHUTDOWN (hold_connection.py reports bad:... then).
for s in "$BUSY" "$PIPE" "$RAW"; do
  case "$(how "$s")" in
    eshutdown|closed) ;;
    *) fail "$(basename "$s"): connection of a deleted volume ended with: $(sed -n 's/^ended [0-9.]* //p' "$s")" ;;
  esac
done
[ "$(how "$IDLE")" = closed ] || fail "idle connection of a deleted volume: $(sed -n 's/^ended [0-9.]* //p' "$IDLE"), want closed"
# The raw client sees every reply: the answered requests are exactly the first
# ones it sent, successes and then ESHUTDOWN, and the stream ends cleanly.
grep -Eq '^ended [0-9.]+ (eshutdown|closed) answered=[0-9]+ sent=[0-9]+ errors=\{([0-9]+: 108(, [0-9]+: 108)*)?\} end=eof$' "$RAW" ||
  fail "raw client of a deleted volume: $(tail -n1 "$RAW")"
pass "delete --force: requests get ESHUTDOWN or the connection closes ($(how "$BUSY"), $(how "$PIPE"), $(how "$RAW"); idle closed)"
[ "$(exports)" = "keep" ] || fail "exports after delete --force: $(exports)"
if nbdinfo --size "$(uri live)" >/dev/null 2>&1; then fail "deleted volume still connectable"; fi
ebs volume describe live >/dev/null 2>&1 && fail "deleted volume still described"
# Connections to other volumes are untouched.
for s in "$OTHER" "$OTHER_RAW"; do grep -q '^ended' "$s" && fail "connection to another volume was ended ($s)"; done
kill -0 "$OTHER_PID" || fail "client of another volume died"
kill -0 "$OTHER_RAW_PID" || fail "raw client of another volume died"
pass "delete --force ends the open connections within 2 s, others unaffected"

# A new volume with the same name starts empty.
ebs volume create live --type gp3 --size 1G >/dev/null || fail "re-create"
nbdsh -u "$(uri live)" -c '
assert h.pread(4096, 0) == bytes(4096), "re-created volume has old data"
assert h.pread(65536, (1 << 30) - 65536) == bytes(65536), "re-created volume has old data"
' || fail "re-created volume not empty"
pass "re-created volume is empty"

# --- SIGTERM with a connection open; flushed data survives --------------------
nbdsh -u "$(uri keep)" -c '
h.pwrite(b"flushed!" * 512, 1 << 20)
h.pwrite(b"fua-data" * 512, 2 << 20, flags=nbd.CMD_FLAG_FUA)
h.flush()
'
nbdsh -u "$(uri live)" -c 'h.pwrite(b"live-vol" * 512, 0); h.flush()'
stop_server   # the busy and raw clients of "keep" are still connected
for p in $OTHER_PID $OTHER_RAW_PID; do
  rc=0; wait "$p" || rc=$?
  [ $rc -eq 0 ] || fail "client connected during SIGTERM was not disconnected (hold exit $rc)"
done
# SIGTERM: the same soft disconnect: what was read before it is answered as
# usual, what is read after it gets ESHUTDOWN, then the stream ends.
case "$(how "$OTHER")" in
  eshutdown|closed) ;;
  *) fail "busy client at SIGTERM: $(tail -n1 "$OTHER"), want eshutdown or closed" ;;
esac
grep -Eq '^ended [0-9.]+ (eshutdown|closed) answered=[0-9]+ sent=[0-9]+ errors=\{([0-9]+: 108(, [0-9]+: 108)*)?\} end=eof$' "$OTHER_RAW" ||
  fail "raw client at SIGTERM: every request read must be answered, successes then ESHUTDOWN: $(tail -n1 "$OTHER_RAW")"
pass "SIGTERM with open connections exits 0, answers every request it read ($(sed -n 's/^ended [0-9.]* //p' "$OTHER_RAW" | sed 's/errors={[^}]*}/.../')) and disconnects the clients"
start_server
[ "$(exports)" = "keep live" ] || fail "exports after restart: $(exports)"
nbdsh -u "$(uri keep)" -c '
assert h.pread(4096, 1 << 20) == b"flushed!" * 512
assert h.pread(4096, 2 << 20) == b"fua-data" * 512
' || fail "flushed data lost over restart"
nbdsh -u "$(uri live)" -c 'assert h.pread(4096, 0) == b"live-vol" * 512' || fail "live data lost over restart"
[ "$(nbdinfo --size "$(uri live)")" -eq $G ] || fail "size after restart"
stop_server
pass "flushed data present after restart"
