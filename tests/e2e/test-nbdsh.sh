#!/usr/bin/env bash
# NBD protocol conformance through libnbd (and a raw socket client for what
# libnbd cannot send): commands and flags, block status, error replies and
# recovery, handshake options, simple replies, read-only exports.
source "$(dirname "$0")/lib.sh"
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed"

ebs volume create disk  --type gp3 --size 1G >/dev/null
ebs volume create vol0  --type gp3 --size 2G >/dev/null
ebs volume create other --type gp3 --size 1G >/dev/null

# Both phases run even if the first has failures; the test fails at the end.
failed=()
start_server
"$PY" "$E2E_DIR/nbd_protocol.py" rw "$SOCK" || failed+=("protocol checks (writable server)")
stop_server

start_server --read-only
"$PY" "$E2E_DIR/nbd_protocol.py" ro "$SOCK" || failed+=("protocol checks (read-only server)")
stop_server

# The read-only run changed nothing: a writable server sees the same data.
start_server
nbdsh -u "$(uri disk)" -c '
d = bytes((99 + i * 7) & 0xFF for i in range(256)) * 16
assert h.pread(4096, 0) == d, "data changed under a read-only server"
' || fail "data after read-only run"
stop_server
pass "data intact after read-only run"

[ ${#failed[@]} -eq 0 ] || fail "${failed[*]}"
pass "all protocol checks"
