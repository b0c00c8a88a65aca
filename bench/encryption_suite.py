"""Encryption at rest: an encrypted volume against a plain one, same run,
same server, same random contents: fio over NBD (4K random read and write
QD32, 1M sequential read and write QD8), then a full snapshot and an eager
restore of each. Volumes alternate job by job and round by round, so machine
noise hits both alike. Targets: under 15% IOPS loss at 4K, under 10%
throughput loss on 1M sequential."""
import json
import os
import shutil
import statistics
import subprocess
import tempfile

from benchlib import Server, log, machine_facts, run_fio, run_measured, write_results

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


def ebs(args, data, *argv):
    return subprocess.run([args.ebs, "--data-dir", data, *argv], check=True, capture_output=True, text=True).stdout


def prepare(args, work, size_gib):
    """Two volumes of identical random contents, written through NBD (an
    encrypted volume's file can only be filled through its server)."""
    data = os.path.join(work, "data")
    ebs(args, data, "volume", "create", "plain", "--size", f"{size_gib}G")
    ebs(args, data, "volume", "create", "encrypted", "--size", f"{size_gib}G", "--encrypted")
    image = os.path.join(work, "random.img")
    with open(image, "wb") as f:
        for _ in range((size_gib << 30) // (8 << 20)):
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
    runtime = args.runtime or (2 if args.quick else 4)  # x 3 rounds x every server: keeps bench/run < 20 min
    size_gib = args.size_gib
    work = tempfile.mkdtemp(prefix="ebs-bench-enc.")
    try:
        log(f"bench: encryption: two {size_gib} GiB volumes of random data in {work}")
        data, sock = prepare(args, work, size_gib)
        argv = [args.ebs, "--data-dir", data, "serve", "--no-throttle", "--listen", "none", "--socket", sock]
        servers = [Server(v, argv, sock, v) for v in VOLUMES]
        results = {j[0]: {v: [] for v in VOLUMES} for j in JOBS}
        for r in range(rounds):
            for i, job in enumerate(JOBS):
                order = servers if (r + i) % 2 == 0 else servers[::-1]
                for s in order:
                    s.start()
                    try:
                        res = run_fio(s, job, runtime, f"{size_gib}G", work, f"enc-{job[0]}-{s.name}-{r}")
                    finally:
                        s.stop()
                    results[job[0]][s.name].append(res)
                    log(f"bench: encryption round {r + 1}/{rounds} {job[0]:<18} {s.name:<10} {res['iops']:>9.0f} IOPS "
                        f"{res['mibps']:>8.1f} MiB/s  server cpu {res['server_cpu_s']:.2f} s")
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
                       "restore_cpu_s": restored["user_s"] + restored["sys_s"]}
            log(f"bench: encryption {v:<10} snapshot {created['wall_s']:.2f} s, restore {restored['wall_s']:.2f} s")
        return report(results, snap, machine_facts(args.ebs), rounds, runtime, size_gib, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results, snap, facts, rounds, runtime, size_gib, args):
    summary = {job: {v: {k: statistics.median([x[k] for x in runs]) if runs else None
                         for k in ("iops", "mibps", "cpu_s_per_mops")}
                     for v, runs in per.items()} for job, per in results.items()}
    lines = [
        f"# Encryption at rest: encrypted vs plain volume ({facts['date']})",
        "",
        f"Machine: {facts['cpu']}, {facts['cores']} cores. {rounds} round(s) of {runtime} s per job, volumes "
        f"alternated, medians; {size_gib} GiB volumes of random data, one ebs server (unthrottled), Unix socket, "
        "fio's nbd engine. Encrypted: AES-256-XTS per 4 KiB sector (OpenSSL EVP).",
        "",
        "| job | plain | encrypted | loss | target | server CPU s/M ops plain / encrypted |",
        "|---|---:|---:|---:|---:|---:|",
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
                     f"< {target * 100:.0f}% | {p['cpu_s_per_mops']:.1f} / {e['cpu_s_per_mops']:.1f} |")
    lines += ["", "| operation | plain | encrypted | encrypted/plain |", "|---|---:|---:|---:|"]
    for op in ("snapshot", "restore"):
        p, e = snap["plain"][f"{op}_s"], snap["encrypted"][f"{op}_s"]
        lines.append(f"| full {op} of {size_gib} GiB | {p:.2f} s ({(size_gib << 10) / p:.0f} MiB/s) | {e:.2f} s "
                     f"({(size_gib << 10) / e:.0f} MiB/s) | {e / p:.2f}x |")
    lines.append("")
    lines.append("Targets missed: " + (", ".join(misses) if misses else "none"))
    text = "\n".join(lines) + "\n"
    write_results(args, "encryption", text, {"machine": facts, "summary": summary, "snapshot": snap, "runs": results})
    return text
