#!/usr/bin/env bash
# Volume limits enforced over NBD with fio (real clock, short runs, generous
# tolerances: precision is measured in bench/): a gp3 volume delivers its
# 3,000 IOPS and 125 MiB/s; modified to 6,000 IOPS and then to io2 at 2,000
# mid-run, the rate follows within a second; no second sees much more than
# the limit; two connections share one limit; `volume stats` and the
# Prometheus endpoint report what fio did, and the rest of the CloudWatch set;
# small random reads on sc1 cost a full MiB each.
source "$(dirname "$0")/lib.sh"
need fio curl nbdinfo

"$EBS" volume create g --type gp3 --size 20G >/dev/null
"$EBS" volume create fast --type gp3 --size 10G >/dev/null
start_server --metrics 127.0.0.1:0
METRICS=$(sed -n 's|^ebs: metrics on \(http://.*\)$|\1|p' "$T/server.log")
[ -n "$METRICS" ] || fail "no metrics address in the server log"

# fio_json NAME URI ARGS...: runs fio, prints the path of its JSON output.
fio_run() {
  local name=$1 uri=$2; shift 2
  (cd "$T" && fio --name="$name" --ioengine=nbd --uri="$uri" --size=1G --output-format=json \
     --output="$T/$name.json" "$@" >/dev/null) || fail "fio $name failed"
}
jq_py() { "$PY" -c "import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
within() {  # within VALUE TARGET PERCENT WHAT
  "$PY" -c "import sys; v,t,p=map(float,sys.argv[1:4]); sys.exit(0 if abs(v-t)<=t*p/100 else 1)" "$1" "$2" "$3" \
    || fail "$4: $1, expected $2 ± $3%"
  pass "$4: $1 (target $2 ± $3%)"
}

fio_run iops "$(uri g)" --rw=randread --bs=4k --iodepth=32 --runtime=5 --time_based --ramp_time=1
within "$(jq_py "$T/iops.json" 'round(j["jobs"][0]["read"]["iops"])')" 3000 10 "gp3 4K random read QD32 IOPS"

fio_run bw "$(uri g)" --rw=read --bs=1m --iodepth=8 --runtime=5 --time_based --ramp_time=1
within "$(jq_py "$T/bw.json" 'round(j["jobs"][0]["read"]["bw_bytes"]/1048576)')" 125 10 "gp3 1M sequential MiB/s"

# Elastic Volumes under traffic: 3,000 -> 6,000 IOPS 3 s after fio's first
# write reached the volume, then a type change (gp3 -> io2 at 2,000 IOPS).
# Each change must hold within one second: the volume's own write counter,
# from 1 s to 2 s after `volume modify` returned, shows the new rate. Times
# are the server's (ElapsedTime of the same stats reply as the counter), so
# a slow `ebs volume stats` process cannot skew the rate; the counter is
# sampled about every 100 ms and on a failure the series is printed.
cat >"$T/modify.py" <<'PYEOF'
import json, subprocess, sys, time
ebs, vol, detail = sys.argv[1], sys.argv[2], sys.argv[3]
def sample():
    d = json.loads(subprocess.run([ebs, "volume", "stats", vol, "--json"], check=True, capture_output=True,
                                  text=True).stdout)
    return d["ElapsedTime"], d["VolumeWriteOps"], d["Throttle"].get("current_iops_limit")
for _ in range(200):
    if sample()[1] > 0:
        break
    time.sleep(0.05)
time.sleep(3)
rates = []
with open(detail, "w") as out:
    for args in (["--iops", "6000"], ["--type", "io2", "--iops", "2000"]):
        subprocess.run([ebs, "volume", "modify", vol, *args], check=True, capture_output=True)
        t0 = sample()[0]
        series = []
        while True:
            s = sample()
            series.append(s)
            if s[0] >= t0 + 2.05:
                break
            time.sleep(0.08)
        first = next(s for s in series if s[0] >= t0 + 1.0)
        last = series[-1]
        rates.append(round((last[1] - first[1]) / (last[0] - first[0])))
        print(f"after modify {' '.join(args)} (server time {t0:.3f} s): time since, writes, rate since the "
              "previous sample, IOPS limit", file=out)
        prev = None
        for t, n, limit in series:
            rate = "" if prev is None else f"{(n - prev[1]) / (t - prev[0]):8.0f}/s"
            gap = "  <- no writes: the load stalled" if prev is not None and n == prev[1] and t - prev[0] > 0.2 else ""
            print(f"  {t - t0:6.3f} s {n:9d} {rate:>11} limit {limit}{gap}", file=out)
            prev = (t, n)
        time.sleep(0.5)
print(*rates)
PYEOF
# The load runs until both changes have been measured, however long the
# stats processes take: a fixed fio runtime that ended inside the second
# window once halved its rate (997 of 2,000 IOPS on a fresh machine, issue
# 27). fio stops at SIGINT and still writes its results and log.
fio --name=live --ioengine=nbd --uri="$(uri g)" --size=1G --output-format=json --output="$T/live.json" \
  --rw=randwrite --bs=4k --iodepth=32 --runtime=120 --time_based \
  --write_iops_log="$T/live" --log_avg_msec=500 >/dev/null 2>"$T/live.err" &
FIO_PID=$!
on_exit "kill -KILL $FIO_PID"
modify_rc=0
"$PY" "$T/modify.py" "$EBS" g "$T/modify.detail" >"$T/modify.out" 2>"$T/modify.err" || modify_rc=$?
kill -0 "$FIO_PID" 2>/dev/null || fail "fio stopped before both changes were measured: $(cat "$T/live.err")"
kill -INT "$FIO_PID"
wait "$FIO_PID" || true
[ -s "$T/live.json" ] || fail "fio wrote no results: $(cat "$T/live.err")"
[ "$modify_rc" -eq 0 ] || fail "modify during the run failed: $(cat "$T/modify.err")"
read -r after_iops after_type <"$T/modify.out"
# IOPS before the change: the log from 0.5 to 2.5 s.
before=$("$PY" - "$T"/live_iops.*.log <<'PYEOF'
import sys
pts = [(int(r[0]), float(r[1])) for r in (l.split(",") for l in open(sys.argv[1]) if l.strip())]
b = [v for t, v in pts if 500 <= t <= 2500]
print(round(sum(b) / len(b)))
PYEOF
)
# On a miss, what the server counted after each change (issue 27).
within_or_detail() {  # as within
  "$PY" -c "import sys; v,t,p=map(float,sys.argv[1:4]); sys.exit(0 if abs(v-t)<=t*p/100 else 1)" "$1" "$2" "$3" \
    || { cat "$T/modify.detail" >&2; fail "$4: $1, expected $2 ± $3%"; }
  pass "$4: $1 (target $2 ± $3%)"
}
within "$before" 3000 10 "IOPS before the modification"
within_or_detail "$after_iops" 6000 12 "IOPS from 1 to 2 s after modifying to 6000"
within_or_detail "$after_type" 2000 12 "IOPS from 1 to 2 s after changing type to io2 at 2000"
"$EBS" volume describe g --json | "$PY" -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["type"]=="io2" and d["iops"]==2000 else 1)' \
  || fail "describe does not show io2 at 2000 IOPS"

