"""Restarts without loss: ``gslb serve --takeover PATH`` takes the listening sockets of the node
serving at PATH over. Real processes on loopback, a paced UDP load with one ID per query and no
retries, and a TCP client with pipelined queries; each node answers a TXT record with its own
letter, so every answer says which process gave it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype

from dnsserver.server import bind_listener
from tests.support.dnswire import frame, read_frame
from tests.support.servers import ROOT, NodeProcess, node_process

NAME = "who.ho.example"
TOKEN = "handover-test-token-0123456789ab"
CONFIG = """\
server:
  dns: {{listen: ["127.0.0.1:0"]}}
  http: {{token: "handover-test-token-0123456789ab"}}
zones:
  ho.example:
    nameservers:
      - {{name: ns1.ho.example, addresses: [192.0.2.53]}}
    records:
      - {{name: who, type: TXT, text: "{who}"}}
"""


def config(tmp_path: Path, who: str, server: str = "") -> Path:
    """The config of node ``who``; ``server``: more lines under ``server:``."""
    path = tmp_path / f"{who}.yaml"
    text = CONFIG.format(who=who)
    path.write_text(text.replace("\nzones:", f"\n{server}zones:", 1))
    return path


def who_of(wire: bytes) -> tuple[int, str]:
    """(query id, the TXT letter) of a reply."""
    message = dns.message.from_wire(wire)
    texts = [b"".join(rd.strings).decode() for rrset in message.answer if rrset.rdtype == dns.rdatatype.TXT
             for rd in rrset]
    return message.id, texts[0] if texts else f"rcode {message.rcode()}"


QUERY = dns.message.make_query(NAME, "TXT").to_wire()


def query_wire(query_id: int) -> bytes:
    return query_id.to_bytes(2, "big") + QUERY[2:]


def ask_udp(port: int) -> str:
    return who_of(dns.query.udp(dns.message.make_query(NAME, "TXT"), "127.0.0.1", port=port, timeout=2).to_wire())[1]


def ask_tcp(port: int) -> str:
    return who_of(dns.query.tcp(dns.message.make_query(NAME, "TXT"), "127.0.0.1", port=port, timeout=2).to_wire())[1]


@dataclass
class UdpLoad:
    """``count`` queries at ``rate`` per second from one socket, IDs 0..count-1, no retries:
    each reply is recorded with the letter of the node that sent it."""

    port: int
    count: int
    rate: float
    reply_timeout: float = 3.0
    sent_at: list[float] = field(default_factory=list)
    answers: dict[int, tuple[str, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.count <= 65536
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.connect(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.wires = [query_wire(i) for i in range(self.count)]
        self.sent_at = [0.0] * self.count
        self.sent_all = threading.Event()
        self.sender = threading.Thread(target=self._send, daemon=True)
        self.receiver = threading.Thread(target=self._receive, daemon=True)

    def start(self) -> UdpLoad:
        self.receiver.start()
        self.sender.start()
        return self

    def _send(self) -> None:
        start = time.monotonic()
        for i, wire in enumerate(self.wires):
            delay = start + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.sent_at[i] = time.monotonic()
            self.sock.send(wire)
        self.sent_all.set()

    def _receive(self) -> None:
        deadline = None
        while len(self.answers) < self.count:
            if deadline is None and self.sent_all.is_set():
                deadline = time.monotonic() + self.reply_timeout
            if deadline is not None and time.monotonic() > deadline:
                return
            try:
                wire = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError as exc:  # ICMP port unreachable: nobody read the socket at that moment
                self.errors.append(repr(exc))
                continue
            query_id, who = who_of(wire)
            self.answers.setdefault(query_id, (who, time.monotonic()))

    def join(self, timeout: float) -> None:
        self.sender.join(timeout)
        self.receiver.join(timeout + self.reply_timeout)
        self.sock.close()

    def lost(self) -> list[int]:
        return [i for i in range(self.count) if i not in self.answers]

    def by_node(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for who, _ in self.answers.values():
            counts[who] = counts.get(who, 0) + 1
        return counts


@dataclass
class TcpClient:
    """One connection at a time with ``batch`` pipelined queries, each batch read back before
    the next. When the server closes the connection, the unanswered queries of the batch go
    again on a new one (RFC 7766 6.2.1); bounded by ``max_batches``."""

    port: int
    batch: int = 10
    max_batches: int = 5000
    stop: threading.Event = field(default_factory=threading.Event)
    answers: dict[int, tuple[int, str]] = field(default_factory=dict)  # id -> (connection number, letter)
    cuts: list[tuple[int, int, int]] = field(default_factory=list)  # (connection, answered, of batch)
    failures: list[str] = field(default_factory=list)
    connections: int = 0
    sent: int = 0

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TcpClient:
        self.thread.start()
        return self

    def _run(self) -> None:
        sock: socket.socket | None = None
        next_id, pending = 0, list[int]()
        for _ in range(self.max_batches):
            if self.stop.is_set() and not pending:
                break
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                self.connections += 1
            if not pending:
                pending = list(range(next_id, next_id + self.batch))
                next_id += self.batch
            got: list[tuple[int, str]] = []
            try:
                sock.sendall(b"".join(frame(query_wire(i)) for i in pending))
                for _ in pending:
                    got.append(who_of(read_frame(sock)))
            except TimeoutError:
                self.failures.append(f"no answer within 5 s on connection {self.connections}")
                break
            except OSError:  # closed by the server (EOF or reset)
                self.cuts.append((self.connections, len(got), len(pending)))
                sock.close()
                sock = None
            for query_id, who in got:
                self.answers[query_id] = (self.connections, who)
            pending = [i for i in pending if i not in self.answers]
            time.sleep(0.005)
            self.sent = next_id
        if sock is not None:
            sock.close()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)


def wait_exit(node: NodeProcess, timeout: float = 20.0) -> int:
    try:
        return node.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the old node did not exit:\n{node.log()}") from None


def takeover_args(a: NodeProcess, path: Path) -> tuple[str, ...]:
    dns_host, dns_port = a.listeners["dns/udp"]
    http_host, http_port = a.listeners["http"]
    return ("--dns", f"{dns_host}:{dns_port}", "--http", f"{http_host}:{http_port}", "--takeover", str(path))


def http_json(port: int, path: str, method: str = "GET", body: object = None) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        reply: dict[str, Any] = json.loads(response.read())
        return reply


@contextmanager
def node(tmp_path: Path, who: str, *args: str) -> Iterator[NodeProcess]:
    with node_process(config(tmp_path, who), *args, tmp_path=tmp_path, expect=3) as handle:
        yield handle


# --------------------------------------------------------------------------- the switch under load


def test_takeover_under_load_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"
    with node(tmp_path, "a", "--takeover", str(path)) as a:
        port = a.listeners["dns/udp"][1]
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        load = UdpLoad(port, count=20_000, rate=2_000).start()
        tcp = TcpClient(port).start()
        time.sleep(2.0)
        with node(tmp_path, "b", *takeover_args(a, path)) as b:
            assert wait_exit(a) == 0, a.log()
            a_gone = time.monotonic()
            load.join(30)
            tcp.finish()
            log_a, log_b = a.log(), b.log()
            # UDP: every query answered, by A before the switch and B after it.
            lost = load.lost()
            assert not lost, (f"{len(lost)} of {load.count} UDP queries lost, first ids {lost[:10]}, "
                              f"errors {load.errors[:3]}\n{log_a}\n{log_b}")
            counts = load.by_node()
            assert set(counts) == {"a", "b"} and counts["a"] > 1000 and counts["b"] > 1000, counts
            late = [i for i in range(load.count) if load.sent_at[i] > a_gone]
            assert late, "the load ended before the old node exited"
            assert {load.answers[i][0] for i in late} == {"b"}
            # TCP: A closed its connection between two batches, after answering all it had read;
            # the client's next batch went to B on a new connection.
            assert not tcp.failures, tcp.failures
            assert len(tcp.cuts) == 1 and tcp.cuts[0][1] == 0, tcp.cuts
            assert tcp.connections == 2
            assert set(range(tcp.sent)) <= set(tcp.answers)
            assert {who for conn, who in tcp.answers.values() if conn == 1} == {"a"}
            assert {who for conn, who in tcp.answers.values() if conn == 2} == {"b"}
            # HTTP: the same listening socket, now B's.
            ready = http_json(a.listeners["http"][1], "/readyz")
            assert ready["config"] == str(tmp_path / "b.yaml")
            assert "handover: pid" in log_a and "serves; stopping here" in log_a
            assert "shutting down (handed over)" in log_a
            assert f"received 3 socket(s) from pid {a.proc.pid}" in log_b
            assert path.exists()  # now B's
        assert b.proc.returncode == 0
        assert not path.exists(), "the hand-over socket is removed at a clean exit"


def test_second_takeover(tmp_path: Path) -> None:
    """A -> B -> C under a lighter load: the successor takes the hand-over socket's place too."""
    path = tmp_path / "handover.sock"
    with node(tmp_path, "a", "--takeover", str(path)) as a:
        port = a.listeners["dns/udp"][1]
        load = UdpLoad(port, count=8_000, rate=1_000).start()
        with node(tmp_path, "b", *takeover_args(a, path)) as b:
            assert wait_exit(a) == 0, a.log()
            with node(tmp_path, "c", *takeover_args(b, path)) as c:
                assert wait_exit(b) == 0, b.log()
                c_alone = time.monotonic()
                load.join(30)
                assert not load.lost(), (load.lost()[:10], c.log())
                assert set(load.by_node()) == {"a", "b", "c"}, load.by_node()
                assert {load.answers[i][0] for i in range(load.count) if load.sent_at[i] > c_alone} == {"c"}
                assert ask_tcp(port) == "c"
                assert f"received 3 socket(s) from pid {b.proc.pid}" in c.log()


