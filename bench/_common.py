"""Shared helpers for the benchmarks in bench/: stdlib only.

- finding external programs (and failing with a clear message when one is missing),
- free 127.0.0.1 ports, process trees and their CPU time from /proc,
- starting/stopping our server and the peers (NSD, Knot) with the settings from
  /work/shared/peers/README.md,
- running dnsperf and parsing its output (summary statistics and ``-v`` per-query latencies).

Every process started here is stopped by PID (never by name); callers keep the objects in a
list and call ``stop()`` in a ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"

# Debian package that ships each program, for the error message.
PACKAGES = {
    "nsd": "nsd",
    "knotd": "knot",
    "dnsperf": "dnsperf",
    "dig": "bind9-dnsutils",
    "taskset": "util-linux",
}


class BenchError(Exception):
    """A setup problem worth a one-line message and a non-zero exit."""


# --------------------------------------------------------------------------- programs

def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/local/bin"):
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_binaries(names: list[str]) -> dict[str, str]:
    """Paths of the programs; raises BenchError naming every missing one."""
    paths = {n: find_binary(n) for n in names}
    missing = [n for n, p in paths.items() if p is None]
    if missing:
        hint = ", ".join(f"{n} (Debian package {PACKAGES.get(n, n)})" for n in missing)
        raise BenchError(f"missing required program(s): {hint}")
    return paths  # type: ignore[return-value]


def gslb_command() -> list[str]:
    """How to run our server: the repo venv's python if there is one, else this python."""
    venv_python = REPO / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    return [python, "-m", "gslb.cli"]


# --------------------------------------------------------------------------- ports

def free_port(host: str = HOST, exclude: set[int] | None = None) -> int:
    """A high port free for both UDP and TCP right now (the usual small race applies)."""
    exclude = exclude or set()
    for _ in range(200):
        port = random.randint(20000, 60999)
        if port in exclude:
            continue
        socks = []
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise BenchError("could not find a free port on 127.0.0.1")


# --------------------------------------------------------------------------- /proc

