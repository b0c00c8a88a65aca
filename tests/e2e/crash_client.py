#!/usr/bin/python3
"""Seeded NBD writer and checker for the kill -9 crash tests (test-crash.sh).

  crash_client.py write URI JOURNAL --seed N [--span BYTES] [--depth N]
                  [--flush-every N] [--fua-percent P] [--ready FILE] [--max-seconds S]
      Writes 4-64 KiB blocks (4 KiB aligned) at random offsets of the first
      SPAN bytes, some with FUA, a FLUSH every N writes, up to DEPTH requests in
      flight, and journals what the server acknowledged. Runs until the
      connection is lost (the server was killed: exit 0) or MAX-SECONDS pass
      (exit 3). The journal's lines are fsync'ed in batches, one per round of
      answers, always before the requests that depend on them are sent.

  crash_client.py verify URI [--journal FILE]... [--min-acked N] [--base STATE]
                  [--state-out STATE] [--span BYTES] [--check-rest]
      Reads the first SPAN bytes and checks every 4 KiB block against what
      the journal allows (see below; several journals: of runs one after
      another on the volume, oldest first, each with its own seed); --check-rest also checks that every byte
      past SPAN reads as zero. Writes the content found to --state-out, the
      base of the next run. Exits 1 and names every bad block on a mismatch,
      and also when the journals hold fewer than N acknowledged writes
      (default 1): a writer that got nothing acknowledged leaves nothing to
      check, and a check of nothing must not pass.

  crash_client.py fill URI --seed N --span BYTES --state-out STATE [--piece BYTES]
      Gives the first SPAN bytes of a new (all-zero) volume seeded content,
      piece by piece (default 512 KiB, the store's chunk size): a quarter of
      the pieces stay zero, half are filled whole, a quarter get one block
      in two at random; then FLUSH. Writes what it wrote to --state-out (the
      format verify writes): the base for checking a restore of a snapshot
      taken now. A block's content is gen(SEED, 0, OFF); writers number
      their writes from 1.

  crash_client.py compare URI_A URI_B
      The two exports have the same size and the same bytes (reads every
      range that either reports as data in base:allocation). Exit 1 if not.

Content. The 4 KiB block at byte offset OFF written by write SEQ of the run
with seed SEED is gen(SEED, SEQ, OFF): a 32-byte header (magic, seed, seq,
offset) followed by its SHA-256 repeated, so any block read back names the
write that put it there.

Journal. One line per event, appended and fsync'ed before the client acts on
it (before the requests it announces are sent, before a FLUSH that depends on
an acknowledgement is sent):
  H seed=N span=N                 header
  S SEQ OFFSET LENGTH FUA         write SEQ is about to be sent (FUA 0/1)
  A SEQ                           write SEQ was acknowledged (success reply)
  E SEQ ERRNO                     write SEQ failed (error reply or connection lost)
  FS ID                           FLUSH ID is about to be sent
  FA ID                           FLUSH ID was acknowledged
  FE ID ERRNO                     FLUSH ID failed
  END REASON
Writes in flight never overlap, so the writes to one block are ordered by
their S lines and each was answered before the next was sent.

What must survive. A write is durable once acknowledged with FUA, or once a
FLUSH sent after its acknowledgement was acknowledged (NBD: a FLUSH covers
every write answered before it). For each block, let D be the last durable
write to it: the block must hold D's content (the base content if there is no
D) or the content of any write to it sent after D, acknowledged or not (not
yet durable, so either may have reached the file). Anything else is a bug.
"""

import argparse
import errno
import hashlib
import json
import os
import random
import struct
import sys
import time

import nbd

BLOCK = 4096
MAGIC = b"EBSCRASH"
HDR = struct.Struct("<8sQQQ")
ZERO_BLOCK = bytes(BLOCK)
READ_PIECE = 4 << 20


