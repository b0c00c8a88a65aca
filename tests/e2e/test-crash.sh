#!/usr/bin/env bash
# kill -9 crash suite, in the spirit of LevelDB's fault_injection_test: a
# seeded NBD client writes (some FUA, a FLUSH every few writes, several
# requests in flight) and journals what the server acknowledged; the server
# is killed with SIGKILL at a random moment, restarted, and every block must
# hold what the journal says survived (crash_client.py states the rule).
# What an iteration does besides is its kind, KINDS[(seed + 5) % 7]: any 7
# consecutive seeds run every kind (the test command's 10 do), a seed run
# again does the same, and the first three (the sanitizer build's run) are
# cli-delete, cli-gc and lazy-restore:
#   plain             only that;
#   modify            `volume modify` (grow or throughput) runs as the server dies;
#   served-snapshot   then the server is killed during a `snapshot create`;
#   cli-snapshot      then, server stopped, the CLI (which then owns the data
#                     directory) is killed during `snapshot create`;
#   cli-delete        the same during `snapshot delete` (of a chain of three);
#   cli-gc            the same during `store gc`, after a `snapshot create`
#                     (of a volume of its own, 4 x SPAN of seeded data)
#                     killed part way left objects for it to collect;
#   lazy-restore      the writer writes to a volume lazily restored from a
#                     snapshot of seeded content, while it still loads (on
#                     demand where the writer goes, in the background at
#                     LAZY_RATE elsewhere); after the restart loading must
#                     complete, and every block the writer left alone must
#                     hold the snapshot's content.
# After every iteration the store must check clean and every completed
# snapshot verify, and no snapshot may be left `pending` (the next open marks
# one the kill interrupted `error`; or it had completed). After a
# snapshot-machinery crash a crash may only leave unreferenced objects (which
# gc removes); completed snapshots must restore to exactly the volume as it
# was when taken, and a new snapshot must restore to exactly the volume.
#
# CRASH_SEED_BASE (default 1000), CRASH_ITERATIONS (default 10): iteration i
# uses seed CRASH_SEED_BASE+i, which picks the kind, the data and the kill
# moments. CRASH_SPAN_MIB (default 16): how much of the volume is written.
# A kill of a snapshot create, delete or gc that comes after the command has
# answered checks the answer (the snapshot is completed, the deleted one gone,
# the store clean after gc) and is tried again, aimed within the time the
# command took, up to CRASH_KILL_ATTEMPTS times (default 4); the iteration
# fails if none lands inside. scripts/soak-crash runs many more. The log ends
# with how many iterations of each kind ran, how many of their kills landed
# inside the operation and how many were retried; the test fails unless every
# kind's kills (modify's excepted: it often answers first) landed inside.
source "$(dirname "$0")/lib.sh"
need nbdinfo

# A command failing where the test does not expect it (set -e) still names
# the seed; -E: in functions too.
set -E
trap '[ "$BASH_SUBSHELL" != 0 ] || echo "FAIL: seed ${seed:-?}: unexpected failure at line $LINENO: $BASH_COMMAND" >&2' ERR

SEED_BASE=${CRASH_SEED_BASE:-1000}
ITERATIONS=${CRASH_ITERATIONS:-10}
SPAN=$((${CRASH_SPAN_MIB:-16} << 20))
VOL=crash
PERF=(--iops 3000 --throughput 750)  # fast enough that reading back is not throttled much
C=("$PY" "$E2E_DIR/crash_client.py")
KINDS=(plain modify served-snapshot cli-snapshot cli-delete cli-gc lazy-restore)
# kind name -> iterations run, kills inside the operation, kills retried
# (they came after the command had answered)
declare -A KIND_RUNS KIND_KILLS KIND_RETRIES KIND_OUTSIDE
# Kills of a snapshot create, delete or gc tried per iteration until one
# lands inside the command (before it answers).
KILL_ATTEMPTS=${CRASH_KILL_ATTEMPTS:-4}
# A writer killed 100 ms or more into its writes has had far more answered
# (hundreds, also under the sanitizers); fewer means it was not writing.
MIN_ACKED=10
# MiB/s of background loading: the writer stays in the first quarter of
# SPAN; three quarters of the other chunks hold data (~9 MiB with the default
# SPAN), which take over 2 s to load, longer than the 0-1.5 s after which the
# server is killed.
LAZY_RATE=4
STATE="$T/state.json"  # what the volume's first SPAN bytes hold now (written by verify)
declare -A SNAPSTATE   # completed snapshot id -> copy of STATE when it was taken

js() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
ms_sleep() { sleep "$(($1 / 1000)).$(printf %03d $(($1 % 1000)))"; }
# rand VAR LO HI: VAR = a random integer in [LO, HI], from the seeded RANDOM
# (not in a subshell: those reseed it).
rand() { printf -v "$1" %d $(($2 + RANDOM % ($3 - $2 + 1))); }
now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

