"""First reads of a lazily restored volume, for the snapshot suite.

In one run, on the same data: first-touch 4K random reads (QD32) and one
pass of 1 MiB sequential reads (QD8) of a volume restored lazily (each
measurement on a fresh restore, so every chunk read is a first touch),
against qemu-nbd serving a qcow2 overlay whose backing file is the snapshot
exported to raw (fresh each time too), and against the same snapshot
restored eagerly (fully loaded). Servers are alternated; medians.
"""
import json
import os
import shutil
import statistics
import subprocess

from benchlib import Server, log

TARGETS = {"rand4k_vs_qcow2": 0.5, "p99_ms": 10.0, "seq1m_vs_loaded": 0.5}


def fio(uri, rw, bs, qd, size, runtime, out):
    """One fio job over NBD; time-based for random reads, one pass for sequential ones."""
    argv = ["fio", "--name=first-touch", "--ioengine=nbd", "--uri=" + uri, "--rw=" + rw, "--bs=" + bs,
            f"--iodepth={qd}", f"--size={size}", f"--runtime={runtime}", "--output-format=json", "--output=" + out]
    if rw == "randread":
        argv += ["--time_based", "--randrepeat=0", "--norandommap"]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(out) as f:
        text = f.read()
    j = json.loads(text[text.index("{"):])["jobs"][0]["read"]
    pct = j["clat_ns"].get("percentile", {})
    return {"iops": j["iops"], "mibps": j["bw_bytes"] / (1 << 20), "p99_ms": pct.get("99.000000", 0) / 1e6}


def ebs(args, data, *argv):
    subprocess.run([args.ebs, "--data-dir", data, *argv], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def measure(args, work, image, size, rounds, quick):
    """Returns {"lazy": {...}, "qcow2": {...}, "loaded": {...}} of lists of fio results."""
    for tool in ("qemu-nbd", "qemu-img"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: run scripts/install-deps")
    data = os.path.join(work, "lazy-data")
    gib = max(1, -(-size // (1 << 30)))
    ebs(args, data, "volume", "create", "src", "--size", f"{gib}G")
    sock = os.path.join(work, "lazy.sock")
    server = Server("ebs", [args.ebs, "--data-dir", data, "serve", "--no-throttle", "--listen", "none", "--socket",
                            sock], sock, "src")
    server.start()
    try:
        subprocess.run(["nbdcopy", image, server.uri], check=True)
    finally:
        server.stop()
    out = subprocess.run([args.ebs, "--data-dir", data, "--json", "snapshot", "create", "src"], check=True,
                         capture_output=True, text=True).stdout
    snap = json.loads(out)[0]["id"]
    raw = os.path.join(work, "snap.raw")
    ebs(args, data, "snapshot", "export", snap, raw)
    ebs(args, data, "snapshot", "restore", snap, "--volume", "loaded")
    runtime = 1 if quick else 3
    span = f"{size >> 20}M"
    jobs = (("rand4k", "randread", "4k", 32), ("seq1m", "read", "1m", 8))
    res = {k: {j[0]: [] for j in jobs} for k in ("lazy", "qcow2", "loaded")}
    n = 0
    for r in range(rounds):
        for job in jobs:
            order = ["lazy", "qcow2", "loaded"] if (r + len(job[0])) % 2 == 0 else ["loaded", "qcow2", "lazy"]
            for kind in order:
                n += 1
                path = os.path.join(work, f"fio-{n}.json")
                if kind == "qcow2":
                    overlay = os.path.join(work, f"overlay-{n}.qcow2")
                    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", overlay],
                                   check=True)
                    qsock = os.path.join(work, "qemu.sock")
                    q = Server("qemu-nbd", ["qemu-nbd", "-f", "qcow2", "--cache=writeback", "--aio=threads",
                                            "-k", qsock, "-x", "ov", "-t", overlay], qsock, "ov")
                    q.start()
                    try:
                        res[kind][job[0]].append(fio(q.uri, job[1], job[2], job[3], span, runtime, path))
                    finally:
                        q.stop()
                        os.unlink(overlay)
                    continue
                name = "loaded"
                if kind == "lazy":
                    name = f"lazy{n}"
                    # Slow background loading: nearly every chunk read is a first touch.
                    ebs(args, data, "snapshot", "restore", snap, "--volume", name, "--lazy",
                        "--initialization-rate", "1")
                server.export = name
                server.start()
                try:
                    res[kind][job[0]].append(fio(server.uri, job[1], job[2], job[3], span, runtime, path))
                finally:
                    server.stop()
                if kind == "lazy":
                    ebs(args, data, "volume", "delete", name, "--force")
                last = res[kind][job[0]][-1]
                log(f"bench: lazy restore round {r + 1}/{rounds} {job[0]:<6} {kind:<7} {last['iops']:>8.0f} IOPS "
                    f"{last['mibps']:>7.0f} MiB/s p99 {last['p99_ms']:.2f} ms")
    shutil.rmtree(data, ignore_errors=True)
    return res


def summarize(res):
    med = {k: {j: {m: statistics.median(x[m] for x in v) for m in ("iops", "mibps", "p99_ms")}
               for j, v in jobs.items()} for k, jobs in res.items()}
    return {"medians": med,
            "rand4k_vs_qcow2": med["lazy"]["rand4k"]["iops"] / med["qcow2"]["rand4k"]["iops"],
            "p99_ms": med["lazy"]["rand4k"]["p99_ms"],
            "seq1m_vs_loaded": med["lazy"]["seq1m"]["mibps"] / med["loaded"]["seq1m"]["mibps"],
            "targets": TARGETS}


def report_lines(s, verdict):
    m = s["medians"]
    row = lambda job, unit, key: " | ".join(f"{m[k][job][key]:,.0f} {unit}" for k in ("lazy", "qcow2", "loaded"))
    return [
        "First reads of a lazily restored volume (a fresh restore per measurement, background loading at 1 MiB/s), "
        "against qemu-nbd serving a fresh qcow2 overlay on the snapshot exported to raw, and against the snapshot "
        "restored eagerly:",
        "",
        "| first touch | ebs lazy | qcow2 overlay | ebs loaded | ratio | target | verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| 4K random reads QD32 | {row('rand4k', 'IOPS', 'iops')} | {s['rand4k_vs_qcow2']:.2f} of qcow2 | "
        f">= {TARGETS['rand4k_vs_qcow2']} | {verdict(s['rand4k_vs_qcow2'], TARGETS['rand4k_vs_qcow2'])} |",
        f"| its p99 latency | {m['lazy']['rand4k']['p99_ms']:.2f} ms | {m['qcow2']['rand4k']['p99_ms']:.2f} ms | "
        f"{m['loaded']['rand4k']['p99_ms']:.2f} ms | | <= {TARGETS['p99_ms']:g} ms | "
        f"{verdict(s['p99_ms'], TARGETS['p99_ms'], higher_is_better=False)} |",
        f"| 1 MiB sequential reads QD8, one pass | {row('seq1m', 'MiB/s', 'mibps')} | "
        f"{s['seq1m_vs_loaded']:.2f} of loaded | >= {TARGETS['seq1m_vs_loaded']} | "
        f"{verdict(s['seq1m_vs_loaded'], TARGETS['seq1m_vs_loaded'])} |",
        "",
    ]