# Smoothness on the real clock: no one-second window of a 3,000 IOPS volume
# sees much more than its limit (the bucket holds 50-100 ms of tokens; the
# first window, which starts with a full bucket, is left out).
"$EBS" volume create smooth --type gp3 --size 10G >/dev/null
fio_run smooth "$(uri smooth)" --rw=randread --bs=4k --iodepth=32 --runtime=6 --time_based \
  --write_iops_log="$T/smooth" --log_avg_msec=1000
peak=$("$PY" - "$T"/smooth_iops.*.log <<'PYEOF'
import sys
pts = [float(l.split(",")[1]) for l in open(sys.argv[1]) if l.strip()]
print(round(max(pts[1:])))
PYEOF
)
[ "$peak" -le 3240 ] || fail "a one-second window saw $peak IOPS on a 3000 IOPS volume (> 1.08x)"
pass "busiest one-second window: $peak IOPS of 3000"

# Shared by all connections: two connections together get one volume's limit.
"$EBS" volume create shared --type gp3 --size 10G >/dev/null
fio_run shared "$(uri shared)" --rw=randread --bs=4k --iodepth=16 --numjobs=2 --group_reporting \
  --runtime=5 --time_based --ramp_time=1
within "$(jq_py "$T/shared.json" 'round(j["jobs"][0]["read"]["iops"])')" 3000 10 \
  "gp3 at 3000 IOPS, two connections together"

