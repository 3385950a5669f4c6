"""Failover end to end: real HTTP backends, the node's real monitors, answers read over DNS.

One GSLB name with three endpoints, 127.0.0.21/22/23, each with an HTTP backend on the
same port P (chosen at test start) of its own loopback address. The backends run in a
thread of their own with their own event loop, the node in another (``threaded_node``),
and the test asks the node over UDP the way a resolver would, polling every few tens of
milliseconds with every wait bounded in time and count.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from healthmon.tracker import Event
from tests.support.servers import ThreadedNode, threaded_node

NAME = "app.gslb.example.com"
ADDRESSES = ("127.0.0.21", "127.0.0.22", "127.0.0.23")
ALL = frozenset(ADDRESSES)
TTL = 30
INTERVAL = 0.2
POLL = 0.05
FAST_POLL = 0.02  # while a short-lived state (a pending flip, one interval long) must be seen
WAIT = 5.0  # bound of every wait for a change


# --------------------------------------------------------------------------- backends


@dataclass
class Response:
    at: float
    status: int | None  # None: the request was left hanging


class Backend:
    """An HTTP health endpoint; ``mode``: ok (200), error (500), hang (never answer),
    flap (500, 200, 500, 200 ... one per request). Runs on the backend thread's loop."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.mode = "ok"
        self.server: asyncio.Server | None = None
        self.log: list[Response] = []
        self.started_at = 0.0
        self._flap = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._client, self.host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        self.started_at = time.time()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            mode = self.mode
            if mode == "hang":
                self.log.append(Response(time.time(), None))
                await asyncio.Event().wait()
            if mode == "flap":
                status = 500 if self._flap % 2 == 0 else 200
                self._flap += 1
            else:
                status = 500 if mode == "error" else 200
            # logged before it is sent: the log time precedes the check's verdict
            self.log.append(Response(time.time(), status))
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".encode())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()

    def responses(self, status: int, after: float, before: float) -> int:
        return sum(1 for r in self.log if r.status == status and after <= r.at < before)


class Backends:
    """Three backends on one port number of three loopback addresses, in their own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="backends", daemon=True)
        self.thread.start()
        self.by_address = {address: Backend(address) for address in ADDRESSES}
        self.port = 0

    def call(self, coro: object, timeout: float = 5.0) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def __getitem__(self, address: str) -> Backend:
        return self.by_address[address]

    def start_all(self) -> None:
        """Pick a port free on all three addresses: bind the first to port 0, the others to its port."""
        first, *others = self.by_address.values()
        for _ in range(20):
            self.call(first.start(0))
            try:
                for backend in others:
                    self.call(backend.start(first.port))
            except OSError:
                for backend in self.by_address.values():
                    self.call(backend.stop())
                continue
            self.port = first.port
            return
        raise RuntimeError("no port free on all three loopback addresses in 20 tries")

    def stop(self, address: str) -> None:
        self.call(self[address].stop())

    def restart(self, address: str) -> float:
        """Listen again on the same port; return when it did (wall clock, as the tracker's)."""
        self.call(self[address].start(self.port))
        return self[address].started_at

    def close(self) -> None:
        for backend in self.by_address.values():
            self.call(backend.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def backends() -> Iterator[Backends]:
    b = Backends()
    try:
        b.start_all()
        yield b
    finally:
        b.close()


# --------------------------------------------------------------------------- the node and DNS


def config_yaml(port: int, *, fall: int = 2, rise: int = 2, timeout: float = 0.15, window: int | None = None,
                initial: str | None = None, fallback: str | None = None) -> str:
    monitor = (f"{{type: http, port: {port}, interval: {INTERVAL}, timeout: {timeout}, rise: {rise}, "
               f"fall: {fall}, jitter: 0" + (f", window: {window}" if window else "")
               + (f", initial: {initial}" if initial else "") + "}")
    endpoints = "".join(f"      - {{site: lab, ipv4: {address}}}\n" for address in ADDRESSES)
    return (
        "zones:\n"
        "  gslb.example.com:\n"
        "    ttl: 300\n"
        "    negative_ttl: 60\n"
        "    nameservers:\n"
        "      - name: ns1.gslb.example.com\n"
        "        addresses: [127.0.0.53]\n"
        "sites:\n"
        "  lab: {lat: 0, lon: 0, country: US, continent: NA}\n"
        "services:\n"
        f"  {NAME}:\n"
        f"    ttl: {TTL}\n"
        "    min_ttl: 1\n"
        "    policy: {type: all}\n"
        + (f"    fallback: {fallback}\n" if fallback else "")
        + f"    monitor: {monitor}\n"
        "    endpoints:\n"
        + endpoints
    )


@dataclass(frozen=True)
class Reply:
    at: float
    rcode: int
    addresses: frozenset[str]
    ttl: int | None
    soa: bool

    def __repr__(self) -> str:
        names = ",".join(sorted(a.rsplit(".", 1)[1] for a in self.addresses)) or "-"
        return f"<{dns.rcode.to_text(self.rcode)} [{names}] ttl={self.ttl}>"


@dataclass
class Dig:
    """Asks the node for the A records of NAME; remembers every reply."""

    node: ThreadedNode
    replies: list[Reply] = field(default_factory=list)

    def __call__(self) -> Reply:
        query = dns.message.make_query(NAME, "A")
        for _ in range(3):
            try:
                response = dns.query.udp(query, self.node.host, port=self.node.port, timeout=1.0)
                break
            except dns.exception.Timeout:
                continue
        else:
            raise AssertionError("the node did not answer three queries in a row")
        answers = [rrset for rrset in response.answer if rrset.rdtype == dns.rdatatype.A]
        reply = Reply(
            time.time(),
            response.rcode(),
            frozenset(rd.address for rrset in answers for rd in rrset),
            min((rrset.ttl for rrset in answers), default=None),
            any(rrset.rdtype == dns.rdatatype.SOA for rrset in response.authority),
        )
        self.replies.append(reply)
        return reply

    def until(self, predicate: Callable[[Reply], bool], what: str, *, timeout: float = WAIT,
              poll: float = POLL) -> list[Reply]:
        """Poll until a reply satisfies ``predicate``; return the replies seen, that one last."""
        seen: list[Reply] = []
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / poll) + 50):
            reply = self()
            seen.append(reply)
            if predicate(reply):
                return seen
            if time.monotonic() > deadline:
                break
            time.sleep(poll)
        raise AssertionError(f"not within {timeout}s: {what}; last replies: {seen[-8:]}")

    def during(self, seconds: float, *, poll: float = POLL) -> list[Reply]:
        """Every reply for about ``seconds``."""
        seen: list[Reply] = []
        deadline = time.monotonic() + seconds
        for _ in range(int(seconds / poll) + 50):
            seen.append(self())
            if time.monotonic() > deadline:
                break
            time.sleep(poll)
        return seen

    def servfails(self) -> list[Reply]:
        return [r for r in self.replies if r.rcode == dns.rcode.SERVFAIL]