# crash_fail MESSAGE: keeps the evidence (journals, states, logs, data
# directory) and fails naming the seed and how to run it again.
crash_fail() {
  local keep
  keep=$(mktemp -d "/tmp/ebs-crash-seed$seed.XXXXXX")
  cp -a --sparse=always "$T"/. "$keep"/ 2>/dev/null || true
  fail "seed $seed (${KINDS[$kind]}): $*
  evidence kept in $keep
  rerun: CRASH_SEED_BASE=$seed CRASH_ITERATIONS=1 EBS=$EBS bash $E2E_DIR/test-crash.sh"
}

# crash_server: SIGKILL (no chance to sync or close anything), reap it.
crash_server() {
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
restart_server() {
  [ ! -f "$T/server.log" ] || cat "$T/server.log" >>"$T/server-earlier.log"
  start_server
}

# load_snaps: reads `snapshot list --json` into SNAP_STATE[id], SNAP_SEQ[id],
# SNAP_ERR[id] (its error message), COMPLETED (completed ids, oldest first)
# and ALL_IDS (every id).
declare -A SNAP_STATE SNAP_SEQ SNAP_ERR
load_snaps() {
  local seq id st err
  SNAP_STATE=() SNAP_SEQ=() SNAP_ERR=() COMPLETED="" ALL_IDS=""
  while read -r seq id st err; do
    [ -n "$id" ] || continue
    SNAP_STATE[$id]=$st SNAP_SEQ[$id]=$seq SNAP_ERR[$id]=$err
    ALL_IDS="$ALL_IDS$id "
    [ "$st" != completed ] || COMPLETED="$COMPLETED$id "
  done < <("$EBS" snapshot list --json | "$PY" -c '
import json, sys
for s in sorted(json.load(sys.stdin), key=lambda s: s["sequence"]):
    print(s["sequence"], s["id"], s["state"], " ".join((s.get("error") or "").split()))' || echo "0 - list-failed")
  [ -z "${SNAP_STATE[-]:-}" ] || crash_fail "snapshot list failed"
}

# check_interrupted BEFORE: after a restart (snapshots as last loaded), no
# snapshot is pending: one taken when the kill came (not in BEFORE, every id
# listed before the operation) is completed, or `error` with a message (the
# next open marks it so). Sets INTERRUPTED_NOTE.
check_interrupted() {
  local id new=""
  for id in "${!SNAP_STATE[@]}"; do
    case ${SNAP_STATE[$id]} in
      completed) ;;
      error) [ -n "${SNAP_ERR[$id]}" ] || crash_fail "snapshot $id is 'error' after the restart, with no error message" ;;
      *) crash_fail "snapshot $id is '${SNAP_STATE[$id]}' after the restart (the next open must mark an interrupted snapshot 'error'): $("$EBS" snapshot describe "$id" 2>&1 | tr '\n' ' ')" ;;
    esac
    case " $1 " in *" $id "*) continue ;; esac
    new="$new${new:+, }$id ${SNAP_STATE[$id]}"
    [ "${SNAP_STATE[$id]}" != error ] || new="$new (${SNAP_ERR[$id]})"
  done
  INTERRUPTED_NOTE="snapshots taken as the kill came: ${new:-none}"
}

# record_new_snapshots BEFORE: completed snapshots (as last loaded) not in
# BEFORE were taken of the volume as it is now (nothing writes to it while
# snapshots run).
record_new_snapshots() {
  local id
  for id in $COMPLETED; do
    case " $1 " in *" $id "*) continue ;; esac
    cp "$STATE" "$T/state.$id.json"
    SNAPSTATE[$id]="$T/state.$id.json"
  done
}

exec {NAP_FD}<> <(:)  # a pipe nobody writes: `read -t` on it is a sleep

# How long each operation took when last let finish (ms): kills are aimed
# within that, so they land at every stage of it (process start, opening
# the catalog and store, the work, the commit). For the served create, from
# the CLI's connection to the answer.
declare -A EST=([served-create]=60 [create]=250 [delete]=150 [gc]=150)

# timed KEY CMD...: runs CMD, records its duration as KEY's estimate;
# returns CMD's status.
timed() {
  local key=$1 t0 rc=0
  shift
  t0=$(now_ms)
  "$@" || rc=$?
  EST[$key]=$(($(now_ms) - t0))
  return $rc
}

# control_connected: true once a client is connected to the server's
# control socket (/proc/net/unix lists it, state 03, with the socket's path,
# from the moment the client's connect returns). No subprocess.
control_connected() {
  local _a _b _c _d _e st _f path
  while read -r _a _b _c _d _e st _f path; do
    [ "$st" != 03 ] || [ "$path" != "$EBS_DATA_DIR/control.sock" ] || return 0
  done </proc/net/unix
  return 1
}

