#!/usr/bin/env bash
# Let no one in (issue 26), each against a running server:
#  1. `ebs serve` without --listen: the Unix socket only (0600 in a 0700 data
#     directory), no TCP listener. Another local user (nobody) is refused at
#     the socket, by its modes alone (opened up, nobody gets in).
#  2. --listen on loopback without TLS warns that every local user can
#     connect; 0.0.0.0 without TLS is refused, naming --allow-insecure-tcp;
#     with it the server starts and warns; with --tls require --tls-psk it
#     starts without the warning (and PSK clients get in, plain ones not).
#  3. A handshake flood (NBD_OPT_LIST from 8 clients at a time, replies never
#     read; with 1 export, then with 17 of long names): RSS grows less than
#     16 MiB, another client is served meanwhile, the server goes quiet.
#  4. Handshake deadline: --handshake-timeout 1 closes a silent connection
#     after about 1 s; the default after about 10 s.
#  5. --max-connections 4: a 5th connection is closed at once, the 4 keep
#     answering, a freed place is taken by a new connection.
#  6. ulimit -n 64: out of descriptors the server does not spin, says
#     "cannot accept connections", and serves again once they are closed.
#  7. BLOCK_STATUS storm over a fragmented 128 MiB range (4 KiB written every
#     8 KiB): 128 requests pipelined, replies of at most 1024 extents, each a
#     prefix of the range asked; RSS back within 16 MiB.
#  8. snapshot export into a directory others can write: symbolic links
#     planted at the file and at the old temporary name are not followed.
# The clients are tests/e2e/security_probe.py.
source "$(dirname "$0")/lib.sh"
# RSS is measured: under AddressSanitizer freed memory would wait in its
# quarantine and count as growth (see test-nbd-memory.sh). Ignored without ASan.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0"

PROBE=$E2E_DIR/security_probe.py
probe() { "$PY" "$PROBE" "$@"; }
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
mode() { stat -c %a "$1"; }
MiB=$((1 << 20))

# alive PID: running (not exited, not a zombie).
alive() { kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# serve [ARGS...]: `ebs serve ARGS` exactly (start_server adds --listen),
# under ulimit -n $ULIMIT_N if set; waits until it is ready.
serve() {
  : >"$T/server.log"  # emptied before the fork (see start_server in lib.sh)
  if [ -n "${ULIMIT_N:-}" ]; then
    (ulimit -n "$ULIMIT_N" && exec "$EBS" serve "$@") >>"$T/server.log" 2>&1 &
  else
    "$EBS" serve "$@" >>"$T/server.log" 2>&1 &
  fi
  SERVER_PID=$!
  for _ in $(seq 1 200); do
    grep -q "ebs: ready" "$T/server.log" && return 0
    if ! alive "$SERVER_PID"; then
      wait "$SERVER_PID" 2>/dev/null || true
      SERVER_PID=""
      cat "$T/server.log"
      fail "ebs serve $* exited at start"
    fi
    sleep 0.05
  done
  cat "$T/server.log"
  fail "ebs serve $* did not become ready"
}

# listeners: the TCP addresses the server listens on, sorted, space-separated.
listeners() {
  ss -ltnpH | awk -v p="pid=$SERVER_PID," 'index($0, p) {print $4}' | sort -u | tr '\n' ' '
}

# nobody must be able to reach the data directory's parent: then only ebs's
# own modes (0700, 0600) keep them out.
chmod 0711 "$T"
D=$EBS_DATA_DIR

# --- 1. Default serve: the Unix socket only ---------------------------------
serve
[ -z "$(listeners)" ] || fail "without --listen the server listens on TCP: $(listeners)"
grep -q "^ebs: listening on unix:$SOCK\$" "$T/server.log" || fail "no 'listening on unix:$SOCK' line"
! grep -q 'ebs: listening on [^u]' "$T/server.log" || fail "a TCP listener is announced: $(grep 'listening on' "$T/server.log")"
[ "$(mode "$D")" = 700 ] || fail "data directory is mode $(mode "$D"), want 700"
[ "$(mode "$SOCK")" = 600 ] || fail "socket is mode $(mode "$SOCK"), want 600"
pass "no --listen: Unix socket $SOCK (0600) only, no TCP listener (ss -ltnp by pid: none)"

# Default handshake deadline: a silent connection, watched while the rest runs.
probe idle "$SOCK" 9 12 >"$T/idle-default.out" 2>&1 &
IDLE_PID=$!
on_exit '[ -z "$IDLE_PID" ] || kill "$IDLE_PID"'

"$EBS" volume create vol0 --size 1G >/dev/null
nbdinfo "$(uri vol0)" >/dev/null || fail "the owner cannot connect to the Unix socket"
as_nobody stat "$D" >/dev/null || fail "nobody cannot reach $D: the refusal below would prove nothing"
if out=$(as_nobody nbdinfo "$(uri vol0)" 2>&1); then
  fail "nobody connected to the Unix socket: $out"
fi
case "$out" in
  *"Permission denied"*) ;;
  *) fail "nobody's nbdinfo failed, but not with 'Permission denied': $out" ;;