def answered(addresses: frozenset[str], ttl: int | None = None) -> Callable[[Reply], bool]:
    return lambda r: r.rcode == dns.rcode.NOERROR and r.addresses == addresses and (ttl is None or r.ttl == ttl)


def target(address: str, port: int) -> str:
    return f"http://{address}:{port}"


def events(node: ThreadedNode) -> list[Event]:
    async def read() -> list[Event]:
        return list(node.node.tracker.events)

    return node.call(read)  # type: ignore[no-any-return]


def states(node: ThreadedNode) -> dict[str, str]:
    async def read() -> dict[str, str]:
        return {h.name: h.state for h in node.node.tracker.targets.values()}

    return node.call(read)  # type: ignore[no-any-return]


def wait_states(node: ThreadedNode, wanted: dict[str, str], what: str) -> None:
    deadline = time.monotonic() + WAIT
    for _ in range(int(WAIT / POLL) + 50):
        current = states(node)
        if all(current.get(k) == v for k, v in wanted.items()):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(POLL)
    raise AssertionError(f"not within {WAIT}s: {what}; states: {current}")


def the_event(node: ThreadedNode, address: str, port: int, old: str, new: str) -> Event:
    found = [e for e in events(node) if e.target == target(address, port) and (e.old, e.new) == (old, new)]
    assert len(found) == 1, f"expected one {old}->{new} event of {address}; events: {events(node)}"
    return found[0]



@pytest.fixture
def start_node(backends: Backends) -> Iterator[Callable[..., tuple[ThreadedNode, Dig]]]:
    """Start a node for ``config_yaml(backends.port, **options)`` (backends already up)."""
    with contextlib.ExitStack() as stack:

        def start(**options: object) -> tuple[ThreadedNode, Dig]:
            node = stack.enter_context(threaded_node(config_yaml(backends.port, **options)))  # type: ignore[arg-type]
            return node, Dig(node)

        yield start


# --------------------------------------------------------------------------- tests


