"""Throttle accuracy: each volume type at two sizes (st1 and sc1 at three:
125 GiB too, where small random reads are slowest), provisioned against
delivered IOPS (4 KiB random reads, QD32; on st1/sc1 each charged a full
MiB) and throughput (1 MiB sequential reads, QD8) over NBD, in 10 s runs; and the throttle's overhead on an io2
volume whose limits (256,000 IOPS, 4,000 MiB/s) are beyond what this machine
delivers, against the same volume served with --no-throttle: 20 pairs of
2 s runs through two servers up at once (see measure_overhead).

IOPS rows at low rates (up to 3,000 IOPS, 13,100 in all) run together, one
fio job (one NBD connection) per volume in one fio run through one fresh
server: each volume has its own throttle, and together they use a fraction
of the machine, so each row measures its throttle as it would alone (within
0.1% here), in an eighth of the time. Faster IOPS rows and every MiB/s row
run one at a time: 1 MiB reads of several volumes at once came out 3-6%
under their limits, one at a time within 1%.

--quick (a smoke run): 1 s runs, one measurement per volume type (its
smaller size; IOPS or MiB/s, both kinds covered), all at once in one fio run
through one server serving them all; one overhead pair of 1 s runs; no
warm-up."""
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile

from benchlib import ebs_server, log, machine_facts, machine_line, peak_rss_kib, run_fio, write_results

# type, size GiB, --iops, --throughput
VOLUMES = [
    ("gp2", 100, None, None), ("gp2", 2000, None, None),
    ("gp3", 10, None, None), ("gp3", 1000, 16000, 1000),
    ("io1", 100, 5000, None), ("io1", 1000, 20000, None),
    ("io2", 100, 20000, None), ("io2", 1000, 40000, None),
    ("st1", 125, None, None), ("st1", 1024, None, None), ("st1", 12288, None, None),
    ("sc1", 125, None, None), ("sc1", 1024, None, None), ("sc1", 12288, None, None),
    ("standard", 10, None, None), ("standard", 1024, None, None),
]
# --quick: one measurement per type, (type, size GiB) -> metric.
QUICK = {("gp2", 100): "IOPS", ("gp3", 10): "MiB/s", ("io1", 100): "MiB/s", ("io2", 100): "IOPS",
         ("st1", 1024): "MiB/s", ("sc1", 1024): "MiB/s", ("standard", 10): "IOPS"}

# The part of each volume the jobs read. Its size does not matter to the
# throttle; a small one keeps the warm-up (below) short: a first read of
# never-read pages runs at about 300 MiB/s here.
REGION = "256M"

IOPS_JOB = ("4k-randread-qd32", "randread", "4k", 32, [])
BW_JOB = ("1m-seqread-qd8", "read", "1m", 8, [])
# IOPS rows at or below this rate run together (see above).
TOGETHER_IOPS = 3000


