"""How cost grows with the work:

- 4 KiB random-read IOPS against the number of NBD connections (fio's nbd
  engine, numjobs=N, each job its own connection, QD 8 each), ebs serve
  (--no-throttle) beside nbdkit's file plugin on the same data file,
  alternated round by round; the server's peak RSS and CPU per operation;
- the same against queue depth on one connection (ebs), every power of two
  from 1 to 128, 1.5 s per point (3 s for the connection sweep);
- an incremental snapshot (and verify, restore, delete, gc) of 1, 10 and
  100 GiB sparse volumes at a fixed change (64 MiB written as 16 x 4 MiB
  spread over the volume): time and peak RSS of each process; it should not
  grow with the volume's size;
- the server's RSS against the number of idle volumes (1, 10, 100), before
  and with one idle NBD connection open to each.

--quick (a smoke run): two points on every axis (1 and 16 connections, QD 1
and 32, 1 and 10 GiB volumes with 16 MiB written and changed, 1 and 10 idle
volumes), 1 s fio jobs over 64 MiB, one round, shorter settling sleeps."""
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from benchlib import (Server, current_rss_kib, ebs_server, log, machine_facts, machine_line, peak_rss_kib, run_fio,
                      run_measured, write_results)
from snapshot_suite import KeyStream

CONNS = [1, 4, 16, 64]
QUICK_CONNS = [1, 16]
QD_PER_CONN = 8
SPAN_MIB, QUICK_SPAN_MIB = 1024, 64  # random data the reads range over
QDS = [1, 2, 4, 8, 16, 32, 64, 128]
# Seconds per queue-depth point in a full run: 8 points x 3 rounds at 1.5 s
# cost what the 5 points at 3 s did (each run also starts a server and fio).
QD_RUNTIME_S = 1.5
QUICK_QDS = [1, 32]
SIZES_GIB = [1, 10, 100]
QUICK_SIZES_GIB = [1, 10]
VOLUME_COUNTS = [1, 10, 100]
QUICK_VOLUME_COUNTS = [1, 10]
PIECES, PIECE = 16, 4 << 20  # 64 MiB changed
QUICK_PIECE = 1 << 20  # --quick: 16 MiB changed
RSS_TARGET_MIB = {"server_100_idle": 100, "snapshot_ops": 256}