def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2:].split()


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (of any of its threads)."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids.extend(int(x) for x in fh.read().split())
        except (FileNotFoundError, PermissionError):
            # Kernels without CONFIG_PROC_CHILDREN: scan every process for its parent.
            return [p for p in _all_pids() if (f := _stat_fields(p)) is not None and int(f[1]) == pid]
    return kids


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        todo.extend(children_of(p))
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user+system, all threads) of ``pid`` and its descendants, including
    descendants that already exited and were reaped (cutime+cstime).

    Summing utime+stime+cutime+cstime over every live process of the tree counts each
    process exactly once: a live child's time is not in its parent's cutime yet.
    Resolution is one clock tick (1/CLK_TCK s)."""
    ticks = 0
    for p in process_tree(pid):
        f = _stat_fields(p)
        if f is None:
            continue
        # After ')' : state=0, ppid=1, ... utime=11, stime=12, cutime=13, cstime=14
        ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return ticks / CLK_TCK


def pid_alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z"


def kill_pids(pids: list[int], timeout: float = 5.0) -> None:
    """SIGTERM each PID, wait, then SIGKILL the survivors."""
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for p in pids:
        if pid_alive(p):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)


# --------------------------------------------------------------------------- dig

def dig(port: int, name: str, qtype: str, timeout: float = 1.0) -> tuple[str, list[str]] | None:
    """(rcode, sorted answer records) from one non-recursive UDP query, or None on no answer."""
    cmd = ["dig", f"@{HOST}", "-p", str(port), "+norec", "+noedns", "+tries=1",
           f"+time={max(1, int(timeout))}", "+noall", "+comments", "+answer", name, qtype]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 2).stdout
    except subprocess.TimeoutExpired:
        return None
    m = re.search(r"status: (\w+)", out)
    if not m:
        return None
    answers = sorted(" ".join(line.split()) for line in out.splitlines()
                     if line and not line.startswith(";"))
    return m.group(1), answers


def wait_dns(port: int, name: str, qtype: str = "SOA", timeout: float = 15.0,
             alive: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dig(port, name, qtype, timeout=1.0) is not None:
            return
        if alive is not None and not alive():
            raise BenchError(f"server on port {port} exited during startup")
        time.sleep(0.1)
    raise BenchError(f"no DNS answer on {HOST}:{port} after {timeout:.0f}s")


# --------------------------------------------------------------------------- servers

@dataclass
class Server:
    """A DNS server under test: ``pid`` is the root of the process tree whose CPU is measured."""

    name: str
    port: int
    workdir: Path
    pid: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    repin: list[str] = field(default_factory=list)  # taskset -a -p -c CPUS (threads that set their own affinity)
    note: str = ""

    def start(self) -> None:
        raise NotImplementedError

    def before_run(self) -> None:
        """Re-pin every thread when the server sets its own affinity (knotd)."""
        if self.repin and self.pid:
            subprocess.run(["taskset", "-a", "-p", "-c", self.repin[0], str(self.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def log_tail(self, n: int = 20) -> str:
        if self.log_path and self.log_path.exists():
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self) -> None:
        pids = process_tree(self.pid) if self.pid else []
        if self.proc is not None and self.proc.pid not in pids and self.proc.poll() is None:
            pids.append(self.proc.pid)
        if pids:
            kill_pids(pids)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


class GslbServer(Server):
    """``gslb serve -c CONFIG --dns 127.0.0.1:PORT --no-http [--workers N]``."""

    def __init__(self, name: str, port: int, workdir: Path, config: Path, *, cpus: str = "1",
                 workers: int = 1) -> None:
        super().__init__(name, port, workdir)
        self.config = config
        self.cpus = cpus
        self.workers = workers

    def start(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"
        cmd = ["taskset", "-c", self.cpus, *gslb_command(), "--log-level", "INFO", "serve",
               "-c", str(self.config), "--dns", f"{HOST}:{self.port}", "--no-http"]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        with open(self.log_path, "w") as log:
            # taskset execs the server, so the Popen PID is the server's PID.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        want = re.compile(rf"listening dns/udp on {re.escape(HOST)}:{self.port}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if len(want.findall(self.log_path.read_text(errors="replace"))) >= self.workers:
                break
            if self.proc.poll() is not None:
                raise BenchError(f"gslb serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        else:
            raise BenchError(f"gslb serve did not log 'listening dns/udp' x{self.workers}:\n{self.log_tail()}")
        proc = self.proc
        wait_dns(self.port, "gslb.example.com", alive=lambda: proc.poll() is None)


NSD_CONF = """\
server:
    ip-address: {host}@{port}
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "{dir}"
    database: ""
    zonelistfile: "{dir}/zone.list"
    xfrdfile: "{dir}/xfrd.state"
    pidfile: "{dir}/nsd.pid"
    logfile: "{dir}/nsd.log"
    minimal-responses: {minimal}
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: {zone}
    zonefile: {zonefile}
