#!/usr/bin/env bash
# NBD over TLS with real clients, and per-listener export lists.
#  - X.509 (a CA and a server certificate made here with certtool) and PSK
#    (a key file made with psktool), both on one server: nbdinfo/nbdsh/nbdcopy
#    with nbds:// URIs and qemu-io with tls-creds-x509 / tls-creds-psk read
#    and write, over TCP and the Unix socket; pipelined, structured replies.
#  - --tls require: a plain client gets ERR_TLS_REQD and no export names;
#    EXPORT_NAME in the clear closes; a wrong or unknown PSK is refused; a
#    client whose CA did not sign the server's certificate refuses it.
#  - --tls on: plain clients still work. --tls-verify-peer: a client
#    certificate signed by the CA is needed (none, or one signed by another
#    CA, is refused); with DIR/ca-crl.pem, one the CA revoked is refused.
#  - Bad TLS settings and files are clear errors at startup.
#  - --exports-tcp / --exports-unix: each listener sees only its volumes.
source "$(dirname "$0")/lib.sh"
need nbdinfo nbdcopy qemu-io certtool psktool
"$PY" -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed"

# --- Credentials -------------------------------------------------------------
PKI=$T/pki          # the server's: ca-cert.pem, server-cert.pem, server-key.pem
CLIENT=$T/client    # a client's: ca-cert.pem only (checks the server)
CLIENT_CERT=$T/client-cert  # a client with a certificate: + client-cert.pem, client-key.pem
mkdir -m 0700 "$PKI" "$CLIENT" "$CLIENT_CERT" "$T/psk" "$T/wrong-psk" "$T/other-user"
certtool --generate-privkey --outfile "$T/ca-key.pem" >/dev/null 2>&1
cat >"$T/ca.info" <<'EOF'
cn = ebs test CA
ca
cert_signing_key
expiration_days = 2
EOF
certtool --generate-self-signed --load-privkey "$T/ca-key.pem" --template "$T/ca.info" \
  --outfile "$PKI/ca-cert.pem" >/dev/null 2>&1 || fail "certtool: CA"
certtool --generate-privkey --outfile "$PKI/server-key.pem" >/dev/null 2>&1
chmod 0600 "$PKI/server-key.pem"
cat >"$T/server.info" <<'EOF'
organization = ebs test
cn = localhost
dns_name = localhost
ip_address = 127.0.0.1
tls_www_server
encryption_key
signing_key
expiration_days = 2
EOF
certtool --generate-certificate --load-ca-certificate "$PKI/ca-cert.pem" --load-ca-privkey "$T/ca-key.pem" \
  --load-privkey "$PKI/server-key.pem" --template "$T/server.info" --outfile "$PKI/server-cert.pem" \
  >/dev/null 2>&1 || fail "certtool: server certificate"
cp "$PKI/ca-cert.pem" "$CLIENT/"
cp "$PKI/ca-cert.pem" "$CLIENT_CERT/"
certtool --generate-privkey --outfile "$CLIENT_CERT/client-key.pem" >/dev/null 2>&1
cat >"$T/client.info" <<'EOF'
cn = ebs test client
tls_www_client
encryption_key
signing_key
expiration_days = 2
EOF
certtool --generate-certificate --load-ca-certificate "$PKI/ca-cert.pem" --load-ca-privkey "$T/ca-key.pem" \
  --load-privkey "$CLIENT_CERT/client-key.pem" --template "$T/client.info" \
  --outfile "$CLIENT_CERT/client-cert.pem" >/dev/null 2>&1 || fail "certtool: client certificate"
# Another CA, which signed neither the server's certificate nor the good
# client's: a client trusting only it (OTHER_CA) must not accept the server,
# and a client certificate it signed (OTHER_CERT, which does trust the
# server's CA) must not get past --tls-verify-peer.
OTHER_CA=$T/other-ca          # ca-cert.pem: the other CA only
OTHER_CERT=$T/other-cert      # the server's CA + a client certificate the other CA signed
mkdir -m 0700 "$OTHER_CA" "$OTHER_CERT"
certtool --generate-privkey --outfile "$T/other-ca-key.pem" >/dev/null 2>&1
sed 's/^cn = .*/cn = ebs other test CA/' "$T/ca.info" >"$T/other-ca.info"
certtool --generate-self-signed --load-privkey "$T/other-ca-key.pem" --template "$T/other-ca.info" \
  --outfile "$OTHER_CA/ca-cert.pem" >/dev/null 2>&1 || fail "certtool: other CA"
