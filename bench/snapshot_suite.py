"""Snapshots against restic on the same image: full snapshot against a first
backup, an incremental snapshot against a second backup after 21 scattered
4 MiB regions changed, restore against restic restore, and store size against
repository size; then how `ebs snapshot diff` time grows with the number of
changed chunks (1k, 10k, 100k; 1 M with --diff-1m), on a store of 64 KiB
chunks so that many chunks fit a small sparse volume, with one 512 KiB-chunk
point as a cross-check.

The image (2 GiB; --quick: 32 MiB in 8 MiB pieces at the start of a 1 GiB
volume, the regions are 512 KiB, and the diff sweep has one point, 1k chunks) is half random, a quarter text, a quarter zeros, in
16 MiB pieces, generated deterministically (AES-128-CTR keystream from openssl for the random part,
seeded pseudo-text). ebs gets it through NBD (`ebs serve` + nbdcopy, so the
change tracker sees every write), then works without a server: `ebs
snapshot create/restore` on the data directory. restic gets the same bytes as
a file. The 21 changes go to both (through NBD for ebs, pwrite for restic).
Caches are warm for both (the machine is shared; no cache dropping). Rounds
alternate which tool goes first; medians are reported."""
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time

import lazy_restore

from benchlib import Server, du_bytes, log, machine_facts, machine_line, run_fio, run_measured, write_results

PIECE = 16 << 20
QUICK_PIECE = 8 << 20
LAYOUT = "RTRZ"  # per 4 pieces: random, text, random, zeros
REGIONS = 21
CHUNK_64K_STORE = 64 << 10
TARGETS = {"full": 2.0, "incremental": 15.0, "restore": 1.5}
# 1 MiB sequential reads of a snapshot export, as a fraction of the same
# data read from a volume export.
EXPORT_READ_TARGET = 0.70
EXPORT_READ_JOB = ("1m-seqread-qd8", "read", "1m", 8, [])


