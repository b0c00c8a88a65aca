#!/usr/bin/env bash
# Power-cut suite: the whole data directory (catalog, volume files, change
# tracking, snapshot store) on powercut_fs (tests/powercut/fs_model.h), an
# in-memory FUSE file system that drops, at a simulated cut, every write not
# fsync'ed/fdatasync'ed and every create/rename/unlink whose directory was not
# fsync'ed (the LevelDB fault-injection model; kill -9 alone keeps the page
# cache, so test-crash.sh cannot see a missing sync). Each iteration, on a
# fresh mount:
#   - volumes v and w; v gets seeded content; a writer (crash_client.py)
#     writes w throughout (FUA, FLUSH, several in flight) and journals what
#     was acknowledged;
#   - a few preparing operations: bursts of writes to v (with and without
#     FLUSH/FUA; the last one never flushed), snapshots of v;
#   - the iteration's operation, its kind KINDS[seed % 10]: snapshot create,
#     snapshot delete, store gc (of garbage a killed snapshot left), eager
#     restore, lazy restore, through the server ("served-") or the CLI alone
#     ("cli-"), or "anytime": random operations, one after another;
#   - the power is cut at a random moment within the operation (or, when it
#     finished first, right after it: then it was acknowledged), every ebs
#     process is killed (-9), the file system revives in its durable state,
#     and `ebs serve` starts again. Checked:
#       every write to v and w acknowledged with FUA or before an
#       acknowledged FLUSH reads back (crash_client.py verify);
#       what was acknowledged happened: a created snapshot is completed, a
#       deleted one is gone, a restored volume exists; nothing is left
#       pending;
#       every completed snapshot of v restores to exactly v at its instant;
#       no restored volume is served with other content than its snapshot
#       (a lazily restored one after its loading completes);
#       `store check` is clean (objects only gc removes are allowed after a
#       cut inside the snapshot machinery, then gc, then clean);
#       a new snapshot of v and w restores exactly to the volumes;
#       the server stops cleanly.
# Half the seeds put the store on a second file system, cut at the same
# instant (POWERCUT_SPLIT=1 or 0 forces it either way): there a sync of the
# store's file system makes nothing of the data directory durable, as on a
# host with the store on another disk. (On one file system the store's
# syncfs hid a missing sync of the data file before a cut was forgotten, and
# a catalog directory never synced into the data directory; both were found
# this way.)
# With POWERCUT_KEEP unset, one iteration in three keeps a seeded share of
# the unsynced blocks at the cut (torn writeback); POWERCUT_KEEP=P forces P%.
#
# POWERCUT_SEED_BASE (default 2000), POWERCUT_ITERATIONS (default 5): seed
# POWERCUT_SEED_BASE+i picks the kind, the data and the cut moment (cuts are
# aimed by time, so a rerun lands close to, not exactly at, the same point).
# scripts/soak-powercut runs 100 or more. The log ends with the number of
# cuts that landed inside each operation kind.
source "$(dirname "$0")/lib.sh"
need nbdinfo
set -E
trap '[ "$BASH_SUBSHELL" != 0 ] || echo "FAIL: seed ${seed:-?}: unexpected failure at line $LINENO: $BASH_COMMAND" >&2' ERR

SEED_BASE=${POWERCUT_SEED_BASE:-2000}
ITERATIONS=${POWERCUT_ITERATIONS:-5}
SPAN=$((8 << 20))
LAZY_RATE=2   # MiB/s: ~6 MiB of v's chunks take ~3 s to load in the background
PERF=(--iops 3000 --throughput 750)
C=("$PY" "$E2E_DIR/crash_client.py")
KINDS=(served-snapshot served-delete served-gc served-restore served-lazy cli-snapshot cli-delete cli-gc cli-restore anytime)
BIN=$(cd "$(dirname "$EBS")" && pwd)
PCFS=${POWERCUT_FS:-$BIN/powercut_fs}
SHIM=${POWERCUT_SHIM:-$BIN/libpowercut_syncfs.so}

# A test that cannot run here fails under CI, and is skipped elsewhere.
cannot_run() { if [ "${CI:-}" = true ]; then fail "cannot run under CI: $*"; fi; skip "$*"; }
[ -e /dev/fuse ] || cannot_run "no /dev/fuse"
[ -x "$PCFS" ] && [ -f "$SHIM" ] || cannot_run "powercut_fs or its shim not built next to $EBS (libfuse3-dev: scripts/install-deps)"
# syncfs does not reach a FUSE server: the shim forwards it (powercut_ioctl.h).
export LD_PRELOAD=$SHIM
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"

