"""The Redis state store end to end: several ``gslb serve`` processes sharing one real
``redis-server`` (or a Sentinel-managed master and replica), each on its own loopback
address (127.0.0.1, .2, .3) with ephemeral DNS and HTTP ports, driven over real HTTP and
asked over real DNS (dnspython, UDP).

The config is config/example.yaml (GeoIP test database by absolute path) plus an API token.
Its GSLB name app.gslb.example.com (geo policy) has us-east 192.0.2.10, eu-west 192.0.2.20
and ap-northeast 192.0.2.30: a client behind ECS 81.2.69.160/32 (London) gets eu-west; with
eu-west drained, the next closest, us-east; with both drained, ap-northeast.

Every wait for something that happens later (propagation, expiry, failover, reconnection)
is a bounded poll; nothing asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from tests.support.redis import RedisServer, redis_sentinel, redis_server
from tests.support.servers import EXAMPLE, NodeProcess, node_process, require_binary

pytestmark = pytest.mark.peer

TOKEN = "redis-test-token-0123456789abcdef"
ZONE = "gslb.example.com"
APP = f"app.{ZONE}"
NAMES = (APP, f"www.{ZONE}", f"static.{ZONE}", f"nonexistent.{ZONE}")
ECS_GRID = ("81.2.69.160/32", "216.160.83.56/32", "2001:218::1/128", "175.16.199.1/32", None)
GB_ECS = "81.2.69.160/32"
US, EU, AP = "192.0.2.10", "192.0.2.20", "192.0.2.30"
EU_ID, US_ID = f"eu-west/{EU}", f"us-east/{US}"
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
DNS_TIMEOUT = 2.0
PROPAGATE = 2.5  # bound of a wait for a change made on one node to reach the others
RECOVER = 20.0  # bound of a wait for reconnection after a Redis restart or a failover
T = TypeVar("T")


# --------------------------------------------------------------------------- waiting


def wait_until(fetch: Callable[[], T], done: Callable[[T], bool], what: str, timeout: float,
               interval: float = 0.05) -> T:
    """Poll ``fetch`` until ``done`` says yes; a bounded wait, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not the case after {timeout}s; last value {value!r}")
        time.sleep(interval)


# --------------------------------------------------------------------------- config


def example_data() -> dict[str, Any]:
    """config/example.yaml as data, the GeoIP database by absolute path, an API token."""
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    data["geoip"]["database"] = str((EXAMPLE.parent / data["geoip"]["database"]).resolve())
    data["server"] = {"http": {"listen": "127.0.0.1:0", "token": TOKEN}}
    return data


def write_config(path: Path, *, store: dict[str, Any] | None = None,
                 edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    data = example_data()
    if store is not None:
        data["store"] = store
    if edit is not None:
        edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- one node


@dataclass
class Reply:
    status: int
    body: Any

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body!r})"