cp "$PKI/ca-cert.pem" "$OTHER_CERT/"
certtool --generate-privkey --outfile "$OTHER_CERT/client-key.pem" >/dev/null 2>&1
certtool --generate-certificate --load-ca-certificate "$OTHER_CA/ca-cert.pem" --load-ca-privkey "$T/other-ca-key.pem" \
  --load-privkey "$OTHER_CERT/client-key.pem" --template "$T/client.info" \
  --outfile "$OTHER_CERT/client-cert.pem" >/dev/null 2>&1 || fail "certtool: client certificate of the other CA"
certtool --verify --load-ca-certificate "$OTHER_CA/ca-cert.pem" --infile "$PKI/server-cert.pem" >/dev/null 2>&1 &&
  fail "certtool: the other CA verifies the server certificate"
certtool --verify --load-ca-certificate "$PKI/ca-cert.pem" --infile "$OTHER_CERT/client-cert.pem" >/dev/null 2>&1 &&
  fail "certtool: the server's CA verifies the other CA's client certificate"
# qemu's tls-creds-psk reads DIR/keys.psk.
PSK=$T/psk/keys.psk
psktool -u alice -p "$PSK" >/dev/null
psktool -u alice -p "$T/wrong-psk/keys.psk" >/dev/null   # same user, another key
psktool -u mallory -p "$T/other-user/keys.psk" >/dev/null
chmod 0600 "$PSK"
pass "CA, server and client certificates, another CA and a client certificate it signed (certtool), PSK files (psktool)"

ebs volume create tvol  --type gp3 --size 1G >/dev/null
ebs volume create qx509 --type gp3 --size 1G >/dev/null
ebs volume create qpsk  --type gp3 --size 1G >/dev/null
ebs volume create copy  --type gp3 --size 1G >/dev/null

# --- Startup errors ----------------------------------------------------------
# serve_fails WANT ARGS...: `ebs serve ARGS` exits non-zero, saying WANT.
serve_fails() {
  local want=$1 out rc=0; shift
  out=$("$EBS" serve --listen none --socket "$T/never.sock" "$@" 2>&1) || rc=$?
  [ $rc -ne 0 ] || fail "ebs serve $* started"
  grep -qF -- "$want" <<<"$out" || { echo "$out"; fail "ebs serve $*: error does not say '$want'"; }
}
serve_fails "needs credentials" --tls on
serve_fails "needs credentials" --tls require
serve_fails "need --tls on" --tls-psk "$PSK"
serve_fails "--tls" --tls maybe
mkdir "$T/empty"
serve_fails "$T/empty/server-cert.pem" --tls on --tls-certs "$T/empty"
serve_fails "$T/nosuch" --tls on --tls-certs "$T/nosuch"
printf 'alice:c0ffee\nbob:zz\n' >"$T/bad.psk"
serve_fails "$T/bad.psk line 2" --tls on --tls-psk "$T/bad.psk"
serve_fails "$T/missing.psk" --tls on --tls-psk "$T/missing.psk"
mkdir "$T/badkey" && cp "$PKI/server-cert.pem" "$T/badkey/" && echo garbage >"$T/badkey/server-key.pem"
serve_fails "server-key.pem" --tls on --tls-certs "$T/badkey"
mkdir "$T/noca" && cp "$PKI/server-cert.pem" "$PKI/server-key.pem" "$T/noca/"
serve_fails "ca-cert.pem" --tls on --tls-certs "$T/noca" --tls-verify-peer
serve_fails "--exports-tcp" --exports-tcp '../etc'
pass "bad TLS settings and files are refused at startup, naming the problem"

# --- --tls require with X.509 and PSK -----------------------------------------
start_server --tls require --tls-certs "$PKI" --tls-psk "$PSK"
grep -q "ebs: TLS required" "$T/server.log" || fail "server log does not say TLS is required"
X509_TCP="nbds://127.0.0.1:$PORT/tvol?tls-certificates=$CLIENT"
PSK_TCP="nbds://alice@127.0.0.1:$PORT/tvol?tls-psk-file=$PSK"
X509_UNIX="nbds+unix:///tvol?socket=$SOCK&tls-certificates=$CLIENT"
PSK_UNIX="nbds+unix://alice@/tvol?socket=$SOCK&tls-psk-file=$PSK"

