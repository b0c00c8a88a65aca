#!/usr/bin/env bash
# `ebs volume` through the real binary: create, list, describe --json, modify
# (grow, refused shrink), delete; errors on stderr with a non-zero exit; help
# for every subcommand; the same commands while a server runs.
source "$(dirname "$0")/lib.sh"

json() { /usr/bin/python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

# --help everywhere.
for sub in "" "volume" "volume create" "volume list" "volume describe" "volume delete" "volume modify" "serve" \
  "snapshot" "snapshot create" "snapshot diff" "snapshot restore" "store gc" "key create"; do
  # shellcheck disable=SC2086
  out=$("$EBS" $sub --help) || fail "ebs $sub --help exited non-zero"
  echo "$out" | grep -q "Usage" || fail "ebs $sub --help has no usage"
  [ -z "$sub" ] || echo "$out" | grep -q -- "--data-dir DIR, --json" || fail "ebs $sub --help does not name the global options"
done
"$EBS" volume create --help | grep -q -- "--iops" || fail "create --help does not document --iops"
pass "help"

"$EBS" volume create web --type gp3 --size 10G >/dev/null
"$EBS" volume create db --type io2 --size 100GiB --iops 20000 >/dev/null
"$EBS" volume create logs --type st1 --size 1T >/dev/null
"$EBS" volume list | grep -q "^db " || fail "list lacks db"
[ "$("$EBS" volume list --json | json 'len(d)')" = 3 ] || fail "list --json does not show 3 volumes"
d=$("$EBS" volume describe db --json)
[ "$(echo "$d" | json 'd["type"]')" = io2 ] || fail "db is not io2"
[ "$(echo "$d" | json 'd["iops"]')" = 20000 ] || fail "db iops"
[ "$(echo "$d" | json 'd["size_bytes"]')" = 107374182400 ] || fail "db size"
[ "$(echo "$d" | json 'd["state"]')" = available ] || fail "db state"
[ "$(echo "$d" | json 'd["performance"]["baseline_throughput_mibps"]')" = 4000.0 ] || \
  [ "$(echo "$d" | json 'd["performance"]["baseline_throughput_mibps"]')" = 4000 ] || fail "io2 20000 IOPS throughput"
[ "$("$EBS" volume describe logs --json | json 'd["iops"]')" = None ] || fail "st1 has no provisioned iops"
pass "create, list, describe --json"

# Errors: on stderr, non-zero, AWS-style, nothing created.
expect_error() {  # expect_error PATTERN CMD...
  local pattern=$1; shift
  local err rc=0
  err=$("$@" 2>&1 >/dev/null) || rc=$?
  [ $rc -ne 0 ] || fail "'$*' succeeded"
  echo "$err" | grep -q -- "$pattern" || fail "'$*' said '$err', expected '$pattern'"
}
# EC2's own wording (code and message), then ebs's hint.
expect_error "InvalidParameterValue: Iops to volume size ratio of 300.000000 is too high; maximum is 50 (a 10 GiB io1" \
  "$EBS" volume create bad --type io1 --size 10G --iops 3000
expect_error "InvalidParameterCombination: The parameter iops is not supported for gp2 volumes." \
  "$EBS" volume create bad --type gp2 --size 10G --iops 300
expect_error "InvalidParameterCombination: throughput can only be specified for volumeType gp3." \
  "$EBS" volume create bad --type io2 --size 10G --iops 1000 --throughput 200
expect_error "InvalidParameterValue: The volume size is invalid for st1 volumes: 100 GiB." \
  "$EBS" volume create bad --type st1 --size 100G
expect_error "InvalidParameterValue: Throughput (MiBps) to iops ratio of 0.333333 is too high" \
  "$EBS" volume create bad --type gp3 --size 100G --throughput 1000
expect_error "size" "$EBS" volume create bad --size 12XB
expect_error "name" "$EBS" volume create ../etc --size 1G
expect_error "already exists" "$EBS" volume create web --size 1G
expect_error "does not exist" "$EBS" volume describe nope
expect_error "unknown volume type\|volume type" "$EBS" volume create bad --type gp9 --size 1G
"$EBS" volume describe bad >/dev/null 2>&1 && fail "a refused create left a volume behind"
pass "errors"

# Modify: grow, refused shrink, type change with history.
m=$("$EBS" volume modify web --size 20G --iops 6000 --throughput 500 --json)
[ "$(echo "$m" | json 'd["size_bytes"]')" = 21474836480 ] || fail "grow"
[ "$(echo "$m" | json 'd["modifications"][-1]["to"]["iops"]')" = 6000 ] || fail "history"
file=$(ls "$EBS_DATA_DIR"/volumes/"$(echo "$m" | json 'd["id"]')".img)
[ "$(stat -c %s "$file")" = 21474836480 ] || fail "data file not grown"
expect_error "only grow" "$EBS" volume modify web --size 10G
expect_error "changes nothing" "$EBS" volume modify web --size 20G
"$EBS" volume modify web --type io1 --iops 1000 >/dev/null
[ "$("$EBS" volume describe web --json | json 'len(d["modifications"])')" = 2 ] || fail "two modifications recorded"
[ "$("$EBS" volume describe web --json | json 'd["modifications"][-1]["state"]')" = completed ] || fail "state"
pass "modify"

"$EBS" volume delete logs | grep -q "deleted logs" || fail "delete"
expect_error "does not exist" "$EBS" volume delete logs
[ "$("$EBS" volume list --json | json 'len(d)')" = 2 ] || fail "list after delete"
pass "delete"

# While a server runs, the same commands go through its control socket, and a
# second server on the same data directory is refused.
start_server --socket "$T/nbd.sock"
"$EBS" volume create live --size 1G >/dev/null
[ "$("$EBS" volume list --json | json 'len(d)')" = 3 ] || fail "create through the server"
expect_error "in use by another ebs process" "$EBS" serve --listen 127.0.0.1:0 --socket "$T/other.sock"
expect_error "not in range" "$EBS" serve --busy-poll-us 2000000
stop_server
[ "$("$EBS" volume list --json | json 'len(d)')" = 3 ] || fail "catalog after the server stopped"
pass "through the server"