def gen(seed, seq, off):
    hdr = HDR.pack(MAGIC, seed, seq, off)
    return hdr + hashlib.sha256(hdr).digest() * ((BLOCK - HDR.size) // 32)


def describe_block(data, off):
    """What a block read back holds, in words."""
    if data == ZERO_BLOCK:
        return "zeros"
    magic, seed, seq, hoff = HDR.unpack_from(data)
    if magic == MAGIC:
        intact = data == gen(seed, seq, hoff)
        where = "" if hoff == off else f" meant for offset {hoff}"
        what = "fill" if seq == 0 else f"write {seq}"
        return f"seed {seed} {what}{where}{'' if intact else ' (torn/corrupt)'}"
    return "unknown content " + data[:16].hex()


def connect(uri, meta=False):
    h = nbd.NBD()
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h


class Journal:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.pending = []

    def add(self, line):
        self.pending.append(line + "\n")

    def sync(self):
        """Makes every added line durable (one write, one fsync)."""
        if not self.pending:
            return
        data = "".join(self.pending).encode()
        self.pending = []
        while data:
            n = os.write(self.fd, data)
            data = data[n:]
        os.fsync(self.fd)


def cmd_write(a):
    h = connect(a.uri)
    size = h.get_size()
    span = min(a.span, size) // BLOCK * BLOCK
    nblocks = span // BLOCK
    rng = random.Random(a.seed)
    j = Journal(a.journal)
    j.add(f"H seed={a.seed} span={span}")
    j.sync()
    if a.ready:
        with open(a.ready, "a") as f:
            f.write("ready\n")

    busy = bytearray(nblocks)  # 1 where a write in flight covers the block
    inflight = {}  # cookie -> ("W", seq, first block, block count, buffer, fua) | ("F", flush id)
    seq = 0
    flush_id = 0
    since_flush = 0
    flush_inflight = False
    deadline = time.monotonic() + a.max_seconds
    end = None

    def pick():
        """A random run of blocks not overlapping any write in flight."""
        for _ in range(64):
            count = rng.randint(1, 16)
            first = rng.randrange(0, nblocks - count + 1)
            if not any(busy[first:first + count]):
                return first, count
        return None

    while end is None:
        # Announce (with the answers collected last round), make durable, send.
        batch = []
        while len(inflight) + len(batch) < a.depth:
            if since_flush >= a.flush_every and not flush_inflight:
                flush_id += 1
                since_flush = 0
                flush_inflight = True
                j.add(f"FS {flush_id}")
                batch.append(("F", flush_id))
                continue
            p = pick()
            if p is None:
                break
            first, count = p
            seq += 1
            since_flush += 1
            fua = rng.randrange(100) < a.fua_percent
            off = first * BLOCK
            data = b"".join(gen(a.seed, seq, off + i * BLOCK) for i in range(count))
            busy[first:first + count] = b"\x01" * count
            j.add(f"S {seq} {off} {count * BLOCK} {int(fua)}")
            batch.append(("W", seq, first, count, nbd.Buffer.from_bytearray(data), fua))
        j.sync()
        sent = 0
        try:
            for r in batch:
                if r[0] == "F":
                    cookie = h.aio_flush()
                else:
                    cookie = h.aio_pwrite(r[4], r[2] * BLOCK, flags=nbd.CMD_FLAG_FUA if r[5] else 0)
                inflight[cookie] = r
                sent += 1
        except nbd.Error as e:
            # The connection died: what was not handed to libnbd was never sent.
            for r in batch[sent:]:
                if r[0] == "F":
                    j.add(f"FE {r[1]} {e.errnum or errno.ENOTCONN}")
                else:
                    j.add(f"E {r[1]} {e.errnum or errno.ENOTCONN}")
            end = f"send-failed:{e.errnum}"
        if end is None:
            try:
                # Wait for one answer, then take every other one already here:
                # one journal fsync covers them all.
                if h.poll(100) == 1:
                    while h.aio_in_flight() and h.poll(0) == 1:
                        pass
            except nbd.Error as e:
                end = f"poll-failed:{e.errnum}"
        # Collect every answered request.
        for cookie in list(inflight):
            r = inflight[cookie]
            err = None
            try:
                if not h.aio_command_completed(cookie):
                    continue
            except nbd.Error as e:
                err = e.errnum or errno.EIO
            del inflight[cookie]
            if r[0] == "F":
                flush_inflight = False
                j.add(f"FA {r[1]}" if err is None else f"FE {r[1]} {err}")
            else:
                busy[r[2]:r[2] + r[3]] = bytes(r[3])
                j.add(f"A {r[1]}" if err is None else f"E {r[1]} {err}")
        if h.aio_is_dead() or h.aio_is_closed():
            end = end or "connection-lost"
        elif end is None and time.monotonic() > deadline:
            end = "max-seconds"
    # Whatever is still in flight was never answered.
    for cookie, r in inflight.items():
        j.add(f"{'FE' if r[0] == 'F' else 'E'} {r[1]} {errno.ENOTCONN}")
    j.add(f"END {end}")
    j.sync()
    print(f"write: seed {a.seed}: {seq} writes, {flush_id} flushes sent; {end}")
    return 0 if end != "max-seconds" else 3


def cmd_fill(a):
    h = connect(a.uri)
    span = min(a.span, h.get_size()) // BLOCK * BLOCK
    rng = random.Random(a.seed)
    per_piece = a.piece // BLOCK
    state = {}
    for piece in range(0, span, a.piece):
        mode = rng.randrange(4)  # 0: zero, 1-2: whole, 3: one block in two
        first = piece // BLOCK
        blocks = [b for b in range(first, min(first + per_piece, span // BLOCK))
                  if mode in (1, 2) or (mode == 3 and rng.randrange(2))]
        for b in blocks:
            state[b] = [a.seed, 0]
        # One request per run of consecutive blocks.
        i = 0
        while i < len(blocks):
            j = i
            while j + 1 < len(blocks) and blocks[j + 1] == blocks[j] + 1:
                j += 1
            off = blocks[i] * BLOCK
            h.pwrite(b"".join(gen(a.seed, 0, off + k * BLOCK) for k in range(j - i + 1)), off)
            i = j + 1
    h.flush()
    h.shutdown()
    with open(a.state_out, "w") as f:
        json.dump({"blocks": {str(k): v for k, v in sorted(state.items())}}, f)
    print(f"fill: seed {a.seed}: {len(state)} of {span // BLOCK} blocks written")
    return 0


def load_journal(path):
    """The run's seed; per block, the writes to it in the order they were
    sent, as (seed, seq, durable, fua); counts for the report."""
    seed = None
    writes = {}  # seq -> [off, length, fua, ack_pos or None]
    flush_sub = {}
    durable_before = -1  # every ack journaled before this line index is flushed
    order = []
    stats = {"writes": 0, "acked": 0, "flushes_acked": 0, "fua_acked": 0}
    with open(path) as f:
        for pos, line in enumerate(f):
            p = line.split()
            if not p:
                continue
            k = p[0]
            if k == "H":
                kv = dict(x.split("=", 1) for x in p[1:])
                seed = int(kv["seed"])
            elif k == "S":
                s = int(p[1])
                writes[s] = [int(p[2]), int(p[3]), p[4] == "1", None]
                order.append(s)
                stats["writes"] += 1
            elif k == "A":
                writes[int(p[1])][3] = pos
                stats["acked"] += 1
            elif k == "FS":
                flush_sub[p[1]] = pos
            elif k == "FA":
                durable_before = max(durable_before, flush_sub[p[1]])
                stats["flushes_acked"] += 1
    if seed is None:
        raise SystemExit(f"{path}: no header line")
    per_block = {}
    for s in order:
        off, length, fua, ack = writes[s]
        durable = ack is not None and (fua or ack < durable_before)
        stats["fua_acked"] += int(ack is not None and fua)
        for b in range(off // BLOCK, (off + length) // BLOCK):
            per_block.setdefault(b, []).append((seed, s, durable, fua))
    return seed, per_block, stats


def cmd_verify(a):
    h = connect(a.uri, meta=a.check_rest)
    size = h.get_size()
    base = {}
    if a.base:
        with open(a.base) as f:
            base = {int(k): tuple(v) for k, v in json.load(f)["blocks"].items()}
    per_block, stats = {}, {}
    for path in a.journal or []:
        # Journals of successive runs, oldest first: each block's history is
        # theirs in that order; a write is durable by its own run's FUA or
        # FLUSH (a later run's FLUSH is not counted: conservative).
        _, run_blocks, run_stats = load_journal(path)
        for b, hist in run_blocks.items():
            per_block.setdefault(b, []).extend(hist)
        for k, n in run_stats.items():
            stats[k] = stats.get(k, 0) + n
    if a.journal and stats["acked"] < a.min_acked:
        print(f"FAIL: the journals hold {stats['acked']} acknowledged writes ({stats['writes']} sent), "
              f"fewer than the {a.min_acked} required: nothing durable to check")
        return 1
    span = a.span
    if span is None:
        span = max([(b + 1) * BLOCK for b in list(per_block) + list(base)] + [0])
    if span > size:
        print(f"FAIL: volume is {size} bytes, smaller than the {span} bytes written")
        return 1
    bad = []
    ambiguous = 0
    state = {}
    for piece in range(0, span, READ_PIECE):
        n = min(READ_PIECE, span - piece)
        data = h.pread(n, piece)
        for i in range(0, n, BLOCK):
            off = piece + i
            b = off // BLOCK
            got = data[i:i + BLOCK]
            hist = per_block.get(b, [])
            d = max((k for k, w in enumerate(hist) if w[2]), default=-1)
            cands = [] if d >= 0 else [base.get(b)]  # None: zeros
            cands += [(w[0], w[1]) for w in hist[max(d, 0):]]
            ambiguous += len(cands) > 1
            found = None
            for c in cands:
                if got == (ZERO_BLOCK if c is None else gen(c[0], c[1], off)):
                    found = c
                    break
            else:
                if d >= 0:
                    how = "acknowledged with FUA" if hist[d][3] else "acknowledged, then a flush sent after it was"
                    why = f"write {hist[d][1]} was {how}"
                else:
                    why = "no write of this run to it was durable, so it keeps its earlier content or holds a later write"
                allowed = ", ".join("zeros" if c is None else f"seed {c[0]} write {c[1]}" for c in cands)
                bad.append(f"block at offset {off}: holds {describe_block(got, off)}; allowed: {allowed} ({why})")
                continue
            if found is not None:
                state[b] = list(found)
    if a.check_rest and span < size:
        check_zero_after(h, span, size, bad)
    h.shutdown()
    if a.state_out:
        with open(a.state_out, "w") as f:
            json.dump({"blocks": {str(k): v for k, v in sorted(state.items())}}, f)
    what = (f"{span // BLOCK} blocks checked ({ambiguous} with more than one allowed content)"
            + (f"; journal: {stats['writes']} writes sent, {stats['acked']} acknowledged, "
               f"{stats['fua_acked']} with FUA, {stats['flushes_acked']} flushes acknowledged" if a.journal else ""))
    if bad:
        for line in bad[:50]:
            print("FAIL: " + line)
        if len(bad) > 50:
            print(f"FAIL: ... and {len(bad) - 50} more")
        print(f"FAIL: {len(bad)} bad blocks of {what}")
        return 1
    print(f"verify: {what}" + ("; the rest reads as zeros" if a.check_rest else ""))
    return 0


def extents(h, start, end):
    """[(offset, length, is_zero)] covering [start, end) by base:allocation."""
    out = []
    off = start
    while off < end:
        got = []

        def cb(meta, offset, entries, err):
            if meta == nbd.CONTEXT_BASE_ALLOCATION:
                got.extend(entries)
            return 0

        h.block_status(min(end - off, 1 << 30), off, cb)
        if not got:
            raise SystemExit("FAIL: block status returned no extents")
        for i in range(0, len(got), 2):
            length, flags = got[i], got[i + 1]
            length = min(length, end - off)
            if length <= 0:
                break
            out.append((off, length, bool(flags & nbd.STATE_ZERO)))
            off += length
    return out


def check_zero_after(h, start, size, bad):
    """Appends to bad every piece of [start, size) that does not read as zeros."""
    for off, length, zero in extents(h, start, size):
        if zero:
            continue
        for p in range(off, off + length, READ_PIECE):
            n = min(READ_PIECE, off + length - p)
            if h.pread(n, p) != bytes(n):
                bad.append(f"bytes {p}..{p + n} past the written span are not zero")


def cmd_compare(a):
    ha, hb = connect(a.uri_a, meta=True), connect(a.uri_b, meta=True)
    sa, sb = ha.get_size(), hb.get_size()
    if sa != sb:
        print(f"FAIL: sizes differ: {sa} and {sb}")
        return 1
    # Ranges either side reports as data: read and compare both.
    ranges = [(o, n) for o, n, z in extents(ha, 0, sa) + extents(hb, 0, sb) if not z]
    ranges.sort()
    merged = []
    for o, n in ranges:
        if merged and o <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], o + n - merged[-1][0])
        else:
            merged.append([o, n])
    compared = 0
    for o, n in merged:
        for p in range(o, o + n, READ_PIECE):
            m = min(READ_PIECE, o + n - p)
            da, db = ha.pread(m, p), hb.pread(m, p)
            if da != db:
                for i in range(0, m, BLOCK):
                    if da[i:i + BLOCK] != db[i:i + BLOCK]:
                        off = p + i
                        print(f"FAIL: block at offset {off} differs: {describe_block(da[i:i + BLOCK], off)} "
                              f"vs {describe_block(db[i:i + BLOCK], off)}")
                        return 1
            compared += m
    ha.shutdown()
    hb.shutdown()
    print(f"compare: {sa} bytes equal ({compared} bytes of data read from each)")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("uri")
    w.add_argument("journal")
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--span", type=int, default=64 << 20)
    w.add_argument("--depth", type=int, default=8)
    w.add_argument("--flush-every", type=int, default=32)
    w.add_argument("--fua-percent", type=int, default=10)
    w.add_argument("--ready")
    w.add_argument("--max-seconds", type=float, default=60)
    v = sub.add_parser("verify")
    v.add_argument("uri")
    v.add_argument("--journal", action="append")
    v.add_argument("--min-acked", type=int, default=1)
    v.add_argument("--base")
    v.add_argument("--state-out")
    v.add_argument("--span", type=int)
    v.add_argument("--check-rest", action="store_true")
    f = sub.add_parser("fill")
    f.add_argument("uri")
    f.add_argument("--seed", type=int, required=True)
    f.add_argument("--span", type=int, required=True)
    f.add_argument("--state-out", required=True)
    f.add_argument("--piece", type=int, default=512 << 10)
    c = sub.add_parser("compare")
    c.add_argument("uri_a")
    c.add_argument("uri_b")
    a = ap.parse_args()
    return {"write": cmd_write, "verify": cmd_verify, "fill": cmd_fill, "compare": cmd_compare}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
