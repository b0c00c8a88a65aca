"""Encryption at rest: an encrypted volume against a plain one, same run,
same server, same random contents: fio over NBD (4K random read and write
QD32, 1M sequential read and write QD8), then a full snapshot and an eager
restore of each. Volumes alternate job by job and round by round, so machine
noise hits both alike. Targets: under 15% IOPS loss at 4K, under 10%
throughput loss on 1M sequential.

--quick (a smoke run): 1 s jobs, one round, two jobs (4K random write, 1M
sequential read) on each volume; 1 GiB volumes holding 64 MiB of random data
(the jobs use that part)."""
import json
import os
import shutil
import statistics
import subprocess
import tempfile

from benchlib import Server, log, machine_facts, machine_line, run_fio, run_measured, write_results

JOBS = [
    # name, fio rw, block size, queue depth, extra fio args
    ("4k-randread-qd32", "randread", "4k", 32, []),
    ("4k-randwrite-qd32", "randwrite", "4k", 32, []),
    ("1m-seqread-qd8", "read", "1m", 8, []),
    ("1m-seqwrite-qd8", "write", "1m", 8, []),
]
# The loss each job may show (encrypted vs plain), from the issue.
TARGET_LOSS = {"4k-randread-qd32": 0.15, "4k-randwrite-qd32": 0.15, "1m-seqread-qd8": 0.10, "1m-seqwrite-qd8": 0.10}
VOLUMES = ("plain", "encrypted")
QUICK_FILL_MIB = 64  # --quick: random data written into each volume (the jobs use that part)
QUICK_JOBS = ("4k-randwrite-qd32", "1m-seqread-qd8")  # --quick: one write and one read job, 4 KiB and 1 MiB


def ebs(args, data, *argv):
    return subprocess.run([args.ebs, "--data-dir", data, *argv], check=True, capture_output=True, text=True).stdout