# kill_within KEY PID [VICTIM [connected]]: SIGKILL VICTIM (default PID) at a
# random moment within KEY's expected duration, unless PID has finished by
# then. With "connected" the duration counts from when PID (a CLI command)
# has connected to the server's control socket: a server killed before that
# never had the request, and the CLI, finding no server, does the work
# itself. Reaps PID; sets OP_RC (its status), OP_WHEN (what happened),
# OP_TOOK (ms until it finished or was killed) and EST_KEY (KEY).
kill_within() {
  local key=$1 pid=$2 victim=${3:-$2} gate=${4:-} at start elapsed st
  EST_KEY=$key
  rand at 0 "${EST[$key]}"
  start=$(now_ms)
  if [ "$gate" = connected ]; then
    while ! control_connected; do
      st=Z
      read -r _ _ st _ 2>/dev/null <"/proc/$pid/stat" || true
      [ "$st" != Z ] || break
      [ $(($(now_ms) - start)) -lt 10000 ] || crash_fail "the CLI did not connect to the control socket in 10 s"
      read -r -t 0.0005 -u "$NAP_FD" _ || true
    done
    start=$(now_ms)
  fi
  while :; do
    elapsed=$(($(now_ms) - start))
    st=Z
    read -r _ _ st _ 2>/dev/null <"/proc/$pid/stat" || true  # gone: reaped by bash already
    if [ "$st" = Z ]; then
      OP_WHEN="finished in ~${elapsed} ms, before the kill planned at ${at} ms"
      EST[$key]=$((elapsed + elapsed / 5 + 10))
      break
    fi
    if [ "$elapsed" -ge "$at" ]; then
      kill -KILL "$victim" 2>/dev/null || true
      OP_WHEN="killed at ${elapsed} ms (takes ~${EST[$key]} ms)"
      break
    fi
    # A nap without a process: a `sleep` costs a fork and exec, tens of
    # milliseconds on a loaded machine, and the command could finish unseen
    # past the kill moment.
    read -r -t 0.001 -u "$NAP_FD" _ || true
  done
  OP_TOOK=$elapsed
  OP_RC=0
  wait "$pid" 2>/dev/null || OP_RC=$?
  if [ "$OP_RC" = 0 ] && [ "$st" != Z ]; then OP_WHEN="$OP_WHEN, and the command still succeeded"; fi
}