@dataclass
class GslbNode:
    """One ``gslb serve`` process: its HTTP API and its DNS listener."""

    proc: NodeProcess
    dns_address: tuple[str, int]
    http: tuple[str, int]

    # -- HTTP

    def request(self, method: str, path: str, body: Any = None, timeout: float = 15.0) -> Reply:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(*self.http, timeout=timeout)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read().decode("utf-8", "replace")
            ctype = resp.getheader("Content-Type", "")
        finally:
            conn.close()
        return Reply(resp.status, json.loads(payload) if "json" in ctype else payload)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        reply = self.request(method, path, body)
        assert reply.status == status, f"{method} {path}: {reply}\n{self.proc.log()[-3000:]}"
        return reply.body

    def put_drain(self, pattern: str, kind: str = "endpoint") -> Reply:
        return self.request("PUT", "/api/v1/drains", {"kind": kind, "pattern": pattern, "reason": "test"})

    def drain(self, pattern: str, kind: str = "endpoint") -> Any:
        return self.ok("PUT", "/api/v1/drains", {"kind": kind, "pattern": pattern, "reason": "test"})

    def undrain(self, pattern: str, kind: str = "endpoint") -> Any:
        return self.ok("DELETE", "/api/v1/drains?" + urlencode({"kind": kind, "pattern": pattern}))

    def drains(self) -> list[tuple[str, str]]:
        return sorted((d["kind"], d["pattern"]) for d in self.ok("GET", "/api/v1/drains")["drains"])

    def register(self, endpoint: str, body: dict[str, Any], service: str = APP) -> Any:
        return self.ok("PUT", f"/api/v1/services/{service}/endpoints/{endpoint}", body, status=201)

    def readyz(self) -> dict[str, Any]:
        body: dict[str, Any] = self.ok("GET", "/readyz")
        return body

    def store(self) -> dict[str, Any]:
        store: dict[str, Any] = self.readyz()["store"]
        return store

    def store_state(self) -> str:
        return str(self.store()["state"])

    def endpoints(self, service: str) -> dict[str, dict[str, Any]]:
        (svc,) = [s for s in self.ok("GET", "/api/v1/services")["services"] if s["name"] == service]
        return {ep["id"]: ep for ep in svc["endpoints"]}

    # -- DNS

    def query(self, name: str, rdtype: str = "A", ecs: str | None = None) -> dns.message.Message:
        options: list[dns.edns.Option] = []
        if ecs is not None:
            address, _, prefix = ecs.partition("/")
            options.append(dns.edns.ECSOption(address, int(prefix)))
        message = dns.message.make_query(name, rdtype, use_edns=0, options=options)
        return dns.query.udp(message, self.dns_address[0], port=self.dns_address[1], timeout=DNS_TIMEOUT)

    def answer(self, name: str = APP, rdtype: str = "A", ecs: str | None = GB_ECS) -> list[str]:
        reply = self.query(name, rdtype, ecs)
        assert reply.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(reply.rcode())
        code = dns.rdatatype.from_text(rdtype)
        return sorted(rd.address for rrset in reply.answer if rrset.rdtype == code for rd in rrset)


def normalize(reply: dns.message.Message) -> tuple[Any, ...]:
    """Everything a client sees, order-independent; the SOA serial (time of loading, so it
    differs between nodes started in different seconds) is left out."""
    def section(rrsets: list[Any]) -> list[str]:
        out = []
        for rrset in rrsets:
            for rd in rrset:
                if rrset.rdtype == dns.rdatatype.SOA:
                    rd = rd.replace(serial=0)
                out.append(f"{rrset.name} {rrset.ttl} {dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}")
        return sorted(out)

    return (dns.rcode.to_text(reply.rcode()), dns.flags.to_text(reply.flags), section(reply.answer),
            section(reply.authority), section(reply.additional), sorted(o.to_text() for o in reply.options))


@contextmanager
def gslb_node(config: Path, host: str, *args: str, tmp_path: Path) -> Iterator[GslbNode]:
    with node_process(config, "--dns", f"{host}:0", "--http", f"{host}:0", *args,
                      tmp_path=tmp_path, expect=3) as proc:
        proc.wait_for_log(r"gslb node ready")
        assert {"dns/udp", "http"} <= set(proc.listeners), proc.log()
        yield GslbNode(proc, proc.listeners["dns/udp"], proc.listeners["http"])


@contextmanager
def gslb_nodes(configs: list[Path], *args: str, tmp_path: Path, hosts: tuple[str, ...] = HOSTS,
               connected: bool = True) -> Iterator[list[GslbNode]]:
    """One node per config, node i on ``hosts[i]``; with ``connected``, wait until each
    reports its store ok."""
    with ExitStack() as stack:
        nodes = [stack.enter_context(gslb_node(cfg, host, *args, tmp_path=tmp_path))
                 for cfg, host in zip(configs, hosts, strict=False)]
        if connected:
            for node in nodes:
                wait_until(node.store_state, lambda s: s == "ok", f"node {node.http} connected to its store",
                           RECOVER)
        yield nodes


def wait_answer(nodes: list[GslbNode], expected: list[str], what: str, *, timeout: float = PROPAGATE,
                name: str = APP, rdtype: str = "A", ecs: str | None = GB_ECS) -> None:
    for node in nodes:
        wait_until(lambda n=node: n.answer(name, rdtype, ecs), lambda a: a == sorted(expected),  # type: ignore[misc]
                   f"{what} (node {node.dns_address})", timeout)