def test_drains_move_with_the_sockets(tmp_path: Path) -> None:
    """The embedded store's state goes with ``going``: B starts with A's drain; B writes it to the
    state file (A no longer does); C, with no state file at all, still gets it from B."""
    path, state = tmp_path / "handover.sock", tmp_path / "state.json"
    with node(tmp_path, "a", "--takeover", str(path), "--state-file", str(state)) as a:
        http = a.listeners["http"][1]
        http_json(http, "/api/v1/drains", "PUT", {"kind": "site", "pattern": "eu-*", "reason": "moving"})
        with node(tmp_path, "b", *takeover_args(a, path), "--state-file", str(state)) as b:
            assert wait_exit(a) == 0, a.log()
            drains = http_json(http, "/api/v1/drains")["drains"]
            assert [(d["pattern"], d["reason"]) for d in drains] == [("eu-*", "moving")]
            http_json(http, "/api/v1/drains", "PUT", {"kind": "endpoint", "pattern": "x/*", "reason": "by b"})
            for _ in range(200):  # bounded wait for B's coalesced write
                if "by b" in state.read_text():
                    break
                time.sleep(0.05)
            assert [d["reason"] for d in json.loads(state.read_text())["drains"]] == ["moving", "by b"]
            with node(tmp_path, "c", *takeover_args(b, path)):
                assert wait_exit(b) == 0, b.log()
                drains = http_json(http, "/api/v1/drains")["drains"]
                assert sorted(d["reason"] for d in drains) == ["by b", "moving"]
                assert ask_udp(a.listeners["dns/udp"][1]) == "c"