for u in "$X509_TCP" "$PSK_TCP" "$X509_UNIX" "$PSK_UNIX"; do
  got=$(nbdinfo --size "$u") || fail "nbdinfo --size $u"
  [ "$got" = 1073741824 ] || fail "nbdinfo --size $u: $got"
done
list=$(nbdinfo --list "nbds://alice@127.0.0.1:$PORT?tls-psk-file=$PSK") || fail "nbdinfo --list over TLS"
for v in tvol qx509 qpsk copy; do grep -q "^export=\"$v\":" <<<"$list" || fail "TLS --list misses $v"; done
pass "nbdinfo over TLS: size and list, X.509 and PSK, TCP and Unix socket"

# tls_nbdsh URI SCRIPT: nbdsh on a URI that names files (libnbd allows that
# only when asked).
tls_nbdsh() { nbdsh -c 'h.set_uri_allow_local_file(True)' -c "h.connect_uri('$1')" -c "$2"; }

# Data written over one kind of TLS reads back over the other; block status
# (structured replies, base:allocation) works inside TLS.
tls_nbdsh "$X509_TCP" '
h.pwrite(b"\x5a" * (1 << 20), 3 << 20)
h.flush()
' || fail "nbdsh write over X.509"
tls_nbdsh "$PSK_UNIX" '
assert h.get_structured_replies_negotiated()
assert h.pread(1 << 20, 3 << 20) == b"\x5a" * (1 << 20)
assert h.pread(4096, 0) == bytes(4096)
' || fail "nbdsh read back over PSK"
map=$(nbdinfo --map "$PSK_TCP") || fail "nbdinfo --map over TLS"
grep -Eq '^ +3145728 +1048576 +0 +data$' <<<"$map" || { echo "$map"; fail "map over TLS"; }
pass "nbdsh write over X.509, read back over PSK; nbdinfo --map over TLS"

# Many requests in flight, large replies: nbdcopy in and out, compared.
"$PY" - "$T/src.img" <<'PYEOF'
import os, sys
M = 1 << 20
with open(sys.argv[1], "wb") as f:
    f.truncate(64 * M)
    for off in (0, 5 * M, 17 * M, 40 * M, 63 * M):
        f.seek(off); f.write(os.urandom(M + 12345 if off < 63 * M else M))
PYEOF
COPY_X509="nbds://127.0.0.1:$PORT/copy?tls-certificates=$CLIENT"
nbdcopy --connections=2 --requests=32 "$T/src.img" "$COPY_X509" || fail "nbdcopy into the volume over TLS"
nbdcopy --requests=32 "nbds+unix://alice@/copy?socket=$SOCK&tls-psk-file=$PSK" "$T/out.img" ||
  fail "nbdcopy out of the volume over TLS"
cmp <(head -c $((64 << 20)) "$T/out.img") "$T/src.img" || fail "data copied through TLS differs"
pass "nbdcopy in (X.509, 2 connections) and out (PSK), pipelined: identical"

# qemu-io: X.509 over TCP, PSK over the Unix socket.
# qemu_io OBJECT IMAGE-OPTS CMDS...: fails on a non-zero exit or any failed
# verification or I/O error in the output.
qemu_io() {
  local obj=$1 opts=$2 args=() c out rc=0; shift 2
  for c in "$@"; do args+=(-c "$c"); done
  out=$(qemu-io --object "$obj" --image-opts "$opts" "${args[@]}" 2>&1) || rc=$?
  if [ $rc -ne 0 ] || grep -Eqi 'Pattern verification failed|error|failed' <<<"$out"; then
    echo "$out"
    fail "qemu-io $opts exited $rc"
  fi
}
X509_OBJ="tls-creds-x509,id=tls0,dir=$CLIENT,endpoint=client"
PSK_OBJ="tls-creds-psk,id=tls0,dir=$T/psk,username=alice,endpoint=client"
QX509="driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$PORT,export=qx509,tls-creds=tls0"
QPSK="driver=nbd,server.type=unix,server.path=$SOCK,export=qpsk,tls-creds=tls0"
QX509_UNIX="driver=nbd,server.type=unix,server.path=$SOCK,export=qx509,tls-creds=tls0"
QPSK_TCP="driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$PORT,export=qpsk,tls-creds=tls0"
qemu_io "$X509_OBJ" "$QX509" 'write -P 0xaa 0 1M' 'write -P 0x55 1M 64k' 'aio_write -P 0x11 2M 4k' \
  'aio_write -P 0x22 2052k 4k' 'aio_flush' 'write -z 4M 1M' 'read -P 0xaa 0 1M' 'read -P 0x55 1M 64k' \
  'read -P 0x11 2M 4k' 'read -P 0x22 2052k 4k' 'read -P 0 4M 1M'