def ebs_json(ebs, data, *argv):
    out = subprocess.run([ebs, "--data-dir", data, *argv, "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def warm(args, data, sock, names):
    """Reads the region the fio jobs use once on every volume in `names`,
    through one --no-throttle server (one fio job each). On this VM the first
    read of never-read pages of the sparse data file stalls now and then for
    40-150 ms (page cache pages the guest has never touched): unthrottled,
    cold 1 MiB reads ran at 2,800-3,500 MiB/s with a p99 latency of 40 ms,
    against 8,500 MiB/s warm. A stall longer than the throttle's bucket
    (50 ms of tokens) is time the limit cannot make up, so cold rows measured
    the page cache, not the throttle (-10% to -30% on rows of 16,000 IOPS or
    500 MiB/s and more, every row exact once warm)."""
    server = ebs_server(args.ebs, data, sock, "")
    argv = ["fio", "--ioengine=nbd", "--rw=read", "--bs=1m", "--iodepth=8", f"--size={REGION}", "--output=/dev/null"]
    for name in names:
        argv += [f"--name=warm-{name}", f"--uri=nbd+unix:///{name}?socket={sock}"]
    server.start()
    try:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    finally:
        server.stop()


def run(args):
    quick = args.quick
    # 10 s: the bucket (50 ms of tokens, full at start) adds about 0.5%.
    runtime = args.runtime or (1 if quick else 10)
    work = tempfile.mkdtemp(prefix="ebs-bench-throttle.")
    rows = []
    try:
        data = os.path.join(work, "data")
        vols = [v for v in VOLUMES if not quick or (v[0], v[1]) in QUICK]
        for t, gib, iops, tp in vols:
            argv = ["volume", "create", f"{t}-{gib}", "--type", t, "--size", f"{gib}G"]
            if iops:
                argv += ["--iops", str(iops)]
            if tp:
                argv += ["--throughput", str(tp)]
            ebs_json(args.ebs, data, *argv)
        sock = os.path.join(work, "ebs.sock")
        if quick:
            measure_quick(args, data, sock, work, vols, runtime, rows)
        else:
            measure_rows(args, data, sock, work, vols, runtime, rows)
        overhead = measure_overhead(args, work, runtime, quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(args, rows, overhead, runtime)


def provisioned_iops(t, perf):
    """What the IOPS job (4 KiB random reads) may get. On st1 and sc1 every
    I/O of 1 MiB or less is charged a full MiB of throughput (user guide page
    "hdd-vols"), so small random reads get the burst MiB/s as IOPS, at most
    the IOPS limit: a 125 GiB sc1 about 10, a 1 TiB st1 250 (not 500)."""
    if t in ("st1", "sc1"):
        return round(min(perf["burst_iops"], perf["burst_throughput_mibps"]), 2)
    return perf["burst_iops"]


def add_row(rows, name, t, gib, unit, perf, delivered, rss_mib, alone):
    provisioned = provisioned_iops(t, perf) if unit == "IOPS" else perf["burst_throughput_mibps"]
    err = 100.0 * (delivered - provisioned) / provisioned
    rows.append({"volume": name, "type": t, "size_gib": gib, "metric": unit, "provisioned": provisioned,
                 "delivered": round(delivered, 1), "error_percent": round(err, 2),
                 "server_peak_rss_mib": round(rss_mib, 1), "run": "alone" if alone else "together"})
    log(f"bench: throttle {name:<16} {unit:<6} provisioned {provisioned:>8} delivered {delivered:>10.1f} "
        f"({err:+.2f}%), server RSS {rss_mib:.0f} MiB")


def measure_rows(args, data, sock, work, vols, runtime, rows):
    """A row per (volume, metric): IOPS rows at low rates together, the
    others one at a time, each run through a fresh server (credit buckets
    full, as on a new volume)."""
    perfs = {}
    together = []
    alone = []
    warm(args, data, sock, [f"{t}-{gib}" for t, gib, _, _ in vols])
    for t, gib, _, _ in vols:
        name = f"{t}-{gib}"
        perfs[name] = perf = ebs_json(args.ebs, data, "volume", "describe", name)["performance"]
        if perf["burst_iops"] <= TOGETHER_IOPS:
            together.append((t, gib, "IOPS"))
        else:
            alone.append((t, gib, "IOPS"))
        alone.append((t, gib, "MiB/s"))
    if together:
        measure_together(args, data, sock, work, together, perfs, runtime, rows, "together")
    for t, gib, unit in alone:
        name = f"{t}-{gib}"
        server = ebs_server(args.ebs, data, sock, name, throttle=True)
        server.start()
        try:
            res = run_fio(server, IOPS_JOB if unit == "IOPS" else BW_JOB, runtime, REGION, work,
                          f"{name}-{unit.replace('/', '')}")
        finally:
            server.stop()
        add_row(rows, name, t, gib, unit, perfs[name], res["iops"] if unit == "IOPS" else res["mibps"],
                res["server_peak_rss_mib"], alone=True)


def measure_together(args, data, sock, work, jobs, perfs, runtime, rows, tag):
    """`jobs` ((type, size GiB, metric) each) at once: one fio job per volume
    (its own NBD connection) in a single fio run through one server serving
    them all. Each job's numbers are its own; the server's peak RSS is the
    one server's."""
    server = ebs_server(args.ebs, data, sock, "", throttle=True)
    out = os.path.join(work, f"{tag}.json")
    argv = ["fio", "--ioengine=nbd", f"--runtime={runtime}", "--time_based", f"--size={REGION}",
            "--output-format=json", "--output=" + out]
    for t, gib, unit in jobs:
        name = f"{t}-{gib}"
        _, rw, bs, qd, extra = IOPS_JOB if unit == "IOPS" else BW_JOB
        argv += [f"--name={name}", f"--uri=nbd+unix:///{name}?socket={sock}", f"--rw={rw}", f"--bs={bs}",
                 f"--iodepth={qd}", *extra]
    server.start()
    try:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        rss_mib = peak_rss_kib(server.proc.pid) / 1024
    finally:
        server.stop()
    with open(out) as f:
        text = f.read()
    results = {j["jobname"]: j for j in json.loads(text[text.index("{"):])["jobs"]}
    for t, gib, unit in jobs:
        name = f"{t}-{gib}"
        j = results.get(name)
        if j is None or j.get("error", 0):
            raise RuntimeError(f"fio job {name} did not run or failed: {j and j.get('error')}")
        delivered = j["read"]["iops"] if unit == "IOPS" else j["read"]["bw_bytes"] / (1 << 20)
        add_row(rows, name, t, gib, unit, perfs[name], delivered, rss_mib, alone=False)


def measure_quick(args, data, sock, work, vols, runtime, rows):
    """The smoke run: one row per volume (QUICK), every volume at once (no
    warm-up)."""
    perfs = {f"{t}-{gib}": ebs_json(args.ebs, data, "volume", "describe", f"{t}-{gib}")["performance"]
             for t, gib, _, _ in vols}
    jobs = [(t, gib, QUICK[(t, gib)]) for t, gib, _, _ in vols]
    measure_together(args, data, sock, work, jobs, perfs, runtime, rows, "quick")


# The overhead measurement: pairs of short runs, each pair one run through a
# throttled server and one through a --no-throttle server, both serving all
# along (see measure_overhead).
OVERHEAD_PAIRS = 20
OVERHEAD_RUNTIME = 2


def paired_overhead(throttled, unthrottled, higher_is_better, seed=1):
    """The overhead in percent from paired measurements: the median over
    pairs of each pair's ratio, with a 95% bootstrap interval of that
    median (resampling pairs). Positive = the throttle costs."""
    ratios = [t / u for t, u in zip(throttled, unthrottled)]

    def pct(r):
        return 100 * (1 - r) if higher_is_better else 100 * (r - 1)

    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    lo, hi = pct(meds[int(0.025 * len(meds))]), pct(meds[int(0.975 * len(meds)) - 1])
    return {"percent": round(pct(statistics.median(ratios)), 2),
            "ci95": [round(min(lo, hi), 2), round(max(lo, hi), 2)]}


def measure_overhead(args, work, runtime, quick):
    """The throttle's cost at io2's limits (256,000 IOPS, 4,000 MiB/s, which
    this machine never reaches, so the throttle never makes a request wait):
    the same volume (its own data directory each) served by two servers at
    once, one throttled, one with --no-throttle, and 4 KiB random reads QD32
    through one then the other, in pairs of short runs (ABBA order).

    Why pairs of short runs: on this shared host one server's throughput
    moves by ±20% from one 5 s run to the next, and a few long alternated
    rounds (each server restarted) gave overheads from -4% to +11% for the
    same build. Both servers stay up here, so a pair's two runs are seconds
    apart and see the same machine; the median of the pairs' ratios and its
    bootstrap interval say what the throttle costs and how sure that is.
    The server's time on CPU per operation (scheduler nanoseconds) is given
    the same way.

    The servers run on one CPU and fio on another (taskset, fio's
    cpus_allowed): left to the scheduler, runs landed by turns at about
    64,000 and 85,000 IOPS as the two processes shared a core or not, so the
    two runs of a pair could differ by 30%; pinned, a pair's runs agree
    within 1-3% (the machine's own slow and fast phases still move both)."""
    pairs = 1 if quick else OVERHEAD_PAIRS
    length = min(runtime, OVERHEAD_RUNTIME)
    cpus = sorted(os.sched_getaffinity(0))
    pin_fio = [f"--cpus_allowed={cpus[0]}"] if len(cpus) >= 2 else []
    servers = {}
    for mode in ("throttled", "unthrottled"):
        data = os.path.join(work, f"overhead-{mode}")
        ebs_json(args.ebs, data, "volume", "create", "io2max", "--type", "io2", "--size", "256G", "--iops", "256000")
        sock = os.path.join(work, f"io2-{mode}.sock")
        if not quick:
            warm(args, data, sock, ["io2max"])
        servers[mode] = ebs_server(args.ebs, data, sock, "io2max", throttle=mode == "throttled",
                                   cpu=cpus[1] if pin_fio else None)
    iops = {"throttled": [], "unthrottled": []}
    cpu = {"throttled": [], "unthrottled": []}
    rss = {}
    for server in servers.values():
        server.start()
    try:
        for p in range(pairs):
            order = ["throttled", "unthrottled"] if p % 2 == 0 else ["unthrottled", "throttled"]
            got = {}
            for mode in order:
                got[mode] = res = run_fio(servers[mode], IOPS_JOB, length, REGION, work, f"overhead-{mode}",
                                           extra_args=pin_fio)
                iops[mode].append(res["iops"])
                cpu[mode].append(res["cpu_ns_per_op"])
                rss[mode] = res["server_peak_rss_mib"]
            log(f"bench: throttle overhead pair {p + 1}/{pairs}: throttled {got['throttled']['iops']:.0f} IOPS "
                f"({got['throttled']['cpu_ns_per_op']:.0f} ns CPU per op), --no-throttle "
                f"{got['unthrottled']['iops']:.0f} IOPS ({got['unthrottled']['cpu_ns_per_op']:.0f} ns)")
    finally:
        for server in servers.values():
            server.stop()
    by_iops = paired_overhead(iops["throttled"], iops["unthrottled"], higher_is_better=True)
    by_cpu = paired_overhead(cpu["throttled"], cpu["unthrottled"], higher_is_better=False)
    return {"throttled_iops": round(statistics.median(iops["throttled"])),
            "unthrottled_iops": round(statistics.median(iops["unthrottled"])),
            "overhead_percent": by_iops["percent"], "overhead_ci95": by_iops["ci95"],
            "throttled_cpu_ns_per_op": round(statistics.median(cpu["throttled"])),
            "unthrottled_cpu_ns_per_op": round(statistics.median(cpu["unthrottled"])),
            "cpu_overhead_percent": by_cpu["percent"], "cpu_overhead_ci95": by_cpu["ci95"],
            "throttled_peak_rss_mib": round(rss["throttled"], 1),
            "unthrottled_peak_rss_mib": round(rss["unthrottled"], 1), "pairs": pairs, "runtime_s": length,
            "pinned": f"servers on CPU {cpus[1]}, fio on CPU {cpus[0]}" if pin_fio else "not pinned: one CPU",
            "iops_per_run": iops, "cpu_ns_per_op_per_run": cpu}


def report(args, rows, overhead, runtime):
    facts = machine_facts(args.ebs, tools=("fio",))
    if args.quick:
        how = (f"{runtime} s fio runs over NBD (Unix socket); quick run: one measurement per type, all at once (one "
               f"fio run, one connection per volume) through one server, whose peak RSS is shown on every row; no "
               f"warm-up of the {REGION} region the jobs read.")
    else:
        how = (f"{runtime} s fio runs over NBD (Unix socket), a fresh server for each (credit buckets full); rows "
               f"of up to {TOGETHER_IOPS} IOPS run together (one connection per volume), the others alone; the "
               f"{REGION} region the jobs read is read once beforehand through an unthrottled server (page cache "
               f"warm).")
    lines = [
        f"# Throttle accuracy ({facts['date']})",
        "",
        machine_line(facts),
        how,
        "IOPS: 4 KiB random reads QD32; MiB/s: 1 MiB sequential reads QD8. Provisioned = the limit in force "
        "(burst while credits last); on st1 and sc1 each small random read is charged a full MiB of throughput "
        "(hdd-vols), so their IOPS rows are the burst MiB/s as IOPS, at most the IOPS limit.",
        "",
        "| volume | metric | provisioned | delivered | error | run | peak server RSS |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    order = {f"{t}-{gib}": i for i, (t, gib, _, _) in enumerate(VOLUMES)}
    rows.sort(key=lambda r: (order.get(r["volume"], 0), r["metric"] != "IOPS"))
    for r in rows:
        lines.append(f"| {r['volume']} | {r['metric']} | {r['provisioned']:g} | {r['delivered']:g} | "
                     f"{r['error_percent']:+.2f}% | {r['run']} | {r['server_peak_rss_mib']:.0f} MiB |")
    o = overhead

    def interval(ci):
        return f"{ci[0]:+.2f}% to {ci[1]:+.2f}%" if o["pairs"] >= 5 else "- (too few pairs)"

    lines += ["", f"Throttle overhead on io2 at 256,000 IOPS / 4,000 MiB/s (beyond this machine), 4 KiB random "
              f"reads QD32: {o['pairs']} pair(s) of {o['runtime_s']} s runs, each pair one run through a throttled "
              f"server and one through a --no-throttle server (both up throughout, ABBA order; {o['pinned']}); median of the pairs' ratios with its 95% bootstrap interval.", "",
              "| measure | throttled | --no-throttle | overhead | 95% interval | target |",
              "|---|---:|---:|---:|---|---|",
              f"| IOPS (medians) | {o['throttled_iops']:,} | {o['unthrottled_iops']:,} | {o['overhead_percent']:+.2f}% "
              f"| {interval(o['overhead_ci95'])} | < 3% |",
              f"| server CPU per operation | {o['throttled_cpu_ns_per_op']:,} ns | {o['unthrottled_cpu_ns_per_op']:,} ns "
              f"| {o['cpu_overhead_percent']:+.2f}% | {interval(o['cpu_overhead_ci95'])} | |",
              "", f"Peak server RSS: throttled {o['throttled_peak_rss_mib']:.0f} MiB, --no-throttle "
              f"{o['unthrottled_peak_rss_mib']:.0f} MiB.", ""]
    text = "\n".join(lines)
    write_results(args, "throttle", text, {"machine": facts, "runtime_s": runtime, "rows": rows, "overhead": overhead})
    if not rows or any(r["delivered"] <= 0 for r in rows):
        raise RuntimeError("a throttle row produced no numbers")
    return text
