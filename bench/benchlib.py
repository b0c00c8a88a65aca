"""Shared by the benchmark suites: servers, fio, /proc readings, machine facts."""
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_ticks(pid):
    """utime + stime of a process and its threads, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_ns(pid):
    """Time on CPU of a process's live threads, in nanoseconds (the
    scheduler's own count, /proc/PID/task/*/schedstat: finer than clock
    ticks, whose 10 ms steps are 1% of a 1 s measurement)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def settle_page_cache(path, drop=True, length=None):
    """Puts a data file shared by several servers in the same state before
    each one's run: nothing dirty, every page cached, in 4 KiB pages. Without
    it a server inherits its predecessor's state: qemu-nbd's direct writes
    evict the pages it wrote, nbdkit leaves its writes dirty for whoever runs
    next to wait on, and its large writes cached as large folios.

    On ext4 with large folios (Linux 6.16 and later) every 4 KiB write into a
    clean large folio walks all of its buffer heads: 4 KiB random writes run
    2-4x slower over a file cached by readahead or by large writes, for every
    server. So the file is written back, dropped, and read again without
    readahead (POSIX_FADV_RANDOM: 4 KiB pages, as a long-running server's page
    cache holds them under random I/O), by four threads at once.

    `drop=False` (the last run only read the file, so its folios are as the
    previous settle left them) just writes back and reads through, which
    costs a fraction of a second instead of a read from disk. `length`: only
    the file's first `length` bytes are read (the part the jobs use; --quick)."""
    if drop:
        drop_page_cache(path)
    size = os.path.getsize(path) if length is None else min(length, os.path.getsize(path))
    step = 8 << 20
    parts = 4
    span = -(-size // parts // step) * step

    def read(start):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            for off in range(start, min(start + span, size), step):
                os.pread(fd, step, off)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=read, args=(i * span,)) for i in range(parts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def drop_page_cache(path):
    """Writes a file back and evicts it from the page cache."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def wait_for_socket(path, proc, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"server exited at start with status {proc.returncode}")
        time.sleep(0.02)
    raise RuntimeError(f"server did not create {path}")


class Server:
    def __init__(self, name, argv, socket, export):
        self.name, self.argv, self.socket, self.export = name, argv, socket, export

    def start(self):
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_socket(self.socket, self.proc)
        time.sleep(0.1)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def uri(self):
        return f"nbd+unix:///{self.export}?socket={self.socket}"


def ebs_server(ebs, data, sock, export, throttle=False, cpu=None):
    """`ebs serve` on a Unix socket only; --no-throttle unless `throttle`;
    on CPU `cpu` alone (taskset) when given."""
    flags = [] if throttle else ["--no-throttle"]
    pin = [] if cpu is None else ["taskset", "-c", str(cpu)]
    return Server("ebs", [*pin, ebs, "--data-dir", data, "serve", *flags, "--listen", "none", "--socket", sock],
                  sock, export)


def run_fio(server, job, runtime, size, outdir, tag, extra_args=()):
    name, rw, bs, qd, extra = job
    out = os.path.join(outdir, f"{tag}.json")
    argv = ["fio", "--name=" + name, "--ioengine=nbd", "--uri=" + server.uri, "--rw=" + rw, "--bs=" + bs,
            f"--iodepth={qd}", f"--runtime={runtime}", "--time_based", f"--size={size}",
            "--output-format=json", "--output=" + out] + extra + list(extra_args)
    pid = server.proc.pid
    t0, n0 = cpu_ticks(pid), cpu_ns(pid)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t1, n1 = cpu_ticks(pid), cpu_ns(pid)
    with open(out) as f:
        text = f.read()
    j = json.loads(text[text.index("{"):])["jobs"][0]
    if j.get("error", 0):
        raise RuntimeError(f"fio reported error {j['error']} for {name} on {server.name}")
    ops = j["read"]["total_ios"] + j["write"]["total_ios"]
    secs = (t1 - t0) / os.sysconf("SC_CLK_TCK")
    return {
        "iops": j["read"]["iops"] + j["write"]["iops"],
        "mibps": (j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / (1 << 20),
        "lat_p50_us": max(j[d]["clat_ns"].get("percentile", {}).get("50.000000", 0)
                          for d in ("read", "write")) / 1000,
        "ops": ops,
        "server_cpu_s": secs,
        "cpu_s_per_mops": secs / ops * 1e6 if ops else None,
        "cpu_ns_per_op": (n1 - n0) / ops if ops else None,
        "server_peak_rss_mib": peak_rss_kib(pid) / 1024,
    }


def version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception as e:  # a missing peer is reported, not fatal here
        return f"unavailable ({e})"


# How each tool a suite may use reports its version.
TOOL_VERSION = {
    "fio": ["fio", "--version"],
    "nbdkit": ["nbdkit", "--version"],
    "qemu-nbd": ["qemu-nbd", "--version"],
    "nbdcopy": ["nbdcopy", "--version"],
    "restic": ["restic", "version"],
    "openssl": ["openssl", "version"],
}


def ebs_version(ebs):
    """The version of the tree the benchmarks run: `git describe` when git and
    a .git are there; else the version CMake stamped into the binary's build
    directory at configure time (BUILD/ebs-version.txt, for a binary at
    BUILD/bin/ebs); else "unknown". Never fails: a report without git (a
    release tarball, a copy of the tree) still says what it measured."""
    if shutil.which("git") and os.path.exists(os.path.join(ROOT, ".git")):
        try:
            out = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                                 text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass  # e.g. a tree owned by another user ("dubious ownership"): fall back to the stamp
    try:
        with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(ebs))), "ebs-version.txt")) as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"


def machine_facts(ebs, tools=("nbdkit", "qemu-nbd", "fio")):
    """CPU model, cores, kernel, date, ebs commit and the version of each of
    `tools` (the peers and tools the suite runs). The same facts go into
    every suite's Markdown (machine_line) and JSON ("machine")."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "ebs": ebs_version(ebs),
        **{t: version(TOOL_VERSION[t]) for t in tools},
    }