def test_stopped_backend_drops_out_with_a_short_ttl_and_comes_back(
        backends: Backends, start_node: Callable[..., tuple[ThreadedNode, Dig]]) -> None:
    node, dig = start_node()
    port = backends.port
    dig.until(answered(ALL, TTL), "all three endpoints answered with the full TTL")

    backends.stop("127.0.0.22")
    seen = dig.until(lambda r: "127.0.0.22" not in r.addresses, ".22 dropped", poll=FAST_POLL)
    before_drop = seen[:-1]
    assert seen[-1].addresses == ALL - {"127.0.0.22"}
    shortened = [r.ttl for r in before_drop if r.ttl is not None and r.ttl < TTL]
    assert shortened, f"no shortened TTL while the failure was pending: {before_drop}"
    assert all(ttl >= 1 for ttl in shortened), "TTL below min_ttl"
    dig.until(answered(ALL - {"127.0.0.22"}, TTL), "TTL back to 30 once .22 is surely down")

    down = the_event(node, "127.0.0.22", port, "up", "down")
    assert down.reason.startswith("ConnectionRefusedError"), down.reason
    steady = dig.during(3 * INTERVAL)
    assert all(r.addresses == ALL - {"127.0.0.22"} and r.ttl == TTL for r in steady), steady

    restarted = backends.restart("127.0.0.22")
    seen = dig.until(lambda r: "127.0.0.22" in r.addresses, ".22 back", poll=FAST_POLL)
    assert seen[-1].addresses == ALL
    assert any(r.ttl is not None and r.ttl < TTL for r in seen[:-1]), (
        f"no shortened TTL while .22 was coming back: {seen}")
    up = the_event(node, "127.0.0.22", port, "down", "up")
    assert up.reason == "HTTP 200"
    # up after exactly 'rise' good checks since the restart
    assert backends["127.0.0.22"].responses(200, restarted, up.at) == 2
    dig.until(answered(ALL, TTL), "full TTL once .22 is surely up")

    assert [e.target for e in events(node)] == [target("127.0.0.22", port)] * 2
    assert dig.servfails() == []
    assert all(r.rcode == dns.rcode.NOERROR and r.addresses for r in dig.replies)


@pytest.mark.parametrize(("mode", "reason"), [("error", "HTTP 500, expected 200-399"),
                                              ("hang", "timed out after 0.15s")])
def test_failing_backend_drops_out_and_comes_back(
        backends: Backends, start_node: Callable[..., tuple[ThreadedNode, Dig]], mode: str, reason: str) -> None:
    node, dig = start_node()
    port = backends.port
    dig.until(answered(ALL, TTL), "all three endpoints answered")

    failing_since = time.time()
    backends["127.0.0.23"].mode = mode
    dig.until(lambda r: r.addresses == ALL - {"127.0.0.23"}, f".23 dropped when it went {mode}")
    down = the_event(node, "127.0.0.23", port, "up", "down")
    assert down.reason == reason
    if mode == "error":
        # down after exactly 'fall' bad answers
        assert backends["127.0.0.23"].responses(500, failing_since, down.at) == 2
    dig.until(answered(ALL - {"127.0.0.23"}, TTL), "TTL back to 30 with .23 down")

    recovering_since = time.time()
    backends["127.0.0.23"].mode = "ok"
    dig.until(answered(ALL), ".23 back")
    up = the_event(node, "127.0.0.23", port, "down", "up")
    assert backends["127.0.0.23"].responses(200, recovering_since, up.at) == 2
    dig.until(answered(ALL, TTL), "TTL back to 30 with all up")
    assert dig.servfails() == []


# Flapping: each request alternates 500, 200, 500 ... The timeout is raised to 1 s here so a
# slow answer on a loaded machine cannot turn a good check into a second failure in a row.


def test_flapping_backend_stays_up_in_consecutive_mode(
        backends: Backends, start_node: Callable[..., tuple[ThreadedNode, Dig]]) -> None:
    backends["127.0.0.21"].mode = "flap"
    node, dig = start_node(fall=2, rise=2, timeout=1.0)
    flapper = backends["127.0.0.21"]
    seen: list[Reply] = []
    deadline = time.monotonic() + 3 * WAIT
    for _ in range(int(3 * WAIT / POLL) + 50):
        seen.append(dig())
        if len(flapper.log) >= 12 or time.monotonic() > deadline:
            break
        time.sleep(POLL)
    statuses = [r.status for r in flapper.log]
    assert len(statuses) >= 12, f"too few checks of the flapping backend: {statuses}"
    assert statuses[:12] == [500, 200] * 6
    assert all(r.addresses == ALL for r in seen), f"a flapping endpoint went missing: {seen}"
    assert states(node)[target("127.0.0.21", backends.port)] == "up"
    assert events(node) == []
    # a failure is always pending somewhere in the cycle: resolvers get the short TTL
    assert any(r.ttl is not None and r.ttl < TTL for r in seen), seen
    assert dig.servfails() == []