export EBS_DATA_DIR=$T/mnt-data/data
SOCK=$EBS_DATA_DIR/nbd.sock
FS_PID=""
OP_PID=""
WRITER=""
HOLDER=""

js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
rand() { printf -v "$1" %d $(($2 + RANDOM % ($3 - $2 + 1))); }
now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }
exec {NAP_FD}<> <(:)  # a pipe nobody writes: `read -t` on it is a sleep
nap() { read -r -t "$1" -u "$NAP_FD" _ || true; }
pcctl() { "$PCFS" ctl "$CTL" "$@"; }

# The data directory's file system, and in iterations with a separate store
# (SPLIT) a second one for the snapshot store, as a host with the store on
# another disk has: then a sync of one (the store's syncfs) makes nothing on
# the other durable. A cut takes both at one instant (every ebs process is
# stopped first).
FS_NAMES=(data store)
declare -A FS_PIDS=()
mount_one() {
  local name=$1 mnt=$T/mnt-$1
  mkdir -p "$mnt"
  : >"$T/fs-$name.log"
  "$PCFS" "$mnt" --control "$T/powercut-$name.sock" --capacity-mib 6144 >>"$T/fs-$name.log" 2>&1 &
  FS_PIDS[$name]=$!
  for _ in $(seq 1 200); do
    grep -q "powercut_fs: ready" "$T/fs-$name.log" && break
    kill -0 "${FS_PIDS[$name]}" 2>/dev/null || cannot_run "powercut_fs does not mount here: $(cat "$T/fs-$name.log")"
    nap 0.025
  done
  grep -q "powercut_fs: ready" "$T/fs-$name.log" || fail "powercut_fs did not mount within 5 s"
  FS_PID=${FS_PIDS[$name]}
}
# pcctl NAME ARGS...: a command to that file system's control socket.
pcctl() { local name=$1; shift; "$PCFS" ctl "$T/powercut-$name.sock" "$@"; }
mount_fs() {
  mount_one data
  [ -z "$SPLIT" ] || mount_one store
  # A clean boot: the directories exist, durably.
  mkdir "$EBS_DATA_DIR"
  pcctl data sync >/dev/null
  if [ -n "$SPLIT" ]; then
    export EBS_STORE=$T/mnt-store/store
    mkdir "$EBS_STORE"
    pcctl store sync >/dev/null
  else
    export EBS_STORE=$EBS_DATA_DIR/store
  fi
}
unmount_fs() {
  local name
  for name in "${!FS_PIDS[@]}"; do
    umount "$T/mnt-$name" 2>/dev/null || umount -l "$T/mnt-$name" 2>/dev/null || true
    kill -TERM "${FS_PIDS[$name]}" 2>/dev/null || true
    wait "${FS_PIDS[$name]}" 2>/dev/null || true
  done
  FS_PIDS=()
  FS_PID=""
}
mounted() { local name; for name in "${!FS_PIDS[@]}"; do echo "$name"; done; }

# hold_v: a client that keeps v open and sends nothing, so that v's last
# user never closes it (which syncs its file) between the operations: what a
# burst did not flush then stays in the page cache only, and a snapshot that
# read it must make it durable before the tracker forgets its chunks.
hold_v() {
  rm -f "$T/holder.ready"
  "$PY" -c 'import nbd, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
open(sys.argv[2], "w").close()
time.sleep(3600)' "$(uri v)" "$T/holder.ready" >"$T/holder.log" 2>&1 &
  HOLDER=$!
  for _ in $(seq 1 400); do
    [ ! -e "$T/holder.ready" ] || return 0
    kill -0 "$HOLDER" 2>/dev/null || break
    nap 0.005
  done
  powercut_fail "the client holding v open did not connect: $(cat "$T/holder.log")"
}
drop_holder() {
  [ -n "$HOLDER" ] || return 0
  kill -KILL "$HOLDER" 2>/dev/null || true
  wait "$HOLDER" 2>/dev/null || true
  HOLDER=""
}

# At exit: every process on the mount first (the machine goes down), then it.
teardown() {
  local p
  drop_holder
  for p in "$OP_PID" "$SERVER_PID"; do [ -z "$p" ] || kill -KILL "$p" 2>/dev/null || true; done
  [ -z "$SERVER_PID" ] || wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  unmount_fs
}
on_exit teardown

