"""fio over NBD: ebs serve (unthrottled) against nbdkit's file plugin and qemu-nbd
on the same data file, alternated round by round, plus nbdkit memory as the
protocol's ceiling on this machine.

--quick (a smoke run): 1 s jobs, one round, reads and writes over the first
64 MiB of the volume (filled with random data); every job against ebs, the
first job only against each peer (to check that each peer starts and serves)."""
import os
import shutil
import statistics
import subprocess
import tempfile

from benchlib import Server, log, machine_facts, machine_line, run_fio, settle_page_cache, write_results

JOBS = [
    # name, fio rw, block size, queue depth, extra fio args
    ("4k-randread-qd32", "randread", "4k", 32, []),
    ("4k-randwrite-qd32", "randwrite", "4k", 32, []),
    ("1m-seqread-qd8", "read", "1m", 8, []),
    ("1m-seqwrite-qd8", "write", "1m", 8, []),
    ("16k-mixed70-qd16", "randrw", "16k", 16, ["--rwmixread=70"]),
]
QUICK_SPAN_MIB = 64  # --quick: the part of the volume filled and used by the jobs


def make_data_file(ebs, workdir, size_gib, fill_mib=None):
    data = os.path.join(workdir, "data")
    subprocess.run([ebs, "--data-dir", data, "volume", "create", "vol0", "--type", "gp3", "--size",
                    f"{size_gib}G"], check=True, stdout=subprocess.DEVNULL)
    vols = os.path.join(data, "volumes")
    # The data file (beside it sits the volume's change-tracking file).
    path = os.path.join(vols, next(n for n in os.listdir(vols) if n.endswith(".img")))
    # Random contents, so no server can shortcut reads of zeros or holes.
    chunk = 8 << 20
    fill = (size_gib << 30) if fill_mib is None else min(fill_mib << 20, size_gib << 30)
    with open(path, "r+b") as f:
        for _ in range(fill // chunk):
            f.write(os.urandom(chunk))
        f.flush()
    return data, path


def run(args):
    rounds = args.rounds or (1 if args.quick else 3)
    runtime = args.runtime or (1 if args.quick else 4)  # x 3 rounds x every server: keeps bench/run < 20 min
    span = min(QUICK_SPAN_MIB, args.size_gib << 10) if args.quick else args.size_gib << 10  # MiB the jobs use

    work = tempfile.mkdtemp(prefix="ebs-bench.")
    try:
        log(f"bench: preparing a {args.size_gib} GiB volume ({span} MiB of random data) in {work}")
        data_dir, data_file = make_data_file(args.ebs, work, args.size_gib, span)
        size = f"{args.size_gib}G"
        servers = [
            Server("ebs", [args.ebs, "--data-dir", data_dir, "serve", "--no-throttle", "--listen", "none", "--socket",
                           os.path.join(work, "ebs.sock")], os.path.join(work, "ebs.sock"), "vol0"),
            Server("nbdkit", ["nbdkit", "-f", "-U", os.path.join(work, "nbdkit.sock"), "file", data_file],
                   os.path.join(work, "nbdkit.sock"), ""),
            Server("qemu-nbd", ["qemu-nbd", "-t", "-k", os.path.join(work, "qemu.sock"), "-f", "raw",
                                "--cache=none", "--aio=io_uring", "-e", "8", data_file],
                   os.path.join(work, "qemu.sock"), ""),
            Server("nbdkit-memory", ["nbdkit", "-f", "-U", os.path.join(work, "mem.sock"), "memory",
                                     f"size={size}"], os.path.join(work, "mem.sock"), ""),
        ]
        results = {j[0]: {s.name: [] for s in servers} for j in JOBS}
        file_written = True  # by make_data_file, in large writes
        for r in range(rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for job in JOBS:
                for s in order:
                    if args.quick and s.name != "ebs" and job is not JOBS[0]:
                        continue  # the smoke run checks each peer on the first job only
                    settle_page_cache(data_file, drop=file_written, length=span << 20)
                    if data_file in s.argv:  # not nbdkit memory
                        file_written = job[1] not in ("randread", "read")
                    s.start()
                    try:
                        res = run_fio(s, job, runtime, f"{span}M", work, f"{job[0]}-{s.name}-{r}")
                    finally:
                        s.stop()
                    results[job[0]][s.name].append(res)
                    log(f"bench: round {r + 1}/{rounds} {job[0]:<18} {s.name:<14} {res['iops']:>10.0f} IOPS "
                        f"{res['mibps']:>8.1f} MiB/s  server cpu {res['server_cpu_s']:.2f} s")
        return report(results, servers, machine_facts(args.ebs), rounds, runtime, span, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def median(values):
    return statistics.median(values) if values else None


def report(results, servers, facts, rounds, runtime, span, args):
    summary = {}
    for job, per_server in results.items():
        summary[job] = {}
        for name, runs in per_server.items():
            summary[job][name] = {k: median([x[k] for x in runs if x[k] is not None])
                                  for k in ("iops", "mibps", "lat_p50_us", "cpu_s_per_mops", "server_peak_rss_mib")}
    # Every (job, server) run (--quick runs peers on the first job only).
    planned = [(j, n) for j in summary for n in summary[j] if not args.quick or n == "ebs" or j == JOBS[0][0]]
    missing = [(j, n) for j, n in planned if not summary[j][n]["iops"]]
    names = [s.name for s in servers]
    lines = [
        f"# fio over NBD: ebs vs peers ({facts['date']})",
        "",
        machine_line(facts),
        f"{rounds} round(s) of {runtime} s per job, servers alternated, medians shown; "
        + (f"{args.size_gib} GiB volume of random data" if span == args.size_gib << 10 else
           f"jobs over the first {span} MiB (random data) of a {args.size_gib} GiB volume")
        + ", Unix sockets, ebs unthrottled."
        + (" Quick run: the peers ran the first job only." if args.quick else ""),
        "",
        "| job | " + " | ".join(f"{n} IOPS" for n in names) + " | ebs/nbdkit | ebs/qemu-nbd | "
        + " | ".join(f"{n} CPU s/M ops" for n in names[:3]) + " |",
        "|---|" + "---:|" * (len(names) + 2 + 3),
    ]
    for job, s in summary.items():
        def ratio(peer):
            return f"{s['ebs']['iops'] / s[peer]['iops']:.2f}x" if s["ebs"]["iops"] and s[peer]["iops"] else "-"
        cells = [f"{s[n]['iops']:.0f} ({s[n]['mibps']:.0f} MiB/s)" if s[n]["iops"] else "-" for n in names]
        cpu = [f"{s[n]['cpu_s_per_mops']:.1f}" if s[n]["cpu_s_per_mops"] else "-" for n in names[:3]]
        lines.append(f"| {job} | " + " | ".join(cells) + f" | {ratio('nbdkit')} | {ratio('qemu-nbd')} | "
                     + " | ".join(cpu) + " |")
    lines.append("")
    lines.append("Peak server RSS (MiB): " + ", ".join(
        f"{n} {max(s[n]['server_peak_rss_mib'] or 0 for s in summary.values()):.0f}" for n in names))
    text = "\n".join(lines) + "\n"
    write_results(args, "nbd", text, {"machine": facts, "rounds": rounds, "runtime_s": runtime, "span_mib": span,
                   "summary": summary, "runs": results})
    if missing:
        raise RuntimeError(f"no numbers for {missing}")
    return text