qemu_io "$PSK_OBJ" "$QPSK" 'write -P 0xcc 0 2M' 'write -f -P 0xdd 8M 1M' 'discard 0 1M' 'read -P 0 0 1M' \
  'read -P 0xcc 1M 1M' 'read -P 0xdd 8M 1M'
# And the other way round, in new processes.
qemu_io "$PSK_OBJ" "$QX509_UNIX" 'read -P 0xaa 0 1M' 'read -P 0x22 2052k 4k'
qemu_io "$X509_OBJ" "$QPSK_TCP" 'read -P 0xcc 1M 1M' 'read -P 0xdd 8M 1M'
out=$(qemu-io --object "$X509_OBJ" --image-opts "$QX509" -c 'read -P 0xab 0 1M' 2>&1) || true
grep -q 'Pattern verification failed' <<<"$out" || { echo "$out"; fail "qemu-io over TLS did not detect a wrong pattern"; }
pass "qemu-io write/read/zero/discard with tls-creds-x509 (TCP) and tls-creds-psk (Unix)"

# A plain client is refused: libnbd cannot even list.
if nbdinfo --list "nbd://127.0.0.1:$PORT" >/dev/null 2>&1; then fail "plain nbdinfo --list worked under --tls require"; fi
if nbdinfo --size "$(uri tvol)" >/dev/null 2>&1; then fail "plain nbdinfo worked under --tls require"; fi
if qemu-io -f raw -c 'read 0 4k' "$(tcp_uri tvol)" >/dev/null 2>&1; then fail "plain qemu-io worked"; fi
# On the wire: ERR_TLS_REQD for every option but STARTTLS/ABORT, nothing
# about the volumes; EXPORT_NAME closes; STARTTLS is acknowledged.
"$PY" - "$PORT" <<'PYEOF' || fail "raw plain client under --tls require"
import socket, struct, sys
IHAVEOPT, REPLY_MAGIC = 0x49484156454F5054, 0x3E889045565A9
ERR_TLS_REQD, ACK = (1 << 31) + 5, 1

def connect():
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
    hello = recv(s, 18)
    assert hello[:16] == b"NBDMAGICIHAVEOPT", hello
    s.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
    return s

def recv(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError(f"closed after {len(b)}/{n} bytes")
        b += c
    return b

def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)
    magic, o, rtype, length = struct.unpack(">QIII", recv(s, 20))
    assert magic == REPLY_MAGIC and o == opt, (hex(magic), o, opt)
    return rtype, recv(s, length)

s = connect()
info = struct.pack(">I", 4) + b"tvol" + struct.pack(">H", 0)
meta = struct.pack(">I", 4) + b"tvol" + struct.pack(">II", 1, 15) + b"base:allocation"
for opt, data in ((3, b""), (6, info), (7, info), (8, b""), (9, meta), (10, meta), (99, b"")):
    rtype, payload = option(s, opt, data)
    assert rtype == ERR_TLS_REQD, f"option {opt}: reply {rtype:#x}, want ERR_TLS_REQD"
    for v in (b"tvol", b"qx509", b"qpsk", b"copy"):
        assert v not in payload, f"option {opt} leaked {v}: {payload!r}"
s.sendall(struct.pack(">QII", IHAVEOPT, 1, 4) + b"tvol")  # EXPORT_NAME
s.settimeout(5)
assert s.recv(1) == b"", "EXPORT_NAME without TLS did not close the connection"
s.close()