# Counters: stats and /metrics agree with what fio did on an otherwise idle volume.
fio_run count "$(uri fast)" --rw=randrw --bs=4k --iodepth=8 --number_ios=3000 --rwmixread=50
reads=$(jq_py "$T/count.json" 'j["jobs"][0]["read"]["total_ios"]')
writes=$(jq_py "$T/count.json" 'j["jobs"][0]["write"]["total_ios"]')
stats=$("$EBS" volume stats fast --json)
[ "$(echo "$stats" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["VolumeReadOps"])')" = "$reads" ] \
  || fail "stats VolumeReadOps != fio's $reads reads: $stats"
[ "$(echo "$stats" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["VolumeWriteOps"])')" = "$writes" ] \
  || fail "stats VolumeWriteOps != fio's $writes writes"
[ "$(echo "$stats" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["VolumeWriteBytes"])')" = $((writes * 4096)) ] \
  || fail "stats VolumeWriteBytes"
pass "volume stats: $reads reads, $writes writes, as fio counted"
m=$(curl -sf "$METRICS") || fail "GET $METRICS failed"
echo "$m" | grep -q "^ebs_volume_read_ops_total{volume=\"fast\",type=\"gp3\"} $reads\$" || fail "metrics read ops"
echo "$m" | grep -q "^ebs_volume_write_ops_total{volume=\"fast\",type=\"gp3\"} $writes\$" || fail "metrics write ops"
echo "$m" | grep -q '^ebs_volume_iops_exceeded_check{volume="g",type="io2"} 0$' \
  || fail "g: 14 s held back on IOPS is not consistently (the check needs 30 of the last 60 s)"
echo "$m" | grep -q '^# TYPE ebs_volume_read_ops_total counter$' || fail "metric types"
echo "$m" | grep -q '^ebs_volume_latency_microseconds{volume="fast",quantile="0.999"} [0-9.e+]*$' \
  || fail "latency quantiles as fractions"
pass "Prometheus /metrics"

# The rest of the CloudWatch set, each against what the runs above did.
# check VOLUME PYTHON-CONDITION-ON-d WHAT
check() {
  "$EBS" volume stats "$1" --json >"$T/stats-$1.json"
  "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if ($2) else 1)" "$T/stats-$1.json" \
    || fail "$3: $(cat "$T/stats-$1.json")"
  pass "$3"
}
check g 'd["ThrottledRequests"] > 100 and d["ThrottledTime"] > 1' "g: time and requests held by the throttle"
# The exceeded checks need the workload held back in 30 of the last 60
# one-second windows: g's 14 s live run at its limits was held back, but not
# consistently. (The sc1 run below is held back for 33 s.)
check g '8 <= d["Throttle"]["iops_limited_seconds"] < 30 and d["VolumeIOPSExceededCheck"] == 0' \
  "g: the live run was held back on IOPS for under half the minute: check 0"
check g '1 < d["VolumeQueueLength"] < 40' "g: queue length over the last minute (QD32 runs, throttled)"
check g '99 < d["VolumeThroughputPercentage"] <= 100 and 0 < d["PeriodSeconds"] <= 61.5' \
  "g (io2): idle or held at its limit the whole minute: 100% of provisioned IOPS delivered"
