#!/usr/bin/python3
"""Sequence-numbered writes for the point-in-time snapshot test.

  sequence_writer.py write SEED STOPFILE URI...
      Writes 4 KiB blocks one at a time (one request in flight), write k
      (k = 1, 2, ...) to block schedule(k), each block stamped with k, until
      STOPFILE exists (and at least 200 writes were made). Blocks stamped
      by a writer with another SEED count as older content. With several
      volumes (of one size) the blocks of all of them form one schedule.
      Creates STOPFILE.started after the 100th write. Prints the number of
      writes acknowledged.
  sequence_writer.py check SEED ACKED IMAGE...
      The IMAGEs are copies of snapshots of the volumes, in the same order.
      Checks that together they equal the volumes as they stood after some
      prefix 1..N of the writes (N <= ACKED): every block holds the newest
      write to it up to N, nothing later. Prints N; exits 1 naming the first
      block that shows a mix.

Writes are strictly sequential, so the volumes pass through exactly one
state per prefix; snapshots that are one instant must match one of them.
"""
import os
import random
import struct
import sys

BLOCK = 4096
MAGIC = b"EBSSEQ01"


def schedule(seed, nblocks):
    return random.Random(seed).sample(range(nblocks), nblocks)


def stamp(seed, k, block):
    head = MAGIC + struct.pack("<QQQ", seed, k, block)
    return (head * (BLOCK // len(head) + 1))[:BLOCK]


def write(seed, stopfile, uris):
    import nbd

    handles = []
    for uri in uris:
        h = nbd.NBD()
        h.connect_uri(uri)
        handles.append(h)
    per_volume = handles[0].get_size() // BLOCK
    nblocks = per_volume * len(handles)
    perm = schedule(seed, nblocks)
    k = 0
    while k < 200 or not os.path.exists(stopfile):
        k += 1
        b = perm[(k - 1) % nblocks]
        handles[b // per_volume].pwrite(stamp(seed, k, b), (b % per_volume) * BLOCK)
        if k == 100:
            open(stopfile + ".started", "w").close()
    for h in handles:
        h.shutdown()
    print(k)


def check(seed, acked, images):
    per_volume = os.path.getsize(images[0]) // BLOCK
    nblocks = per_volume * len(images)
    perm = schedule(seed, nblocks)
    position = [0] * nblocks
    for i, b in enumerate(perm):
        position[b] = i + 1  # the first write to block b is write position[b]
    seen = [0] * nblocks
    for v, image in enumerate(images):
        with open(image, "rb") as f:
            for b in range(v * per_volume, (v + 1) * per_volume):
                data = f.read(BLOCK)
                if data[:8] == MAGIC and struct.unpack("<Q", data[8:16])[0] == seed:
                    k, blk = struct.unpack("<QQ", data[16:32])
                    if blk != b or data != stamp(seed, k, b):
                        sys.exit(f"block {b}: torn or misplaced content (claims write {k} to block {blk})")
                    seen[b] = k
    n = max(seen)
    if n > acked:
        sys.exit(f"the snapshot holds write {n}, but only {acked} were acknowledged")

    def newest(b):  # the newest write to block b among 1..n, 0 if none
        first = position[b]
        if n < first:
            return 0
        return first + (n - first) // nblocks * nblocks

    for b in range(nblocks):
        if seen[b] != newest(b):
            sys.exit(f"not a point in time: the snapshot holds write {n}, but block {b} holds write "
                     f"{seen[b]} instead of {newest(b)}")
    print(n)


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "write":
        write(int(sys.argv[2]), sys.argv[3], sys.argv[4:])
    elif len(sys.argv) >= 5 and sys.argv[1] == "check":
        check(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