def test_flapping_backend_goes_down_in_window_mode(
        backends: Backends, start_node: Callable[..., tuple[ThreadedNode, Dig]]) -> None:
    backends["127.0.0.21"].mode = "flap"
    node, dig = start_node(fall=2, rise=2, window=3, timeout=1.0)
    dig.until(lambda r: r.addresses == ALL - {"127.0.0.21"}, "the flapping .21 dropped (2 failures in 3 checks)")
    down = the_event(node, "127.0.0.21", backends.port, "up", "down")
    assert down.reason == "HTTP 500, expected 200-399"
    assert [r.status for r in backends["127.0.0.21"].log if r.at <= down.at] == [500, 200, 500]
    # and it stays down: alternating never gives 'rise' successes in a row
    later = dig.during(6 * INTERVAL)
    assert all(r.addresses == ALL - {"127.0.0.21"} for r in later), later
    assert len([e for e in events(node) if e.target == target("127.0.0.21", backends.port)]) == 1
    assert dig.servfails() == []


@pytest.mark.parametrize("fallback", [None, "all", "empty", "servfail"])
def test_fallback_when_every_endpoint_is_down(
        backends: Backends, start_node: Callable[..., tuple[ThreadedNode, Dig]], fallback: str | None) -> None:
    node, dig = start_node(fallback=fallback)
    port = backends.port
    dig.until(answered(ALL), "all three endpoints answered")
    for address in ADDRESSES:
        backends.stop(address)
    wait_states(node, {target(a, port): "down" for a in ADDRESSES}, "every endpoint down")
    if fallback in (None, "all"):
        # fail open: every enabled endpoint, never an empty answer nor SERVFAIL on the way
        dig.until(answered(ALL, TTL), "every endpoint answered although all are down")
        assert dig.servfails() == []
        assert all(r.rcode == dns.rcode.NOERROR and r.addresses for r in dig.replies), dig.replies
    elif fallback == "empty":
        reply = dig.until(lambda r: not r.addresses, "NODATA")[-1]
        assert (reply.rcode, reply.soa) == (dns.rcode.NOERROR, True)
        assert dig.servfails() == []
    else:
        reply = dig.until(lambda r: r.rcode == dns.rcode.SERVFAIL, "SERVFAIL")[-1]
        assert reply.addresses == frozenset()
    # one endpoint recovering is answered alone, whatever the fallback
    backends.restart("127.0.0.22")
    dig.until(answered(frozenset({"127.0.0.22"})), ".22 answered alone once back")


def test_initial_down_is_not_answered_until_rise_successes(
        backends: Backends, start_node: Callable[..., tuple[ThreadedNode, Dig]]) -> None:
    # fallback 'empty' makes "no endpoint up yet" visible (fail-open would answer all three)
    for address in ADDRESSES:
        backends[address].mode = "error"
    node, dig = start_node(initial="down", fallback="empty")
    port = backends.port
    first = dig()
    assert (first.rcode, first.addresses) == (dns.rcode.NOERROR, frozenset())
    # several checks fail: still nothing answered, and no state change
    deadline = time.monotonic() + WAIT
    while len(backends["127.0.0.21"].log) < 4:
        assert time.monotonic() < deadline, "the backends were not checked four times"
        dig.during(INTERVAL)
    assert all(r.rcode == dns.rcode.NOERROR and not r.addresses for r in dig.replies), dig.replies
    assert events(node) == []

    healthy_since = time.time()
    backends["127.0.0.21"].mode = "ok"
    dig.until(answered(frozenset({"127.0.0.21"})), ".21 answered after rise successes")
    up = the_event(node, "127.0.0.21", port, "down", "up")
    assert backends["127.0.0.21"].responses(200, healthy_since, up.at) == 2
    assert all(r.rcode == dns.rcode.NOERROR for r in dig.replies)
    # the two still failing stay out
    later = dig.during(3 * INTERVAL)
    assert all(r.addresses == frozenset({"127.0.0.21"}) for r in later), later
    assert [e.target for e in events(node)] == [target("127.0.0.21", port)]


def test_initial_up_with_dead_backends_goes_down_after_fall_checks(
        backends: Backends, start_node: Callable[..., tuple[ThreadedNode, Dig]]) -> None:
    for address in ADDRESSES:
        backends.stop(address)
    node, dig = start_node(initial="up", fallback="empty")
    port = backends.port
    # all three are believed up until 'fall' checks fail, then none is
    dig.until(lambda r: not r.addresses, "NODATA once every endpoint failed twice")
    assert sorted(e.target for e in events(node)) == sorted(target(a, port) for a in ADDRESSES)
    assert all(e.reason.startswith("ConnectionRefusedError") for e in events(node))