def make_data_file(ebs, work, random_mib):
    """A 1 GiB volume whose first random_mib MiB are random (fio reads only those)."""
    data = os.path.join(work, "data")
    subprocess.run([ebs, "--data-dir", data, "volume", "create", "vol0", "--size", "1G"], check=True,
                   stdout=subprocess.DEVNULL)
    vols = os.path.join(data, "volumes")
    path = os.path.join(vols, next(n for n in os.listdir(vols) if n.endswith(".img")))
    with open(path, "r+b") as f:
        for _ in range(random_mib // 8):
            f.write(os.urandom(8 << 20))
        os.fsync(f.fileno())
    return data, path


def iops_sweeps(args, work, quick, rounds, runtime, qd_runtime):
    span = QUICK_SPAN_MIB if quick else SPAN_MIB  # MiB of random data the reads range over
    data_dir, data_file = make_data_file(args.ebs, work, span)
    ebs = ebs_server(args.ebs, data_dir, os.path.join(work, "ebs.sock"), "vol0")
    nbdkit = Server("nbdkit", ["nbdkit", "-f", "-U", os.path.join(work, "nbdkit.sock"), "file", data_file],
                    os.path.join(work, "nbdkit.sock"), "")
    conns = QUICK_CONNS if quick else CONNS
    qds = QUICK_QDS if quick else QDS
    by_conn = {n: {"ebs": [], "nbdkit": []} for n in conns}
    by_qd = {q: [] for q in qds}
    for r in range(rounds):
        servers = [ebs, nbdkit] if r % 2 == 0 else [nbdkit, ebs]
        for n in conns:
            job = (f"4k-randread-{n}conn", "randread", "4k", QD_PER_CONN,
                   [f"--numjobs={n}", "--group_reporting", "--thread"])
            for s in servers:
                s.start()
                try:
                    res = run_fio(s, job, runtime, f"{span}M", work,
                                  f"conn-{n}-{s.name}-{r}")
                finally:
                    s.stop()
                by_conn[n][s.name].append(res)
                log(f"bench: scaling round {r + 1}/{rounds} {n:>3} connections {s.name:<7} {res['iops']:>9.0f} IOPS "
                    f"server RSS {res['server_peak_rss_mib']:.0f} MiB")
        for q in qds:
            ebs.start()
            try:
                res = run_fio(ebs, (f"4k-randread-qd{q}", "randread", "4k", q, []), f"{round(qd_runtime * 1000)}ms",
                              f"{span}M", work, f"qd-{q}-{r}")
            finally:
                ebs.stop()
            by_qd[q].append(res)
            log(f"bench: scaling round {r + 1}/{rounds} QD {q:>3} ebs {res['iops']:>9.0f} IOPS "
                f"p50 {res['lat_p50_us']:.0f} us")
    shutil.rmtree(data_dir, ignore_errors=True)
    return by_conn, by_qd


def spread(size, shift, piece):
    """PIECES offsets spread evenly over the volume, shifted by `shift` of a stride."""
    stride = size // PIECES
    return [i * stride + int(stride * shift) // piece * piece for i in range(PIECES)]


def nbd_write(uri, writes):
    import nbd  # python3-libnbd
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        for off, data in writes:
            h.pwrite(data, off)
        h.flush()
    finally:
        h.shutdown()


def ebs_json(args, data, *argv):
    out = os.path.join(data, "..", "out.json")
    res = run_measured([args.ebs, "--data-dir", data, "--json", *argv], stdout_path=out)
    with open(out) as f:
        res["json"] = json.load(f)
    res.pop("stderr", None)
    return res


def snapshot_scaling(args, work, sizes, piece):
    rows = []
    ks = KeyStream("scaling")
    try:
        for gib in sizes:
            size = gib << 30
            data = os.path.join(work, f"snap-{gib}g", "data")
            os.makedirs(data)
            subprocess.run([args.ebs, "--data-dir", data, "volume", "create", "v", "--size", f"{gib}G"], check=True,
                           stdout=subprocess.DEVNULL)
            server = ebs_server(args.ebs, data, os.path.join(work, "snap.sock"), "v")
            base = [(off, ks.read(piece)) for off in spread(size, 0, piece)]
            change = [(off, ks.read(piece)) for off in spread(size, 0.5, piece)]
            server.start()
            try:
                nbd_write(server.uri, base)
            finally:
                server.stop()
            first = ebs_json(args, data, "snapshot", "create", "v")
            server.start()
            try:
                nbd_write(server.uri, change)
            finally:
                server.stop()
            incr = ebs_json(args, data, "snapshot", "create", "v")
            snap1, snap2 = first["json"][0]["id"], incr["json"][0]["id"]
            verify = ebs_json(args, data, "snapshot", "verify", snap2)
            restore = ebs_json(args, data, "snapshot", "restore", snap2, "--volume", "r")
            path = os.path.join(data, "volumes", restore["json"]["id"] + ".img")
            with open(path, "rb") as f:
                for off, want in base + change:
                    if os.pread(f.fileno(), len(want), off) != want:
                        raise RuntimeError(f"BUG: restored {gib} GiB volume differs from what was written at {off}")
            delete = ebs_json(args, data, "snapshot", "delete", snap1)
            gc = ebs_json(args, data, "store", "gc")
            row = {"size_gib": gib, "changed_mib": PIECES * piece >> 20,
                   "changed_bytes_reported": incr["json"][0].get("changed_bytes")}
            for name, res in (("first", first), ("incremental", incr), ("verify", verify), ("restore", restore),
                              ("delete", delete), ("gc", gc)):
                row[f"{name}_s"] = res["wall_s"]
                row[f"{name}_rss_mib"] = res["peak_rss_mib"]
            rows.append(row)
            log(f"bench: scaling {gib:>4} GiB volume, {PIECES * piece >> 20} MiB changed: incremental snapshot "
                f"{row['incremental_s']:.2f} s ({row['incremental_rss_mib']:.0f} MiB), restore "
                f"{row['restore_s']:.2f} s ({row['restore_rss_mib']:.0f} MiB)")
            shutil.rmtree(os.path.dirname(data), ignore_errors=True)
    finally:
        ks.close()
    return rows


def volume_memory(args, work, counts, settle_s=1.0, connected_s=0.5):
    try:
        import nbd  # python3-libnbd
    except ImportError as e:
        raise RuntimeError("python3-libnbd is needed (scripts/install-deps)") from e
    data = os.path.join(work, "many")
    sock = os.path.join(work, "many.sock")
    rows = []
    made = 0
    for n in sorted(counts):
        t0 = time.monotonic()
        while made < n:
            subprocess.run([args.ebs, "--data-dir", data, "volume", "create", f"v{made}", "--size", "8G"], check=True,
                           stdout=subprocess.DEVNULL)
            made += 1
        create_s = time.monotonic() - t0
        server = ebs_server(args.ebs, data, sock, "v0", throttle=True)  # as deployed: throttling on
        server.start()
        try:
            time.sleep(settle_s)
            pid = server.proc.pid
            idle = current_rss_kib(pid)
            handles = []
            try:
                for i in range(n):
                    h = nbd.NBD()
                    h.connect_uri(f"nbd+unix:///v{i}?socket={sock}")
                    h.pread(4096, 0)  # one request each: every volume opened and touched
                    handles.append(h)
                time.sleep(connected_s)
                connected = current_rss_kib(pid)
            finally:
                for h in handles:
                    h.shutdown()
            peak = peak_rss_kib(pid)
        finally:
            server.stop()
        rows.append({"volumes": n, "idle_rss_mib": idle / 1024, "connected_rss_mib": connected / 1024,
                     "peak_rss_mib": peak / 1024, "after_start_s": settle_s})
        log(f"bench: scaling {n:>4} idle volumes: server RSS {idle / 1024:.1f} MiB, with one connection each "
            f"{connected / 1024:.1f} MiB (created in {create_s:.1f} s)")
    shutil.rmtree(data, ignore_errors=True)
    return rows


def run(args):
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    runtime = args.runtime or (1 if quick else 3)  # many points x 3 rounds: keeps bench/run < 20 min
    qd_runtime = args.runtime or (1 if quick else QD_RUNTIME_S)
    piece = QUICK_PIECE if quick else PIECE
    work = tempfile.mkdtemp(prefix="ebs-bench-scaling.")
    try:
        log(f"bench: scaling: preparing a volume of random data in {work}")
        by_conn, by_qd = iops_sweeps(args, work, quick, rounds, runtime, qd_runtime)
        snaps = snapshot_scaling(args, work, QUICK_SIZES_GIB if quick else SIZES_GIB, piece)
        if quick:
            mem = volume_memory(args, work, QUICK_VOLUME_COUNTS, settle_s=0.3, connected_s=0.2)
        else:
            mem = volume_memory(args, work, VOLUME_COUNTS)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(args, by_conn, by_qd, snaps, mem, rounds, runtime, qd_runtime, piece)


def med(runs, key):
    vals = [x[key] for x in runs if x[key] is not None]
    return statistics.median(vals) if vals else None


def report(args, by_conn, by_qd, snaps, mem, rounds, runtime, qd_runtime, piece):
    facts = machine_facts(args.ebs, tools=("fio", "nbdkit"))
    conn_rows = []
    for n, per in by_conn.items():
        row = {"connections": n, "qd_per_connection": QD_PER_CONN}
        for s, runs in per.items():
            row[f"{s}_iops"] = med(runs, "iops")
            row[f"{s}_cpu_s_per_mops"] = med(runs, "cpu_s_per_mops")
            row[f"{s}_peak_rss_mib"] = max(x["server_peak_rss_mib"] for x in runs)
        conn_rows.append(row)
    qd_rows = [{"qd": q, "iops": med(runs, "iops"), "lat_p50_us": med(runs, "lat_p50_us"),
                "cpu_s_per_mops": med(runs, "cpu_s_per_mops"),
                "peak_rss_mib": max(x["server_peak_rss_mib"] for x in runs)} for q, runs in by_qd.items()]
    lines = [
        f"# Scaling ({facts['date']})",
        "",
        machine_line(facts),
        f"{rounds} round(s) of {runtime} s per fio job ({qd_runtime:g} s per queue-depth point), servers "
        f"alternated, medians; Unix sockets; reads over {QUICK_SPAN_MIB if args.quick else SPAN_MIB} MiB of random "
        f"data; ebs --no-throttle.",
        "",
        f"4 KiB random reads against NBD connections (fio nbd engine, one connection per job, QD {QD_PER_CONN} "
        f"each):",
        "",
        "| connections | ebs IOPS | nbdkit IOPS | ebs/nbdkit | server CPU s per M ops ebs / nbdkit | "
        "peak server RSS MiB ebs / nbdkit |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in conn_rows:
        ratio = f"{r['ebs_iops'] / r['nbdkit_iops']:.2f}x" if r["ebs_iops"] and r["nbdkit_iops"] else "-"
        lines.append(f"| {r['connections']} | {r['ebs_iops']:,.0f} | {r['nbdkit_iops']:,.0f} | {ratio} | "
                     f"{r['ebs_cpu_s_per_mops'] or 0:.1f} / {r['nbdkit_cpu_s_per_mops'] or 0:.1f} | "
                     f"{r['ebs_peak_rss_mib']:.0f} / {r['nbdkit_peak_rss_mib']:.0f} |")
    lines += ["", "4 KiB random reads against queue depth, one connection (ebs):", "",
              "| queue depth | IOPS | p50 latency | server CPU s per M ops | peak server RSS |",
              "|---:|---:|---:|---:|---:|"]
    for r in qd_rows:
        lines.append(f"| {r['qd']} | {r['iops']:,.0f} | {r['lat_p50_us']:.0f} us | {r['cpu_s_per_mops'] or 0:.1f} | "
                     f"{r['peak_rss_mib']:.0f} MiB |")
    lines += ["", f"Snapshot operations against volume size, sparse volumes, {PIECES * piece >> 20} MiB written "
              f"before the first snapshot and {PIECES * piece >> 20} MiB changed before the incremental one "
              f"({PIECES} x {piece >> 20} MiB spread over the volume); time and peak RSS of each process "
              f"(target: under {RSS_TARGET_MIB['snapshot_ops']} MiB whatever the size):", "",
              "| volume | first snapshot | incremental snapshot | verify | restore (eager) | delete first | gc |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in snaps:
        cells = [f"{r[k + '_s']:.2f} s, {r[k + '_rss_mib']:.0f} MiB"
                 for k in ("first", "incremental", "verify", "restore", "delete", "gc")]
        lines.append(f"| {r['size_gib']} GiB | " + " | ".join(cells) + " |")
    worst = max(max(r[k + "_rss_mib"] for k in ("incremental", "verify", "restore", "gc")) for r in snaps)
    big = max(snaps, key=lambda r: r["size_gib"])
    small = min(snaps, key=lambda r: r["size_gib"])
    growth = big["incremental_s"] / small["incremental_s"] if small["incremental_s"] else None
    flat = (f"Incremental snapshot time, {big['size_gib']} GiB against {small['size_gib']} GiB: {growth:.2f}x "
            f"(flat is 1x). ") if big is not small and growth else ""
    lines += ["", flat + f"Largest peak RSS of snapshot, verify, restore, gc: {worst:.0f} MiB "
              f"(target < {RSS_TARGET_MIB['snapshot_ops']} MiB: "
              f"{'met' if worst < RSS_TARGET_MIB['snapshot_ops'] else 'missed'}).", "",
              f"Server memory against idle volumes (8 GiB each, throttling on), {mem[0]['after_start_s']:g} s after "
              "start, then with one NBD connection open to each volume (one 4 KiB read each):", "",
              "| volumes | server RSS | with one connection per volume | peak |", "|---:|---:|---:|---:|"]
    for r in mem:
        lines.append(f"| {r['volumes']} | {r['idle_rss_mib']:.1f} MiB | {r['connected_rss_mib']:.1f} MiB | "
                     f"{r['peak_rss_mib']:.1f} MiB |")
    hundred = next((r for r in mem if r["volumes"] == 100), None)
    if hundred:
        t = RSS_TARGET_MIB["server_100_idle"]
        lines += ["", f"100 idle volumes: {hundred['peak_rss_mib']:.1f} MiB peak (target < {t} MiB: "
                  f"{'met' if hundred['peak_rss_mib'] < t else 'missed'})."]
    lines.append("")
    text = "\n".join(lines)
    write_results(args, "scaling", text, {"machine": facts, "rounds": rounds, "runtime_s": runtime,
                   "qd_runtime_s": qd_runtime, "connections": conn_rows,
                   "queue_depth": qd_rows, "snapshot_vs_size": snaps, "memory_vs_volumes": mem,
                   "runs": {"connections": by_conn, "queue_depth": by_qd}})
    missing = [r["connections"] for r in conn_rows if not r["ebs_iops"] or not r["nbdkit_iops"]]
    missing += [f"qd{r['qd']}" for r in qd_rows if not r["iops"]]
    if missing or not snaps or not mem:
        raise RuntimeError(f"scaling suite produced no numbers for {missing or 'snapshots/memory'}")
    return text
