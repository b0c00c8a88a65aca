#!/usr/bin/env bash
# Defaults that let no one in (docs/security.md), whatever the caller's umask:
# - a fresh data directory: 0700; sockets 0600; volume data files, catalog,
#   keys, the store and its objects after a snapshot, and an exported image
#   all private to the server's user;
# - a pre-existing 0755 data directory is made 0700; a store given with
#   --store elsewhere is created 0700;
# - a data directory left open by an older version (0755 directories, 0644
#   files) is made private again at start, and its 0644 snapshot objects
#   still read; new objects are 0600;
# - a data directory ebs cannot make private is refused, naming path and mode;
# - without --listen, the server listens on its Unix socket only, no TCP.
source "$(dirname "$0")/lib.sh"

umask 022  # a permissive caller must not make ebs permissive
js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
mode() { stat -c %a "$1"; }
expect_mode() {  # expect_mode MODE PATH...
  local want=$1 p
  shift
  for p in "$@"; do
    [ -e "$p" ] || fail "$p does not exist"
    [ "$(mode "$p")" = "$want" ] || fail "$p is mode $(mode "$p"), want $want"
  done
}
# expect_private DIR [find args]: nothing under DIR (symbolic links aside)
# grants group or other any access.
expect_private() {
  local dir=$1 open
  shift
  open=$(find "$dir" "$@" ! -type l -perm /077 -printf '%m %p\n')
  [ -z "$open" ] || fail "open to other users under $dir:"$'\n'"$open"
}
write() { nbdsh -u "$(uri "$1")" -c "h.pwrite(b'$2' * 65536, $3 * 65536); h.flush()"; }
snapshot() { "$EBS" snapshot create "$1" --json | js 'd[0]["id"]'; }

# 1. A fresh data directory (does not exist before the server starts).
start_server
D=$EBS_DATA_DIR
"$EBS" volume create plain --size 1G >/dev/null
"$EBS" volume create enc --size 1G --encrypted >/dev/null
write plain A 0
write enc B 3
P1=$(snapshot plain)
snapshot enc >/dev/null
"$EBS" snapshot export "$P1" "$T/plain.img" >/dev/null
expect_mode 700 "$D" "$D/volumes" "$D/catalog" "$D/keys" "$D/store"
expect_mode 600 "$D/nbd.sock" "$D/control.sock" "$D/keys/default.key" "$D/LOCK" "$T/plain.img"
n=$(find "$D/volumes" -name '*.img' | wc -l)
[ "$n" = 2 ] || fail "expected 2 volume data files, found $n"
[ -n "$(find "$D/store" -type f | head -n1)" ] || fail "the snapshots wrote no objects"
expect_private "$D"
pass "fresh data directory: 0700, sockets 0600, volumes, catalog, key, store and objects private; export 0600"

# 2. A data directory left open, as an older ebs or a loose umask left it.
stop_server
chmod -R go+rX "$D"
[ "$(mode "$D/store")" = 755 ] || fail "could not loosen the store for the test"
start_server
expect_mode 700 "$D" "$D/volumes" "$D/catalog" "$D/keys" "$D/store"
expect_private "$D" -path "$D/store/*" -prune -o  # what is under the store is behind its 0700 root
"$EBS" snapshot verify "$P1" >/dev/null || fail "snapshot verify failed on objects written 0644"
"$EBS" snapshot restore "$P1" --volume restored >/dev/null || fail "restore from objects written 0644 failed"
touch "$T/marker"
sleep 0.01
write plain C 5
snapshot plain >/dev/null
[ -n "$(find "$D/store" -type f -newer "$T/marker" | head -n1)" ] || fail "the new snapshot wrote no objects"
expect_private "$D/store" -type f -newer "$T/marker"
expect_private "$D" -path "$D/store" -prune -o
pass "data directory left open by an older version: private again, old objects read, new ones 0600"
stop_server

# 3. A pre-existing 0755 data directory, and a store elsewhere (created).
export EBS_DATA_DIR="$T/old"
SOCK="$EBS_DATA_DIR/nbd.sock"
D=$EBS_DATA_DIR
mkdir -m 0755 "$D"
expect_mode 755 "$D"
start_server --store "$T/elsewhere/store"
expect_mode 700 "$D"
"$EBS" volume create v --size 1G >/dev/null
write v D 1
snapshot v >/dev/null
expect_mode 700 "$T/elsewhere" "$T/elsewhere/store"
expect_mode 600 "$D/nbd.sock" "$D/control.sock"
[ -n "$(find "$T/elsewhere/store" -type f | head -n1)" ] || fail "the snapshot wrote no objects"
expect_private "$D"
expect_private "$T/elsewhere"
pass "pre-existing 0755 data directory made 0700; --store elsewhere created private"
stop_server

# 4. A data directory ebs cannot make private: refused, left as it was. Needs
# another user owning it: as root, run ebs as nobody.
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1; then
  O=$(mktemp -d /tmp/ebs-e2e-perm.XXXXXX)
  on_exit "rm -rf '$O'"
  chmod 0755 "$O"
  mkdir -m 0755 "$O/data"
  if out=$(setpriv --reuid=65534 --regid=65534 --clear-groups "$EBS" --data-dir "$O/data" volume list 2>&1); then
    fail "ebs used a data directory it could not make private: $out"
  fi
  case "$out" in
    *"data directory $O/data is mode 0755"*) ;;
    *) fail "the refusal does not name the path and mode: $out" ;;
  esac
  expect_mode 755 "$O/data"
  [ -z "$(ls -A "$O/data")" ] || fail "a refused data directory was written to"
  pass "a data directory of another user's, open to others: refused ($out)"
else
  skip_part "refusing a data directory of another user's needs root and setpriv"
fi

# 5. The default listeners (no --listen): the Unix socket, and no TCP at all.
export EBS_DATA_DIR="$T/listen"
SOCK="$EBS_DATA_DIR/nbd.sock"
: >"$T/server.log"  # emptied before the fork (see start_server in lib.sh)
"$EBS" serve >>"$T/server.log" 2>&1 &
SERVER_PID=$!
ready=""
for _ in $(seq 1 200); do
  if grep -q "ebs: ready" "$T/server.log"; then ready=1; break; fi
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.05
done
[ -n "$ready" ] || { cat "$T/server.log"; fail "server without --listen did not start"; }
addrs=$(ss -ltnpH | { grep "pid=$SERVER_PID," || true; } | awk '{print $4}' | sort -u | tr '\n' ' ')
[ -z "$addrs" ] || fail "without --listen the server listens on TCP '$addrs', want none"
[ -S "$SOCK" ] || fail "without --listen there is no Unix socket at $SOCK"
expect_mode 600 "$SOCK"
grep -q "^ebs: listening on unix:$SOCK$" "$T/server.log" || fail "the log does not name the Unix socket"
pass "default listeners: the Unix socket (0600) only, no TCP"
stop_server