s = connect()
assert option(s, 5) == (ACK, b""), "STARTTLS not acknowledged"
s.close()
s = connect()
assert option(s, 2) == (ACK, b""), "ABORT not acknowledged"
s.close()
PYEOF
pass "plain clients refused: ERR_TLS_REQD, no export names, EXPORT_NAME closes"

# Wrong key, unknown user, untrusted client: refused.
if nbdinfo --size "nbds://alice@127.0.0.1:$PORT/tvol?tls-psk-file=$T/wrong-psk/keys.psk" >/dev/null 2>&1; then
  fail "a wrong PSK was accepted"
fi
if nbdinfo --size "nbds://mallory@127.0.0.1:$PORT/tvol?tls-psk-file=$T/other-user/keys.psk" >/dev/null 2>&1; then
  fail "an unknown PSK user was accepted"
fi
if qemu-io --object "tls-creds-psk,id=tls0,dir=$T/wrong-psk,username=alice,endpoint=client" \
   --image-opts "$QPSK" -c 'read 0 4k' >/dev/null 2>&1; then
  fail "qemu-io with a wrong PSK was accepted"
fi
grep -q "TLS handshake failed" "$T/server.log" || fail "refused handshakes are not logged"
# The server is still fine.
nbdinfo --size "$PSK_TCP" >/dev/null || fail "server broken after refused handshakes"
pass "wrong PSK key and unknown PSK user refused (nbdinfo, qemu-io); server keeps serving"

# A client whose CA did not sign the server's certificate refuses the
# server: nbdinfo over TCP, qemu-io over TCP and the Unix socket (libnbd
# 1.14 verifies the server only over TCP: nbd_set_tls_verify_peer defaults to
# false on Unix sockets and setting it does not help without a host name,
# which libnbd cannot be given there; qemu takes one, tls-hostname). The
# same clients with the server's CA get in.
if out=$(nbdinfo --size "nbds://127.0.0.1:$PORT/tvol?tls-certificates=$OTHER_CA" 2>&1); then
  fail "nbdinfo trusting only another CA accepted the server: $out"
fi
grep -qi 'certificate' <<<"$out" || { echo "$out"; fail "nbdinfo: the failure does not name the certificate"; }
for d in "$OTHER_CA" "$CLIENT"; do
  for q in "$QX509" "$QX509_UNIX,tls-hostname=localhost"; do
    rc=0
    out=$(qemu-io --object "tls-creds-x509,id=tls0,dir=$d,endpoint=client" --image-opts "$q" -c 'read 0 4k' 2>&1) || rc=$?
    if [ "$d" = "$OTHER_CA" ]; then
      [ $rc -ne 0 ] || fail "qemu-io trusting only another CA accepted the server ($q): $out"
      grep -qi 'certificate' <<<"$out" || { echo "$out"; fail "qemu-io $q: the failure does not name the certificate"; }
    else
      [ $rc -eq 0 ] || fail "qemu-io with the server's CA ($q): $out"
    fi
  done
done
# Without --tls-verify-peer the server does not ask for client
# certificates: one the other CA signed is not looked at (the refusal
# below is the server's verification, not the client's).
got=$(nbdinfo --size "nbds://127.0.0.1:$PORT/tvol?tls-certificates=$OTHER_CERT") ||
  fail "a client with the other CA's certificate was refused without --tls-verify-peer"
[ "$got" = 1073741824 ] || fail "size $got"
nbdinfo --size "$X509_TCP" >/dev/null || fail "server broken after refused handshakes"
pass "a client not trusting the server's certificate refuses it (nbdinfo TCP, qemu-io TCP and Unix)"
stop_server

# --- --tls on: TLS offered, plain still served ---------------------------------
start_server --tls on --tls-psk "$PSK"
got=$(nbdinfo --size "$(uri tvol)") || fail "plain nbdinfo under --tls on"
[ "$got" = 1073741824 ] || fail "plain size $got"
got=$(nbdinfo --size "$PSK_UNIX") || fail "TLS nbdinfo under --tls on"
[ "$got" = 1073741824 ] || fail "TLS size $got"
nbdsh -u "$(tcp_uri tvol)" -c 'assert h.pread(1 << 20, 3 << 20) == b"\x5a" * (1 << 20)' || fail "plain read under --tls on"
qemu_io "$PSK_OBJ" "$QPSK" 'read -P 0xdd 8M 1M'
pass "--tls on: plain and TLS clients both served"
stop_server