# --------------------------------------------------------------------------- edge cases


def test_stale_handover_socket_starts_normally(tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a node that died
    # server.handover_socket, relative to the config file, instead of --takeover
    with node_process(config(tmp_path, "a", "  handover_socket: handover.sock\n"), tmp_path=tmp_path,
                      expect=3) as a:
        assert "nobody answers at" in a.log() and "stale socket" in a.log()
        assert ask_udp(a.listeners["dns/udp"][1]) == "a"
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(path))  # listening now
        probe.close()
        a.signal(signal.SIGTERM)
        assert wait_exit(a) == 0
    assert not path.exists()


def test_successor_that_never_confirms_changes_nothing(tmp_path: Path) -> None:
    """A successor receives the sockets, then dies before ``go``: the old node keeps serving,
    and the next successor still takes over."""
    path = tmp_path / "handover.sock"
    with node(tmp_path, "a", "--takeover", str(path)) as a:
        port = a.listeners["dns/udp"][1]
        fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        fake.settimeout(5)
        fake.connect(str(path))
        fake.sendall(b'{"takeover": 1}\n')
        data, fds, _, _ = socket.recv_fds(fake, 65536, 16)
        received = [socket.socket(fileno=fd) for fd in fds]
        manifest = json.loads(data)
        assert manifest == {"dns": [["127.0.0.1", port]], "http": ["127.0.0.1", a.listeners["http"][1]]}
        assert [(s.type, s.getsockname()) for s in received] == [
            (socket.SOCK_DGRAM, ("127.0.0.1", port)), (socket.SOCK_STREAM, ("127.0.0.1", port)),
            (socket.SOCK_STREAM, ("127.0.0.1", a.listeners["http"][1]))]
        fake.close()
        for sock in received:
            sock.close()
        a.wait_for_log(r"went away before confirming")
        assert a.proc.poll() is None
        assert [ask_udp(port) for _ in range(50)] == ["a"] * 50
        assert ask_tcp(port) == "a"
        with node(tmp_path, "b", *takeover_args(a, path)):
            assert wait_exit(a) == 0, a.log()
            assert ask_udp(port) == "b"


