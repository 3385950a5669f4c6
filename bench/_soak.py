"""The machinery of a soak run, shared by ``bench/robustness`` and
``tests/integration/test_soak_short.py``: stdlib only (plus ``_common``).

One gslb node (a ``gslb serve`` process, memory store) serves a small zone and one GSLB
name whose three endpoints have HTTP health checks against local backends, one of which
flaps. Around it, side by side in time:

- ``Flapper``: toggles that backend up and down on a schedule and remembers when;
- ``Reloader``: rewrites the config and sends SIGHUP, alternating two valid versions (they
  differ in one A record) and now and then an invalid one, which must be rejected while
  the previous version keeps serving; each reload is confirmed from ``/metrics`` (applied)
  or the node's log (rejected);
- ``Checker``: every second asks a few names over UDP and TCP and checks each answer is
  one of those allowed given the flap state and config version between sending and
  receiving (a change counts as settled ``settle`` seconds after it was made);
- ``Paced``: a UDP client at a fixed rate that waits for every reply: the loss count;
- ``Garbage``: random bytes and mutated queries over UDP at a bounded rate, plus a few TCP
  connections that send half a message and stall (the read timeout must cut them);
- ``Flood``: queries with a large answer "from" 127.0.0.2, the victim of a spoofed-source
  flood, when response rate limiting is on;
- the node's RSS sampled every second, and its exit noticed (a crash; the bench restarts it).

``run_soak`` runs all of it (and, for the bench, dnsperf at a fixed rate) and returns a
``SoakResult``. Every loop is bounded by the run's deadline.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    BenchError,
    DnsperfResult,
    children_of,
    free_port,
    gslb_command,
    query_message,
    reply_a_records,
    run_dnsperf,
)

HOST = "127.0.0.1"
ZONE = "soak.test"
APP = f"app.{ZONE}"
STEADY = ("127.0.0.31", "127.0.0.33")
FLAPPING = "127.0.0.32"
START_TIMEOUT = 30.0  # seconds for a node to answer /readyz
VICTIM = "127.0.0.2"  # the spoofed source of the flood
GARBAGE_SOURCE = "127.0.0.3"
VERSIONS = {"A": "192.0.2.201", "B": "192.0.2.202"}  # version.soak.test A, per valid config
STATIC = "192.0.2.80"
BIG_TEXT = ["".join(chr(ord("a") + (i + k) % 26) for i in range(250)) for k in range(4)]  # ~1 KB: fits in UDP

CONFIG = """\
server:
  dns:
    listen: ["127.0.0.1:0"]
    tcp_read_timeout: 2
    tcp_idle_timeout: 10
{rrl}  http:
    listen: "127.0.0.1:0"
zones:
  {zone}:
    nameservers:
      - {{name: ns1.{zone}, addresses: [192.0.2.1]}}
    records:
      - {{name: static, type: A, address: {static}}}
      - {{name: version, type: A, address: {version}}}
      - {{name: www, type: CNAME, target: {app}}}
      - {{name: big, type: TXT, text: [{big}]}}
sites:
  one: {{lat: 50.1, lon: 8.7, country: DE, continent: EU}}
services:
  {app}:
    ttl: 30
    monitor: {{type: http, port: {port}, path: /health, interval: {interval}, timeout: {timeout}, rise: 2, fall: 2}}
    endpoints:
{endpoints}"""

RRL = """\
    rrl: {{responses_per_second: {rate}, slip: 2, exempt_clients: [127.0.0.1/32]}}