# --- --tls-verify-peer: client certificates signed by the CA ----------------------
start_server --tls require --tls-certs "$PKI" --tls-verify-peer
got=$(nbdinfo --size "nbds://127.0.0.1:$PORT/tvol?tls-certificates=$CLIENT_CERT") ||
  fail "nbdinfo with a client certificate under --tls-verify-peer"
[ "$got" = 1073741824 ] || fail "size $got"
if nbdinfo --size "$X509_TCP" >/dev/null 2>&1; then fail "a client without a certificate got in under --tls-verify-peer"; fi
# A client certificate signed by another CA (the client itself trusts the
# server's CA): refused, over TCP and the Unix socket, nbdinfo and qemu-io.
marked=$(wc -l <"$T/server.log")
for u in "nbds://127.0.0.1:$PORT/tvol?tls-certificates=$OTHER_CERT" \
         "nbds+unix:///tvol?socket=$SOCK&tls-certificates=$OTHER_CERT"; do
  if out=$(nbdinfo --size "$u" 2>&1); then
    fail "a client certificate signed by another CA got in under --tls-verify-peer ($u): $out"
  fi
done
if out=$(qemu-io --object "tls-creds-x509,id=tls0,dir=$OTHER_CERT,endpoint=client" \
   --image-opts "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$PORT,export=qx509,tls-creds=tls0" \
   -c 'read 0 4k' 2>&1); then
  fail "qemu-io with a client certificate signed by another CA got in under --tls-verify-peer: $out"
fi
tail -n +$((marked + 1)) "$T/server.log" | grep -q "TLS handshake failed" ||
  fail "the refused client certificates are not logged"
# The server keeps serving the right certificate.
got=$(nbdinfo --size "nbds+unix:///tvol?socket=$SOCK&tls-certificates=$CLIENT_CERT") ||
  fail "server broken after refusing client certificates"
[ "$got" = 1073741824 ] || fail "size $got"
pass "--tls-verify-peer: a CA-signed client certificate gets in; none, or one signed by another CA (nbdinfo, qemu-io), does not"
stop_server

# --- --tls-verify-peer with a CRL: a revoked client certificate is refused ------
# REVOKED: a second client certificate of the same CA. First it gets in (it
# is good); then the CA revokes it in DIR/ca-crl.pem (certtool
# --generate-crl), and a server started with that file refuses it while
# the other client certificate still gets in. Over the Unix socket.
REVOKED=$T/revoked-cert
PKI_CRL=$T/pki-crl
mkdir -m 0700 "$REVOKED" "$PKI_CRL"
cp "$PKI/ca-cert.pem" "$REVOKED/"
cp -p "$PKI"/* "$PKI_CRL/"
certtool --generate-privkey --outfile "$REVOKED/client-key.pem" >/dev/null 2>&1
sed 's/^cn = .*/cn = ebs revoked test client/' "$T/client.info" >"$T/revoked.info"
certtool --generate-certificate --load-ca-certificate "$PKI/ca-cert.pem" --load-ca-privkey "$T/ca-key.pem" \
  --load-privkey "$REVOKED/client-key.pem" --template "$T/revoked.info" \
  --outfile "$REVOKED/client-cert.pem" >/dev/null 2>&1 || fail "certtool: the client certificate to revoke"
REVOKED_UNIX="nbds+unix:///tvol?socket=$SOCK&tls-certificates=$REVOKED"
GOOD_UNIX="nbds+unix:///tvol?socket=$SOCK&tls-certificates=$CLIENT_CERT"
start_server --tls require --tls-certs "$PKI_CRL" --tls-verify-peer
got=$(nbdinfo --size "$REVOKED_UNIX" 2>&1) || fail "the client certificate to revoke is refused before its revocation: $got"
stop_server
printf 'crl_next_update = 2\ncrl_number = 1\n' >"$T/crl.info"
certtool --generate-crl --load-ca-privkey "$T/ca-key.pem" --load-ca-certificate "$PKI/ca-cert.pem" \
  --load-certificate "$REVOKED/client-cert.pem" --template "$T/crl.info" \
  --outfile "$PKI_CRL/ca-crl.pem" >/dev/null 2>&1 || fail "certtool: CRL"