# powercut_fail MESSAGE: keeps the evidence (journals, states, logs, the
# data directory as revived) and fails naming the seed and the rerun.
powercut_fail() {
  local keep
  keep=$(mktemp -d "/tmp/ebs-powercut-seed$seed.XXXXXX")
  cp -a "$T"/*.json "$T"/*.log "$T"/journal.* "$T"/*.out "$keep"/ 2>/dev/null || true
  if [ -n "$FS_PID" ]; then
    for name in $(mounted); do pcctl "$name" stats >"$keep/fs-$name-stats.json" 2>&1 || true; done
    cp -a --sparse=always "$EBS_DATA_DIR" "$keep/data" 2>/dev/null || true
    [ -z "$SPLIT" ] || cp -a --sparse=always "$EBS_STORE" "$keep/store" 2>/dev/null || true
  fi
  fail "seed $seed (${kname:-?}, cut ${CUT_WHERE:-not yet}${KEEP:+, keep=$KEEP%}): $*
  evidence kept in $keep
  rerun: POWERCUT_SEED_BASE=$seed POWERCUT_ITERATIONS=1 EBS=$EBS bash $E2E_DIR/test-powercut.sh"
}

# ---- operations, and the cut ---------------------------------------------

# How long each operation took when last let finish (ms); cuts are aimed
# within it, so they land at every stage.
declare -A EST=([snapshot]=120 [delete]=100 [gc]=150 [restore]=300 [lazy]=2000 [burst]=600 [verify]=300)

# do_cut WHERE: the power goes now; every ebs process dies with it.
do_cut() {
  local name
  # Every ebs process stops at once (a client is not stopped: it only sees
  # the server go).
  [ -z "$OP_PID" ] || [ -z "$OP_EBS" ] || kill -STOP "$OP_PID" 2>/dev/null || true
  [ -z "$SERVER_PID" ] || kill -STOP "$SERVER_PID" 2>/dev/null || true
  for name in $(mounted); do
    pcctl "$name" cut "keep=$KEEP" "seed=$seed" >"$T/cut-$name.json" || powercut_fail "the cut of the $name file system failed"
  done
  CUT_DONE=1
  CUT_WHERE=$1
  [ -z "$OP_PID" ] || [ -z "$OP_EBS" ] || kill -KILL "$OP_PID" 2>/dev/null || true
  [ -z "$SERVER_PID" ] || kill -KILL "$SERVER_PID" 2>/dev/null || true
  drop_holder
}

# run_op KIND CMD...: runs CMD in the background; the power is cut when
# CUT_AT (ms) comes while it runs (CUT_WHERE "inside KIND"), or right after
# it when that moment had passed ("after KIND"). Sets OP_RC (its status,
# meaningful when it finished before the cut) and OP_MS. Returns 1 when the
# power had gone before CMD finished.
run_op() {
  local kind=$1 t0 st
  shift
  [ -z "$CUT_DONE" ] || return 1
  t0=$(now_ms)
  OP_EBS=""
  [ "$1" != "$EBS" ] || OP_EBS=1
  "$@" >"$T/op.out" 2>&1 &
  OP_PID=$!
  while :; do
    st=Z
    read -r _ _ st _ 2>/dev/null <"/proc/$OP_PID/stat" || true
    [ "$st" != Z ] || break
    if [ -n "$CUT_AT" ] && [ "$(now_ms)" -ge "$CUT_AT" ]; then
      do_cut "inside $kind ($(($(now_ms) - t0)) ms in, takes ~${EST[$kind]} ms)"
      INSIDE[$kind]=$((${INSIDE[$kind]:-0} + 1))
      break
    fi
    nap 0.002
  done
  OP_RC=0
  wait "$OP_PID" 2>/dev/null || OP_RC=$?
  OP_PID=""
  [ -z "$CUT_DONE" ] || return 1
  OP_MS=$(($(now_ms) - t0))
  [ "$OP_RC" != 0 ] || EST[$kind]=$OP_MS
  OPS_DONE="$OPS_DONE $kind"
  if [ -n "$CUT_AT" ] && [ "$(now_ms)" -ge "$CUT_AT" ]; then
    do_cut "after $kind (finished in $OP_MS ms)"
    AFTER[$kind]=$((${AFTER[$kind]:-0} + 1))
  fi
  return 0
}
# op_ok WHAT: the operation run_op just finished succeeded.
op_ok() { [ "$OP_RC" = 0 ] || powercut_fail "$1 failed (status $OP_RC) before any cut: $(tail -c 2000 "$T/op.out")"; }

# burst [noflush]: a short seeded writer on v (FLUSH every few writes and
# some FUA, or neither), then v as it is now becomes STATE.
burst() {
  local flush fua j
  NBURST=$((NBURST + 1))
  j=$T/journal.v.$NBURST
  if [ "${1:-}" = noflush ]; then flush=1000000 fua=0; else rand flush 2 40; rand fua 0 30; fi
  JOURNALS_V+=("$j")
  run_op burst "${C[@]}" write "$(uri v)" "$j" --seed $((seed * 100 + NBURST)) --span "$SPAN" \
    --flush-every "$flush" --fua-percent "$fua" --max-seconds 0.$((RANDOM % 6 + 2)) || return 1
  [ "$OP_RC" = 3 ] || powercut_fail "burst writer on v exited $OP_RC: $(cat "$T/op.out")"
  run_op verify "${C[@]}" verify "$(uri v)" --journal "$j" --base "$STATE" --state-out "$STATE.new" --span "$SPAN" || return 1
  op_ok "reading v back after a burst"
  mv "$STATE.new" "$STATE"
}

# snapshot [w]: snapshot create v (with w: one instant of both).
snapshot() {
  local vols=(v) id
  [ -z "${1:-}" ] || vols+=(w)
  NSNAP=$((NSNAP + 1))
  cp "$STATE" "$T/state.snap$NSNAP.json"
  PENDING_STATE=$T/state.snap$NSNAP.json  # what a snapshot of v completed by this op must hold
  run_op snapshot "$EBS" snapshot create "${vols[@]}" --json || return 1
  op_ok "snapshot create ${vols[*]}"
  for id in $("$PY" -c 'import json,sys; print(" ".join(s["id"] for s in json.load(open(sys.argv[1])) if s["volume"] == "v"))' "$T/op.out"); do
    SNAPSTATE[$id]=$PENDING_STATE
    ACKED_SNAPS="$ACKED_SNAPS $id"
  done
  PENDING_STATE=""
}

# v_snaps: completed snapshots of v known to the test, oldest first.
v_snaps() { local id; for id in $ACKED_SNAPS; do [ -n "${SNAPSTATE[$id]:-}" ] && echo "$id"; done; }

delete_snapshot() {
  local ids id
  ids=()
  for id in $(v_snaps); do
    case " $LAZY_SOURCES " in *" $id "*) ;; *) ids+=("$id") ;; esac  # refused while a volume loads from it
  done
  [ ${#ids[@]} -gt 0 ] || return 0
  id=${ids[$((RANDOM % ${#ids[@]}))]}
  DELETING=$id
  run_op delete "$EBS" snapshot delete "$id" --json || return 1
  op_ok "snapshot delete $id"
  unset "SNAPSTATE[$id]"
  ACKED_DELETES="$ACKED_DELETES $id"
  DELETING=""
}

store_gc() {
  run_op gc "$EBS" store gc --json || return 1
  op_ok "store gc"
}

# restore eager|lazy: of a random completed snapshot of v.
restore() {
  local ids id name args=()
  ids=($(v_snaps))
  [ ${#ids[@]} -gt 0 ] || return 0
  id=${ids[$((RANDOM % ${#ids[@]}))]}
  NREST=$((NREST + 1))
  name=r$NREST
  [ "$1" = eager ] || { name=l$NREST; args=(--lazy --initialization-rate "$LAZY_RATE"); LAZY_SOURCES="$LAZY_SOURCES $id"; }
  RESTORE_SRC[$name]=$id
  RESTORE_STATE[$name]=${SNAPSTATE[$id]}
  run_op "$([ "$1" = eager ] && echo restore || echo lazy)" \
    "$EBS" snapshot restore "$id" --volume "$name" "${args[@]}" "${PERF[@]}" --json || return 1
  op_ok "snapshot restore $id --volume $name ${args[*]}"
  ACKED_RESTORES="$ACKED_RESTORES $name"
}

# garbage: a snapshot of a volume of its own, its server killed (-9, not a
# cut: the page cache, here the file system, keeps everything) as it stores
# its first object: objects nothing references, for gc to collect.
garbage() {
  local n0 n
  "$EBS" volume create g --size 1G "${PERF[@]}" >/dev/null
  "${C[@]}" fill "$(uri g)" --seed $((seed + 7)) --span $((4 * SPAN)) --state-out "$T/g.json" >/dev/null
  n0=$(find "$EBS_STORE/chunks" -type f ! -name '.*' 2>/dev/null | wc -l)
  "$EBS" snapshot create g --json >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 1 2000); do
    n=$(find "$EBS_STORE/chunks" -type f ! -name '.*' 2>/dev/null | wc -l)
    [ "$n" -le "$n0" ] || break
    kill -0 "$pid" 2>/dev/null || break
    nap 0.001
  done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  SERVER_PID=""
  drop_holder
  start_server
  hold_v
}

# The next operation of "anytime": any of them, at random.
any_op() {
  case $((RANDOM % 8)) in
    0 | 1) burst $([ $((RANDOM % 2)) = 0 ] && echo noflush) ;;
    2) snapshot $([ $((RANDOM % 3)) = 0 ] && echo w) ;;
    3) delete_snapshot ;;
    4) store_gc ;;
    5) restore eager ;;
    6) restore lazy ;;
    7) snapshot ;;
  esac
}

# ---- checks after the revive ---------------------------------------------

# init_of VOLUME: "STATE LOADED TOTAL" of its lazy loading.
init_of() {
  "$EBS" volume describe "$1" --json \
    | js '(d.get("initialization") or {}).get("state", "none"), (d.get("initialization") or {}).get("loaded_chunks", -1), (d.get("initialization") or {}).get("total_chunks", -1)' \
    | tr -d "(),'"
}
wait_loaded() {
  local st _n _t
  for _ in $(seq 1 600); do
    read -r st _n _t < <(init_of "$1") || powercut_fail "volume describe $1 failed"
    case $st in completed | none) return 0 ;; loading) ;; *) powercut_fail "loading of $1 is '$st'" ;; esac
    nap 0.05
  done
  powercut_fail "loading of $1 did not complete within 30 s"
}

# verify_as VOLUME STATE WHAT: the volume holds exactly STATE.
verify_as() {
  local out
  out=$("${C[@]}" verify "$(uri "$1")" --base "$2" --span "$SPAN" --check-rest) || powercut_fail "$3:
$out"
}

# check_snapshots: what was acknowledged happened; nothing is pending; every
# completed snapshot of v restores to v at its instant; the others verify.
check_snapshots() {
  local id vol st list
  list=$("$EBS" snapshot list --json | "$PY" -c '
import json, sys
for s in sorted(json.load(sys.stdin), key=lambda s: s["sequence"]):
    print(s["id"], s["volume"], s["state"])') || powercut_fail "snapshot list failed after the cut"
  declare -A SEEN=()
  while read -r id vol st; do
    [ -n "$id" ] || continue
    SEEN[$id]=$st
    case $st in
      completed) ;;
      error) case " $ACKED_SNAPS " in *" $id "*) powercut_fail "snapshot $id was acknowledged created, is 'error' after the cut" ;; esac ;;
      *) powercut_fail "snapshot $id is '$st' after the cut and a restart (pending must become error or completed)" ;;
    esac
    case " $ACKED_DELETES " in *" $id "*) powercut_fail "snapshot $id was acknowledged deleted, is '$st' after the cut" ;; esac
    [ "$st" = completed ] || continue
    if [ "$vol" = v ]; then
      if [ -z "${SNAPSTATE[$id]:-}" ]; then
        # Completed by the snapshot create the cut interrupted (v did not
        # change while it ran): v as it was then.
        [ -n "$PENDING_STATE" ] || powercut_fail "snapshot $id of v is completed, but no snapshot of v was acknowledged or interrupted"
        SNAPSTATE[$id]=$PENDING_STATE
        PENDING_STATE=""
      fi
      "$EBS" snapshot restore "$id" --volume chk "${PERF[@]}" >/dev/null || powercut_fail "restore of completed snapshot $id failed"
      verify_as chk "${SNAPSTATE[$id]}" "completed snapshot $id does not restore to v as it was when taken"
      "$EBS" volume delete chk >/dev/null
      NCHECKED=$((NCHECKED + 1))
    else
      out=$("$EBS" snapshot verify "$id" 2>&1) || powercut_fail "snapshot verify $id ($vol): $out"
    fi
  done <<<"$list"
  for id in $ACKED_SNAPS; do
    [ -n "${SEEN[$id]:-}" ] || case " $ACKED_DELETES $DELETING " in *" $id "*) ;; *) powercut_fail "snapshot $id was acknowledged created, is gone after the cut" ;; esac
  done
  # A delete the cut interrupted: the snapshot is gone, or whole (completed).
  if [ -n "$DELETING" ] && [ -n "${SEEN[$DELETING]:-}" ]; then
    [ "${SEEN[$DELETING]}" = completed ] || powercut_fail "snapshot $DELETING, cut while deleted, is '${SEEN[$DELETING]}'"
  fi
  if [ -n "$DELETING" ] && [ -z "${SEEN[$DELETING]:-}" ]; then unset "SNAPSTATE[$DELETING]"; fi
}

# delete_after_cut NAME STATE: the volume deletes. The checks' clients have
# disconnected, but the server may not have seen each connection end yet
# (VolumeInUse for a moment, on a loaded machine): that alone is waited out.
delete_after_cut() {
  local out i
  for i in $(seq 1 50); do
    out=$("$EBS" volume delete "$1" 2>&1) && return 0
    case $out in *VolumeInUse*) sleep 0.1 ;; *) break ;; esac
  done
  powercut_fail "volume delete $1 ($2) failed after the cut: $out"
}

# check_restored: no restored volume is served with other content than its
# snapshot's; an acknowledged restore exists.
check_restored() {
  local name st served
  for name in $ACKED_RESTORES; do
    "$EBS" volume describe "$name" >/dev/null 2>&1 || powercut_fail "volume $name was acknowledged restored, is gone after the cut"
  done
  while read -r name st; do
    case $name in v | w | g | "") continue ;; esac
    [ -n "${RESTORE_SRC[$name]:-}" ] || powercut_fail "volume $name ($st) exists after the cut, but nothing created it"
    served=""
    nbdinfo --size "$(uri "$name")" >/dev/null 2>&1 && served=1
    case " $ACKED_RESTORES " in *" $name "*) [ -n "$served" ] || powercut_fail "volume $name was acknowledged restored, is '$st' and not served after the cut" ;; esac
    if [ -n "$served" ]; then
      [ "$name" = "${name#l}" ] || wait_loaded "$name"
      verify_as "$name" "${RESTORE_STATE[$name]}" \
        "volume $name ('$st'), restored from ${RESTORE_SRC[$name]}$(case " $ACKED_RESTORES " in *" $name "*) echo ", acknowledged" ;; *) echo ", the cut came during the restore" ;; esac), is served with other content than its snapshot"
      RESTORED_NOTE="$RESTORED_NOTE $name:$st,served-equal"
    else
      [ "$st" != available ] || powercut_fail "volume $name is 'available' but not served after the cut"
      RESTORED_NOTE="$RESTORED_NOTE $name:$st,not-served"
    fi
    delete_after_cut "$name" "$st"
  done < <("$EBS" volume list --json | js '"\n".join(x["name"] + " " + x["state"] for x in d)')
}

# check_store: clean; after a cut in the snapshot machinery objects only gc
# removes are allowed, and gc leaves it clean.
check_store() {
  local out problems rc=0
  out=$("$EBS" store check --json 2>&1) || rc=$?
  problems=$(echo "$out" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
for p in d["problems"]:
    print(("garbage " if "not referenced" in p["error"] else "") + p["object"] + ": " + p["error"])
print("ok" if d["ok"] else "not-ok")') || powercut_fail "store check printed no JSON: $out"
  if echo "$problems" | grep -v '^garbage \|^ok$\|^not-ok$' | grep -q .; then
    powercut_fail "store check after the cut: $(echo "$problems" | grep -v '^garbage ' | tr '\n' ';')"
  fi
  if [ "$rc" = 0 ] && ! echo "$problems" | grep -qx ok; then powercut_fail "store check exited 0 but says not ok: $out"; fi
  if [ "$rc" != 0 ] && echo "$problems" | grep -qx ok; then powercut_fail "store check exited $rc but says ok: $out"; fi
  STORE_NOTE="store check clean"
  if [ "$rc" != 0 ]; then
    "$EBS" store gc >/dev/null || powercut_fail "store gc failed after the cut"
    out=$("$EBS" store check --json 2>&1) || powercut_fail "store check not clean after gc: $out"
    echo "$out" | js 'd["ok"]' | grep -qx True || powercut_fail "store check after gc: $out"
    STORE_NOTE="$(echo "$problems" | grep -c '^garbage ') unreferenced objects, removed by gc, then clean"
  fi
}

# check_next_snapshot: a new snapshot of v and w (one instant) restores to
# exactly the volumes (a change the tracker forgot would be missing).
check_next_snapshot() {
  local out id vol
  out=$("$EBS" snapshot create v w --json) || powercut_fail "snapshot create v w after the cut failed: $out"
  while read -r id vol; do
    "$EBS" snapshot restore "$id" --volume "next-$vol" "${PERF[@]}" >/dev/null || powercut_fail "restore of the new snapshot $id failed"
    out=$("${C[@]}" compare "$(uri "$vol")" "$(uri "next-$vol")") \
      || powercut_fail "the first snapshot after the cut, $id, does not restore to volume $vol: $out"
    "$EBS" volume delete "next-$vol" >/dev/null
  done < <(echo "$out" | js '"\n".join(s["id"] + " " + s["volume"] for s in d)')
}

# ---- the loop --------------------------------------------------------------

declare -A KIND_RUNS INSIDE AFTER
TOTAL_DROPPED=0 TOTAL_FSYNCS=0 TOTAL_ACKED=0 LOADING_CUTS=0
START=$SECONDS
for ((i = 0; i < ITERATIONS; i++)); do
  seed=$((SEED_BASE + i))
  kname=${KINDS[$((seed % ${#KINDS[@]}))]}
  RANDOM=$seed
  t_iter=$SECONDS
  if [ -n "${POWERCUT_KEEP:-}" ]; then KEEP=$POWERCUT_KEEP; elif [ $((seed % 3)) = 2 ]; then rand KEEP 10 90; else KEEP=0; fi
  # Half the seeds (odd ones in even tens, even ones in odd tens: every
  # kind gets both): the store on a file system of its own.
  SPLIT=""
  case ${POWERCUT_SPLIT:-} in 1) SPLIT=1 ;; 0) ;; *) [ $(((seed + seed / 10) % 2)) = 0 ] || SPLIT=1 ;; esac
  declare -A SNAPSTATE=() RESTORE_SRC=() RESTORE_STATE=()
  CUT_AT="" CUT_DONE="" CUT_WHERE="" OPS_DONE="" PENDING_STATE="" DELETING=""
  ACKED_SNAPS="" ACKED_DELETES="" ACKED_RESTORES="" RESTORED_NOTE="" NCHECKED=0 LAZY_SOURCES=""
  NBURST=0 NSNAP=0 NREST=0 JOURNALS_V=()
  STATE=$T/state.v.json
  rm -f "$T"/journal.* "$T"/state.*

  mount_fs
  "$EBS" volume create v --size 1G "${PERF[@]}" >/dev/null
  "$EBS" volume create w --size 1G "${PERF[@]}" >/dev/null
  start_server
  "${C[@]}" fill "$(uri v)" --seed "$seed" --span "$SPAN" --state-out "$T/fill.json" >/dev/null
  cp "$T/fill.json" "$STATE"
  hold_v
  "${C[@]}" write "$(uri w)" "$T/journal.w" --seed $((seed * 100)) --span "$SPAN" --depth 8 --flush-every 16 \
    --fua-percent 10 --max-seconds 120 >"$T/writer.out" 2>&1 &
  WRITER=$!

  # Preparing: bursts and snapshots of v (at least one), the last burst
  # never flushed (the data a snapshot reads then is in no durable place).
  snapshot
  rand nprep 1 3
  for ((k = 0; k < nprep; k++)); do
    if [ $((RANDOM % 2)) = 0 ]; then burst; else snapshot; fi
  done
  burst noflush
  case $kname in
    *-gc) garbage ;;
    *-delete) snapshot ;;  # two at least: often a delete in the middle of a chain
  esac
  if [ "${kname#cli-}" != "$kname" ]; then
    # The CLI alone owns the data directory: the writer and the server stop.
    kill -TERM "$WRITER" 2>/dev/null || true
    wait "$WRITER" 2>/dev/null || true
    WRITER=""
    drop_holder
    stop_server
  fi

  # The operation, and the cut within it.
  op=${kname#*-}
  if [ "$kname" = anytime ]; then
    rand delay 0 6000
    CUT_AT=$(($(now_ms) + delay))
    for ((k = 0; k < 30 && !CUT_DONE; k++)); do any_op || break; done
  else
    est=${EST[$op]}
    # A lazy restore answers at once: the cut lands while it loads.
    [ "$op" != lazy ] || est=2000
    rand delay 0 $((est + est / 4))
    CUT_AT=$(($(now_ms) + delay))
    case $op in
      snapshot) snapshot "$([ $((RANDOM % 2)) = 0 ] && echo w)" || true ;;
      delete) delete_snapshot || true ;;
      gc) store_gc || true ;;
      restore) restore eager || true ;;
      lazy) restore lazy || true ;;
    esac
  fi
  if [ -z "$CUT_DONE" ]; then
    while [ "$(now_ms)" -lt "$CUT_AT" ]; do nap 0.005; done
    do_cut "after ${OPS_DONE##* } (idle)"
    AFTER[${OPS_DONE##* }]=$((${AFTER[${OPS_DONE##* }]:-0} + 1))
  fi
  [ -z "$SERVER_PID" ] || wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  if [ -n "$WRITER" ]; then
    rc=0; wait "$WRITER" || rc=$?
    [ $rc = 0 ] || powercut_fail "writer on w exited $rc: $(cat "$T/writer.out")"
  fi
  dropped=0 files=0 dirs=0 kept=0
  for name in $(mounted); do
    read -r a b c d < <(js 'd["cut_dropped_bytes"], d["cut_dropped_files"], d["cut_dropped_dirs"], d["cut_kept_blocks"]' <"$T/cut-$name.json" | tr -d '(),')
    dropped=$((dropped + a)) files=$((files + b)) dirs=$((dirs + c)) kept=$((kept + d))
    TOTAL_FSYNCS=$((TOTAL_FSYNCS + $(js 'd["fsyncs"] + d["fdatasyncs"] + d["fsyncdirs"] + d["syncfs"]' <"$T/cut-$name.json")))
  done
  TOTAL_DROPPED=$((TOTAL_DROPPED + dropped))

  # Revive; the catalog opens without a server (the first open after the
  # cut), then the server starts.
  for name in $(mounted); do pcctl "$name" revive >/dev/null || powercut_fail "revive of the $name file system failed"; done
  "$EBS" volume list >/dev/null 2>"$T/list.err" || powercut_fail "the catalog does not open after the cut: $(cat "$T/list.err")"
  for vol in v w; do
    "$EBS" volume describe "$vol" >/dev/null 2>&1 || powercut_fail "volume $vol (created before the operations) is gone after the cut"
  done
  for vol in "${!RESTORE_SRC[@]}"; do
    [ "${vol#l}" != "$vol" ] || continue
    read -r st _ _ < <(init_of "$vol" 2>/dev/null) || continue
    [ "$st" != loading ] || { LOADING_CUTS=$((LOADING_CUTS + 1)); CUT_WHERE="$CUT_WHERE, $vol still loading"; }
  done
  start_server

  # Acknowledged writes are there.
  jargs=()
  for j in "${JOURNALS_V[@]}"; do [ ! -f "$j" ] || jargs+=(--journal "$j"); done  # a writer cut as it started wrote none
  out=$("${C[@]}" verify "$(uri v)" "${jargs[@]}" --base "$T/fill.json" --span "$SPAN" --check-rest) \
    || powercut_fail "v lost acknowledged data:
$out"
  out_w=$("${C[@]}" verify "$(uri w)" --journal "$T/journal.w" --span "$SPAN" --check-rest) \
    || powercut_fail "w lost acknowledged data:
$out_w
  writer: $(cat "$T/writer.out")"
  acked=$(echo "$out_w" | sed -n 's/.* \([0-9]*\) acknowledged,.*/\1/p')
  TOTAL_ACKED=$((TOTAL_ACKED + ${acked:-0}))
  check_restored
  check_snapshots
  check_store
  check_next_snapshot
  stop_server
  unmount_fs

  KIND_RUNS[$kname]=$((${KIND_RUNS[$kname]:-0} + 1))
  pass "seed $seed ($kname$([ -z "$SPLIT" ] || echo ", store on its own file system"), $((SECONDS - t_iter)) s): cut ${CUT_WHERE}, keep=$KEEP%: dropped $dropped unsynced bytes in $files files, entries of $dirs directories$([ "$KEEP" = 0 ] || echo ", kept $kept blocks"); ops:$OPS_DONE; w ${out_w#verify: }; $NCHECKED snapshots of v restore as taken; restored:${RESTORED_NOTE:- none}; $STORE_NOTE; the next snapshot restores equal"
done
pass "$ITERATIONS power cuts (seeds $SEED_BASE..$((SEED_BASE + ITERATIONS - 1))) in $((SECONDS - START)) s: $TOTAL_DROPPED unsynced bytes dropped, $TOTAL_FSYNCS syncs seen, $TOTAL_ACKED acknowledged writes to w checked"
per_kind=""
for k in "${KINDS[@]}"; do per_kind="$per_kind${per_kind:+, }$k ${KIND_RUNS[$k]:-0}"; done
echo "iterations per kind: $per_kind"
per_op=""
for k in snapshot delete gc restore lazy burst verify; do per_op="$per_op${per_op:+, }$k ${INSIDE[$k]:-0} inside/${AFTER[$k]:-0} after"; done
echo "cuts per operation kind (inside it / right after it): $per_op; cuts while a lazy restore loaded: $LOADING_CUTS"