"""

# Invalid versions, rotated: each must be rejected with the previous config still serving.
INVALID = (
    ("yaml", lambda text: text + "  broken: [\n"),
    ("unknown key", lambda text: text.replace("    ttl: 30\n", "    ttl: 30\n    colour: blue\n", 1)),
    ("cname conflict", lambda text: text.replace(
        "      - {name: www,", "      - {name: static, type: CNAME, target: elsewhere.example.}\n"
        "      - {name: www,", 1)),
)

QUERIES = [  # what the load (dnsperf) and the paced client ask
    (APP, "A"), (f"static.{ZONE}", "A"), (f"version.{ZONE}", "A"), (f"www.{ZONE}", "A"),
    (ZONE, "SOA"), (ZONE, "NS"), (f"nope.{ZONE}", "A"),
]


@dataclass
class SoakPlan:
    """What one run does; the defaults are the test's (short, low rate)."""

    duration: float = 15.0
    flap_period: float = 4.0
    reload_every: float = 3.0
    invalid_every: int = 3  # every Nth reload is an invalid config
    paced_rate: int = 100
    garbage_rate: int = 100
    stalled_tcp: int = 2  # TCP connections kept stalled mid-message by the garbage sender
    flood_rate: int = 0  # spoofed-source queries per second; 0: none
    rrl_rate: int = 0  # server.dns.rrl responses_per_second; 0: RRL off
    check_interval: float = 0.5  # health check interval of the GSLB name
    settle: float = 3.0  # seconds after a change (flap, reload) during which both answers are right
    dnsperf_rate: int = 0  # offered load; 0: no dnsperf
    cpus: str | None = None  # taskset for the node; None: unpinned
    restart: bool = False  # restart the node if it exits (counted as a crash either way)