"""


class NsdServer(Server):
    """NSD with one server process, RRL off; it daemonizes, the pidfile names the main process."""

    def __init__(self, port: int, workdir: Path, zone: str, zonefile: Path, *, cpus: str = "1",
                 minimal_responses: bool = True) -> None:
        super().__init__("nsd", port, workdir)
        self.zone, self.zonefile, self.cpus = zone, zonefile, cpus
        self.minimal = minimal_responses

    def start(self) -> None:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.zonefile, d / self.zonefile.name)
        conf = d / "nsd.conf"
        conf.write_text(NSD_CONF.format(host=HOST, port=self.port, dir=d, zone=self.zone,
                                        zonefile=self.zonefile.name,
                                        minimal="yes" if self.minimal else "no"))
        self.log_path = d / "nsd.log"
        pidfile = d / "nsd.pid"
        launcher = subprocess.run(["taskset", "-c", self.cpus, "nsd", "-c", str(conf), "-P", str(pidfile)],
                                  capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
        if launcher.returncode != 0:
            raise BenchError(f"nsd failed to start ({launcher.returncode}): {launcher.stderr.strip()}\n"
                             f"{self.log_tail()}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.pid = int(pidfile.read_text().split()[0])
                break
            except (FileNotFoundError, ValueError, IndexError):
                time.sleep(0.05)
        else:
            raise BenchError(f"nsd wrote no pidfile:\n{self.log_tail()}")
        wait_dns(self.port, self.zone, alive=lambda: pid_alive(self.pid))


KNOT_CONF = """\
server:
    listen: {host}@{port}
    rundir: {dir}/run
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: {dir}/db
zone:
  - domain: {zone}
    storage: {dir}
    file: {zonefile}