esac
# The control: with the modes opened, nobody does get in.
chmod 0711 "$D" && chmod 0666 "$SOCK"
ctl_rc=0
ctl=$(as_nobody nbdinfo "$(uri vol0)" 2>&1) || ctl_rc=$?
chmod 0700 "$D" && chmod 0600 "$SOCK"
[ $ctl_rc = 0 ] || fail "control: nobody cannot connect even with $D 0711 and the socket 0666: $ctl"
pass "another user (nobody) is refused at the Unix socket by its modes: ${out##*: }"

# --- 3. Handshake flood ------------------------------------------------------
# Twice: with vol0 alone each NBD_OPT_LIST reply is small, and what bounds a
# connection is the cap on options; then 16 more exports with the longest
# names make each reply over 2 KiB, a connection's options megabytes of
# replies, more than the socket takes: the server must stop reading.
out=$(probe flood "$SOCK" "$SERVER_PID" vol0) || fail "$out"
pass "handshake flood, 1 export: $out"
pad=$(printf '%055d' 0)
for i in $(seq -w 1 16); do "$EBS" volume create "flood-$i-$pad" --size 1G >/dev/null; done
out=$(probe flood "$SOCK" "$SERVER_PID" vol0) || fail "$out"
pass "handshake flood, 17 exports with long names: $out"

# --- 8. snapshot export and planted symbolic links ---------------------------
nbdsh -u "$(uri vol0)" -c "h.pwrite(b'S' * 65536, 0); h.pwrite(b'E' * 4096, (1 << 30) - 4096); h.flush()"
SNAP=$("$EBS" snapshot create vol0 --json | js 'd[0]["id"]')
X=$(mktemp -d /tmp/ebs-e2e-export.XXXXXX)
on_exit "rm -rf '$X'"
chmod 0777 "$X"  # a directory others can write (not sticky: nothing in the kernel protects links there)
echo "root's file: must not change" >"$T/victim"
echo "another root file: must not change" >"$T/victim-tmp"
cp -p "$T/victim" "$T/victim.orig"
cp -p "$T/victim-tmp" "$T/victim-tmp.orig"
as_nobody ln -s "$T/victim" "$X/disk.img"
as_nobody ln -s "$T/victim-tmp" "$X/disk.img.ebs-export-tmp"
touch "$T/marker"
untouched() {
  cmp -s "$T/victim" "$T/victim.orig" || fail "$1: $T/victim was written through the link: $(cat "$T/victim")"
  cmp -s "$T/victim-tmp" "$T/victim-tmp.orig" || fail "$1: $T/victim-tmp was written through the link"
  [ -z "$(find "$T/victim" "$T/victim-tmp" -newer "$T/marker")" ] || fail "$1: a victim's mtime changed"
  [ -f "$T/victim" ] && [ ! -L "$T/victim" ] && [ -f "$T/victim-tmp" ] && [ ! -L "$T/victim-tmp" ] ||
    fail "$1: a victim was replaced"
}
if out=$("$EBS" snapshot export "$SNAP" "$X/disk.img" 2>&1); then
  fail "export over an existing name (a planted link) succeeded without --force: $out"
