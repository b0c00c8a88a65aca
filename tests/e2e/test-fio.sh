#!/usr/bin/env bash
# fio through its libnbd engine: two jobs (two NBD connections) of 4k random
# writes at queue depth 32 with crc32c verification, then a second pass that
# re-verifies everything from fresh connections (and after a restart).
source "$(dirname "$0")/lib.sh"
need fio
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

# io2 at 64000 IOPS: fio is not throttle-bound should a throttle apply.
ebs volume create fiovol --type io2 --size 64G --iops 64000 >/dev/null
start_server

# Engine options (--uri) must come after --ioengine=nbd.
# Each job owns its own 64 MiB (offset_increment), so verification is exact.
common=(--bs=4k --iodepth=32 --size=64M --numjobs=2
        --offset_increment=64M --verify=crc32c --verify_fatal=1
        --verify_dump=0 --verify_state_save=0 --group_reporting --randseed=4242)
# fio writes state files into the working directory: keep them in $T.
cd "$T" || exit 1

out=$(fio --name=write-verify --ioengine=nbd --uri="$(uri fiovol)" --rw=randwrite "${common[@]}" 2>&1) ||
  { echo "$out"; fail "fio randwrite+verify exited non-zero"; }
grep -Eqi 'verify.*(fail|bad|error)|crc32c: verify failed|err= *[1-9]' <<<"$out" &&
  { echo "$out"; fail "fio reported verification errors"; }
grep -Eq 'err= *0' <<<"$out" || { echo "$out"; fail "fio output lacks err=0"; }
# Two jobs, two NBD connections, each writing and verifying its 64 MiB.
[ "$(grep -c 'connected to NBD server' <<<"$out")" -eq 2 ] || { echo "$out"; fail "want 2 NBD connections"; }
grep -Eq 'issued rwts: total=32768,32768,' <<<"$out" || { echo "$out"; fail "fio did not write+verify 2 x 16384 blocks"; }
grep -Eq 'WRITE: bw=.*io=128MiB' <<<"$out" || { echo "$out"; fail "fio did not write 2 x 64 MiB"; }
pass "fio nbd randwrite 2 jobs, iodepth 32, crc32c verify"

# Verify-only pass on fresh connections (over TCP this time): what the first
# run wrote is what the volume holds.
verify_only() {
  fio --name=verify-only --ioengine=nbd --uri="$1" --rw=randwrite --verify_only "${common[@]}" 2>&1
}
out=$(verify_only "$(tcp_uri fiovol)") || { echo "$out"; fail "fio verify_only over TCP"; }
grep -Eqi 'verify.*(fail|bad|error)|err= *[1-9]' <<<"$out" && { echo "$out"; fail "verify_only errors"; }
pass "fio verify_only over TCP"

# A verify pass that must fail does fail: overwrite one block of job 0.
nbdsh -u "$(uri fiovol)" -c 'h.pwrite(b"\xde\xad" * 2048, 40960); h.flush()'
rc=0; out=$(verify_only "$(uri fiovol)") || rc=$?
[ $rc -ne 0 ] || { echo "$out"; fail "fio verify_only did not notice a corrupted block"; }
pass "corruption is detected (the verification is real)"

# Rewrite, restart the server, verify again; the restarted server's event
# loops never busy-poll (they sleep as soon as they run out of work), so both
# ways of waiting carry the same data.
out=$(fio --name=write-verify --ioengine=nbd --uri="$(uri fiovol)" --rw=randwrite "${common[@]}" 2>&1) ||
  { echo "$out"; fail "fio second randwrite"; }
stop_server
start_server --busy-poll-us 0
out=$(verify_only "$(uri fiovol)") || { echo "$out"; fail "fio verify_only after restart"; }
pass "fio verify_only after restart (event loops without busy polling)"
stop_server