"""


class KnotServer(Server):
    """knotd in the foreground with one UDP worker; all its threads re-pinned after start."""

    def __init__(self, port: int, workdir: Path, zone: str, zonefile: Path, *, cpus: str = "1") -> None:
        super().__init__("knot", port, workdir)
        self.zone, self.zonefile, self.cpus = zone, zonefile, cpus
        self.repin = [cpus]

    def start(self) -> None:
        d = self.workdir
        (d / "run").mkdir(parents=True, exist_ok=True)
        (d / "db").mkdir(parents=True, exist_ok=True)
        shutil.copy(self.zonefile, d / self.zonefile.name)
        conf = d / "knot.conf"
        conf.write_text(KNOT_CONF.format(host=HOST, port=self.port, dir=d, zone=self.zone,
                                         zonefile=self.zonefile.name))
        self.log_path = d / "knot.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(["taskset", "-c", self.cpus, "knotd", "-c", str(conf)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        proc = self.proc
        wait_dns(self.port, self.zone, alive=lambda: proc.poll() is None)
        self.before_run()


# --------------------------------------------------------------------------- dnsperf

@dataclass
class DnsperfResult:
    cmd: list[str]
    output: str                     # everything but the per-query lines
    sent: int = 0
    completed: int = 0
    lost: int = 0
    run_time: float = 0.0
    qps: float = 0.0
    avg_latency: float = 0.0        # seconds, dnsperf's own figure
    min_latency: float = 0.0
    max_latency: float = 0.0
    stddev_latency: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, from -v (completed queries only)
    timeouts_v: int = 0

    def percentile(self, p: float) -> float | None:
        """Nearest-rank percentile of the -v latencies, in seconds."""
        if not self.latencies:
            return None
        data = sorted(self.latencies)
        k = max(0, min(len(data) - 1, int(-(-p * len(data) // 100)) - 1))
        return data[k]


_NUM = r"([0-9.]+)"
_PATTERNS = {
    "sent": rf"Queries sent:\s+{_NUM}",
    "completed": rf"Queries completed:\s+{_NUM}",
    "lost": rf"Queries lost:\s+{_NUM}",
    "run_time": rf"Run time \(s\):\s+{_NUM}",
    "qps": rf"Queries per second:\s+{_NUM}",
    "stddev_latency": rf"Latency StdDev \(s\):\s+{_NUM}",
}


def parse_dnsperf(text: str, cmd: list[str]) -> DnsperfResult:
    res = DnsperfResult(cmd=cmd, output="")
    summary: list[str] = []
    for line in text.splitlines():
        if line.startswith("> "):
            parts = line.split()
            if parts[1] == "T":
                res.timeouts_v += 1
                continue
            with contextlib.suppress(ValueError):
                res.latencies.append(float(parts[-1]))
        elif not line.startswith("Warning: received a response with an unexpected"):
            summary.append(line)
    res.output = "\n".join(summary)
    for attr, pat in _PATTERNS.items():
        m = re.search(pat, res.output)
        if m:
            value = float(m.group(1))
            setattr(res, attr, int(value) if attr in ("sent", "completed", "lost") else value)
    m = re.search(rf"Average Latency \(s\):\s+{_NUM} \(min {_NUM}, max {_NUM}\)", res.output)
    if m:
        res.avg_latency, res.min_latency, res.max_latency = map(float, m.groups())
    m = re.search(r"Response codes:\s+(.*)", res.output)
    if m:
        for code, count in re.findall(r"(\w+) (\d+) \(", m.group(1)):
            res.rcodes[code] = int(count)
    if not m and "Queries completed" not in res.output:
        raise BenchError(f"could not parse dnsperf output of {' '.join(cmd)}:\n{res.output[-2000:]}")
    return res


def run_dnsperf(port: int, queryfile: Path, duration: float, *, clients: int = 4, outstanding: int = 100,
                threads: int = 1, rate: int | None = None, verbose: bool = False, cpus: str = "0",
                timeout: float | None = None, max_runs: int | None = None,
                workdir: Path | None = None, host: str = HOST, extra_args: list[str] | None = None) -> DnsperfResult:
    """``taskset -c CPUS dnsperf ... -l DURATION``; output goes to a file (fast with -v) and is parsed.
    ``extra_args`` go before the rest (``-B`` for a binary query file whose messages each carry
    their own EDNS options, e.g. a different client subnet per query)."""
    cmd = ["taskset", "-c", cpus, "dnsperf", "-s", host, "-p", str(port), "-d", str(queryfile),
           "-l", f"{duration:g}", "-c", str(clients), "-q", str(outstanding), "-T", str(threads),
           *(extra_args or [])]
    if rate:
        cmd += ["-Q", str(rate)]
    if verbose:
        cmd.append("-v")
    if timeout is not None:
        cmd += ["-t", f"{timeout:g}"]
    if max_runs is not None:
        cmd += ["-n", str(max_runs)]
    out_dir = workdir or Path("/tmp")
    out_path = out_dir / f"dnsperf-{port}-{time.monotonic_ns()}.out"
    try:
        with open(out_path, "w+") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=duration + 60)
            out.seek(0)
            text = out.read()
    finally:
        out_path.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise BenchError(f"dnsperf failed ({proc.returncode}): {' '.join(cmd)}\n{text[-2000:]}")
    return parse_dnsperf(text, cmd)


@dataclass
class Measured:
    """One dnsperf run against one server, with the server's CPU time over the run."""

    perf: DnsperfResult
    cpu_seconds: float
    wall_seconds: float
    round_qps: list[float] = field(default_factory=list)  # one figure per run when combined

    @property
    def cpu_us_per_query(self) -> float | None:
        return self.cpu_seconds / self.perf.completed * 1e6 if self.perf.completed else None

    @property
    def cpu_utilisation(self) -> float:
        """Server CPU seconds per wall second over the run (1.0 = one core busy)."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds else 0.0


def combine(runs: list[Measured]) -> Measured:
    """Several runs against one server as one: totals, QPS = completed / run time, latency
    average weighted by completed queries, all -v latencies pooled."""
    first = runs[0].perf
    perf = DnsperfResult(cmd=first.cmd, output="\n\n".join(m.perf.output for m in runs))
    for m in runs:
        p = m.perf
        perf.sent += p.sent
        perf.completed += p.completed
        perf.lost += p.lost
        perf.run_time += p.run_time
        perf.avg_latency += p.avg_latency * p.completed
        perf.min_latency = min(perf.min_latency or p.min_latency, p.min_latency)
        perf.max_latency = max(perf.max_latency, p.max_latency)
        perf.latencies.extend(p.latencies)
        perf.timeouts_v += p.timeouts_v
        for code, n in p.rcodes.items():
            perf.rcodes[code] = perf.rcodes.get(code, 0) + n
    perf.avg_latency = perf.avg_latency / perf.completed if perf.completed else 0.0
    perf.qps = perf.completed / perf.run_time if perf.run_time else 0.0
    perf.stddev_latency = float("nan")  # not combinable from the summaries
    return Measured(perf, sum(m.cpu_seconds for m in runs), sum(m.wall_seconds for m in runs),
                    [m.perf.qps for m in runs])


def measure(server: Server, queryfile: Path, duration: float, **dnsperf_kw: Any) -> Measured:
    """Re-pin if needed, read the server tree's CPU, run dnsperf, read it again."""
    server.before_run()
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    perf = run_dnsperf(server.port, queryfile, duration, **dnsperf_kw)
    cpu1, t1 = server.cpu_seconds(), time.monotonic()
    return Measured(perf, cpu1 - cpu0, t1 - t0)