@dataclass
class SoakResult:
    queries_sent: int = 0
    answered: int = 0
    lost: int = 0
    dropped_by_rrl: int = 0
    malformed_seen: int = 0
    crashes: int = 0
    rss_start_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_growth_pct: float = 0.0
    wrong_answers: int = 0
    reloads_ok: int = 0
    reloads_rejected: int = 0
    # detail
    reloads_failed: int = 0  # sent but neither confirmed applied nor rejected in time
    dnsperf_sent: int = 0
    dnsperf_lost: int = 0
    dnsperf_own_drops: int = 0  # replies dropped in dnsperf's own socket buffers (its loss, not ours)
    paced_sent: int = 0
    paced_lost: int = 0
    checker_sent: int = 0
    checker_lost: int = 0
    server_udp_drops: int = 0  # queries dropped in the node's socket buffer
    garbage_sent: int = 0
    stalled_cut: int = 0  # stalled TCP connections the server cut
    flood_sent: int = 0
    flood_amplification: float | None = None
    tcp_closed: dict[str, int] = field(default_factory=dict)
    rss_samples_mb: list[float] = field(default_factory=list)
    wrong_examples: list[str] = field(default_factory=list)
    reload_events: list[str] = field(default_factory=list)
    log_tail: str = ""

    def summary(self) -> dict[str, Any]:
        """The RESULT line's fields."""
        keys = ("queries_sent", "answered", "lost", "dropped_by_rrl", "malformed_seen", "crashes", "rss_start_mb",
                "rss_end_mb", "rss_growth_pct", "wrong_answers", "reloads_ok", "reloads_rejected")
        return {k: getattr(self, k) for k in keys}

    def details(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("rss_samples_mb", "log_tail", "reload_events"):
            out.pop(key)
        return out


# --------------------------------------------------------------------------- health backends


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.server.up else 503  # type: ignore[attr-defined]
        body = b"ok" if status == 200 else b"down"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Backends:
    """An HTTP health endpoint on each endpoint address, all on one port."""

    def __init__(self) -> None:
        self.servers: dict[str, http.server.ThreadingHTTPServer] = {}
        self.port = 0

    def start(self) -> None:
        for _ in range(50):
            port = random.randint(20000, 60999)
            try:
                for address in (*STEADY, FLAPPING):
                    server = http.server.ThreadingHTTPServer((address, port), _Health)
                    server.up = True  # type: ignore[attr-defined]
                    server.daemon_threads = True
                    self.servers[address] = server
            except OSError:
                self.stop()
                continue
            self.port = port
            for server in self.servers.values():
                threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
            return
        raise BenchError("no port free on every backend address")

    def set_up(self, address: str, up: bool) -> None:
        self.servers[address].up = up  # type: ignore[attr-defined]

    def stop(self) -> None:
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                server.shutdown()
            server.server_close()
        self.servers.clear()


class History:
    """A value over time, with when each change was made (thread-safe)."""

    def __init__(self, initial: Any) -> None:
        self.changes: list[tuple[float, Any]] = [(time.monotonic(), initial)]
        self.lock = threading.Lock()

    def set(self, value: Any, at: float | None = None) -> None:
        with self.lock:
            self.changes.append((time.monotonic() if at is None else at, value))

    def current(self) -> Any:
        with self.lock:
            return self.changes[-1][1]

    def between(self, start: float, end: float) -> set[Any]:
        """Every value in force at some time in [start, end]."""
        with self.lock:
            values = {v for t, v in self.changes if start <= t <= end}
            before = [v for t, v in self.changes if t < start]
        if before:
            values.add(before[-1])
        return values


# --------------------------------------------------------------------------- the node


def read_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def socket_inodes(pid: int) -> set[int]:
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    out.add(int(link[8:-1]))
    return out


def udp_drops(inodes: set[int]) -> dict[int, int]:
    """The kernel's per-socket drop count (/proc/net/udp, last column) of these sockets."""
    out: dict[int, int] = {}
    with contextlib.suppress(OSError), open("/proc/net/udp") as fh:
        next(fh)
        for line in fh:
            parts = line.split()
            if len(parts) >= 13 and int(parts[9]) in inodes:
                out[int(parts[9])] = int(parts[-1])
    return out


class Node:
    """``gslb serve`` on fixed ports, its log in ``workdir``; restartable on the same ports."""

    def __init__(self, config: Path, workdir: Path, *, cpus: str | None = None) -> None:
        self.config, self.workdir, self.cpus = config, workdir, cpus
        self.dns_port = free_port()
        self.http_port = free_port(exclude={self.dns_port})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "gslb.log"
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.starts += 1
        cmd = [*gslb_command(), "--log-level", "INFO", "serve", "-c", str(self.config),
               "--dns", f"{HOST}:{self.dns_port}", "--http", f"{HOST}:{self.http_port}"]
        if self.cpus is not None:
            cmd = ["taskset", "-c", self.cpus, *cmd]
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if not self.alive():
                raise BenchError(f"gslb serve exited at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError), \
                    urllib.request.urlopen(f"http://{HOST}:{self.http_port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise BenchError(f"gslb serve was not ready after {START_TIMEOUT:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def metrics(self) -> dict[str, float]:
        """``/metrics`` summed per metric name, and per name plus each single label."""
        with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
            if not m:
                continue
            name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
            out[name] = out.get(name, 0.0) + value
            for label in re.findall(r'\w+="[^"]*"', labels):
                out[f"{name}{{{label}}}"] = out.get(f"{name}{{{label}}}", 0.0) + value
        return out

    def udp_drops(self) -> dict[int, int]:
        return udp_drops(socket_inodes(self.pid)) if self.alive() else {}

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.proc.send_signal(sig)  # type: ignore[union-attr]


# --------------------------------------------------------------------------- configs and reloads


def config_text(version: str, *, backend_port: int, plan: SoakPlan) -> str:
    endpoints = "".join(f"      - {{site: one, ipv4: {a}}}\n" for a in sorted((*STEADY, FLAPPING)))
    return CONFIG.format(zone=ZONE, app=APP, static=STATIC, version=VERSIONS[version],
                         big=", ".join(BIG_TEXT), port=backend_port, interval=plan.check_interval,
                         timeout=min(0.4, plan.check_interval * 0.8), endpoints=endpoints,
                         rrl=RRL.format(rate=plan.rrl_rate) if plan.rrl_rate else "")


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Reloader:
    """Every ``plan.reload_every`` seconds: the other valid version, or (every
    ``invalid_every``-th time) an invalid one; each is confirmed or counted as failed."""

    def __init__(self, node: Node, config: Path, versions: History, plan: SoakPlan, backend_port: int) -> None:
        self.node, self.config, self.versions, self.plan = node, config, versions, plan
        self.backend_port = backend_port
        self.file_version = "A"  # the valid version last written
        self.ok = self.rejected = self.failed = 0
        self.count = 0
        self.events: list[str] = []

    def run(self, deadline: float, stop: threading.Event) -> None:
        for _ in _paced(1.0 / self.plan.reload_every, deadline, stop, first=self.plan.reload_every):
            try:
                self.reload_once()
            except (OSError, urllib.error.URLError) as exc:
                self.failed += 1
                self.events.append(f"reload: {exc}")

    def reload_once(self) -> None:
        self.count += 1
        if self.plan.invalid_every and self.count % self.plan.invalid_every == 0:
            kind, spoil = INVALID[(self.count // self.plan.invalid_every - 1) % len(INVALID)]
            self._invalid(kind, spoil(self._text(self.file_version)))
        else:
            self._valid("B" if self.file_version == "A" else "A")

    def _text(self, version: str) -> str:
        return config_text(version, backend_port=self.backend_port, plan=self.plan)

    def _reloads(self) -> float:
        return self.node.metrics().get("gslb_config_reloads_total", 0.0)

    def _valid(self, version: str) -> None:
        before = self._reloads()
        old = self.file_version
        write_atomic(self.config, self._text(version))
        self.file_version = version
        self.versions.set(frozenset({old, version}))  # either, until the node confirms
        self.node.signal(signal.SIGHUP)
        for _ in range(100):
            time.sleep(0.05)
            with contextlib.suppress(OSError, urllib.error.URLError):
                if self._reloads() > before:
                    self.versions.set(version)
                    self.ok += 1
                    self.events.append(f"reload to {version}: applied")
                    return
        self.failed += 1  # the version in force stays unknown (both allowed) until a later reload settles it
        self.events.append(f"reload to {version}: not confirmed within 5 s")

    def _invalid(self, kind: str, text: str) -> None:
        before = self.node.log().count("config reload rejected")
        reloads = self._reloads()
        write_atomic(self.config, text)
        self.node.signal(signal.SIGHUP)
        for _ in range(100):
            time.sleep(0.05)
            if self.node.log().count("config reload rejected") > before:
                if self._reloads() > reloads:
                    self.failed += 1
                    self.events.append(f"invalid config ({kind}) was applied")
                else:
                    self.rejected += 1
                    self.events.append(f"invalid config ({kind}): rejected")
                break
        else:
            self.failed += 1
            self.events.append(f"invalid config ({kind}): no rejection logged within 5 s")
        write_atomic(self.config, self._text(self.file_version))  # a restart must find a good config


class Flapper:
    """Toggles the flapping backend every ``period`` seconds; ``history`` says when."""

    def __init__(self, backends: Backends, period: float) -> None:
        self.backends, self.period = backends, period
        self.history = History(True)

    def run(self, deadline: float, stop: threading.Event) -> None:
        for _ in _paced(1.0 / self.period, deadline, stop, first=self.period):
            up = not self.history.current()
            self.history.set(up)  # recorded before any check can see it
            self.backends.set_up(FLAPPING, up)


def _flat(values: set[Any]) -> set[str]:
    out: set[str] = set()
    for v in values:
        out |= set(v) if isinstance(v, frozenset) else {v}
    return out


# --------------------------------------------------------------------------- clients


def _paced(rate: float, deadline: float, stop: threading.Event, *, first: float = 0.0) -> Any:
    """Yield once per 1/rate seconds (the first time after ``first``) until the deadline,
    catching up in small bursts."""
    step = 1.0 / rate
    due = time.monotonic() + first
    while not stop.is_set():
        now = time.monotonic()
        if now >= deadline:
            return
        if now < due:
            time.sleep(min(due - now, 0.05))
            continue
        yield
        due += step
        if now - due > 1.0:  # far behind (the machine stalled): do not burst a whole second
            due = now


class Paced:
    """UDP queries at a fixed rate from 127.0.0.1, each waited for (``timeout``); the
    ones with no reply by then are lost. IDs are unique among queries in flight."""

    def __init__(self, port: int, rate: int, *, timeout: float = 2.0) -> None:
        self.port, self.rate, self.timeout = port, rate, timeout
        self.sent = self.answered = self.lost = self.bad = 0
        self.wire = [query_message(n, t, edns_size=1232) for n, t in QUERIES]

    def run(self, deadline: float, stop: threading.Event) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        sock.setblocking(False)
        pending: dict[int, float] = {}
        next_id = random.randrange(65536)
        try:
            for _ in _paced(self.rate, deadline, stop):
                self._receive(sock, pending)
                while next_id in pending:
                    next_id = (next_id + 1) & 0xFFFF
                msg = self.wire[self.sent % len(self.wire)]
                with contextlib.suppress(OSError):
                    sock.sendto(struct.pack("!H", next_id) + msg[2:], (HOST, self.port))
                pending[next_id] = time.monotonic()
                self.sent += 1
                next_id = (next_id + 1) & 0xFFFF
            end = time.monotonic() + self.timeout
            while pending and time.monotonic() < end:
                select.select([sock], [], [], 0.05)
                self._receive(sock, pending)
            self.lost += len(pending)
        finally:
            sock.close()

    def _receive(self, sock: socket.socket, pending: dict[int, float]) -> None:
        for _ in range(10_000):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if len(data) < 12:
                self.bad += 1
                continue
            (ident,) = struct.unpack_from("!H", data)
            if pending.pop(ident, None) is not None:
                self.answered += 1
        now = time.monotonic()
        for ident, sent in list(pending.items()):
            if now - sent > self.timeout:
                del pending[ident]
                self.lost += 1


def _exchange_udp(port: int, msg: bytes, timeout: float) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(msg, (HOST, port))
        try:
            for _ in range(10):
                data = s.recv(65535)
                if data[:2] == msg[:2]:
                    return data
        except OSError:
            return None
    return None


def _exchange_tcp(port: int, msg: bytes, timeout: float) -> bytes | None:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(msg)) + msg)
            head = b""
            while len(head) < 2:
                chunk = s.recv(2 - len(head))
                if not chunk:
                    return None
                head += chunk
            (size,) = struct.unpack("!H", head)
            body = b""
            while len(body) < size:
                chunk = s.recv(size - len(body))
                if not chunk:
                    return None
                body += chunk
            return body
    except OSError:
        return None


class Checker:
    """Every ``interval`` seconds, a few names over UDP and one over TCP: each answer must be
    one of those allowed by the flap state and config version in force at some time
    between ``settle`` seconds before sending and receiving."""

    def __init__(self, port: int, flap: History, versions: History, settle: float,
                 *, interval: float = 1.0, timeout: float = 2.0) -> None:
        self.port, self.flap, self.versions, self.settle = port, flap, versions, settle
        self.interval, self.timeout = interval, timeout
        self.sent = self.answered = self.lost = self.wrong = 0
        self.examples: list[str] = []

    def run(self, deadline: float, stop: threading.Event) -> None:
        for rounds, _ in enumerate(_paced(1.0 / self.interval, deadline, stop), 1):
            for name, expect in ((APP, self._app), (f"version.{ZONE}", self._version),
                                 (f"static.{ZONE}", lambda t0, t1: {(0, (STATIC,))}),
                                 (f"nope.{ZONE}", lambda t0, t1: {(3, ())})):
                self.check(name, expect, tcp=False)
            self.check(APP if rounds % 2 else f"version.{ZONE}", self._app if rounds % 2 else self._version,
                       tcp=True)

    def _app(self, t0: float, t1: float) -> set[tuple[int, tuple[str, ...]]]:
        out = set()
        for up in self.flap.between(t0 - self.settle, t1):
            out.add((0, tuple(sorted((*STEADY, FLAPPING) if up else STEADY))))
        return out

    def _version(self, t0: float, t1: float) -> set[tuple[int, tuple[str, ...]]]:
        return {(0, (VERSIONS[v],)) for v in _flat(self.versions.between(t0 - self.settle, t1))}

    def check(self, name: str, expect: Callable[[float, float], set[tuple[int, tuple[str, ...]]]],
              *, tcp: bool) -> None:
        ident = random.randrange(65536)
        msg = query_message(name, "A", qid=ident, edns_size=None if tcp else 1232)
        t0 = time.monotonic()
        reply = (_exchange_tcp if tcp else _exchange_udp)(self.port, msg, self.timeout)
        t1 = time.monotonic()
        self.sent += 1
        if reply is None:
            self.lost += 1
            return
        self.answered += 1
        parsed = reply_a_records(reply)
        got = None if parsed is None or parsed[0] != ident else (parsed[1], tuple(sorted(parsed[2])))
        allowed = expect(t0, t1)
        if got not in allowed:
            self.wrong += 1
            if len(self.examples) < 20:
                self.examples.append(f"{'tcp' if tcp else 'udp'} {name}: got {got}, allowed {sorted(allowed)}")


class Garbage:
    """Random bytes and mutated queries over UDP from 127.0.0.3 at ``rate`` a second; and
    ``stalled`` TCP connections at a time that send half a message and then nothing."""

    def __init__(self, port: int, rate: int, stalled: int, *, seed: int = 7) -> None:
        self.port, self.rate, self.stalled = port, rate, stalled
        self.rng = random.Random(seed)
        self.sent = self.stalled_cut = 0
        self.seeds = [query_message(n, t, qid=1, edns_size=e) for n, t in QUERIES for e in (None, 1232)]

    def packet(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.3:
            return rng.randbytes(rng.randint(0, 600))
        data = bytearray(rng.choice(self.seeds))
        for _ in range(rng.randint(1, 6)):
            choice = rng.random()
            if choice < 0.6 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif choice < 0.8:
                del data[rng.randrange(len(data) + 1):]
            else:
                data += rng.randbytes(rng.randint(1, 40))
        if len(data) > 2:
            data[2] &= 0x7F  # a query, not a response (those are dropped unanswered)
        return bytes(data)

    def run(self, deadline: float, stop: threading.Event) -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((GARBAGE_SOURCE, 0))
        udp.setblocking(False)
        held: list[socket.socket] = []
        try:
            for _ in _paced(self.rate, deadline, stop):
                with contextlib.suppress(OSError):
                    udp.sendto(self.packet(), (HOST, self.port))
                self.sent += 1
                with contextlib.suppress(OSError):
                    while udp.recv(65535):
                        pass
                if self.sent % max(1, self.rate // 4) == 0:
                    held = self._tend_stalled(held)
        finally:
            udp.close()
            for s in held:
                s.close()

    def _tend_stalled(self, held: list[socket.socket]) -> list[socket.socket]:
        keep = []
        for s in held:
            readable, _, _ = select.select([s], [], [], 0)
            gone = False
            if readable:
                try:
                    gone = s.recv(4096) == b""
                except OSError:
                    gone = True
            if gone:
                self.stalled_cut += 1
                s.close()
            else:
                keep.append(s)
        while len(keep) < self.stalled:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((GARBAGE_SOURCE, 0))
                s.settimeout(1.0)
                s.connect((HOST, self.port))
                s.sendall(struct.pack("!H", 200) + self.rng.randbytes(20))  # 20 of 200 bytes, then silence
                keep.append(s)
            except OSError:
                s.close()
                break
        return keep


class Flood:
    """A spoofed-source flood as the victim sees it: queries for a large answer sent from
    127.0.0.2 at ``rate`` a second; what comes back is the amplification."""

    def __init__(self, port: int, rate: int) -> None:
        self.port, self.rate = port, rate
        self.sent = self.bytes_out = self.bytes_in = 0

    def run(self, deadline: float, stop: threading.Event) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((VICTIM, 0))
        sock.setblocking(False)
        msg = query_message(f"big.{ZONE}", "TXT", edns_size=4096)
        try:
            for _ in _paced(self.rate, deadline, stop):
                with contextlib.suppress(OSError):
                    sock.sendto(msg, (HOST, self.port))
                    self.sent += 1
                    self.bytes_out += len(msg)
                with contextlib.suppress(OSError):
                    for _ in range(1000):
                        self.bytes_in += len(sock.recv(65535))
        finally:
            sock.close()


def _thread(target: Callable[[float, threading.Event], None], deadline: float, stop: threading.Event,
            errors: list[str]) -> threading.Thread:
    def run() -> None:
        try:
            target(deadline, stop)
        except Exception as exc:  # reported, never lost in a thread
            errors.append(f"{getattr(target, '__qualname__', target)}: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------- the run


def find_dnsperf() -> int | None:
    for pid in children_of(os.getpid()):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "dnsperf":
                return pid
    return None


def run_soak(plan: SoakPlan, workdir: Path, *,
             on_tick: Callable[[float, dict[str, Any]], None] | None = None, tick_every: float = 10.0,
             queryfile: Path | None = None, node_ready: Callable[[Node], None] | None = None) -> SoakResult:
    """Start the backends and the node, run everything for ``plan.duration`` seconds, stop,
    and return the figures. ``node_ready`` runs once the node answers, before the clock
    starts (the bench measures capacity there and sets ``plan.dnsperf_rate``); ``on_tick``
    gets the elapsed time and a few live figures every ``tick_every`` seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = SoakResult()
    backends = Backends()
    backends.start()
    config = workdir / "soak.yaml"
    write_atomic(config, config_text("A", backend_port=backends.port, plan=plan))
    node = Node(config, workdir, cpus=plan.cpus)
    stop = threading.Event()
    errors: list[str] = []
    threads: list[threading.Thread] = []
    try:
        node.start()
        if node_ready is not None:
            node_ready(node)
        versions = History("A")
        flapper = Flapper(backends, plan.flap_period)
        reloader = Reloader(node, config, versions, plan, backends.port)
        checker = Checker(node.dns_port, flapper.history, versions, plan.settle)
        paced = Paced(node.dns_port, plan.paced_rate)
        garbage = Garbage(node.dns_port, plan.garbage_rate, plan.stalled_tcp)
        flood = Flood(node.dns_port, plan.flood_rate) if plan.flood_rate else None
        dnsperf: dict[str, DnsperfResult] = {}
        start = time.monotonic()
        deadline = start + plan.duration
        if plan.dnsperf_rate and queryfile is not None:
            def load(deadline: float, stop: threading.Event) -> None:
                dnsperf["run"] = run_dnsperf(node.dns_port, queryfile, max(1.0, deadline - time.monotonic()),
                                             rate=plan.dnsperf_rate, clients=4, outstanding=200, cpus="0",
                                             workdir=workdir)
            threads.append(_thread(load, deadline, stop, errors))
        for client in (flapper, reloader, checker, paced, garbage, *([flood] if flood else [])):
            threads.append(_thread(client.run, deadline, stop, errors))

        dnsperf_drops: dict[int, int] = {}
        server_drops: dict[int, int] = {}
        tick_next = start + tick_every
        for _ in _paced(1.0, deadline, stop):  # once a second: memory, drops, crashes
            if not node.alive():
                result.crashes += 1
                result.log_tail = node.log_tail()
                if not plan.restart:
                    break
                node.start()
                continue
            rss = read_rss_mb(node.pid)
            if rss is not None:
                result.rss_samples_mb.append(rss)
            for inode, drops in node.udp_drops().items():
                server_drops[inode] = max(drops, server_drops.get(inode, 0))
            perf_pid = find_dnsperf()
            if perf_pid is not None:
                for inode, drops in udp_drops(socket_inodes(perf_pid)).items():
                    dnsperf_drops[inode] = max(drops, dnsperf_drops.get(inode, 0))
            if on_tick is not None and time.monotonic() >= tick_next:
                tick_next += tick_every
                with contextlib.suppress(OSError, urllib.error.URLError):
                    on_tick(time.monotonic() - start, {
                        "metrics": node.metrics(), "rss_mb": rss, "flap_up": flapper.history.current(),
                        "version": reloader.file_version, "reloads_ok": reloader.ok,
                        "reloads_rejected": reloader.rejected, "reloads_failed": reloader.failed,
                        "wrong": checker.wrong, "checker_lost": checker.lost, "paced_sent": paced.sent,
                        "paced_lost": paced.lost, "garbage": garbage.sent, "stalled_cut": garbage.stalled_cut,
                        "server_udp_drops": sum(server_drops.values())})
        stop.set()
        for thread in threads:
            thread.join(timeout=plan.duration + 90)
        if node.alive():
            with contextlib.suppress(OSError, urllib.error.URLError):
                metrics = node.metrics()
                result.malformed_seen = int(metrics.get("gslb_dns_malformed_total", 0))
                result.dropped_by_rrl = int(metrics.get('gslb_dns_rrl_responses_total{action="dropped"}', 0))
                result.tcp_closed = {k.split('"')[1]: int(v) for k, v in metrics.items()
                                     if k.startswith("gslb_dns_tcp_closed_total{")}
        elif not result.log_tail:  # died after the last look
            result.crashes += 1
            result.log_tail = node.log_tail()
        perf = dnsperf.get("run")
        result.dnsperf_sent = perf.sent if perf else 0
        result.dnsperf_lost = perf.lost if perf else 0
        result.dnsperf_own_drops = sum(dnsperf_drops.values())
        result.server_udp_drops = sum(server_drops.values())
        result.paced_sent, result.paced_lost = paced.sent, paced.lost
        result.checker_sent, result.checker_lost = checker.sent, checker.lost
        result.queries_sent = result.dnsperf_sent + paced.sent + checker.sent
        result.answered = (perf.completed if perf else 0) + paced.answered + checker.answered
        result.lost = max(0, result.dnsperf_lost - result.dnsperf_own_drops) + paced.lost + checker.lost
        result.wrong_answers = checker.wrong
        result.wrong_examples = checker.examples
        result.reloads_ok, result.reloads_rejected, result.reloads_failed = (reloader.ok, reloader.rejected,
                                                                             reloader.failed)
        result.reload_events = reloader.events
        result.garbage_sent, result.stalled_cut = garbage.sent, garbage.stalled_cut
        if flood is not None:
            result.flood_sent = flood.sent
            result.flood_amplification = round(flood.bytes_in / flood.bytes_out, 2) if flood.bytes_out else None
        samples = result.rss_samples_mb
        if samples:
            # start: a tenth into the run (caches filled, monitors and reloads under way);
            # end: the median of the last five samples
            first = samples[min(len(samples) - 1, max(1, len(samples) // 10))]
            last = sorted(samples[-5:])[len(samples[-5:]) // 2]
            result.rss_start_mb, result.rss_end_mb = round(first, 1), round(last, 1)
            result.rss_growth_pct = round((last - first) / first * 100, 1)
        if errors:
            raise BenchError("a soak thread failed: " + "; ".join(errors))
        return result
    finally:
        stop.set()
        node.stop()
        backends.stop()
