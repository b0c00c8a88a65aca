#!/usr/bin/python3
"""Writes to a volume over NBD for the snapshot tests.

  snapshot_workload.py URI init               40 scattered chunks (fixed seed)
  snapshot_workload.py URI mutate SEED K      change K random chunks (one of them zeroed); prints their indexes
  snapshot_workload.py URI zero-chunk INDEX   write zeros over one chunk (allocating)
"""
import random
import sys

import nbd

CHUNK = 512 * 1024
INIT_SEED = 1


def main():
    uri, cmd = sys.argv[1], sys.argv[2]
    h = nbd.NBD()
    h.connect_uri(uri)
    size = h.get_size()
    nchunks = size // CHUNK
    init_chunks = sorted(random.Random(INIT_SEED).sample(range(nchunks), 40))
    if cmd == "init":
        rng = random.Random(INIT_SEED)
        rng.sample(range(nchunks), 40)
        for c in init_chunks:
            # Half compressible text, half random.
            data = (b"ebs snapshot test line %d\n" % c) * (CHUNK // 32) if c % 2 else rng.randbytes(CHUNK)
            h.pwrite(data[:CHUNK].ljust(CHUNK, b"\0"), c * CHUNK)
    elif cmd == "mutate":
        rng = random.Random(int(sys.argv[3]))
        k = int(sys.argv[4])
        # One chunk with data becomes zero (a different one for each seed);
        # the others get a partial change.
        zeroed = init_chunks[int(sys.argv[3]) % len(init_chunks)]
        others = [c for c in rng.sample(range(nchunks), k) if c != zeroed][: k - 1]
        chunks = sorted([zeroed] + others)
        for c in chunks:
            if c == zeroed:
                h.zero(CHUNK, c * CHUNK)
            else:
                off = c * CHUNK + rng.randrange(0, CHUNK // 4096) * 4096
                h.pwrite(rng.randbytes(4096), off)  # a partial change still changes the chunk
        print(" ".join(str(c) for c in chunks))
    elif cmd == "zero-chunk":
        c = int(sys.argv[3])
        h.zero(CHUNK, c * CHUNK, nbd.CMD_FLAG_NO_HOLE)
    else:
        raise SystemExit(f"unknown command {cmd}")
    h.flush()
    h.shutdown()


if __name__ == "__main__":
    main()
