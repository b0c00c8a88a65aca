#!/usr/bin/env python3
"""Writes the seed corpora of nbd_stream_fuzzer (corpus/: valid client streams
for the main paths: list, info, go with structured replies and
base:allocation, export-name, every command, STARTTLS and the start of a TLS
handshake, an option flood, a block status storm) and handshake_fuzzer
(handshake-corpus/: a budget byte, then a client stream).
Run from this folder: ./make_seeds.py"""
import os
import struct

IHAVEOPT = 0x49484156454F5054
REQ = 0x25609513


def opt(code, data=b""):
    return struct.pack(">QII", IHAVEOPT, code, len(data)) + data


def info_req(name, infos=()):
    n = name.encode()
    return struct.pack(">I", len(n)) + n + struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos)


def meta_req(name, queries):
    n = name.encode()
    out = struct.pack(">I", len(n)) + n + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q)) + q.encode()
    return out


def cmd(typ, offset=0, length=0, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", REQ, flags, typ, cookie, offset, length) + payload


def client_hello():
    """A minimal TLS 1.2 ClientHello offering TLS_PSK_WITH_AES_128_GCM_SHA256."""
    body = struct.pack(">H", 0x0303) + bytes(32) + b"\x00" + struct.pack(">HH", 2, 0x00A8) + b"\x01\x00"
    body += struct.pack(">H", 0)  # no extensions
    hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16" + struct.pack(">HH", 0x0303, len(hs)) + hs


FLAGS = struct.pack(">I", 3)
GO_STRUCTURED = FLAGS + opt(8) + opt(10, meta_req("vol0", ["base:allocation"])) + opt(7, info_req("vol0", [1, 2, 3]))
commands = (
    cmd(1, 0, 4096, 1, 1, b"\xab" * 4096) + cmd(0, 0, 4096, 0, 2) + cmd(0, 8192, 512, 4, 3) +
    cmd(6, 4096, 8192, 2, 4) + cmd(4, 65536, 4096, 0, 5) + cmd(3, cookie=6) + cmd(5, 0, 4096, cookie=7) +
    cmd(7, 0, 1 << 20, 0, 8) + cmd(7, 0, 1 << 20, 8, 9) + cmd(0, 1 << 40, 512, cookie=10) +
    cmd(1, 1 << 30, 512, 0, 11, b"\0" * 512) + cmd(99, cookie=12) + cmd(0, 1, 3, cookie=13) + cmd(2))
seeds = {
    "list": FLAGS + opt(3) + opt(2),
    "info": FLAGS + opt(6, info_req("vol0", [0, 1, 2, 3])) + opt(6, info_req("nope")) + opt(2),
    "meta": FLAGS + opt(9, meta_req("vol0", [])) + opt(8) + opt(10, meta_req("vol0", ["base:allocation"])) + opt(2),
    "go_commands": GO_STRUCTURED + commands,
    "export_name_simple": struct.pack(">I", 1) + opt(1, b"vol0") + commands,
    "unknown_options": FLAGS + opt(99, b"xx") + opt(11) + opt(4, b"vol0") + opt(5, b"x") + opt(2),
    # The server offers TLS: what follows STARTTLS goes to the TLS handshake.
    "starttls": FLAGS + opt(3) + opt(5) + client_hello(),
    # A client that floods options (the server stops reading, then closes
    # after 4,096), and one that pipelines block status over a range.
    "list_flood": FLAGS + opt(3) * 5000,
    "block_status_storm": GO_STRUCTURED + b"".join(cmd(7, 0, 64 << 20, 0, i) for i in range(128)) + cmd(2),
}
# handshake_fuzzer: the first byte picks the reply budget (odd: TLS offered).
handshake_seeds = {
    "list_flood": b"\x00" + FLAGS + opt(3) * 300,
    "too_many_options": b"\x10" + FLAGS + opt(99) * 4100,
    "info_go": b"\x03" + FLAGS + opt(8) + opt(6, info_req("vol0", [0, 1, 2, 3])) + opt(6, info_req("nope")) +
               opt(10, meta_req("vol0", ["base:allocation"])) + opt(7, info_req("db", [1, 2, 3])),
    "oversized": b"\x01" + FLAGS + struct.pack(">QII", IHAVEOPT, 3, 70000) + b"x" * 70000 + opt(3),
    "starttls": b"\x05" + FLAGS + opt(3) + opt(5) + client_hello(),
}
for folder, items in (("corpus", seeds), ("handshake-corpus", handshake_seeds)):
    os.makedirs(folder, exist_ok=True)
    for name, data in items.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