# chunk_objects: NOBJ = how many chunk objects the store holds now (not
# counting temporary files; no subprocess, so it can be polled).
chunk_objects() {
  local f
  shopt -s nullglob
  f=("$EBS_DATA_DIR"/store/chunks/*/*/*)
  shopt -u nullglob
  NOBJ=${#f[@]}
}

# kill_on PID up|down N0: SIGKILL PID as soon as the store holds more (up)
# or fewer (down) chunk objects than N0 (counted before PID started): a
# snapshot being taken has stored its first object (its pending record is
# written before), or gc has deleted its first one. Unless PID finishes
# first. Reaps PID; sets OP_RC and OP_WHEN like kill_within. Polls every
# 0.5 ms without starting a process (uploading 100 chunks of the writer's
# compressible blocks takes only tens of milliseconds).
kill_on() {
  local pid=$1 dir=$2 n0=$3 t0=${EPOCHREALTIME/./} st
  while :; do
    st=Z
    read -r _ _ st _ 2>/dev/null <"/proc/$pid/stat" || true
    if [ "$st" = Z ]; then
      OP_TOOK=$(((${EPOCHREALTIME/./} - t0) / 1000))
      OP_WHEN="finished in ~$OP_TOOK ms, before the store had $([ "$dir" = up ] && echo more || echo fewer) than $n0 objects"
      break
    fi
    chunk_objects
    if { [ "$dir" = up ] && [ "$NOBJ" -gt "$n0" ]; } || { [ "$dir" = down ] && [ "$NOBJ" -lt "$n0" ]; }; then
      kill -KILL "$pid" 2>/dev/null || true
      OP_TOOK=$(((${EPOCHREALTIME/./} - t0) / 1000))
      OP_WHEN="killed at $OP_TOOK ms, when the store held $NOBJ objects ($n0 before)"
      break
    fi
    read -r -t 0.0005 -u "$NAP_FD" _ || true
  done
  OP_RC=0
  wait "$pid" 2>/dev/null || OP_RC=$?
  if [ "$OP_RC" = 0 ] && [ "$st" != Z ]; then OP_WHEN="$OP_WHEN, and the command still succeeded"; fi
}

# check_content ID: snapshot ID restores to what the volume held when taken.
check_content() {
  local id=$1 out
  [ -n "${SNAPSTATE[$id]:-}" ] || crash_fail "snapshot $id is completed, but no snapshot was taken then"
  "$EBS" snapshot restore "$id" --volume chk "${PERF[@]}" >/dev/null || crash_fail "restore of $id failed"
  out=$("${C[@]}" verify "$(uri chk)" --base "${SNAPSTATE[$id]}" --span "$SPAN" --check-rest) \
    || crash_fail "snapshot $id does not restore to the volume as it was when taken:
$out"
  "$EBS" volume delete chk >/dev/null
}

# check_store BEFORE [strict]: the store is consistent and the snapshots
# completed before the crash (BEFORE) are intact. After a crash in the
# snapshot machinery unreferenced objects may be left (gc removes them); with
# "strict" (nothing was writing to the store) not even those.
check_store() {
  local before=$1 strict=${2:-} out problems id
  out=$("$EBS" store check --json 2>&1) || true  # exits non-zero when not clean
  problems=$(echo "$out" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
for p in d["problems"]:
    print(("garbage " if "not referenced" in p["error"] else "") + p["object"] + ": " + p["error"])
') || crash_fail "store check failed: $out"
  if echo "$problems" | grep -qv '^garbage \|^$'; then
    crash_fail "store check after the crash: $(echo "$problems" | grep -v '^garbage ' | tr '\n' ';')"
  fi
  if [ -n "$problems" ] && [ -n "$strict" ]; then
    crash_fail "store check after the crash: $(echo "$problems" | tr '\n' ';')"
  elif [ -n "$problems" ]; then
    "$EBS" store gc >/dev/null || crash_fail "store gc failed"
    out=$("$EBS" store check 2>&1) || crash_fail "store check not clean after gc: $out"
    STORE_NOTE="$(echo "$problems" | wc -l) unreferenced objects left, removed by gc"
  else
    STORE_NOTE="store check clean"
  fi
  for id in $before; do
    [ "$id" != "${DELETED:-}" ] || continue
    [ "${SNAP_STATE[$id]:-}" = completed ] \
      || crash_fail "snapshot $id was completed before the crash, is '${SNAP_STATE[$id]:-gone}' after it"
  done
  for id in $COMPLETED; do
    out=$("$EBS" snapshot verify "$id" 2>&1) || crash_fail "snapshot verify $id: $out"
  done
  check_interrupted "$ALL_IDS"  # nothing pending
}

# init_of VOLUME: "STATE LOADED TOTAL" of its lazy loading (loaded/total are
# -1 once completed).
init_of() {
  "$EBS" volume describe "$1" --json \
    | js 'd["initialization"]["state"], d["initialization"].get("loaded_chunks", -1), d["initialization"].get("total_chunks", -1)' \
    | tr -d "(),'"
}
# wait_loaded VOLUME: waits (at most 60 s) until its lazy loading completes.
wait_loaded() {
  local st _n _t i
  for ((i = 0; i < 400; i++)); do
    read -r st _n _t < <(init_of "$1") || crash_fail "volume describe $1 failed"
    [ "$st" != completed ] || return 0
    [ "$st" = loading ] || crash_fail "loading of $1 is '$st': $("$EBS" volume describe "$1" 2>&1)"
    sleep 0.05
  done
  crash_fail "loading of $1 did not complete within 60 s: $("$EBS" volume describe "$1" 2>&1)"
}

"$EBS" volume create "$VOL" --type gp3 --size 1G "${PERF[@]}" >/dev/null
echo '{"blocks": {}}' >"$STATE"
start_server
START=$SECONDS

for ((i = 0; i < ITERATIONS; i++)); do
  seed=$((SEED_BASE + i))
  kind=$(((seed + 5) % ${#KINDS[@]}))
  kname=${KINDS[$kind]}
  RANDOM=$seed
  J="$T/journal.$seed"
  DELETED=""
  t_iter=$SECONDS

  case $kname in plain | modify | lazy-restore) snapkind="" ;; *) snapkind=1 ;; esac
  inside=""  # set when the kill landed inside the kind's operation
  if [ -z "$snapkind" ]; then
    load_snaps
    before=$COMPLETED
  fi

  # 1. The writer, and SIGKILL at a random moment (with a modify in flight
  #    for modify). Lazy-restore writes to a volume still loading lazily.
  wvol=$VOL wspan=$SPAN
  if [ "$kname" = lazy-restore ]; then
    "$EBS" volume create lazysrc --size 1G "${PERF[@]}" >/dev/null
    "${C[@]}" fill "$(uri lazysrc)" --seed "$seed" --span "$SPAN" --state-out "$T/lazy-base.json" >"$T/fill.out" \
      || crash_fail "fill failed: $(cat "$T/fill.out")"
    LSNAP=$("$EBS" snapshot create lazysrc --json | js 'd[0]["id"]')
    "$EBS" volume delete lazysrc >/dev/null
    "$EBS" snapshot restore "$LSNAP" --volume lazy --lazy --initialization-rate "$LAZY_RATE" "${PERF[@]}" >/dev/null
    wvol=lazy wspan=$((SPAN / 4))
  fi
  rm -f "$T/ready"
  "${C[@]}" write "$(uri "$wvol")" "$J" --seed "$seed" --span "$wspan" --ready "$T/ready" --max-seconds 30 \
    >"$T/writer.out" 2>&1 &
  WRITER=$!
  for _ in $(seq 1 200); do [ -s "$T/ready" ] && break; sleep 0.025; done
  [ -s "$T/ready" ] || crash_fail "writer did not connect: $(cat "$T/writer.out")"
  # (At least 100 ms: verify wants acknowledged writes to check.)
  if [ "$kname" = lazy-restore ]; then rand delay 100 1500; else rand delay 200 1500; fi
  if [ "$kname" = modify ]; then
    read -r old_size old_tp < <("$EBS" volume describe "$VOL" --json | js 'd["size_bytes"], d["throughput_mibps"]' | tr -d '(),')
    new_size=$old_size new_tp=$old_tp
    if [ $((RANDOM % 2)) = 0 ] && [ "$old_size" -lt $((4 << 30)) ]; then
      new_size=$((old_size + (1 << 30)))
      margs=(--size "$new_size")
    else
      tps=(250 500 600 750)
      while [ "$new_tp" = "$old_tp" ]; do new_tp=${tps[$((RANDOM % 4))]}; done
      margs=(--throughput "$new_tp")
    fi
    rand lead 0 60
    ms_sleep $((delay - lead))
    "$EBS" volume modify "$VOL" "${margs[@]}" --json >"$T/modify.out" 2>&1 &
    MODIFY=$!
    ms_sleep "$lead"
  else
    ms_sleep "$delay"
  fi
  crash_server
  rc=0; wait "$WRITER" || rc=$?
  [ $rc = 0 ] || crash_fail "writer exited $rc: $(cat "$T/writer.out")"
  modify_rc=0
  if [ "$kname" = modify ]; then wait "$MODIFY" || modify_rc=$?; fi
  # Inside the operation: the writes (always), a modify not yet answered.
  [ "$kname" != plain ] || inside=1
  [ "$kname" != modify ] || [ "$modify_rc" = 0 ] || inside=1

  # 2. The catalog opens without the server (whose sockets are left behind).
  "$EBS" volume describe "$VOL" >/dev/null 2>"$T/describe.err" \
    || crash_fail "volume describe after the crash (server down): $(cat "$T/describe.err")"
  if [ "$kname" = lazy-restore ]; then
    read -r kill_st kill_loaded kill_total < <(init_of lazy) \
      || crash_fail "volume describe lazy after the crash (server down) failed"
    [ "$kill_st" = completed ] || inside=1
  fi

  # 3. Restart: every block holds what the journal allows.
  restart_server
  if [ "$kname" = lazy-restore ]; then
    # The writer left the volume alone: it holds what it held.
    jargs=()
  else
    jargs=(--journal "$J" --min-acked "$MIN_ACKED")
  fi
  out=$("${C[@]}" verify "$(uri "$VOL")" "${jargs[@]}" --base "$STATE" --state-out "$STATE.new" \
    --span "$SPAN" --check-rest) || crash_fail "data lost or damaged after kill -9 at ${delay} ms:
$out
  writer: $(cat "$T/writer.out")"
  mv "$STATE.new" "$STATE"
  "$EBS" volume list >/dev/null || crash_fail "volume list failed after the restart"
  read -r size tp mstate < <("$EBS" volume describe "$VOL" --json \
    | js 'd["size_bytes"], d["throughput_mibps"], d["modification_state"]' | tr -d "(),'") \
    || crash_fail "volume describe failed after the restart"
  [ "$(nbdinfo --size "$(uri "$VOL")")" = "$size" ] || crash_fail "export size differs from the catalog's $size"
  summary="killed ${delay} ms into the writes; ${out#verify: }"

  if [ "$kname" = modify ]; then
    if { [ "$size" != "$old_size" ] && [ "$size" != "$new_size" ]; } || { [ "$tp" != "$old_tp" ] && [ "$tp" != "$new_tp" ]; }; then
      crash_fail "after a crash during modify ${margs[*]}: size $size, throughput $tp (was $old_size, $old_tp)"
    fi
    if [ "$size" = "$new_size" ] && [ "$tp" = "$new_tp" ]; then
      what=applied
    elif [ "$modify_rc" = 0 ]; then
      crash_fail "modify ${margs[*]} was acknowledged, but after the crash size is $size, throughput $tp"
    else
      what="not applied"
    fi
    [ "$modify_rc" = 0 ] && what="$what, acknowledged" || what="$what, not acknowledged"
    # Nothing applies a modification after a restart: one left 'modifying'
    # never ends (and with --modification-rate-limit blocks every later one).
    [ "$mstate" != modifying ] \
      || crash_fail "modify ${margs[*]} ($what) is left in state 'modifying' after the restart (size $size, throughput $tp)"
    summary="$summary; modify ${margs[*]} $what (modification state $mstate)"
  fi

  if [ "$kname" = lazy-restore ]; then
    # Loading resumes and completes; every block the writer acknowledged
    # (and flushed) reads back, every other one holds the snapshot's content.
    # Either wait for the background loading first, or read at once (loading
    # on demand what is not loaded yet, while the background thread runs).
    when="${kill_st}, ${kill_loaded} of ${kill_total} chunks loaded"
    [ "$kill_st" != completed ] || when="loading had completed"
    t0=$(now_ms)
    if [ $((RANDOM % 2)) = 0 ]; then
      wait_loaded lazy
      order="loading completed $(($(now_ms) - t0)) ms after the restart, then read"
      vargs=(--journal "$J" --min-acked "$MIN_ACKED" --base "$T/lazy-base.json")
    else
      out=$("${C[@]}" verify "$(uri lazy)" --journal "$J" --min-acked "$MIN_ACKED" --base "$T/lazy-base.json" --state-out "$T/lazy-found.json" \
        --span "$SPAN" --check-rest) || crash_fail "lazily restored volume wrong after kill -9 at ${delay} ms ($when), read while loading:
$out
  writer: $(cat "$T/writer.out")"
      jout=$out
      wait_loaded lazy
      order="read while loading, then loading completed $(($(now_ms) - t0)) ms after the restart and reads the same"
      vargs=(--base "$T/lazy-found.json")
    fi
    out=$("${C[@]}" verify "$(uri lazy)" "${vargs[@]}" --span "$SPAN" --check-rest) \
      || crash_fail "lazily restored volume wrong after kill -9 at ${delay} ms ($when), loading completed:
$out
  writer: $(cat "$T/writer.out")"
    [ "${vargs[0]}" != --journal ] || jout=$out
    summary="lazy restore of $LSNAP at $LAZY_RATE MiB/s, killed ${delay} ms into the writes ($when); $order; ${jout#verify: }"
  fi
  if [ -z "$snapkind" ]; then
    load_snaps
    check_store "$before" strict
    summary="$summary; $STORE_NOTE, snapshots verify"
  fi
  if [ "$kname" = lazy-restore ]; then
    # Loaded: the volume no longer needs its source.
    "$EBS" volume delete lazy >/dev/null || crash_fail "volume delete lazy failed"
    out=$("$EBS" snapshot delete "$LSNAP" 2>&1) || crash_fail "snapshot delete $LSNAP (source of a completed lazy restore): $out"
    out=$("$EBS" store check 2>&1) || crash_fail "store check not clean after deleting the lazy restore and its source: $out"
  fi

  # 4. Crashes in the snapshot machinery. An attempt whose kill came after
  #    the command had answered tests nothing of the crash: its result is
  #    checked (what was acknowledged happened) and the kill is tried again,
  #    aimed within the time the command took, up to KILL_ATTEMPTS times;
  #    the iteration fails if none lands inside.
  if [ -n "$snapkind" ]; then
    attempt=0 attempts_note=""
    while :; do
      attempt=$((attempt + 1))
      load_snaps
      before=$COMPLETED
      all_before=$ALL_IDS
      pre_rc="" DELETED=""
      case $kname in
        served-snapshot) # SIGKILL the server while it takes a snapshot.
          # A retry takes it of a volume of its own with 2 x SPAN of seeded
          # data: VOL, unchanged since the attempt before, is snapshotted
          # in a few ms, too short a window to aim at.
          svol=$VOL
          if [ "$attempt" -gt 1 ]; then
            svol=svol
            "$EBS" volume create svol --size 1G "${PERF[@]}" >/dev/null
            "${C[@]}" fill "$(uri svol)" --seed "$((seed * 10 + attempt))" --span $((2 * SPAN)) --state-out "$T/svol.json" \
              >"$T/fill.out" || crash_fail "fill failed: $(cat "$T/fill.out")"
          fi
          "$EBS" snapshot create "$svol" --json >"$T/op.out" 2>&1 &
          kill_within served-create $! "$SERVER_PID" connected
          crash_server
          restart_server
          op="served snapshot create of $svol: server $OP_WHEN"
          ;;
        cli-snapshot) # SIGKILL the CLI taking a snapshot on its own (server stopped).
          stop_server
          "$EBS" snapshot create "$VOL" --json >"$T/op.out" 2>&1 &
          kill_within create $!
          op="CLI snapshot create $OP_WHEN"
          ;;
        cli-delete) # SIGKILL the CLI deleting a snapshot.
          stop_server
          # A chain of at least three, so the delete is often in the middle.
          while ids=($COMPLETED) && [ ${#ids[@]} -lt 3 ]; do
            timed create "$EBS" snapshot create "$VOL" >/dev/null || crash_fail "snapshot create failed"
            load_snaps
            record_new_snapshots "$before"
            before=$COMPLETED
            all_before=$ALL_IDS
          done
          DELETED=${ids[$((RANDOM % ${#ids[@]}))]}
          deleted_seq=${SNAP_SEQ[$DELETED]}
          "$EBS" snapshot delete "$DELETED" --json >"$T/op.out" 2>&1 &
          kill_within delete $!
          op="CLI snapshot delete $DELETED $OP_WHEN"
          ;;
        cli-gc) # SIGKILL the CLI collecting garbage.
          # Garbage first: a snapshot create killed as it stores its first
          # object leaves a pending snapshot and objects nothing references.
          # Nothing opens the store before the gc, which (as any open) marks
          # that snapshot error and collects its objects, then collects
          # whatever else is unreferenced. (If the create finishes first, gc
          # has nothing to do; that is fine too.) Of a volume of its own with
          # 4 x SPAN of seeded data (~100 chunks with the default SPAN), so
          # that the upload lasts long enough to be caught in the middle.
          "$EBS" volume create gcsrc --size 1G "${PERF[@]}" >/dev/null
          "${C[@]}" fill "$(uri gcsrc)" --seed "$seed" --span $((4 * SPAN)) --state-out "$T/gcsrc.json" >"$T/fill.out" \
            || crash_fail "fill failed: $(cat "$T/fill.out")"
          stop_server
          # How long a gc of this store takes (it checked clean: nothing to
          # collect), for the kill at a random moment below; a retry keeps
          # the time the gc it retries took.
          if [ "$attempt" = 1 ]; then
            timed gc "$EBS" store gc >/dev/null || crash_fail "store gc failed"
          fi
          chunk_objects
          "$EBS" snapshot create gcsrc --json >"$T/pre.out" 2>&1 &
          kill_on $! up "$NOBJ"
          pre_rc=$OP_RC
          pre="snapshot create $OP_WHEN"
          # The gc is killed, by seed in turn, as it deletes its first object
          # (inside the collection, for certain), or at a random moment within
          # the time a gc takes (at any stage: process start, opening the
          # catalog and store, marking the snapshot error, collecting). A
          # retry aims within the time the gc took.
          chunk_objects
          "$EBS" store gc --json >"$T/op.out" 2>&1 &
          if [ "$attempt" = 1 ] && [ $(((seed + 5) / ${#KINDS[@]} % 2)) = 0 ]; then
            kill_on $! down "$NOBJ"
          else
            kill_within gc $!
          fi
          op="CLI store gc $OP_WHEN (after a CLI $pre)"
          ;;
      esac
      # Inside: killed before it answered (the server for served-snapshot).
      [ "${OP_WHEN%% *}" != killed ] || [ "$OP_RC" = 0 ] || inside=1
      [ -n "$SERVER_PID" ] || restart_server
      load_snaps
      # No snapshot is left pending: the one the kill interrupted is error
      # (marked so by the next open) or completed.
      check_interrupted "$all_before"
      op="$op; $INTERRUPTED_NOTE"

      # What was acknowledged happened.
      if [ "$pre_rc" = 0 ]; then
        id=$(js 'd[0]["id"]' <"$T/pre.out")
        [ "${SNAP_STATE[$id]:-}" = completed ] \
          || crash_fail "snapshot $id was reported created, is '${SNAP_STATE[$id]:-gone}' after the crash during gc"
      fi
      if [ "$kname" = cli-gc ]; then
        # gcsrc served its purpose: its volume goes, and its snapshot if it
        # completed (the only new completed one: VOL was not snapshotted).
        "$EBS" volume delete gcsrc >/dev/null || crash_fail "volume delete gcsrc failed"
        for id in $COMPLETED; do
          case " $all_before " in *" $id "*) continue ;; esac
          out=$("$EBS" snapshot delete "$id" 2>&1) || crash_fail "snapshot delete $id (of gcsrc): $out"
        done
        load_snaps
      fi
      if [ "$OP_RC" = 0 ]; then
        case $kname in
          served-snapshot | cli-snapshot)
            id=$(js 'd[0]["id"]' <"$T/op.out")
            [ "${SNAP_STATE[$id]:-}" = completed ] \
              || crash_fail "snapshot $id was reported created, is not completed after the crash"
            ;;
          cli-delete)
            [ -z "${SNAP_STATE[$DELETED]:-}" ] \
              || crash_fail "snapshot $DELETED was reported deleted, still exists after the crash"
            ;;
          cli-gc)
            out=$("$EBS" store check 2>&1) || crash_fail "store gc had completed, store check is not clean: $out"
            ;;
        esac
      fi
      if [ "$kname" = served-snapshot ] && [ "$svol" = svol ]; then
        # svol served its purpose: its volume goes, and its snapshot if it
        # completed (the only new completed one).
        "$EBS" volume delete svol >/dev/null || crash_fail "volume delete svol failed"
        for id in $COMPLETED; do
          case " $all_before " in *" $id "*) continue ;; esac
          out=$("$EBS" snapshot delete "$id" 2>&1) || crash_fail "snapshot delete $id (of svol): $out"
        done
        load_snaps
      fi
      if [ -n "$DELETED" ]; then
        # One index batch deletes a snapshot: it is gone, or still whole.
        st=${SNAP_STATE[$DELETED]:-}
        case $st in
          "") op="$op; $DELETED gone" ;;
          completed) op="$op; $DELETED still there" ;;
          *) crash_fail "snapshot $DELETED, killed while being deleted, is left '$st'" ;;
        esac
      fi
      record_new_snapshots "$before"  # (the volume has not changed since the writer's crash)
      for id in "${!SNAPSTATE[@]}"; do
        [ "${SNAP_STATE[$id]:-}" = completed ] || unset "SNAPSTATE[$id]"
      done
      check_store "$before"
      [ -z "$inside" ] || break
      attempts_note="$attempts_note${attempts_note:+; }attempt $attempt answered before its kill ($op)"
      [ "$attempt" -lt "$KILL_ATTEMPTS" ] \
        || crash_fail "none of $KILL_ATTEMPTS kills landed inside the operation: $attempts_note"
      # Again, within the time it took (the answer came before OP_TOOK). A
      # served create's time ends with the CLI printing the answer and
      # exiting, and a retry snapshots the volume unchanged, in ~10 ms:
      # its first half, where the server has the request.
      if [ "$EST_KEY" = served-create ]; then
        EST[$EST_KEY]=$((OP_TOOK / 2 + 1))
      else
        EST[$EST_KEY]=$((OP_TOOK * 9 / 10 + 1))
      fi
      KIND_RETRIES[$kname]=$((${KIND_RETRIES[$kname]:-0} + 1))
    done
    [ "$attempt" = 1 ] || op="$op (attempt $attempt of $KILL_ATTEMPTS; before it: $attempts_note)"

    # An older snapshot restores to the volume as it was when taken: the one
    # that absorbed the deleted snapshot's chunks, else one at random.
    checked=""
    ids=($COMPLETED)
    if [ -n "$DELETED" ]; then
      for id in "${ids[@]}"; do
        if [ "${SNAP_SEQ[$id]}" -gt "$deleted_seq" ]; then checked=$id; break; fi
      done
    fi
    if [ -z "$checked" ] && [ ${#ids[@]} -gt 0 ]; then checked=${ids[$((RANDOM % ${#ids[@]}))]}; fi
    [ -z "$checked" ] || check_content "$checked"

    # A new snapshot restores to exactly the volume.
    b=$COMPLETED
    "$EBS" snapshot create "$VOL" --json >"$T/new.json" || crash_fail "snapshot create after the crash failed"
    id=$(js 'd[0]["id"]' <"$T/new.json")
    load_snaps
    record_new_snapshots "$b"
    "$EBS" snapshot restore "$id" --volume fresh "${PERF[@]}" >/dev/null || crash_fail "restore of new snapshot $id failed"
    out=$("${C[@]}" compare "$(uri "$VOL")" "$(uri fresh)") \
      || crash_fail "new snapshot $id does not restore to the volume: $out"
    "$EBS" volume delete fresh >/dev/null
    # Keep the chain short (three is enough for a delete in the middle).
    ids=($COMPLETED)
    for ((k = 0; k + 3 < ${#ids[@]}; k++)); do
      "$EBS" snapshot delete "${ids[$k]}" >/dev/null || crash_fail "snapshot delete ${ids[$k]} failed"
      unset "SNAPSTATE[${ids[$k]}]"
    done
    summary="$summary; $op; $STORE_NOTE; snapshots verify, ${checked:-none} restored as taken, a new one restores equal"
  fi
  pass "seed $seed ($kname, $((SECONDS - t_iter)) s): $summary"
  KIND_RUNS[$kname]=$((${KIND_RUNS[$kname]:-0} + 1))
  if [ -n "$inside" ]; then
    KIND_KILLS[$kname]=$((${KIND_KILLS[$kname]:-0} + 1))
  else
    KIND_OUTSIDE[$kname]="${KIND_OUTSIDE[$kname]:-}${KIND_OUTSIDE[$kname]:+,} $seed"
  fi
done
pass "$ITERATIONS crash iterations (seeds $SEED_BASE..$((SEED_BASE + ITERATIONS - 1))) in $((SECONDS - START)) s"
# Per kind: iterations, how many of their kills landed inside the operation,
# and how many kills were tried again because they came after the command
# had answered.
per_kind="" missing="" outside=""
for k in "${KINDS[@]}"; do
  per_kind="$per_kind${per_kind:+, }$k ${KIND_RUNS[$k]:-0} (${KIND_KILLS[$k]:-0} killed inside"
  [ -z "${KIND_RETRIES[$k]:-}" ] || per_kind="$per_kind, ${KIND_RETRIES[$k]} kills retried"
  per_kind="$per_kind)"
  [ -n "${KIND_RUNS[$k]:-}" ] || missing="$missing $k"
  # Every kind but modify (which often answers before the kill, and checks
  # both outcomes) must have had every one of its kills land inside.
  [ "$k" = modify ] || [ "${KIND_KILLS[$k]:-0}" = "${KIND_RUNS[$k]:-0}" ] \
    || outside="$outside $k (${KIND_KILLS[$k]:-0} of ${KIND_RUNS[$k]}; outside: seed${KIND_OUTSIDE[$k]})"
done
echo "iterations per kind: $per_kind"
# Any ${#KINDS[@]} consecutive seeds run every kind.
[ "$ITERATIONS" -lt ${#KINDS[@]} ] || [ -z "$missing" ] || fail "$ITERATIONS iterations did not run:$missing"
[ -z "$outside" ] || fail "kills that did not land inside the operation:$outside"
stop_server
