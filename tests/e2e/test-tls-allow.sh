#!/usr/bin/env bash
# Exports per TLS identity (docs/nbd.md, "Exports per TLS identity"):
# `--tls-allow alice=web --tls-allow bob=db,logs` under --tls require with a
# PSK file of alice, bob and carol:
# - alice lists and opens web only; db and logs are as if they did not exist
#   (absent from LIST, GO gets ERR_UNKNOWN), over TCP and the Unix socket;
# - bob lists and opens db and logs, and not web; writes through bob are read
#   back through bob;
# - carol, in the key file but not named, sees and opens nothing;
# - --tls-allow without --tls require, or malformed, is refused at startup.
source "$(dirname "$0")/lib.sh"
need nbdinfo nbdsh psktool

mkdir -m 0700 "$T/psk"
PSK=$T/psk/keys.psk
for u in alice bob carol; do psktool -u "$u" -p "$PSK" >/dev/null; done
chmod 0600 "$PSK"
for v in web db logs; do "$EBS" volume create "$v" --type gp3 --size 1G >/dev/null; done

serve_fails() {  # serve_fails WANT ARGS...
  local want=$1 out rc=0; shift
  out=$("$EBS" serve --socket "$T/never.sock" "$@" 2>&1) || rc=$?
  [ $rc -ne 0 ] || fail "ebs serve $* started"
  grep -qF -- "$want" <<<"$out" || { echo "$out"; fail "ebs serve $*: error does not say '$want'"; }
}
serve_fails "needs --tls require" --tls on --tls-psk "$PSK" --tls-allow alice=web
serve_fails "needs --tls require" --tls-allow alice=web
serve_fails "expected IDENTITY=VOLUME" --tls require --tls-psk "$PSK" --tls-allow alice
serve_fails "expected IDENTITY=VOLUME" --tls require --tls-psk "$PSK" --tls-allow =web
serve_fails "--tls-allow 'alice=../x'" --tls require --tls-psk "$PSK" --tls-allow alice=../x
pass "--tls-allow without --tls require, or malformed, is refused at startup"

start_server --tls require --tls-psk "$PSK" --tls-allow alice=web --tls-allow bob=db,logs
tcp() { echo "nbds://$1@127.0.0.1:$PORT/$2?tls-psk-file=$PSK"; }
unix() { echo "nbds+unix://$1@/$2?socket=$SOCK&tls-psk-file=$PSK"; }
listed() {  # listed USER URI-BUILDER: the export names USER is shown, sorted
  nbdinfo --list "$($2 "$1" "")" | sed -n 's/^export="\([^"]*\)":$/\1/p' | sort | tr '\n' ' '
}
opens() { nbdinfo --size "$1" >/dev/null 2>&1; }

for way in tcp unix; do
  [ "$(listed alice $way)" = "web " ] || fail "alice over $way lists '$(listed alice $way)', want web only"
  [ "$(listed bob $way)" = "db logs " ] || fail "bob over $way lists '$(listed bob $way)', want db logs"
  got=$(nbdinfo --list "$($way carol "")" 2>&1 | sed -n 's/^export="\([^"]*\)":$/\1/p') || true
  [ -z "$got" ] || fail "carol over $way lists '$got', want nothing"
  opens "$($way alice web)" || fail "alice cannot open web over $way"
  for v in db logs; do
    if opens "$($way alice $v)"; then fail "alice opened $v over $way"; fi
  done
  opens "$($way bob db)" || fail "bob cannot open db over $way"
  opens "$($way bob logs)" || fail "bob cannot open logs over $way"
  if opens "$($way bob web)"; then fail "bob opened web over $way"; fi
  for v in web db logs; do
    if opens "$($way carol $v)"; then fail "carol opened $v over $way"; fi
  done
done
# What alice is told about db: no such export, not "forbidden".
err=$(nbdinfo --size "$(unix alice db)" 2>&1) && fail "alice opened db"
grep -qi "no export named\|unknown" <<<"$err" || fail "alice's refusal for db does not read as unknown: $err"
pass "alice sees and opens web only, bob db and logs only, carol nothing; over TCP and the Unix socket"

tls_nbdsh() { nbdsh -c 'h.set_uri_allow_local_file(True)' -c "h.connect_uri('$1')" -c "$2"; }
tls_nbdsh "$(unix bob db)" "h.pwrite(b'B' * 4096, 8192); h.flush()" || fail "bob cannot write db"
got=$(tls_nbdsh "$(unix bob db)" "print(h.pread(4096, 8192) == b'B' * 4096)") || fail "bob cannot read db"
[ "$got" = True ] || fail "bob reads back other bytes from db"
pass "bob writes db and reads it back"
stop_server
