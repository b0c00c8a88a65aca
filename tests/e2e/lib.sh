# shellcheck shell=bash
# Shared by the end-to-end tests: each test sources this, gets a fresh data
# directory under a temporary folder, starts its own server, and everything
# is torn down on exit. Requires EBS (path to the ebs binary).
set -euo pipefail

: "${EBS:?EBS must point to the ebs binary}"
T=$(mktemp -d /tmp/ebs-e2e.XXXXXX)
export EBS_DATA_DIR="$T/data"
SOCK="$T/data/nbd.sock"
SERVER_PID=""
CLEANUP_CMDS=()

cleanup() {
  local rc=$?
  # Whatever happens below (a closed stdout, a failing command), the
  # temporary directory is removed and the test's status is kept.
  set +e
  trap '' PIPE
  IN_CLEANUP=1
  for ((i=${#CLEANUP_CMDS[@]}-1; i>=0; i--)); do eval "${CLEANUP_CMDS[$i]}" >/dev/null 2>&1; done
  stop_server >/dev/null || [ $rc -ne 0 ] || rc=1
  if [ $rc -ne 0 ] && [ -f "$T/server.log" ]; then
    echo "--- server log"; tail -n 50 "$T/server.log"
  fi
  rm -rf "$T"
  exit $rc
}
trap cleanup EXIT

on_exit() { CLEANUP_CMDS+=("$1"); }

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

# start_server [serve args...]: serves $EBS_DATA_DIR on $SOCK and a free
# loopback TCP port (exported as PORT), waits until it is ready.
start_server() {
  # Emptied here, before the fork: the child's own redirection may come after
  # the first look below, which would then find the previous server's "ready".
  : >"$T/server.log"
  "$EBS" serve --listen 127.0.0.1:0 "$@" >>"$T/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 200); do
    if grep -q "ebs: ready" "$T/server.log" 2>/dev/null; then
      PORT=$(sed -n 's/^ebs: listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$T/server.log" | head -n1)
      export PORT
      return 0
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      wait "$SERVER_PID" 2>/dev/null || true
      SERVER_PID=""
      cat "$T/server.log"
      fail "server exited at start"
    fi
    sleep 0.05
  done
  cat "$T/server.log"
  fail "server did not become ready"
}

# stop_server: SIGTERM, and check that it exits 0 (within STOP_TIMEOUT
# seconds, default 20; after that it is killed and the test fails).
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local pid=$SERVER_PID rc=0 state
  SERVER_PID=""
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((${STOP_TIMEOUT:-20} * 20))); do
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || break
    [ "$state" != Z ] || break
    sleep 0.05
  done
  if [ -e "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    _stop_failed "server did not exit within ${STOP_TIMEOUT:-20} s of SIGTERM (killed)"
    return 1
  fi
  wait "$pid" || rc=$?
  [ $rc -eq 0 ] || { _stop_failed "server exited with status $rc after SIGTERM"; return 1; }
}
_stop_failed() { if [ -n "${IN_CLEANUP:-}" ]; then echo "FAIL: $*" >&2; else fail "$*"; fi; }

uri() { echo "nbd+unix:///$1?socket=$SOCK"; }

# Python with the libnbd bindings (python3-libnbd lives in the system Python;
# a python3 earlier in PATH, e.g. pyenv, may not have it).
PY=/usr/bin/python3
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# nbdsh runs "python3 -m nbd" from PATH: pin it to the system Python.
nbdsh() { "$PY" -m nbd "$@"; }

# skip WHY: the test cannot run here. Exit status 77, which ctest reports as
# "Not Run" (SKIP_RETURN_CODE), so a skipped test is never counted as passed.
# Under CI (CI=true) a test that cannot run fails instead: CI must not pass
# having skipped a check.
skip() {
  [ "${CI:-}" != true ] || fail "cannot run under CI: $*"
  echo "SKIP: $*"
  exit 77
}

# skip_part WHY: one part of a test cannot run here: says so and goes on,
# or under CI fails the test.
skip_part() {
  [ "${CI:-}" != true ] || fail "cannot run under CI: $*"
  echo "SKIP: $*"
}

# need CMD...: skip (under CI: fail) when a client tool is missing.
need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || skip "$c not installed"
  done
}

# tcp_uri NAME: the same export over TCP.
tcp_uri() { echo "nbd://127.0.0.1:$PORT/$1"; }

# ebs ARGS...: the CLI on this test's data directory.
ebs() { "$EBS" --data-dir "$EBS_DATA_DIR" "$@"; }
