#!/usr/bin/env bash
# Snapshot exports: while `ebs serve` runs, every completed snapshot is a
# read-only export named by its id, read straight from the store. Its content
# equals `snapshot export`, whatever the volume did since; writes, trims and
# zeroes get EPERM; base:allocation tells holes from data; two connections
# and a multi-conn nbdcopy read it at once; nbdinfo --list describes it; an
# encrypted one is decrypted; one deleted while a client reads it ends that
# connection with ESHUTDOWN and leaves the list; --no-snapshot-exports turns
# them off.
source "$(dirname "$0")/lib.sh"
need nbdcopy nbdinfo

W="$PY $E2E_DIR/snapshot_workload.py"
js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
# listed NAME: export NAME is in nbdinfo --list (names only: a volume's
# meta contexts name snapshots too).
listed() {
  local names
  names=$(nbdinfo --list --json "$(uri a)" | js '"\n".join(e["export-name"] for e in d["exports"])')
  grep -qx "$1" <<<"$names"
}

ebs volume create a --size 1G >/dev/null
start_server
$W "$(uri a)" init   # 40 scattered chunks of data
S1=$(ebs snapshot create a --json | js 'd[0]["id"]')
ebs snapshot export "$S1" "$T/s1.img" >/dev/null
# The volume moves on: the export must keep showing S1.
$W "$(uri a)" mutate 7 12 >/dev/null

# --- listed, described ------------------------------------------------------
nbdinfo --list --json "$(uri a)" >"$T/list.json"
"$PY" - "$S1" "$T/list.json" <<'PYEOF' || { cat "$T/list.json"; fail "nbdinfo --list"; }
import json, sys
snap = sys.argv[1]
d = json.load(open(sys.argv[2]))
e = [x for x in d["exports"] if x["export-name"] == snap]
assert e, f"{snap} not listed"
desc = e[0].get("description", "")
assert "snapshot of volume 'a'" in desc, desc
assert e[0]["export-size"] == 1 << 30, e[0]["export-size"]
assert e[0]["is_read_only"] is True, e[0]
PYEOF
pass "nbdinfo --list shows $S1 read-only with its volume and time"

# --- content ------------------------------------------------------------------
nbdcopy "$(uri "$S1")" "$T/exported.img"
cmp "$T/s1.img" "$T/exported.img" || fail "the snapshot export differs from snapshot export's file"
nbdcopy --connections=4 "$(uri "$S1")" "$T/exported4.img"
cmp "$T/s1.img" "$T/exported4.img" || fail "a multi-conn nbdcopy of the snapshot export differs"
nbdcopy "$(tcp_uri "$S1")" "$T/exported-tcp.img"
cmp "$T/s1.img" "$T/exported-tcp.img" || fail "the snapshot export over TCP differs"
pass "content equals snapshot export's file (one connection, multi-conn, TCP), though the volume changed"

# --- read-only, holes, two readers at once ------------------------------------
"$PY" - "$(uri "$S1")" "$T/s1.img" <<'PYEOF' || fail "read-only checks"
import errno, sys, threading, nbd
uri, want_file = sys.argv[1], sys.argv[2]
CHUNK = 512 * 1024
want = open(want_file, "rb").read()

h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
assert h.is_read_only(), "NBD_FLAG_READ_ONLY not set"
assert h.can_multi_conn(), "multi-conn not offered"
h.set_strict_mode(0)  # let the requests reach the server
for what, f in [("write", lambda: h.pwrite(b"x" * 4096, 0)),
                ("trim", lambda: h.trim(4096, 0)),
                ("zero", lambda: h.zero(4096, 0))]:
    try:
        f()
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, f"{what}: errno {e.errnum}, want EPERM"
    else:
        raise SystemExit(f"a {what} on a snapshot export succeeded")
assert h.pread(4096, 0) == want[:4096], "the connection stopped working after EPERM"