check g 'd["VolumeConsumedReadWriteOps"] > d["VolumeReadOps"] + d["VolumeWriteOps"]' \
  "g (io2): VolumeConsumedReadWriteOps counts each 1 MiB read as 4"
check fast '"VolumeThroughputPercentage" not in d and "VolumeConsumedReadWriteOps" not in d' \
  "fast: gp3 has no VolumeThroughputPercentage or VolumeConsumedReadWriteOps (io1/io2 only)"
check fast '0 < d["VolumeIdleTime"] < d["ElapsedTime"] and d["VolumeTotalReadTime"] > 0 and d["VolumeQueueLength"] > 0' \
  "fast: idle time, read time and queue length"
check fast '"BurstBalance" not in d' "fast: gp3 has no burst bucket"
"$EBS" volume create burst --type gp2 --size 1G >/dev/null
fio_run burst "$(uri burst)" --rw=randread --bs=4k --iodepth=32 --runtime=2 --time_based
check burst '99 < d["BurstBalance"] < 100 and d["Throttle"]["current_iops_limit"] == 3000' \
  "burst: a 1 GiB gp2 volume spends I/O credits bursting at 3000 IOPS"
m=$(curl -sf "$METRICS") || fail "GET $METRICS failed"
echo "$m" | grep -q '^ebs_volume_burst_balance_percent{volume="burst",type="gp2"} 99\.' || fail "BurstBalance in /metrics"
pass "BurstBalance in /metrics"

# Small random I/O on HDD (hdd-vols): each 4 KiB random read spends a full
# 1 MiB of throughput, so a 125 GiB sc1 (9.8 MiB/s burst) gives about 10 IOPS.
# The run lasts 33 s: held back on throughput for more than half the minute.
"$EBS" volume create cold --type sc1 --size 125G >/dev/null
fio_run cold "$(uri cold)" --rw=randread --bs=4k --iodepth=8 --runtime=33 --time_based
cold_iops=$(jq_py "$T/cold.json" 'round(j["jobs"][0]["read"]["iops"], 1)')
"$PY" -c "import sys; sys.exit(0 if 5 <= float(sys.argv[1]) <= 12 else 1)" "$cold_iops" \
  || fail "sc1 125 GiB 4K random read: $cold_iops IOPS, expected about 10 (at most 12)"
pass "sc1 125 GiB 4K random read: $cold_iops IOPS (1 MiB of throughput each; about 10)"
check cold 'd["VolumeThroughputExceededCheck"] == 1 and d["VolumeIOPSExceededCheck"] == 0 and d["Throttle"]["throughput_limited_seconds"] >= 30' \
  "cold: held back on throughput for 33 s: VolumeThroughputExceededCheck 1"
stop_server

# Modification states while serving: with --optimizing-seconds, describe
# shows the change `optimizing` (the better of old and new limits) and then
# `completed`, each state with its time.
start_server --optimizing-seconds 3
nbdinfo --size "$(uri fast)" >/dev/null  # opens the volume (it stays open)
"$EBS" volume modify fast --iops 4000 >/dev/null
state() { "$EBS" volume describe fast --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["modification_state"])'; }
[ "$(state)" = optimizing ] || fail "describe right after modify: $(state), expected optimizing"
"$EBS" volume stats fast --json | "$PY" -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["Throttle"]["current_iops_limit"]==4000 else 1)' \
  || fail "a raise applies while optimizing"
for _ in $(seq 1 100); do [ "$(state)" = completed ] && break; sleep 0.1; done
[ "$(state)" = completed ] || fail "still $(state) 10 s after a 3 s optimization"
"$EBS" volume describe fast --json | "$PY" -c '
import json, sys
m = json.load(sys.stdin)["modifications"][-1]
assert m["state"] == "completed" and m["started"] <= m["optimizing_since"] <= m["completed"], m
assert m["from"]["iops"] == 3000 and m["to"]["iops"] == 4000, m' || fail "modification history"
pass "modify while serving: optimizing, then completed, with its times"
stop_server
