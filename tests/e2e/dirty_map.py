#!/usr/bin/python3
"""The chunks a qemu:dirty-bitmap: context marks, read with libnbd's
block_status, for the dirty-bitmap tests.

  dirty_map.py URI BITMAP     prints the dirty 512 KiB chunks, ascending, on one line
"""
import sys

import nbd

CHUNK = 512 * 1024


def dirty_chunks(h, ctx):
    """Every chunk `ctx` marks dirty on connected handle `h` (which negotiated it)."""
    size = h.get_size()
    dirty, pos = set(), [0]

    def cb(metacontext, off, entries, err):
        if metacontext != ctx:
            return 0
        p = off
        for i in range(0, len(entries), 2):
            if entries[i + 1] & 1:
                dirty.update(range(p // CHUNK, (p + entries[i] + CHUNK - 1) // CHUNK))
            p += entries[i]
        pos[0] = p
        return 0

    while pos[0] < size:
        h.block_status(min(size - pos[0], 1 << 30), pos[0], cb)
    return sorted(dirty)


def connect(uri, bitmap):
    ctx = "qemu:dirty-bitmap:" + bitmap
    h = nbd.NBD()
    h.add_meta_context(ctx)
    h.connect_uri(uri)
    if not h.can_meta_context(ctx):
        raise SystemExit(f"{ctx} not negotiated")
    return h, ctx


if __name__ == "__main__":
    h, ctx = connect(sys.argv[1], sys.argv[2])
    print(" ".join(str(c) for c in dirty_chunks(h, ctx)))
    h.shutdown()