fi
untouched "export without --force"
[ -L "$X/disk.img" ] || fail "export without --force removed the link at the name"
"$EBS" snapshot export "$SNAP" "$X/disk.img" --force >/dev/null || fail "snapshot export --force failed"
untouched "export --force"
[ -f "$X/disk.img" ] && [ ! -L "$X/disk.img" ] || fail "$X/disk.img is not a regular file: $(ls -l "$X/disk.img")"
[ "$(stat -c %h "$X/disk.img")" = 1 ] || fail "$X/disk.img has $(stat -c %h "$X/disk.img") links"
if [ -e "$X/disk.img.ebs-export-tmp" ] || [ -L "$X/disk.img.ebs-export-tmp" ]; then
  [ "$(readlink "$X/disk.img.ebs-export-tmp")" = "$T/victim-tmp" ] || fail "the planted temporary link was replaced"
fi
left=$(find "$X" -mindepth 1 ! -name disk.img ! -name disk.img.ebs-export-tmp)
[ -z "$left" ] || fail "export left files behind in $X: $left"
[ "$(head -c 65536 "$X/disk.img" | tr -d S | wc -c)" = 0 ] || fail "the exported image does not start with the data written"
nbdcopy "$(uri vol0)" "$T/vol0.raw" || fail "nbdcopy of vol0"
same=$(probe samedata "$X/disk.img" "$T/vol0.raw") || fail "the exported image is not the volume: $same"
rm -f "$T/vol0.raw"
pass "snapshot export with links planted at FILE and FILE.ebs-export-tmp: refused without --force;" \
  "with it FILE is a regular file with the volume's bytes ($same), the link targets untouched"

# The default deadline, watched since the server started.
idle_rc=0
wait "$IDLE_PID" || idle_rc=$?
IDLE_PID=""
[ $idle_rc = 0 ] || fail "default handshake deadline: $(cat "$T/idle-default.out")"
pass "default handshake deadline (10 s): $(cat "$T/idle-default.out")"
stop_server

# --- 2. TCP on loopback without TLS: a warning; 4, 5: deadline and cap -------
start_server --handshake-timeout 1 --max-connections 4
[ "$(listeners)" = "127.0.0.1:$PORT " ] || fail "--listen 127.0.0.1:0: listening on '$(listeners)'"
grep -q "^ebs: warning: TCP 127\.0\.0\.1:$PORT takes clients without authentication: every local user" \
  "$T/server.log" || fail "no warning for TCP on loopback without TLS:"$'\n'"$(cat "$T/server.log")"
pass "--listen 127.0.0.1:$PORT without TLS: $(grep '^ebs: warning: TCP' "$T/server.log" | cut -c1-110)..."
out=$(probe idle "$SOCK" 0.5 5) || fail "$out"
pass "--handshake-timeout 1: $out"
out=$(probe cap "$SOCK" vol0 4) || fail "$out"
pass "--max-connections 4: $out"
stop_server

# --- 6. ulimit -n 64 -----------------------------------------------------------
ULIMIT_N=64 serve --max-connections 1000
out=$(probe fdstorm "$SOCK" "$SERVER_PID" 100 "$T/server.log") || fail "$out"
pass "ulimit -n 64: $out; log: $(grep -o 'cannot accept connections[^;]*' "$T/server.log" | head -n1)"
stop_server

# --- 2. Beyond loopback ----------------------------------------------------------
: >"$T/server.log"
"$EBS" serve --listen 0.0.0.0:0 >>"$T/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
  alive "$pid" && ! grep -q "ebs: ready" "$T/server.log" || break
  sleep 0.05