# --------------------------------------------------------------------------- additions for bench/policy
# (new helpers only; nothing above changes behaviour)

PACKAGES.setdefault("pdns_server", "pdns-server")

PDNS_CONF = """\
launch={launch}
bind-config={dir}/named.conf
local-address={host}:{port}
enable-lua-records=yes
edns-subnet-processing={ecs}
socket-dir={dir}/run
daemon=no
guardian=no
disable-syslog=yes
log-dns-queries=no
receiver-threads=1
distributor-threads=1
webserver=no
api=no
security-poll-suffix=
{extra}"""

PDNS_GEOIP_BACKEND = Path("/usr/lib/x86_64-linux-gnu/pdns/libgeoipbackend.so")


def pdns_has_geoip_backend() -> bool:
    """Whether pdns-backend-geoip is installed (LUA ``pickclosest`` needs it for lookups)."""
    return PDNS_GEOIP_BACKEND.exists() or any(
        Path(d, "libgeoipbackend.so").exists() for d in ("/usr/lib/pdns", "/usr/lib64/pdns"))


class PdnsServer(Server):
    """PowerDNS Authoritative (bind backend, LUA records on, packet cache left at its default)
    in the foreground; with ``geoip_db`` the geoip backend is launched too so that LUA
    ``pickclosest``/``country()`` can look clients up. ``security-poll-suffix=`` keeps it
    from sending its release-check query off the machine."""

    def __init__(self, port: int, workdir: Path, zone: str, zonefile: Path, *, cpus: str = "1",
                 geoip_db: Path | None = None, ecs: bool = True, extra: str = "") -> None:
        super().__init__("pdns", port, workdir)
        self.zone, self.zonefile, self.cpus = zone, zonefile, cpus
        self.geoip_db, self.ecs, self.extra = geoip_db, ecs, extra

    def start(self) -> None:
        d = self.workdir
        (d / "run").mkdir(parents=True, exist_ok=True)
        zone_copy = d / self.zonefile.name
        shutil.copy(self.zonefile, zone_copy)
        (d / "named.conf").write_text(f'zone "{self.zone}" {{ type master; file "{zone_copy}"; }};\n')
        extra = self.extra
        launch = "bind"
        if self.geoip_db is not None:
            launch = "bind,geoip"
            (d / "geo-zones.yaml").write_text("domains: []\n")
            extra += (f"geoip-database-files=mmdb:{self.geoip_db}\n"
                      f"geoip-zones-file={d / 'geo-zones.yaml'}\n")
        (d / "pdns.conf").write_text(PDNS_CONF.format(launch=launch, dir=d, host=HOST, port=self.port,
                                                      ecs="yes" if self.ecs else "no", extra=extra))
        self.log_path = d / "pdns.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(["taskset", "-c", self.cpus, "pdns_server", f"--config-dir={d}"],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        proc = self.proc
        wait_dns(self.port, self.zone, alive=lambda: proc.poll() is None)