certtool --verify --load-ca-certificate "$PKI/ca-cert.pem" --load-crl "$PKI_CRL/ca-crl.pem" \
  --infile "$REVOKED/client-cert.pem" >/dev/null 2>&1 && fail "certtool: the CRL does not revoke the certificate"
start_server --tls require --tls-certs "$PKI_CRL" --tls-verify-peer
grep -q "checked against ca-crl.pem" "$T/server.log" || fail "the server does not say it checks ca-crl.pem: $(cat "$T/server.log")"
marked=$(wc -l <"$T/server.log")
if out=$(nbdinfo --size "$REVOKED_UNIX" 2>&1); then
  fail "a revoked client certificate got in under --tls-verify-peer: $out"
fi
if out=$(tls_nbdsh "$REVOKED_UNIX" 'h.pwrite(b"x" * 4096, 0)' 2>&1); then
  fail "a revoked client certificate could write under --tls-verify-peer: $out"
fi
tail -n +$((marked + 1)) "$T/server.log" | grep -q "TLS handshake failed" ||
  fail "the refused revoked certificate is not logged: $(tail -n +$((marked + 1)) "$T/server.log")"
got=$(nbdinfo --size "$GOOD_UNIX") || fail "a client certificate not revoked is refused with the CRL"
[ "$got" = 1073741824 ] || fail "size $got"
pass "--tls-verify-peer with ca-crl.pem: the revoked client certificate is refused (it got in before the CRL), the other one gets in"
stop_server

# --- Per-listener export lists --------------------------------------------------
# The default export (empty name) is qpsk: Unix only.
start_server --exports-tcp qx509,tvol --exports-unix qpsk --default-export qpsk
list=$(nbdinfo --list "nbd://127.0.0.1:$PORT") || fail "TCP list"
[ "$(grep -c '^export=' <<<"$list")" -eq 2 ] || { echo "$list"; fail "TCP lists other volumes"; }
grep -q '^export="qx509":' <<<"$list" && grep -q '^export="tvol":' <<<"$list" || { echo "$list"; fail "TCP list"; }
list=$(nbdinfo --list "nbd+unix:///?socket=$SOCK") || fail "Unix list"
[ "$(grep -c '^export=' <<<"$list")" -eq 1 ] && grep -q '^export="qpsk":' <<<"$list" || { echo "$list"; fail "Unix list"; }
nbdinfo --size "$(tcp_uri tvol)" >/dev/null || fail "allowed volume over TCP"
nbdinfo --size "$(uri qpsk)" >/dev/null || fail "allowed volume over Unix"
nbdinfo --size "nbd+unix:///?socket=$SOCK" >/dev/null || fail "default export over Unix"
for u in "$(tcp_uri qpsk)" "$(tcp_uri copy)" "$(uri tvol)" "nbd://127.0.0.1:$PORT/"; do
  if nbdinfo --size "$u" >/dev/null 2>&1; then fail "$u was served outside its listener's list"; fi
done
# INFO, GO and meta contexts answer ERR_UNKNOWN, as for a volume that does not exist.
"$PY" - "$PORT" <<'PYEOF' || fail "raw client: volume outside the TCP list"
import socket, struct, sys
ERR_UNKNOWN = (1 << 31) + 6
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.recv(18)
s.sendall(struct.pack(">I", 3))
def recv(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b)); assert c, "closed"; b += c
    return b
for opt, data in ((6, struct.pack(">I", 4) + b"qpsk" + struct.pack(">H", 0)),
                  (7, struct.pack(">I", 4) + b"qpsk" + struct.pack(">H", 0)),
                  (9, struct.pack(">I", 4) + b"qpsk" + struct.pack(">I", 0))):
    s.sendall(struct.pack(">QII", 0x49484156454F5054, opt, len(data)) + data)
    _, o, rtype, length = struct.unpack(">QIII", recv(20)); recv(length)
    assert rtype == ERR_UNKNOWN, f"option {opt}: {rtype:#x}, want ERR_UNKNOWN"
PYEOF
out=$(qemu-io -f raw -c 'read -P 0xaa 0 1M' "$(tcp_uri qx509)" 2>&1) || { echo "$out"; fail "qemu-io on an allowed volume"; }
pass "--exports-tcp / --exports-unix: each listener lists and serves only its volumes"
stop_server
pass "server stopped cleanly"