def machine_line(facts):
    """The machine facts as one Markdown line: CPU, cores, kernel, ebs commit,
    and every tool version machine_facts collected."""
    tools = [facts[t] for t in TOOL_VERSION if t in facts]
    return (f"Machine: {facts['cpu']}, {facts['cores']} cores, kernel {facts['kernel']}. "
            f"Versions: ebs {facts['ebs']}" + "".join(f", {v}" for v in tools) + ".")


# Runs one command and reports its wall time and rusage. A small launcher
# process sits between: a child's ru_maxrss starts at the high-water mark of
# the process that forked it (Linux carries it over the fork and the exec), so
# forking from this Python process would add its own size to every reading.
# The launcher's own ~8 MiB is the floor of what can be reported.
_LAUNCHER = r"""
import os, sys, time
t0 = time.monotonic()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, ru = os.wait4(pid, 0)
t1 = time.monotonic()
with open(sys.argv[1], "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {t1 - t0} {ru.ru_maxrss} {ru.ru_utime} {ru.ru_stime}")
"""


def run_measured(argv, env=None, cwd=None, stdout_path=None, check=True):
    """Runs argv to completion; returns its wall time, CPU time and peak RSS
    (wait4's rusage of that process alone). stdout goes to stdout_path (or is
    discarded); stderr is kept for the error message."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile(mode="r") as usage:
        out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
        try:
            subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, usage.name, *argv], env=env, cwd=cwd,
                                  stdout=out, stderr=err)
        finally:
            if stdout_path:
                out.close()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        fields = usage.read().split()
    if len(fields) != 5:
        raise RuntimeError(f"{' '.join(argv[:4])} ... could not be run: {stderr.strip()[-800:]}")
    code, wall, maxrss, utime, stime = int(fields[0]), float(fields[1]), int(fields[2]), float(fields[3]), \
        float(fields[4])
    if check and code != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited with {code}: {stderr.strip()[-800:]}")
    return {"wall_s": wall, "user_s": utime, "sys_s": stime, "peak_rss_mib": maxrss / 1024, "returncode": code,
            "stderr": stderr}


def du_bytes(path):
    """(allocated, apparent) bytes of every file under path, like du -s and du -sb."""
    alloc = apparent = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            alloc += st.st_blocks * 512
            apparent += st.st_size
    return alloc, apparent


def current_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def write_results(args, suite, text, data):
    """Prints the suite's table and writes it to OUT/SUITE-{quick,full}.md,
    with `data` (machine facts, raw runs) beside it as .json."""
    print(text)
    stamp = "quick" if args.quick else "full"
    base = os.path.join(args.out, f"{suite}-{stamp}")
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump(data, f, indent=2, default=str)
    log(f"bench: wrote {base}.md and .json")

