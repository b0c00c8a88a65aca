#!/usr/bin/env bash
# Volume limits enforced over NBD with fio (real clock, short runs, generous
# tolerances: precision is measured in bench/): a gp3 volume delivers its
# 3,000 IOPS and 125 MiB/s; modified to 6,000 IOPS mid-run, the rate follows
# within 2 s; `volume stats` and the Prometheus endpoint count what fio did.
source "$(dirname "$0")/lib.sh"
need fio curl

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

# Modify mid-run: 3,000 -> 6,000 IOPS 3 s after fio's first write reached
# the volume (measured from the volume's own counters, so a slow fio start on
# a loaded machine cannot shift the change into the "before" window).
writes_now() { "$EBS" volume stats g --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["VolumeWriteOps"])'; }
(
  for _ in $(seq 1 200); do [ "$(writes_now)" -gt 0 ] && break; sleep 0.05; done
  sleep 3
  "$EBS" volume modify g --iops 6000 >/dev/null
) &
MODIFY_PID=$!
fio_run live "$(uri g)" --rw=randwrite --bs=4k --iodepth=32 --runtime=9 --time_based \
  --write_iops_log="$T/live" --log_avg_msec=500
wait $MODIFY_PID || fail "modify during the run failed"
# Average the IOPS log from 0.5 to 2.5 s and from 6 s (2 s after the change,
# which comes 3 to 4 s into the run) to the end.
read -r before after < <("$PY" - "$T"/live_iops.*.log <<'PYEOF'
import sys
rows = [l.split(",") for l in open(sys.argv[1]) if l.strip()]
pts = [(int(r[0]), float(r[1])) for r in rows]
b = [v for t, v in pts if 500 <= t <= 2500]
a = [v for t, v in pts if 6000 <= t <= 9000]
print(round(sum(b) / len(b)), round(sum(a) / len(a)))
PYEOF
)
within "$before" 3000 10 "IOPS before the modification"
within "$after" 6000 12 "IOPS 2 s after modifying to 6000"

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
echo "$m" | grep -q '^ebs_volume_iops_exceeded_check{volume="g",type="gp3"} 1$' || fail "g exceeded its IOPS"
echo "$m" | grep -q '^# TYPE ebs_volume_read_ops_total counter$' || fail "metric types"
pass "Prometheus /metrics"
stop_server