def test_successor_leaves_when_the_old_node_stays(tmp_path: Path) -> None:
    """The old node (played by this test) sends its sockets, takes ``go`` but never answers
    ``going`` and keeps running: the successor must not serve beside it, so it exits 2."""
    path = tmp_path / "handover.sock"
    dns_sockets = bind_listener("127.0.0.1", 0)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(30)
    seen: dict[str, Any] = {}

    def old_node() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(30)
            seen["hello"] = json.loads(conn.recv(4096))
            manifest = {"dns": [["127.0.0.1", dns_sockets.port]], "http": None}
            socket.send_fds(conn, [json.dumps(manifest).encode() + b"\n"],
                            [dns_sockets.udp.fileno(), dns_sockets.tcp.fileno()])
            seen["go"] = json.loads(conn.recv(4096))

    thread = threading.Thread(target=old_node, daemon=True)
    thread.start()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "gslb.cli", "serve", "-c", str(config(tmp_path, "b")), "--no-http",
             "--dns", f"127.0.0.1:{dns_sockets.port}", "--takeover", str(path)],
            capture_output=True, text=True, cwd=ROOT, timeout=60)
        thread.join(10)
    finally:
        server.close()
        dns_sockets.close()
    assert seen == {"hello": {"takeover": 1}, "go": {"go": True}}
    assert result.returncode == 2, result.stderr
    assert f"listening dns/udp on 127.0.0.1:{dns_sockets.port}" in result.stderr
    assert f"handover: pid {os.getpid()} did not confirm (connection closed) and still runs" in result.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "the temporary socket is removed"


def test_takeover_refused_with_workers(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "gslb.cli", "serve", "-c", str(config(tmp_path, "a")),
                             "--workers", "2", "--takeover", str(tmp_path / "h.sock"), "--no-http"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "--takeover: handing the sockets of several worker processes over is not supported" in result.stderr
    assert "listening" not in result.stderr


def test_systemd_socket_activation(tmp_path: Path) -> None:
    """Sockets passed as fds 3 and 4 with LISTEN_FDS/LISTEN_PID are served, not bound again."""
    listener = bind_listener("127.0.0.1", 0)
    port = listener.port
    wrapper = ("import os, sys\n"
               "udp, tcp = os.dup(int(sys.argv[1])), os.dup(int(sys.argv[2]))\n"
               "os.dup2(udp, 3); os.dup2(tcp, 4); os.set_inheritable(3, True); os.set_inheritable(4, True)\n"
               "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='2')\n"
               "os.execv(sys.executable, [sys.executable, *sys.argv[3:]])\n")
    log_path = tmp_path / "systemd.log"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", wrapper, str(listener.udp.fileno()), str(listener.tcp.fileno()),
             "-m", "gslb.cli", "serve", "-c", str(config(tmp_path, "a")), "--dns", f"127.0.0.1:{port}", "--no-http"],
            stdout=out, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            pass_fds=(listener.udp.fileno(), listener.tcp.fileno()))
    listener.close()  # the node's copies are the only ones now
    handle = NodeProcess(proc, log_path, {})
    try:
        handle.wait_for_log(rf"listening dns/tcp on 127\.0\.0\.1:{port}")
        assert "2 socket(s) from systemd" in handle.log()
        assert ask_udp(port) == "a"
        assert ask_tcp(port) == "a"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0, handle.log()