def run_dnsperf_args(port: int, queryfile: Path, duration: float, extra_args: list[str],
                     **kw: Any) -> DnsperfResult:
    """``run_dnsperf`` with extra dnsperf arguments."""
    return run_dnsperf(port, queryfile, duration, extra_args=extra_args, **kw)


def tree_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` and its descendants, counted as ``tree_cpu_seconds``."""
    user = system = 0
    for p in process_tree(pid):
        f = _stat_fields(p)
        if f is None:
            continue
        user += int(f[11]) + int(f[13])
        system += int(f[12]) + int(f[14])
    return user / CLK_TCK, system / CLK_TCK


@dataclass
class MeasuredSplit(Measured):
    """``Measured`` plus the server's system (kernel) share of the CPU time."""

    sys_seconds: float = 0.0


def measure_args(server: Server, queryfile: Path, duration: float, extra_args: list[str],
                 **dnsperf_kw: Any) -> MeasuredSplit:
    """``measure`` with extra dnsperf arguments (see ``run_dnsperf_args``) and the user/system split
    (of the server's process tree: ``server.cpu_seconds()`` is not consulted)."""
    server.before_run()
    u0, s0 = tree_cpu_split(server.pid)
    t0 = time.monotonic()
    perf = run_dnsperf_args(server.port, queryfile, duration, extra_args, **dnsperf_kw)
    u1, s1 = tree_cpu_split(server.pid)
    t1 = time.monotonic()
    return MeasuredSplit(perf, (u1 - u0) + (s1 - s0), t1 - t0, sys_seconds=s1 - s0)


# DNS messages built by hand, for binary (-B) dnsperf files and in-process benchmarks.

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33, "ANY": 255}
OPTION_ECS = 8


def qname_wire(name: str) -> bytes:
    labels = [lb for lb in name.rstrip(".").split(".") if lb]
    return b"".join(bytes([len(lb)]) + lb.encode("ascii") for lb in labels) + b"\0"


def ecs_option(family: int, source: int, address: bytes) -> bytes:
    """An EDNS Client Subnet option (RFC 7871): ``address`` is the full 4 or 16 bytes; only
    the first ceil(source/8) are sent, with the bits past ``source`` cleared."""
    n = (source + 7) // 8
    addr = bytearray(address[:n])
    if source % 8 and n:
        addr[-1] &= (0xFF << (8 - source % 8)) & 0xFF
    body = struct.pack("!HBB", family, source, 0) + bytes(addr)
    return struct.pack("!HH", OPTION_ECS, len(body)) + body


def query_message(name: str, qtype: str | int, *, qid: int = 0, rd: bool = False, edns_size: int | None = 1232,
                  options: bytes = b"") -> bytes:
    """One query; with ``edns_size`` an OPT record carrying ``options`` (already encoded)."""
    code = QTYPES[qtype] if isinstance(qtype, str) else qtype
    header = struct.pack("!6H", qid, 0x0100 if rd else 0, 1, 0, 0, 1 if edns_size else 0)
    msg = header + qname_wire(name) + struct.pack("!HH", code, 1)
    if edns_size:
        msg += b"\0" + struct.pack("!HHIH", 41, edns_size, 0, len(options)) + options
    return msg


# --------------------------------------------------------------------------- additions for bench/propagation
# (new helpers only; nothing above changes behaviour)

PACKAGES.setdefault("redis-server", "redis-server")


def wait_redis(host: str, port: int, timeout: float = 10.0, alive: Callable[[], bool] | None = None) -> None:
    """Until ``PING`` gets ``+PONG`` (raw RESP over a socket: no client library needed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith(b"+PONG"):
                return
        if alive is not None and not alive():
            raise BenchError(f"redis-server on port {port} exited during startup")
        time.sleep(0.05)
    raise BenchError(f"redis-server on {host}:{port} did not answer PING after {timeout:.0f}s")


class RedisServer(Server):
    """``redis-server`` in the foreground on 127.0.0.1:PORT, nothing persisted
    (``--save "" --appendonly no``), its working directory under ``workdir``."""

    def __init__(self, port: int, workdir: Path, *, cpus: str = "0") -> None:
        super().__init__("redis", port, workdir)
        self.cpus = cpus

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "redis.log"
        cmd = ["taskset", "-c", self.cpus, "redis-server", "--bind", HOST, "--port", str(self.port),
               "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir),
               "--logfile", str(self.log_path), "--protected-mode", "yes"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        proc = self.proc
        wait_redis(HOST, self.port, alive=lambda: proc.poll() is None)


class GslbNode(Server):
    """``gslb serve -c CONFIG --dns HOST:PORT [--http 127.0.0.1:HPORT | --no-http] --redis URL``
    for a node of a cluster sharing one Redis, with extra environment (the API token).
    ``source`` runs the node from another checkout of the code (default: this repo)."""

    def __init__(self, name: str, host: str, port: int, workdir: Path, config: Path, *, redis_url: str,
                 http_port: int | None = None, cpus: str = "1", env: dict[str, str] | None = None,
                 source: Path | None = None) -> None:
        super().__init__(name, port, workdir)
        self.host, self.config, self.redis_url = host, config, redis_url
        self.http_port, self.cpus, self.env, self.source = http_port, cpus, env or {}, source

    def start(self) -> None:
        self.log_path = self.workdir / f"{self.name}.log"
        cmd = ["taskset", "-c", self.cpus, *gslb_command(), "--log-level", "INFO", "serve",
               "-c", str(self.config), "--dns", f"{self.host}:{self.port}", "--redis", self.redis_url]
        cmd += ["--http", f"{HOST}:{self.http_port}"] if self.http_port else ["--no-http"]
        env = {**os.environ, **self.env}
        cwd = REPO
        if self.source is not None:
            cwd = self.source
            env["PYTHONPATH"] = str(self.source) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                         stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if "gslb node ready" in text:
                break
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name}: gslb serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        else:
            raise BenchError(f"{self.name}: gslb serve did not log 'gslb node ready':\n{self.log_tail()}")


def run_dnsperf_at(host: str, port: int, queryfile: Path, duration: float, **kw: Any) -> DnsperfResult:
    """``run_dnsperf`` against a server on another loopback address (``-s HOST``)."""
    return run_dnsperf(port, queryfile, duration, host=host, **kw)


def _skip_name(msg: bytes, pos: int) -> int:
    """Offset just past the (possibly compressed) domain name at ``pos``."""
    for _ in range(128):
        length = msg[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length
    raise ValueError("name too long")


def reply_a_records(msg: bytes) -> tuple[int, int, list[str]] | None:
    """(id, rcode, A addresses in the answer section) of a DNS reply; None when malformed."""
    try:
        qid, flags, qd, an = struct.unpack_from("!4H", msg, 0)
        pos = 12
        for _ in range(qd):
            pos = _skip_name(msg, pos) + 4
        out = []
        for _ in range(an):
            pos = _skip_name(msg, pos)
            rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", msg, pos)
            pos += 10
            if rtype == 1 and rdlen == 4:
                out.append(socket.inet_ntoa(msg[pos:pos + 4]))
            pos += rdlen
        return qid, flags & 0xF, out
    except (struct.error, IndexError, ValueError):
        return None


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per core (busy, total) jiffies from /proc/stat; busy excludes idle and iowait. The
    busy share of a core over an interval, minus what our own processes used there, is the
    load other programs put on it (this VM is shared)."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *values = line.split()
                v = [int(x) for x in values]
                total = sum(v[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
                out[int(name[3:])] = (total - v[3] - v[4], total)
    return out


def core_busy(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[int, float]:
    """Busy fraction of each core between two ``core_ticks`` readings."""
    return {c: (after[c][0] - before[c][0]) / max(1, after[c][1] - before[c][1]) for c in after if c in before}
