#!/usr/bin/env bash
# The README's first command, past installing and building: scripts/quickstart
# creates vol0 (gp3, 10 GiB) in ./ebs-data of the checkout, serves it on
# ./ebs-data/nbd.sock, prints how to connect and mount it, and on a second
# run keeps the volume and its data. Run on a copy of the checkout's layout
# (scripts/quickstart and build/bin/ebs) so the real ./ebs-data is untouched.
source "$(dirname "$0")/lib.sh"
need nbdinfo
unset EBS_DATA_DIR
REPO="$T/checkout"
mkdir -p "$REPO/scripts" "$REPO/build/bin"
cp "$E2E_DIR/../../scripts/quickstart" "$REPO/scripts/"
ln -s "$(readlink -f "$EBS")" "$REPO/build/bin/ebs"
DATA="$REPO/ebs-data"
QS_PID=""
on_exit 'if [ -n "$QS_PID" ]; then kill -TERM "$QS_PID"; wait "$QS_PID"; fi'

# quickstart LOG: starts it (any listener port, so parallel tests cannot
# collide on 10809) and waits until it serves.
quickstart() {
  (cd / && EBS_QUICKSTART_NO_SETUP=1 exec "$REPO/scripts/quickstart" --listen 127.0.0.1:0) >"$1" 2>&1 &
  QS_PID=$!
  for _ in $(seq 1 200); do
    grep -q "ebs: ready" "$1" && return 0
    kill -0 "$QS_PID" 2>/dev/null || { cat "$1"; fail "quickstart exited"; }
    sleep 0.05
  done
  cat "$1"
  fail "quickstart did not start serving"
}
stop_quickstart() {
  kill -INT "$QS_PID"
  wait "$QS_PID" || fail "quickstart's server exited with $? on Ctrl-C"
  QS_PID=""
}

quickstart "$T/qs1.log"
[ -d "$DATA" ] || fail "no ./ebs-data in the checkout"
"$EBS" --data-dir "$DATA" volume describe vol0 --json >"$T/vol0.json"
"$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["type"]=="gp3" and d["size_bytes"]==10<<30 else 1)' \
  "$T/vol0.json" || fail "vol0 is not gp3 10 GiB: $(cat "$T/vol0.json")"
pass "vol0 created: gp3, 10 GiB, in ./ebs-data"
U="nbd+unix:///vol0?socket=$DATA/nbd.sock"
[ "$(nbdinfo --size "$U")" = $((10 << 30)) ] || fail "vol0 is not served at 10 GiB on ./ebs-data/nbd.sock"
grep -q "ebs: connect:  nbdinfo 'nbd+unix:///vol0?socket=$DATA/nbd.sock'" "$T/qs1.log" || fail "no connect hint for vol0"
grep -q "ebs: mount: .*nbdfuse .*nbd+unix:///vol0" "$T/qs1.log" || fail "no mount hint for vol0"
pass "vol0 served on ./ebs-data/nbd.sock, with connect and mount hints"
"$PY" - "$U" <<'PYEOF' || fail "write through NBD"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1]); h.pwrite((b"quickstart" * 410)[:4096], 1 << 20); h.flush(); h.shutdown()
PYEOF
stop_quickstart

# A second run: vol0 is kept (not created again), with its data.
quickstart "$T/qs2.log"
"$EBS" --data-dir "$DATA" volume list --json | "$PY" -c 'import json,sys; v=json.load(sys.stdin); sys.exit(0 if [x["name"] for x in v]==["vol0"] else 1)' \
  || fail "the second run changed the volume list"
"$PY" - "$U" <<'PYEOF' || fail "vol0's data did not survive a second quickstart"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1]); assert h.pread(4096, 1 << 20) == (b"quickstart" * 410)[:4096]; h.shutdown()
PYEOF
pass "a second run keeps vol0 and its data"
stop_quickstart