done
if alive "$pid"; then
  SERVER_PID=$pid
  addrs=$(listeners)
  stop_server
  fail "--listen 0.0.0.0:0 without TLS was served (on '$addrs'):"$'\n'"$(cat "$T/server.log")"
fi
rc=0
wait "$pid" || rc=$?
[ $rc != 0 ] || fail "--listen 0.0.0.0:0 without TLS: exit status 0:"$'\n'"$(cat "$T/server.log")"
grep -q 'refusing to serve TCP on' "$T/server.log" && grep -q -- '--allow-insecure-tcp' "$T/server.log" ||
  fail "--listen 0.0.0.0:0 refused (status $rc) without naming it and --allow-insecure-tcp:"$'\n'"$(cat "$T/server.log")"
pass "--listen 0.0.0.0:0 without TLS refused (status $rc): $(grep -o 'refusing to serve TCP on.\{0,60\}' "$T/server.log")..."

serve --listen 0.0.0.0:0 --allow-insecure-tcp
P=$(sed -n 's/^ebs: listening on 0\.0\.0\.0:\([0-9]*\)$/\1/p' "$T/server.log" | head -n1)
[ -n "$P" ] && [ "$(listeners)" = "0.0.0.0:$P " ] || fail "--allow-insecure-tcp: listening on '$(listeners)'"
grep -q "^ebs: warning: TCP 0\.0\.0\.0:$P takes clients without authentication" "$T/server.log" ||
  fail "--listen 0.0.0.0 --allow-insecure-tcp: no warning:"$'\n'"$(cat "$T/server.log")"
pass "--listen 0.0.0.0 --allow-insecure-tcp: served on 0.0.0.0:$P, with a warning"
stop_server

psktool -u alice -p "$T/keys.psk" >/dev/null
serve --listen 0.0.0.0:0 --tls require --tls-psk "$T/keys.psk"
P=$(sed -n 's/^ebs: listening on 0\.0\.0\.0:\([0-9]*\)$/\1/p' "$T/server.log" | head -n1)
[ -n "$P" ] && [ "$(listeners)" = "0.0.0.0:$P " ] || fail "--tls require --tls-psk: listening on '$(listeners)'"
! grep -q 'without authentication\|^ebs: warning: TCP' "$T/server.log" ||
  fail "--tls require --tls-psk warns: $(grep 'warning' "$T/server.log")"
nbdinfo "nbds://alice@127.0.0.1:$P/vol0?tls-psk-file=$T/keys.psk" >/dev/null || fail "a PSK client cannot connect"
if nbdinfo "nbd://127.0.0.1:$P/vol0" >/dev/null 2>&1; then fail "a client without TLS got in"; fi
pass "--listen 0.0.0.0 --tls require --tls-psk: served on 0.0.0.0:$P without a warning; PSK client in, plain client out"
stop_server

# --- 7. BLOCK_STATUS storm ---------------------------------------------------
# On tmpfs when there is one: removing a file of 16,384 separate data extents
# from a file system mounted with -o discard takes some 3 ms per extent (45 s
# on the test machine), more than the whole test. Elsewhere 64 MiB: still
# 16 times the extents a reply may carry, and 128 whole lists of them held
# would be some 50 MiB.
if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] && F=$(mktemp -d /dev/shm/ebs-e2e-security.XXXXXX); then
  on_exit "rm -rf '$F'"
  FRAG_MIB=128
else
  F=$T/storm
  FRAG_MIB=64
fi
export EBS_DATA_DIR=$F/data
SOCK=$EBS_DATA_DIR/nbd.sock
serve
"$EBS" volume create frag --size 32G --iops 16000 >/dev/null  # 16,384 writes unthrottled, nearly
out=$(probe fragment "$SOCK" frag $((FRAG_MIB * MiB))) || fail "$out"
echo "   (in $F: $out)"
out=$(probe bstorm "$SOCK" "$SERVER_PID" frag $((FRAG_MIB * MiB))) || fail "$out"
pass "BLOCK_STATUS storm: $out"
stop_server