# --------------------------------------------------------------------------- DNS under fire


@dataclass
class QueryLoop:
    """Ask nodes a rotating set of questions from a thread until stopped (or until its
    own bounds run out), recording every outcome."""

    nodes: list[GslbNode]
    questions: list[tuple[str, str, str | None]]
    max_seconds: float = 90.0
    max_queries: int = 200_000
    results: list[tuple[int, tuple[str, str, str | None], str, tuple[Any, ...] | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        i = 0
        while not self._stop.is_set() and time.monotonic() < deadline and i < self.max_queries:
            node_index = i % len(self.nodes)
            question = self.questions[(i // len(self.nodes)) % len(self.questions)]
            try:
                reply = self.nodes[node_index].query(*question)
            except dns.exception.Timeout:
                self.results.append((node_index, question, "TIMEOUT", None))
            except OSError as exc:
                self.results.append((node_index, question, f"ERROR {exc}", None))
            else:
                self.results.append((node_index, question, dns.rcode.to_text(reply.rcode()), normalize(reply)))
            i += 1
            time.sleep(0.005)

    def __enter__(self) -> QueryLoop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(DNS_TIMEOUT + 5)

    def count(self) -> int:
        return len(self.results)

    def check(self, allowed: Callable[[int, tuple[str, str, str | None]], list[tuple[Any, ...]]]) -> None:
        """No timeout, no error, no SERVFAIL, and every answer one of ``allowed(node, question)``."""
        failures = [(n, q, status) for n, q, status, _ in self.results if status not in ("NOERROR", "NXDOMAIN")]
        assert not failures, f"{len(failures)} failed queries of {len(self.results)}, first: {failures[:5]}"
        wrong = [(n, q, view) for n, q, _, view in self.results if view not in allowed(n, q)]
        assert not wrong, f"{len(wrong)} unexpected answers of {len(self.results)}, first: {wrong[:3]}"


def views(nodes: list[GslbNode], questions: list[tuple[str, str, str | None]]) -> dict[tuple[int, Any], Any]:
    return {(i, q): normalize(node.query(*q)) for i, node in enumerate(nodes) for q in questions}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def redis_bin() -> str:
    return require_binary("redis-server")


@pytest.fixture
def redis_srv(redis_bin: str, tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(redis_bin, tmp_path) as server:
        yield server


def configs(tmp_path: Path, count: int, **kw: Any) -> list[Path]:
    return [write_config(tmp_path / f"node{i + 1}.yaml", **kw) for i in range(count)]


# --------------------------------------------------------------------------- 1. same answers


@pytest.mark.parametrize("count", [2, 3])
def test_nodes_sharing_redis_answer_alike(redis_srv: RedisServer, tmp_path: Path, count: int) -> None:
    with gslb_nodes(configs(tmp_path, count), "--redis", redis_srv.url, tmp_path=tmp_path) as nodes:
        ids = [node.store()["node"] for node in nodes]
        assert len(set(ids)) == count, ids
        assert all(node.store()["backend"] == "redis" for node in nodes)
        client = redis_srv.client()
        try:
            assert set(ids) <= set(client.hgetall("gslb:nodes")), client.hgetall("gslb:nodes")
        finally:
            client.close()

        assert nodes[0].answer(APP, "A", GB_ECS) == [EU]  # the grid below means something
        for name in NAMES:
            for rdtype in ("A", "AAAA"):
                for ecs in ECS_GRID:
                    seen = [normalize(node.query(name, rdtype, ecs)) for node in nodes]
                    for i, view in enumerate(seen[1:], start=2):
                        assert view == seen[0], f"{name} {rdtype} ecs={ecs}: node {i} differs from node 1"
                    expected_rcode = "NXDOMAIN" if name.startswith("nonexistent.") else "NOERROR"
                    assert seen[0][0] == expected_rcode, (name, rdtype, ecs, seen[0])


# --------------------------------------------------------------------------- 2. drains, registrations


def test_drain_and_registration_propagate(redis_srv: RedisServer, tmp_path: Path) -> None:
    with gslb_nodes(configs(tmp_path, 3), "--redis", redis_srv.url, tmp_path=tmp_path) as nodes:
        n1, n2, n3 = nodes
        wait_answer(nodes, [EU], "London is answered eu-west before any drain")

        assert n1.drain(EU_ID)["matched"] == [f"{APP}/{EU_ID}"]
        wait_answer([n2, n3], [US], "a drain through node 1 reaches nodes 2 and 3")
        assert n1.answer() == [US]
        assert n2.drains() == n3.drains() == [("endpoint", EU_ID)]

        n1.undrain(EU_ID)
        wait_answer([n2, n3], [EU], "an undrain through node 1 reaches nodes 2 and 3")
        assert n1.answer() == [EU]
        assert n2.drains() == n3.drains() == []

        ttl = 4
        n2.register("reg-eu", {"site": "eu-west", "ipv4": "192.0.2.99", "weight": 1, "ttl": ttl})
        wait_answer([n1, n3], [EU, "192.0.2.99"], "a registration through node 2 reaches nodes 1 and 3")
        assert n2.answer() == [EU, "192.0.2.99"]
        assert "reg-eu" in n1.endpoints(APP)

        wait_answer(nodes, [EU], "the registration expires everywhere after its TTL", timeout=ttl + 5)
        for node in nodes:
            assert "reg-eu" not in node.endpoints(APP)
        client = redis_srv.client()
        try:
            assert client.exists(f"gslb:reg:{APP}/reg-eu") == 0
        finally:
            client.close()


# --------------------------------------------------------------------------- 3. health quorum


MON = f"mon.{ZONE}"
MON_HOSTS = ("127.0.0.31", "127.0.0.32")  # .31 answers per prober; .32 always 200
PROBE_SOURCES = ("127.0.0.11", "127.0.0.12", "127.0.0.13")


class VotingBackend:
    """HTTP health endpoints on MON_HOSTS (same port), on their own event loop in a thread.
    ``blocked[host][source]`` is how ``host`` treats probes from ``source`` (by the
    connection's peername): "500" answers HTTP 500, "close" hangs up without a reply;
    anything else gets 200."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers: list[asyncio.Server] = []
        self.port = 0
        self.blocked: dict[str, dict[str, str]] = {h: {} for h in MON_HOSTS}
        self.probes: dict[tuple[str, str], int] = {}
        self.lock = threading.Lock()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> None:
        self.thread.start()
        for _ in range(10):
            try:
                self.call(self._bind())
                return
            except OSError:
                self.call(self._close())
        raise AssertionError("no common free port on the backend addresses")

    async def _bind(self) -> None:
        first = await asyncio.start_server(self._handler(MON_HOSTS[0]), MON_HOSTS[0], 0)
        self.servers = [first]
        self.port = first.sockets[0].getsockname()[1]
        for host in MON_HOSTS[1:]:
            self.servers.append(await asyncio.start_server(self._handler(host), host, self.port))

    async def _close(self) -> None:
        for server in self.servers:
            server.close()
        self.servers = []

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def set_blocked(self, host: str, source: str, mode: str | None) -> None:
        with self.lock:
            if mode is None:
                self.blocked[host].pop(source, None)
            else:
                self.blocked[host][source] = mode

    def probed_from(self, host: str) -> set[str]:
        with self.lock:
            return {src for (h, src), n in self.probes.items() if h == host and n > 0}

    def _handler(self, host: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            source = writer.get_extra_info("peername")[0]
            with self.lock:
                self.probes[(host, source)] = self.probes.get((host, source), 0) + 1
                mode = self.blocked[host].get(source)
            try:
                if mode == "close":
                    return
                with contextlib.suppress(asyncio.TimeoutError):
                    async with asyncio.timeout(2):
                        await reader.readuntil(b"\r\n\r\n")
                status = "500 Internal Server Error" if mode == "500" else "200 OK"
                writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
        return handle


def quorum_config(path: Path, port: int, url: str, source: str) -> Path:
    def edit(data: dict[str, Any]) -> None:
        data["server"]["probe_source"] = source
        data["services"][MON] = {
            "ttl": 30,
            "monitor": {"type": "http", "port": port, "path": "/health", "interval": 0.2, "timeout": 1.0,
                        "fall": 2, "rise": 2},
            "endpoints": [{"site": "us-east", "ipv4": MON_HOSTS[0]}, {"site": "eu-west", "ipv4": MON_HOSTS[1]}],
        }
    return write_config(path, store={"type": "redis", "url": url, "stale_after": 3}, edit=edit)


def test_health_quorum_across_three_vantage_points(redis_srv: RedisServer, tmp_path: Path) -> None:
    backend = VotingBackend()
    backend.start()
    try:
        paths = [quorum_config(tmp_path / f"node{i + 1}.yaml", backend.port, redis_srv.url, src)
                 for i, src in enumerate(PROBE_SOURCES)]
        texts = [p.read_text() for p in paths]
        assert all(t.replace(src, "X") == texts[0].replace(PROBE_SOURCES[0], "X")
                   for t, src in zip(texts, PROBE_SOURCES, strict=True))
        with gslb_nodes(paths, tmp_path=tmp_path) as nodes:
            n1, n2, n3 = nodes
            both, only_32 = sorted(MON_HOSTS), [MON_HOSTS[1]]
            wait_until(lambda: backend.probed_from(MON_HOSTS[0]), lambda s: s >= set(PROBE_SOURCES),
                       "each node probes from its own probe_source", 5.0)
            wait_answer(nodes, both, "both endpoints up at start", name=MON, ecs=None)
            ids = [node.store()["node"] for node in nodes]
            ep31 = f"us-east/{MON_HOSTS[0]}"

            # One vantage point sees .31 fail: outvoted, it stays in every node's answers.
            backend.set_blocked(MON_HOSTS[0], PROBE_SOURCES[0], "500")
            wait_until(lambda: n1.endpoints(MON)[ep31]["health"]["state"], lambda s: s == "down",
                       "node 1's own verdict on .31 goes down", 5.0)
            client = redis_srv.client()
            try:
                wait_until(lambda: client.hgetall(f"gslb:health:{ids[0]}"), lambda h: "down" in h.values(),
                           "node 1's down vote is in Redis", PROPAGATE)
            finally:
                client.close()
            for _ in range(15):  # several intervals and heartbeats: it must stay, on every node
                for i, node in enumerate(nodes):
                    assert node.answer(MON, "A", None) == both, f"node {i + 1} dropped .31 on one down vote"
                time.sleep(0.1)
            assert n2.endpoints(MON)[ep31]["health"]["state"] == "up"
            assert n3.endpoints(MON)[ep31]["health"]["state"] == "up"

            # Two of three see it fail: it goes down on all three, the third included.
            backend.set_blocked(MON_HOSTS[0], PROBE_SOURCES[1], "close")
            wait_answer(nodes, only_32, ".31 down everywhere on two down votes of three", timeout=5.0,
                        name=MON, ecs=None)
            assert n3.endpoints(MON)[ep31]["health"]["state"] == "up"  # its own verdict, outvoted
            assert n3.answer(MON, "A", None) == only_32

            # Both recover: back everywhere.
            backend.set_blocked(MON_HOSTS[0], PROBE_SOURCES[0], None)
            backend.set_blocked(MON_HOSTS[0], PROBE_SOURCES[1], None)
            wait_answer(nodes, both, ".31 back everywhere once the votes are up again", timeout=5.0,
                        name=MON, ecs=None)
    finally:
        backend.stop()


# --------------------------------------------------------------------------- 4. Redis dies, comes back empty


FAULT_QUESTIONS: list[tuple[str, str, str | None]] = [
    (APP, "A", GB_ECS), (APP, "AAAA", GB_ECS), (APP, "A", None), (APP, "A", "216.160.83.56/32"),
    (f"www.{ZONE}", "A", GB_ECS), (f"nonexistent.{ZONE}", "A", None),
]


def test_redis_killed_and_restarted_empty(redis_srv: RedisServer, tmp_path: Path) -> None:
    with gslb_nodes(configs(tmp_path, 2), "--redis", redis_srv.url, tmp_path=tmp_path) as nodes:
        n1, n2 = nodes
        n1.drain(EU_ID)
        wait_answer(nodes, [US], "the drain made before the outage reaches both nodes")
        baseline = views(nodes, FAULT_QUESTIONS)

        with QueryLoop(nodes, FAULT_QUESTIONS) as loop:
            wait_until(loop.count, lambda c: c >= 20, "queries before the outage", 5.0)
            redis_srv.stop(signal.SIGKILL)
            for node in nodes:
                wait_until(node.store_state, lambda s: s == "degraded", "/readyz reports the store degraded", 10.0)
            before_write = loop.count()
            reply = n1.put_drain(US_ID)
            assert reply.status == 503, reply
            assert n2.put_drain(US_ID).status == 503
            wait_until(loop.count, lambda c: c >= before_write + 50, "queries during the outage", 10.0)

            redis_srv.restart()  # empty, same port
            client = redis_srv.client()
            try:
                drains = wait_until(lambda: client.hgetall("gslb:drains"), lambda d: f"endpoint:{EU_ID}" in d,
                                    "a node wrote its drains back into the empty Redis", RECOVER)
                assert set(drains) == {f"endpoint:{EU_ID}"}, drains  # the refused write was not kept
                assert json.loads(drains[f"endpoint:{EU_ID}"])["pattern"] == EU_ID
            finally:
                client.close()
            after = loop.count()
            wait_until(loop.count, lambda c: c >= after + 20, "queries after the restart", 5.0)
        loop.check(lambda n, q: [baseline[(n, q)]])
        assert views(nodes, FAULT_QUESTIONS) == baseline

        for node in nodes:
            assert node.drains() == [("endpoint", EU_ID)]
        # A new write after the restart converges everywhere (retried: a node may still be
        # between its reconnection attempts).
        wait_until(lambda: n2.put_drain(US_ID).status, lambda s: s == 200, "writes accepted again", RECOVER,
                   interval=0.2)
        wait_answer(nodes, [AP], "a drain made after the restart reaches both nodes", timeout=5.0)
        n1.undrain(EU_ID)
        wait_answer(nodes, [EU], "an undrain after the restart reaches both nodes", timeout=5.0)
        for node in nodes:
            assert node.drains() == [("endpoint", US_ID)]

        # Redis works again for both nodes (they just read and wrote it): /readyz says so.
        for i, node in enumerate(nodes, start=1):
            deadline = time.monotonic() + RECOVER
            while (store := node.store())["state"] != "ok" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert store["state"] == "ok", (f"node {i}: /readyz store still {store} {RECOVER}s after Redis came "
                                            f"back, though it reads and writes Redis fine\n"
                                            f"{node.proc.log()[-2000:]}")


# --------------------------------------------------------------------------- 5. Sentinel failover


def test_sentinel_failover(redis_bin: str, tmp_path: Path) -> None:
    sentinel_bin = require_binary("redis-sentinel")
    with redis_sentinel(redis_bin, sentinel_bin, tmp_path) as sentinel:
        store = {"type": "redis", "sentinel": {"master": "mymaster", "addresses": [sentinel.address]}}
        with gslb_nodes(configs(tmp_path, 2, store=store), tmp_path=tmp_path) as nodes:
            n1, n2 = nodes
            assert all("sentinel" in node.store()["detail"] for node in nodes), [n.store() for n in nodes]
            n1.drain(EU_ID)
            wait_answer(nodes, [US], "a drain through node 1 reaches node 2 (via the sentinel's master)")
            replica = sentinel.replica.client()
            try:
                wait_until(lambda: replica.hgetall("gslb:drains"), lambda d: f"endpoint:{EU_ID}" in d,
                           "the drain is replicated", 5.0)
            finally:
                replica.close()
            before = views(nodes, FAULT_QUESTIONS)

            with QueryLoop(nodes, FAULT_QUESTIONS) as loop:
                wait_until(loop.count, lambda c: c >= 20, "queries before the failover", 5.0)
                sentinel.master.stop(signal.SIGKILL)
                assert sentinel.wait_failover(15.0)[1] == sentinel.replica.port

                # The first writes may be refused while the nodes find the new master.
                deadline = time.monotonic() + RECOVER
                refusals = []
                while True:
                    reply = n1.put_drain(US_ID)
                    if reply.status == 200:
                        break
                    assert reply.status == 503, reply
                    refusals.append(reply)
                    assert time.monotonic() < deadline, f"writes still refused after failover: {refusals[-1]}"
                    time.sleep(0.2)
                wait_answer(nodes, [AP], "a drain after the failover reaches both nodes", timeout=RECOVER)
                for node in nodes:
                    wait_until(node.store_state, lambda s: s == "ok", "/readyz ok after failover", RECOVER)
                after = loop.count()
                wait_until(loop.count, lambda c: c >= after + 20, "queries after the failover", 5.0)
            final = views(nodes, FAULT_QUESTIONS)
            loop.check(lambda n, q: [before[(n, q)], final[(n, q)]])

            promoted = sentinel.replica.client()
            try:
                assert promoted.info("replication")["role"] == "master"
                assert set(promoted.hgetall("gslb:drains")) == {f"endpoint:{EU_ID}", f"endpoint:{US_ID}"}
            finally:
                promoted.close()
            for node in nodes:
                assert node.drains() == [("endpoint", EU_ID), ("endpoint", US_ID)]
            n2.undrain(EU_ID)  # and through the other node too
            wait_answer(nodes, [EU], "an undrain through node 2 after the failover reaches node 1")


# --------------------------------------------------------------------------- 6. key prefix


def test_key_prefix_separates_deployments(redis_srv: RedisServer, tmp_path: Path) -> None:
    alpha = [write_config(tmp_path / f"alpha{i}.yaml", store={"type": "memory", "prefix": "alpha:"})
             for i in (1, 2)]
    beta = write_config(tmp_path / "beta.yaml", store={"type": "memory", "prefix": "beta:"})
    with gslb_nodes([*alpha, beta], "--redis", redis_srv.url, tmp_path=tmp_path) as nodes:
        a1, a2, b1 = nodes
        a1.drain(EU_ID)
        wait_answer([a2], [US], "a drain reaches the other node of its own deployment")
        b1.drain(US_ID, kind="endpoint")
        wait_until(b1.drains, lambda d: d == [("endpoint", US_ID)], "beta sees its own drain", PROPAGATE)
        a2.undrain(EU_ID)  # one more alpha change, and alpha has caught up with everything
        wait_answer([a1], [EU], "alpha's undrain reaches alpha's other node")
        assert US not in b1.answer(ecs="216.160.83.56/32")  # beta's own drain applies on beta

        assert a1.drains() == a2.drains() == []
        assert b1.drains() == [("endpoint", US_ID)]
        assert b1.answer() == [EU]  # alpha's drain of eu-west never applied to beta
        assert a1.answer(ecs="216.160.83.56/32") == a2.answer(ecs="216.160.83.56/32") == [US]

        client = redis_srv.client()
        try:
            assert set(client.hgetall("beta:drains")) == {f"endpoint:{US_ID}"}
            assert client.hgetall("alpha:drains") == {}
            assert len(client.hgetall("alpha:nodes")) == 2
            assert len(client.hgetall("beta:nodes")) == 1
            assert client.keys("gslb:*") == []
        finally:
            client.close()


# --------------------------------------------------------------------------- unix socket


def test_unix_socket_url(redis_bin: str, tmp_path: Path) -> None:
    with redis_server(redis_bin, tmp_path, unix=True) as server:
        assert server.url.startswith("unix://")
        with gslb_nodes(configs(tmp_path, 2), "--redis", server.url, tmp_path=tmp_path) as nodes:
            nodes[0].drain(EU_ID)
            wait_answer(nodes, [US], "a drain propagates through Redis on a unix socket")
            client = server.client()
            try:
                assert set(client.hgetall("gslb:drains")) == {f"endpoint:{EU_ID}"}
            finally:
                client.close()