# base:allocation: a chunk is data exactly when the snapshot holds non-zeros there.
data = set()
def cb(ctx, off, entries, err):
    pos = off
    for i in range(0, len(entries), 2):
        if not entries[i + 1] & nbd.STATE_HOLE:
            data.update(range(pos // CHUNK, (pos + entries[i] + CHUNK - 1) // CHUNK))
        pos += entries[i]
    reached[0] = pos
    return 0
size = h.get_size()
reached = [0]
while reached[0] < size:
    h.block_status(min(size - reached[0], 1 << 30), reached[0], cb)
nonzero = {c for c in range(size // CHUNK) if any(want[c * CHUNK:(c + 1) * CHUNK])}
assert data == nonzero, f"base:allocation data chunks {sorted(data - nonzero)} extra, {sorted(nonzero - data)} missing"

# Two connections reading different halves at once.
errors = []
def reader(start):
    g = nbd.NBD()
    g.connect_uri(uri)
    for c in range(start, size // CHUNK, 2):
        if g.pread(CHUNK, c * CHUNK) != want[c * CHUNK:(c + 1) * CHUNK]:
            errors.append(c)
    g.shutdown()
threads = [threading.Thread(target=reader, args=(i,)) for i in (0, 1)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, f"chunks {errors[:5]} differ read by two connections at once"
h.shutdown()
print(f"{len(data)} data chunks")
PYEOF
pass "writes, trims and zeroes get EPERM; base:allocation marks exactly the data chunks; two readers at once"

# --- encrypted -----------------------------------------------------------------
ebs key create k1 >/dev/null
ebs volume create enc --size 1G --key k1 >/dev/null
$W "$(uri enc)" init
SE=$(ebs snapshot create enc --json | js 'd[0]["id"]')
ebs snapshot export "$SE" "$T/se.img" >/dev/null
nbdcopy "$(uri "$SE")" "$T/se-exported.img"
cmp "$T/se.img" "$T/se-exported.img" || fail "the encrypted snapshot's export differs"
pass "an encrypted snapshot is exported decrypted with its key"

# --- deleted while a client reads it ------------------------------------------
S2=$(ebs snapshot create a --json | js 'd[0]["id"]')
"$PY" - "$(uri "$S2")" "$T/deleted" "$T/go" <<'PYEOF' &
import errno, os, sys, time, nbd
uri, marker, go = sys.argv[1:4]
h = nbd.NBD()
h.connect_uri(uri)
h.pread(4096, 0)
open(marker + ".connected", "w").close()
while not os.path.exists(go):
    time.sleep(0.05)
try:
    for i in range(200):
        h.pread(4096, (i % 64) * 524288)
        time.sleep(0.01)
except nbd.Error as e:
    with open(marker, "w") as f:
        f.write(str(e.errnum or 0))
    sys.exit(0)
with open(marker, "w") as f:
    f.write("read on")
PYEOF
holder=$!
for _ in $(seq 1 200); do [ -e "$T/deleted.connected" ] && break; sleep 0.05; done
[ -e "$T/deleted.connected" ] || fail "the reader did not connect to $S2"
ebs snapshot delete "$S2" >/dev/null
touch "$T/go"
wait "$holder" || fail "the reader of the deleted snapshot failed"
got=$(cat "$T/deleted")
# ESHUTDOWN, or the connection closed right after it (libnbd: ENOTCONN / 0).
eshutdown=$("$PY" -c 'import errno; print(errno.ESHUTDOWN)')
enotconn=$("$PY" -c 'import errno; print(errno.ENOTCONN)')
[ "$got" = "$eshutdown" ] || [ "$got" = "$enotconn" ] || [ "$got" = 0 ] \
  || fail "a read of a deleted snapshot export: '$got', want ESHUTDOWN"
listed "$S2" && fail "the deleted snapshot $S2 is still listed"
if nbdinfo "$(uri "$S2")" >/dev/null 2>&1; then fail "the deleted snapshot $S2 can still be opened"; fi
cmp <(nbdcopy "$(uri "$S1")" - ) "$T/s1.img" || fail "$S1 changed when $S2 was deleted"
pass "a snapshot deleted while exported ends its connection (errno $got) and is gone from the list"

# --- --no-snapshot-exports ------------------------------------------------------
stop_server
start_server --no-snapshot-exports
listed a || fail "--no-snapshot-exports: volume a is not listed"
listed "$S1" && fail "--no-snapshot-exports still lists $S1"
if nbdinfo "$(uri "$S1")" >/dev/null 2>&1; then fail "--no-snapshot-exports still opens $S1"; fi
nbdinfo "$(uri a)" >/dev/null || fail "--no-snapshot-exports: the volume is not served"
pass "--no-snapshot-exports: snapshots are neither listed nor opened"