def prepare(args, work, size_gib, fill_mib):
    """Two volumes of identical random contents (their first fill_mib MiB),
    written through NBD (an encrypted volume's file can only be filled
    through its server)."""
    data = os.path.join(work, "data")
    ebs(args, data, "volume", "create", "plain", "--size", f"{size_gib}G")
    ebs(args, data, "volume", "create", "encrypted", "--size", f"{size_gib}G", "--encrypted")
    image = os.path.join(work, "random.img")
    with open(image, "wb") as f:
        for _ in range((fill_mib << 20) // (8 << 20)):
            f.write(os.urandom(8 << 20))
    sock = os.path.join(work, "ebs.sock")
    server = Server("ebs", [args.ebs, "--data-dir", data, "serve", "--no-throttle", "--listen", "none", "--socket",
                            sock], sock, "plain")
    server.start()
    try:
        for v in VOLUMES:
            subprocess.run(["nbdcopy", image, f"nbd+unix:///{v}?socket={sock}"], check=True)
    finally:
        server.stop()
    os.unlink(image)
    return data, sock


def run(args):
    rounds = args.rounds or (1 if args.quick else 3)
    runtime = args.runtime or (1 if args.quick else 3)  # x 3 rounds x 4 jobs x 2 volumes: keeps bench/run < 20 min
    size_gib = args.size_gib
    fill_mib = min(QUICK_FILL_MIB, size_gib << 10) if args.quick else size_gib << 10
    work = tempfile.mkdtemp(prefix="ebs-bench-enc.")
    try:
        log(f"bench: encryption: two {size_gib} GiB volumes, {fill_mib} MiB of random data each, in {work}")
        data, sock = prepare(args, work, size_gib, fill_mib)
        argv = [args.ebs, "--data-dir", data, "serve", "--no-throttle", "--listen", "none", "--socket", sock]
        servers = [Server(v, argv, sock, v) for v in VOLUMES]
        jobs = [j for j in JOBS if not args.quick or j[0] in QUICK_JOBS]
        results = {j[0]: {v: [] for v in VOLUMES} for j in jobs}
        for r in range(rounds):
            for i, job in enumerate(jobs):
                order = servers if (r + i) % 2 == 0 else servers[::-1]
                for s in order:
                    s.start()
                    try:
                        res = run_fio(s, job, runtime, f"{fill_mib}M", work, f"enc-{job[0]}-{s.name}-{r}")
                    finally:
                        s.stop()
                    results[job[0]][s.name].append(res)
                    log(f"bench: encryption round {r + 1}/{rounds} {job[0]:<18} {s.name:<10} {res['iops']:>9.0f} IOPS "
                        f"{res['mibps']:>8.1f} MiB/s  server cpu {res['server_cpu_s']:.2f} s, "
                        f"RSS {res['server_peak_rss_mib']:.0f} MiB")
        # Snapshot and restore, no server running (the CLI works in-process).
        snap = {}
        for v in VOLUMES:
            created = run_measured([args.ebs, "--data-dir", data, "--json", "snapshot", "create", v],
                                   stdout_path=os.path.join(work, f"snap-{v}.json"))
            with open(os.path.join(work, f"snap-{v}.json")) as f:
                sid = json.load(f)[0]["id"]
            restored = run_measured([args.ebs, "--data-dir", data, "snapshot", "restore", sid, "--volume", f"r-{v}"])
            snap[v] = {"snapshot_s": created["wall_s"], "restore_s": restored["wall_s"],
                       "snapshot_cpu_s": created["user_s"] + created["sys_s"],
                       "restore_cpu_s": restored["user_s"] + restored["sys_s"],
                       "snapshot_peak_rss_mib": created["peak_rss_mib"],
                       "restore_peak_rss_mib": restored["peak_rss_mib"]}
            log(f"bench: encryption {v:<10} snapshot {created['wall_s']:.2f} s ({created['peak_rss_mib']:.0f} MiB), "
                f"restore {restored['wall_s']:.2f} s ({restored['peak_rss_mib']:.0f} MiB)")
        facts = machine_facts(args.ebs, tools=("fio", "nbdcopy", "openssl"))
        return report(results, snap, facts, rounds, runtime, size_gib, fill_mib, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results, snap, facts, rounds, runtime, size_gib, fill_mib, args):
    summary = {job: {v: {k: statistics.median([x[k] for x in runs]) if runs else None
                         for k in ("iops", "mibps", "cpu_s_per_mops")}
                     for v, runs in per.items()} for job, per in results.items()}
    for job, per in results.items():
        for v, runs in per.items():
            summary[job][v]["server_peak_rss_mib"] = max(x["server_peak_rss_mib"] for x in runs) if runs else None
    # The smoke run's check: every job ran on both volumes and produced numbers.
    missing = [f"{job} {v}" for job, per in summary.items() for v, x in per.items() if not x["iops"]]
    missing += [f"{op} {v}" for v in VOLUMES for op in ("snapshot", "restore") if not snap[v][f"{op}_s"]]
    if missing:
        raise RuntimeError(f"encryption suite produced no numbers for {missing}")
    data = (f"{size_gib} GiB volumes of random data" if fill_mib == size_gib << 10 else
            f"{size_gib} GiB volumes holding {fill_mib} MiB of random data (the jobs use that part)")
    lines = [
        f"# Encryption at rest: encrypted vs plain volume ({facts['date']})",
        "",
        machine_line(facts),
        f"{rounds} round(s) of {runtime} s per job, volumes "
        f"alternated, medians; {data}, one ebs server (unthrottled), Unix socket, "
        "fio's nbd engine. Encrypted: AES-256-XTS per 4 KiB sector (OpenSSL EVP).",
        "",
        "| job | plain | encrypted | loss | target | server CPU s/M ops plain / encrypted | "
        "peak server RSS MiB plain / encrypted |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    misses = []
    for job, s in summary.items():
        p, e = s["plain"], s["encrypted"]
        loss = 1 - e["iops"] / p["iops"] if p["iops"] and e["iops"] else None
        target = TARGET_LOSS[job]
        if loss is not None and loss > target:
            misses.append(job)
        lines.append(f"| {job} | {p['iops']:.0f} IOPS ({p['mibps']:.0f} MiB/s) | {e['iops']:.0f} IOPS "
                     f"({e['mibps']:.0f} MiB/s) | {'-' if loss is None else f'{loss * 100:.1f}%'} | "
                     f"< {target * 100:.0f}% | {p['cpu_s_per_mops']:.1f} / {e['cpu_s_per_mops']:.1f} | "
                     f"{p['server_peak_rss_mib']:.0f} / {e['server_peak_rss_mib']:.0f} |")
    lines += ["", "| operation | plain | encrypted | encrypted/plain | CPU s plain / encrypted | "
              "peak RSS MiB plain / encrypted |", "|---|---:|---:|---:|---:|---:|"]
    what = f"{size_gib} GiB" if fill_mib == size_gib << 10 else f"{size_gib} GiB ({fill_mib} MiB of data)"
    for op in ("snapshot", "restore"):
        p, e = snap["plain"], snap["encrypted"]
        pt, et = p[f"{op}_s"], e[f"{op}_s"]
        lines.append(f"| full {op} of {what} | {pt:.2f} s ({fill_mib / pt:.0f} MiB/s) | {et:.2f} s "
                     f"({fill_mib / et:.0f} MiB/s) | {et / pt:.2f}x | {p[f'{op}_cpu_s']:.2f} / "
                     f"{e[f'{op}_cpu_s']:.2f} | {p[f'{op}_peak_rss_mib']:.0f} / {e[f'{op}_peak_rss_mib']:.0f} |")
    lines.append("")
    lines.append("Targets missed: " + (", ".join(misses) if misses else "none"))
    text = "\n".join(lines) + "\n"
    write_results(args, "encryption", text, {"machine": facts, "rounds": rounds, "runtime_s": runtime,
                                             "size_gib": size_gib, "data_mib": fill_mib, "summary": summary,
                                             "snapshot": snap, "runs": results})
    return text