class KeyStream:
    """Deterministic incompressible bytes: the AES-128-CTR keystream of a key
    derived from seed (openssl), or Python's Mersenne Twister without openssl."""

    def __init__(self, seed):
        key = hashlib.sha256(f"ebs-bench-{seed}".encode()).hexdigest()[:32]
        self.proc = None
        if shutil.which("openssl"):
            self.proc = subprocess.Popen(["openssl", "enc", "-aes-128-ctr", "-K", key, "-iv", "0" * 32, "-nosalt",
                                          "-in", "/dev/zero"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        else:
            self.rng = random.Random(key)

    def read(self, n):
        if self.proc is None:
            return self.rng.randbytes(n)
        data = self.proc.stdout.read(n)
        if len(data) != n:
            raise RuntimeError("openssl keystream ended early")
        return data

    def close(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


class TextStream:
    """Deterministic pseudo-English: lines of Zipf-distributed made-up words
    (zstd -3 compresses it about 2.8x, like logs or source text)."""

    def __init__(self, seed, nlines=50000):
        r = random.Random(seed)
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        freq = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5,
                1.0, 0.8, 0.15, 0.15, 0.1, 0.07]
        vocab = ["".join(r.choices(letters, freq, k=r.choice((2, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 11))))
                 for _ in range(30000)]
        words = r.choices(vocab, [1.0 / (i + 1) for i in range(len(vocab))], k=nlines * 18)
        self.lines = [" ".join(words[i * 18:i * 18 + 4 + (i * 7919) % 15]).capitalize() + ".\n"
                      for i in range(nlines)]
        self.rng = r
        self.buf = b""

    def read(self, n):
        parts = [self.buf]
        have = len(self.buf)
        while have < n:
            block = "".join(self.rng.choices(self.lines, k=20000)).encode()
            parts.append(block)
            have += len(block)
        data = b"".join(parts)
        self.buf = data[n:]
        return data[:n]


def make_image(path, size, piece=PIECE):
    """size bytes laid out as LAYOUT in `piece`-byte pieces; zero pieces are holes."""
    rnd, txt = KeyStream("image"), TextStream(1)
    try:
        with open(path, "wb") as f:
            for i in range(size // piece):
                kind = LAYOUT[i % len(LAYOUT)]
                if kind == "Z":
                    f.seek(piece, os.SEEK_CUR)
                else:
                    f.write(rnd.read(piece) if kind == "R" else txt.read(piece))
            f.truncate(size)
    finally:
        rnd.close()


def make_changes(size, region):
    """REGIONS non-overlapping regions of `region` bytes at 64 KiB-aligned,
    scattered offsets, with new random bytes."""
    slot = 2 * region
    slots = random.Random(21).sample(range(size // slot), REGIONS)
    r = random.Random(22)
    ks = KeyStream("changes")
    try:
        return [(s * slot + (64 << 10) * r.randrange(region // (64 << 10)), ks.read(region)) for s in sorted(slots)]
    finally:
        ks.close()


def apply_to_file(path, changes):
    with open(path, "r+b") as f:
        for off, data in changes:
            os.pwrite(f.fileno(), data, off)
        os.fsync(f.fileno())


def nbd_write(uri, changes):
    try:
        import nbd  # python3-libnbd
    except ImportError as e:
        raise RuntimeError("python3-libnbd is needed (scripts/install-deps)") from e
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        for off, data in changes:
            h.pwrite(data, off)
        h.flush()
    finally:
        h.shutdown()


def ebs_server(ebs, data, work, export, chunk=None):
    sock = os.path.join(work, "ebs.sock")
    flags = ["--store-chunk-size", f"{chunk >> 10}K"] if chunk else []
    return Server("ebs", [ebs, "--data-dir", data, *flags, "serve", "--no-throttle", "--listen", "none", "--socket",
                          sock], sock, export)


def ebs_cmd(ebs, data, *argv, chunk=None):
    return [ebs, "--data-dir", data] + (["--store-chunk-size", f"{chunk >> 10}K"] if chunk else []) + ["--json", *argv]


def measured_json(argv, path, env=None):
    os.sync()  # no writeback of an earlier step runs during the measured one
    res = run_measured(argv, env=env, stdout_path=path)
    with open(path) as f:
        text = f.read()
    return res, text


def files_equal(a, b, n=None):
    return subprocess.run(["cmp", "-s"] + ([f"--bytes={n}"] if n else []) + [a, b]).returncode == 0


def ebs_round(args, work, image, changes, image2, size):
    data = os.path.join(work, "ebs-data")
    out = os.path.join(work, "out.json")
    res = {}
    # Volumes are whole GiB; a smaller image (--quick) fills the start of one.
    gib = max(1, -(-size // (1 << 30)))
    subprocess.run(ebs_cmd(args.ebs, data, "volume", "create", "img", "--size", f"{gib}G"), check=True,
                   stdout=subprocess.DEVNULL)
    server = ebs_server(args.ebs, data, work, "img")
    server.start()
    try:
        res["import"] = run_measured(["nbdcopy", image, server.uri])
    finally:
        server.stop()
    r, text = measured_json(ebs_cmd(args.ebs, data, "snapshot", "create", "img"), out)
    snap1 = json.loads(text)[0]
    res["full"] = dict(r, snapshot=snap1)
    res["store_full"] = du_bytes(os.path.join(data, "store"))
    server.start()
    try:
        nbd_write(server.uri, changes)
    finally:
        server.stop()
    r, text = measured_json(ebs_cmd(args.ebs, data, "snapshot", "create", "img"), out)
    snap2 = json.loads(text)[0]
    res["incremental"] = dict(r, snapshot=snap2)
    res["store_incremental"] = du_bytes(os.path.join(data, "store"))
    r, text = measured_json(ebs_cmd(args.ebs, data, "snapshot", "diff", snap1["id"], snap2["id"]), out)
    res["diff"] = dict(r, changed_chunks=json.loads(text)["changed_chunks"])
    r, text = measured_json(ebs_cmd(args.ebs, data, "snapshot", "restore", snap2["id"], "--volume", "restored"), out)
    vol = json.loads(text)
    res["restore"] = r
    restored = os.path.join(data, "volumes", vol["id"] + ".img")
    res["restore_identical"] = files_equal(restored, image2, size)
    if not res["restore_identical"]:
        raise RuntimeError(f"BUG: ebs restore of {snap2['id']} differs from the image ({restored} vs {image2})")
    # The same data read over NBD from the volume and from snapshot 2's
    # export (read in place from the store), alternated.
    server.start()
    try:
        res["export_read"] = {}
        runtime = 1 if args.quick else 3
        # Both from a warm page cache: the volume's file was just written through it, the store's
        # objects were written with direct I/O; one pass over the export reads them in first.
        server.export = snap2["id"]
        t0 = time.monotonic()
        subprocess.run(["nbdcopy", server.uri, "null:"], check=True)
        res["export_cold_pass_s"] = time.monotonic() - t0
        for name, export in (("volume", "img"), ("snapshot", snap2["id"]), ("volume", "img"),
                             ("snapshot", snap2["id"])):
            server.export = export
            r = run_fio(server, EXPORT_READ_JOB, runtime, f"{size >> 20}M", work, f"export-{name}")
            res["export_read"].setdefault(name, []).append(r["mibps"])
    finally:
        server.stop()
    res["export_read"] = {k: statistics.median(v) for k, v in res["export_read"].items()}
    for k in ("full", "incremental", "diff", "restore", "import"):
        res[k].pop("stderr", None)
    return res


def restic_round(work, image, changes, image2):
    src_dir = os.path.join(work, "src")
    os.makedirs(src_dir)
    src = os.path.join(src_dir, "image.raw")
    subprocess.run(["cp", "--sparse=always", image, src], check=True)
    repo = os.path.join(work, "restic-repo")
    env = dict(os.environ, RESTIC_PASSWORD="ebs-bench", RESTIC_REPOSITORY=repo,
               RESTIC_CACHE_DIR=os.path.join(work, "restic-cache"))
    run_measured(["restic", "init", "--repository-version", "2"], env=env)
    out = os.path.join(work, "out.json")
    res = {}

    def backup():
        r, text = measured_json(["restic", "backup", "--json", "--host", "bench", src], out, env=env)
        summary = [json.loads(line) for line in text.splitlines() if '"summary"' in line]
        return dict(r, summary=summary[-1] if summary else None)

    res["full"] = backup()
    res["store_full"] = du_bytes(repo)
    apply_to_file(src, changes)
    res["incremental"] = backup()
    res["store_incremental"] = du_bytes(repo)
    target = os.path.join(work, "restored")
    os.sync()
    res["restore"] = run_measured(["restic", "restore", "latest", "--target", target], env=env)
    restored = os.path.join(target, src.lstrip("/"))
    # restic does not sync what it restores; ebs restore ends with fdatasync.
    r = run_measured(["sync", restored])
    res["restore"]["sync_s"] = r["wall_s"]
    res["restore_identical"] = files_equal(restored, image2)
    if not res["restore_identical"]:
        raise RuntimeError("restic restore differs from the image")
    for k in ("full", "incremental", "restore"):
        res[k].pop("stderr", None)
    return res


def diff_sweep(args, work, counts, chunk_size):
    """A sparse volume; snapshot 0 empty, then for each count N a snapshot
    after N chunks changed, every other chunk from the start (4 KiB written
    into each, through NBD; no two changed chunks adjacent, so the diff's byte
    ranges cannot merge); diff from snapshot 0 to each, timed."""
    data = os.path.join(work, f"diff-data-{chunk_size >> 10}k")
    gib = max(1, -(-max(counts) * 2 * chunk_size // (1 << 30)))
    c = chunk_size  # the store's chunk size (--store-chunk-size), given to every command
    subprocess.run(ebs_cmd(args.ebs, data, "volume", "create", "d", "--size", f"{gib}G", chunk=c), check=True,
                   stdout=subprocess.DEVNULL)
    out = os.path.join(work, "diff-out.json")
    r, text = measured_json(ebs_cmd(args.ebs, data, "snapshot", "create", "d", chunk=c), out)
    snap0 = json.loads(text)[0]["id"]
    server = ebs_server(args.ebs, data, work, "d", chunk=c)
    rows = []
    done = 0
    reps = 1 if args.quick else 3
    for n in sorted(counts):
        server.start()
        try:
            # One 4 KiB write at the start of chunks 2*[done, n): those chunks
            # change, all with the same content (one object; the diff does not care).
            w = run_measured(["fio", "--name=mark", "--ioengine=nbd", "--uri=" + server.uri, "--rw=write:%dk"
                              % ((2 * chunk_size >> 10) - 4), "--bs=4k", f"--offset={2 * done * chunk_size}",
                              f"--size={2 * (n - done) * chunk_size}", f"--number_ios={n - done}", "--iodepth=32",
                              "--buffer_pattern=0x%08x" % (0x5a000000 + n % 0xffffff), "--output-format=terse"])
        finally:
            server.stop()
        snap, text = measured_json(ebs_cmd(args.ebs, data, "snapshot", "create", "d", chunk=c), out)
        snap_id = json.loads(text)[0]["id"]
        done = n
        # The writes above leave GiBs of dirty pages; the fsyncs of a
        # command's RocksDB opens wait behind their writeback (a 1 M diff:
        # 0.94 s with 3 GB dirty, 0.50 s without), so write them back first.
        os.sync()
        runs = []
        for _ in range(reps):
            d, text = measured_json(ebs_cmd(args.ebs, data, "snapshot", "diff", snap0, snap_id, chunk=c), out)
            got = json.loads(text)["changed_chunks"]
            if json.loads(text)["chunk_size"] != chunk_size:
                raise RuntimeError(f"the store's chunk size is {json.loads(text)['chunk_size']}, not {chunk_size}")
            if got != n:
                raise RuntimeError(f"BUG: diff {snap0} {snap_id} reports {got} changed chunks, {n} were written")
            runs.append(d)
        text_run = run_measured([args.ebs, "--data-dir", data, "--store-chunk-size", f"{c >> 10}K", "snapshot", "diff",
                                 snap0, snap_id])
        row = {"chunk_size": chunk_size, "changed_chunks": n, "write_s": w["wall_s"],
               "write_rss_mib": w["peak_rss_mib"], "snapshot_s": snap["wall_s"],
               "snapshot_rss_mib": snap["peak_rss_mib"],
               "diff_json_s": statistics.median(x["wall_s"] for x in runs),
               "diff_json_max_s": max(x["wall_s"] for x in runs),
               "diff_cpu_s": statistics.median(x["user_s"] + x["sys_s"] for x in runs),
               "diff_text_s": text_run["wall_s"], "diff_text_rss_mib": text_run["peak_rss_mib"],
               "diff_rss_mib": max(x["peak_rss_mib"] for x in runs)}
        rows.append(row)
        log(f"bench: diff {n:>8} chunks of {chunk_size >> 10} KiB: diff {row['diff_json_s']:.2f} s "
            f"({row['diff_rss_mib']:.0f} MiB), snapshot of them {row['snapshot_s']:.1f} s")
    # Fixed cost: the same command with nothing to list (process start, opening the index).
    z = [run_measured(ebs_cmd(args.ebs, data, "snapshot", "diff", snap0, snap0, chunk=c)) for _ in range(reps)]
    shutil.rmtree(data, ignore_errors=True)
    return rows, {"wall_s": statistics.median(x["wall_s"] for x in z),
                  "peak_rss_mib": max(x["peak_rss_mib"] for x in z)}


def run(args):
    if shutil.which("restic") is None:
        raise RuntimeError("restic not found: run scripts/install-deps")
    for tool in ("nbdcopy", "cmp"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: run scripts/install-deps")
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    size = 32 << 20 if quick else 2 << 30
    piece = QUICK_PIECE if quick else PIECE
    region = 512 << 10 if quick else 4 << 20
    work = tempfile.mkdtemp(prefix="ebs-bench-snap.")
    try:
        image = os.path.join(work, "image-v1.raw")
        image2 = os.path.join(work, "image-v2.raw")
        log(f"bench: snapshot: generating a {size >> 20} MiB image in {work}")
        make_image(image, size, piece)
        changes = make_changes(size, region)
        subprocess.run(["cp", "--sparse=always", image, image2], check=True)
        apply_to_file(image2, changes)
        runs = {"ebs": [], "restic": []}
        for r in range(rounds):
            order = ["ebs", "restic"] if r % 2 == 0 else ["restic", "ebs"]
            for tool in order:
                rdir = os.path.join(work, f"{tool}-{r}")
                os.makedirs(rdir)
                if tool == "ebs":
                    res = ebs_round(args, rdir, image, changes, image2, size)
                else:
                    res = restic_round(rdir, image, changes, image2)
                shutil.rmtree(rdir, ignore_errors=True)
                runs[tool].append(res)
                log(f"bench: snapshot round {r + 1}/{rounds} {tool:<6} full {res['full']['wall_s']:.2f} s, "
                    f"incremental {res['incremental']['wall_s']:.2f} s, restore {res['restore']['wall_s']:.2f} s, "
                    f"store {res['store_incremental'][0] / (1 << 20):.0f} MiB")
        log("bench: snapshot: first reads of a lazily restored volume")
        lazy = lazy_restore.measure(args, work, image, size, rounds, quick)
        counts = [1000] if quick else [1000, 10000, 100000]
        if getattr(args, "diff_1m", False):
            counts.append(1000000)
        diff_rows, diff_fixed = diff_sweep(args, work, counts, CHUNK_64K_STORE)
        if not quick:
            # Cross-check at the real chunk size: the diff's cost is per changed chunk.
            rows512, _ = diff_sweep(args, work, [10000], 512 << 10)
            diff_rows += rows512
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(args, runs, diff_rows, diff_fixed, rounds, size, region, piece, lazy)


def med(runs, *path):
    vals = []
    for r in runs:
        v = r
        for p in path:
            v = v[p]
        vals.append(v)
    return statistics.median(vals)


def verdict(measured, target, higher_is_better=True):
    if measured is None:
        return "-"
    short = 100 * (1 - measured / target) if higher_is_better else 100 * (measured / target - 1)
    return "met" if short <= 0 else f"missed by {short:.0f}%" if short >= 10 else f"missed by {short:.1f}%"


def fmt_bytes(n):
    return f"{n / (1 << 20):,.0f} MiB"


def report(args, runs, diff_rows, diff_fixed, rounds, size, region, piece, lazy):
    facts = machine_facts(args.ebs, tools=("fio", "nbdcopy", "restic", "openssl", "qemu-nbd"))
    e, r = runs["ebs"], runs["restic"]
    summary = {}
    rows = []
    for key, label in (("full", "full snapshot / first backup"),
                       ("incremental", f"incremental after {REGIONS} x {region >> 10} KiB changed / second backup"),
                       ("restore", "restore (until complete)")):
        et, rt = med(e, key, "wall_s"), med(r, key, "wall_s")
        ratio = rt / et if et else None
        summary[key] = {"ebs_s": et, "restic_s": rt, "speedup": ratio, "target": TARGETS[key],
                        "ebs_cpu_s": med([x[key] for x in e], "user_s") + med([x[key] for x in e], "sys_s"),
                        "restic_cpu_s": med([x[key] for x in r], "user_s") + med([x[key] for x in r], "sys_s"),
                        "ebs_peak_rss_mib": max(x[key]["peak_rss_mib"] for x in e),
                        "restic_peak_rss_mib": max(x[key]["peak_rss_mib"] for x in r)}
        if key == "restore":
            summary[key]["restic_with_sync_s"] = rt + med([x[key] for x in r], "sync_s")
        s = summary[key]
        extra = f" (+ sync {s['restic_with_sync_s'] - rt:.2f} s)" if key == "restore" else ""
        rows.append(f"| {label} | {et:.2f} s | {rt:.2f} s{extra} | {ratio:.2f}x | >= {TARGETS[key]:g}x | "
                    f"{verdict(ratio, TARGETS[key])} | {s['ebs_cpu_s']:.2f} / {s['restic_cpu_s']:.2f} | "
                    f"{s['ebs_peak_rss_mib']:.0f} / {s['restic_peak_rss_mib']:.0f} |")
    es, rs = med(e, "store_incremental", 0), med(r, "store_incremental", 0)
    esf, rsf = med(e, "store_full", 0), med(r, "store_full", 0)
    summary["store"] = {"ebs_bytes": es, "restic_bytes": rs, "ebs_full_bytes": esf, "restic_full_bytes": rsf,
                        "ebs_apparent_bytes": med(e, "store_incremental", 1),
                        "restic_apparent_bytes": med(r, "store_incremental", 1), "ratio": es / rs}
    rows.append(f"| store size after both (du) | {fmt_bytes(es)} | {fmt_bytes(rs)} | ebs/restic {es / rs:.3f} | "
                f"<= 1.00 | {verdict(es / rs, 1.0, higher_is_better=False)} | | |")
    rows.append(f"| store size after the first | {fmt_bytes(esf)} | {fmt_bytes(rsf)} | ebs/restic {esf / rsf:.3f} | "
                f"| | | |")
    summary["lazy_restore"] = lazy_restore.summarize(lazy)
    ev, es_ = med(e, "export_read", "volume"), med(e, "export_read", "snapshot")
    exp_ratio = es_ / ev if ev else None
    summary["export_read"] = {"volume_mibps": ev, "snapshot_mibps": es_, "ratio": exp_ratio,
                              "target": EXPORT_READ_TARGET}
    export_row = (f"| 1 MiB sequential reads (fio, QD8) of snapshot 2's export | {es_:,.0f} MiB/s | "
                  f"the volume's export: {ev:,.0f} MiB/s | {exp_ratio:.2f} | >= {EXPORT_READ_TARGET:g} | "
                  f"{verdict(exp_ratio, EXPORT_READ_TARGET)} |")
    imp = med(e, "import", "wall_s")
    diff21 = med(e, "diff", "wall_s")
    summary["import"] = {"ebs_s": imp, "nbdcopy_peak_rss_mib": max(x["import"]["peak_rss_mib"] for x in e)}
    summary["diff"] = {"ebs_s": diff21, "ebs_peak_rss_mib": max(x["diff"]["peak_rss_mib"] for x in e)}
    d_json = [x for x in diff_rows if x["chunk_size"] == CHUNK_64K_STORE]
    extrap = None
    if len(d_json) >= 2:
        a, b = d_json[-2], d_json[-1]
        slope = (b["diff_json_s"] - a["diff_json_s"]) / (b["changed_chunks"] - a["changed_chunks"])
        if b["changed_chunks"] < 1_000_000:
            extrap = b["diff_json_s"] + slope * (1_000_000 - b["changed_chunks"])
        rss_slope = (b["diff_rss_mib"] - a["diff_rss_mib"]) / (b["changed_chunks"] - a["changed_chunks"])
        summary["diff_per_chunk_us"] = slope * 1e6
        summary["diff_rss_per_chunk_kib"] = rss_slope * 1024
    measured_1m = next((x["diff_json_s"] for x in d_json if x["changed_chunks"] == 1_000_000), None)

    def over(t):
        return "met" if t < 1.0 else f"missed: {t:.1f}x the target"

    summary["diff_1m_s"] = {"measured": measured_1m, "extrapolated": extrap, "target": 1.0}
    lines = [
        f"# Snapshots against restic ({facts['date']})",
        "",
        machine_line(facts),
        f"Image: {size >> 20} MiB, half random, a quarter text, a quarter zeros ({piece >> 20} MiB pieces); {REGIONS} "
        f"scattered regions of {region >> 10} KiB changed. {rounds} round(s), "
        f"tools alternated, medians; warm page cache; ebs without a server, restic with a local repository "
        f"(format 2, compression auto).",
        "",
        "| operation | ebs | restic | speed-up (restic/ebs) | target | verdict | CPU s ebs / restic | "
        "peak RSS MiB ebs / restic |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
        *rows,
        "",
        f"Writing the image into the volume through NBD (nbdcopy, not compared): {imp:.2f} s "
        f"(nbdcopy peak RSS {summary['import']['nbdcopy_peak_rss_mib']:.0f} MiB). "
        f"`ebs snapshot diff` of the incremental ({e[0]['diff']['changed_chunks']} chunks): {diff21:.2f} s "
        f"(peak RSS {summary['diff']['ebs_peak_rss_mib']:.0f} MiB).",
        "Restores are byte-identical to the changed image (cmp), for both tools.",
        "",
        "A snapshot read in place: `ebs serve` exports snapshot 2 read-only (no volume), and fio reads it and the "
        "volume it was taken of (the same data) in turn, twice each per round, over the Unix socket, both from a "
        "warm page cache (the store's objects are written with direct I/O: one nbdcopy pass over the export reads "
        f"them in first; that cold pass took {med(e, 'export_cold_pass_s'):.2f} s for {size >> 20} MiB):",
        "",
        "| read | snapshot export | volume export | snapshot / volume | target | verdict |",
        "|---|---:|---:|---:|---:|---|",
        export_row,
        "",
        *lazy_restore.report_lines(summary["lazy_restore"], verdict),
        "`ebs snapshot diff` against the number of changed chunks (one sparse volume; snapshot 0 empty, then "
        "N chunks changed, every other one from the start so that no byte ranges merge, 4 KiB written into each "
        "through NBD, then written back with sync; diff from snapshot 0, JSON output to "
        "/dev/null, median and slowest of the runs). The sweep uses a store of 64 KiB chunks (`--store-chunk-size 64K`) so that a million "
        "chunks fit a 128 GiB sparse volume and its snapshot takes a minute, not ten; the diff's work is per changed "
        "chunk whatever its size, which the 512 KiB row checks:",
        "",
        "| chunk size | changed chunks | diff (JSON) | slowest | diff (text) | diff CPU s | diff peak RSS | snapshot "
        "of those chunks | its peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in diff_rows:
        lines.append(f"| {x['chunk_size'] >> 10} KiB | {x['changed_chunks']:,} | {x['diff_json_s']:.3f} s | "
                     f"{x['diff_json_max_s']:.3f} s | {x['diff_text_s']:.3f} s | {x['diff_cpu_s']:.3f} | {x['diff_rss_mib']:.0f} MiB | "
                     f"{x['snapshot_s']:.1f} s | {x['snapshot_rss_mib']:.0f} MiB |")
    lines.append("")
    lines.append(f"The same command with no changes takes {diff_fixed['wall_s']:.3f} s (process start, opening the "
                 f"index; peak RSS {diff_fixed['peak_rss_mib']:.0f} MiB). The text diffs peaked at "
                 f"{max(x['diff_text_rss_mib'] for x in diff_rows):.0f} MiB, fio writing the changed chunks at "
                 f"{max(x['write_rss_mib'] for x in diff_rows):.0f} MiB.")
    if measured_1m is not None:
        lines.append(f"1 M changed chunks, measured: {measured_1m:.2f} s (target < 1 s: {over(measured_1m)}).")
    elif extrap is not None:
        lines.append(f"1 M changed chunks, extrapolated linearly from the two largest points (not measured): "
                     f"{extrap:.1f} s, {summary['diff_per_chunk_us']:.1f} us and "
                     f"{summary['diff_rss_per_chunk_kib']:.2f} KiB of RSS per changed chunk (target < 1 s: "
                     f"{over(extrap)}).")
    lines.append("")
    text = "\n".join(lines)
    write_results(args, "snapshot", text, {"machine": facts, "rounds": rounds, "image_bytes": size,
                   "piece_bytes": piece, "regions": REGIONS, "region_bytes": region, "summary": summary, "runs": runs,
                   "lazy_restore": lazy,
                   "diff": {"rows": diff_rows, "fixed_s": diff_fixed["wall_s"],
                            "fixed_peak_rss_mib": diff_fixed["peak_rss_mib"]}})
    bad = [k for k in ("full", "incremental", "restore") if not summary[k]["ebs_s"] or not summary[k]["restic_s"]]
    if not exp_ratio:
        bad.append("export_read")
    if bad or not diff_rows or not es or not rs:
        raise RuntimeError(f"snapshot suite produced no numbers for {bad or 'store/diff'}")
    return text
