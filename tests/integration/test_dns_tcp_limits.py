"""Resource bounds of DNS over TCP with real sockets against a real node: the per-client
cap, the slow-read (slowloris) and stopped-reader timeouts, eviction of idle connections
at the global cap, and a flood of 2,000 connections that must not lock a new client out.

Clients come from distinct loopback addresses (127.0.0.0/8), so the per-client cap of one
test does not touch another's; every wait is bounded in count and time. ``limits_node``
runs with short timeouts (read and write 1 s, idle 5 s: idle connections may be evicted
after 0.5 s quiet), ``small_node`` with a global cap of 3.
"""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import time
from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import pytest

from dnsserver.tcp import client_key
from gslb.config import load_config_text
from gslb.errors import ConfigError
from tests.support.dnswire import frame, read_frame, send_without_reading
from tests.support.servers import ThreadedNode, threaded_node

TIMEOUT = 3.0
BIG_TEXT = ["".join(chr(ord("a") + (i + k) % 26) for i in range(4000)) for k in range(2)]  # ~8 KB reply
N_NAMES = 10

ZONE = f"""
zones:
  limits.test:
    nameservers:
      - {{name: ns1.limits.test, addresses: [192.0.2.1]}}
    records:
      - {{name: big, type: TXT, text: [{BIG_TEXT[0]}, {BIG_TEXT[1]}]}}
""" + "".join(f"      - {{name: n{i}, type: A, address: 192.0.2.{100 + i}}}\n" for i in range(N_NAMES))

LIMITS = """
server:
  dns:
    tcp_max_connections: 64
    tcp_max_per_client: 4
    tcp_idle_timeout: 5
    tcp_read_timeout: 1
    tcp_write_timeout: 1
"""

SMALL = """
server:
  dns:
    tcp_max_connections: 3
    tcp_idle_timeout: 2
"""


@pytest.fixture(scope="module")
def limits_node() -> Iterator[ThreadedNode]:
    with threaded_node(LIMITS + ZONE) as node:
        yield node


@pytest.fixture(scope="module")
def small_node() -> Iterator[ThreadedNode]:
    with threaded_node(SMALL + ZONE) as node:
        yield node


# --------------------------------------------------------------------------- helpers


def connect_from(node: ThreadedNode, source: str, *, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(TIMEOUT)
    sock.bind((source, 0))
    sock.connect(node.addresses[0])
    return sock


def query_wire(i: int, ident: int = 0x1234) -> bytes:
    q = dns.message.make_query(f"n{i}.limits.test", "A")
    q.id = ident
    return q.to_wire()


def ask(sock: socket.socket, i: int) -> None:
    """One query on ``sock``; its answer must be n<i>'s address."""
    sock.sendall(frame(query_wire(i, 0x4000 + i)))
    r = dns.message.from_wire(read_frame(sock))
    assert r.id == 0x4000 + i and r.rcode() == dns.rcode.NOERROR
    assert [rd.address for rrset in r.answer for rd in rrset] == [f"192.0.2.{100 + i}"]


def served(node: ThreadedNode, source: str, i: int) -> bool:
    """A fresh connection from ``source`` gets an answer (False if it is turned away)."""
    try:
        with connect_from(node, source) as s:
            ask(s, i)
            return True
    except (ConnectionError, TimeoutError, OSError):
        return False


def udp_ok(node: ThreadedNode, i: int = 1) -> None:
    q = dns.message.make_query(f"n{i}.limits.test", "A")
    r = dns.query.udp(q, node.host, port=node.port, timeout=TIMEOUT)
    assert [rd.address for rrset in r.answer for rd in rrset] == [f"192.0.2.{100 + i}"]


def closed_by_peer(sock: socket.socket) -> bool:
    """The server has closed or reset ``sock`` (checked without blocking)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def wait_closed(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """Read until EOF or reset; what came before. Bounded by ``timeout`` per read and a count."""
    sock.settimeout(timeout)
    got = b""
    for _ in range(1000):
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return got
        if not chunk:
            return got
        got += chunk
    raise AssertionError("the server kept sending")


def closed(node: ThreadedNode) -> dict[str, int]:
    async def read() -> dict[str, int]:
        assert node.node.dns is not None and node.node.dns.connections is not None
        return dict(node.node.dns.connections.closed)

    return node.call(read)


def open_from(node: ThreadedNode, source: str) -> int:
    async def count() -> int:
        assert node.node.dns is not None and node.node.dns.connections is not None
        return sum(1 for c in node.node.dns.connections.open if c.client == source)

    return node.call(count)


def open_total(node: ThreadedNode) -> int:
    async def count() -> int:
        assert node.node.dns is not None and node.node.dns.connections is not None
        return len(node.node.dns.connections.open)

    return node.call(count)


def wait_for(predicate, what: str, limit: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    for _ in range(int(limit / 0.05) + 1):
        if predicate():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("host", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:3:4:5:6", "20010db800010002::/64"),
    ("2001:db8:1:2::ffff", "20010db800010002::/64"),
    ("2001:db8:1:3::1", "20010db800010003::/64"),
    ("fe80::1%eth0", "fe80000000000000::/64"),
])
def test_client_key_is_the_address_or_the_ipv6_64(host, key):
    assert client_key(host) == key


@pytest.mark.parametrize(("setting", "message"), [
    ("tcp_max_per_client: 0", "greater than or equal to 1"),
    ("tcp_read_timeout: 0", "greater than 0"),
    ("tcp_write_timeout: -1", "greater than 0"),
    ("tcp_read_timeout: 4000", "less than or equal to 3600"),
    ("tcp_max_per_client: many", "valid integer"),
])
def test_bad_limits_are_reported_with_their_path(setting, message):
    with pytest.raises(ConfigError) as info:
        load_config_text(f"server:\n  dns:\n    {setting}\n" + ZONE)
    (error,) = info.value.errors
    assert ".".join(map(str, error.path)) == f"server.dns.{setting.split(':')[0]}"
    assert message in error.message and error.line == 3


def test_limits_reach_the_server(limits_node):
    async def read() -> tuple[int, int, float, float, float]:
        conns = limits_node.node.dns.connections
        return (conns.max_connections, conns.max_per_client, conns.idle_timeout, conns.read_timeout,
                conns.write_timeout)

    assert limits_node.call(read) == (64, 4, 5.0, 1.0, 1.0)


def test_per_client_cap_while_another_address_still_connects(limits_node):
    before = closed(limits_node)
    held = [connect_from(limits_node, "127.0.0.1") for _ in range(4)]
    try:
        for i, s in enumerate(held):
            ask(s, i)  # answered: the server has taken all four in
        with connect_from(limits_node, "127.0.0.1") as fifth:
            with contextlib.suppress(OSError):  # possibly reset already
                fifth.sendall(frame(query_wire(5)))
            assert wait_closed(fifth) == b"", "a fifth connection from one address was answered"
        after = closed(limits_node)
        assert after.get("refused_per_client", 0) == before.get("refused_per_client", 0) + 1
        assert after.get("refused", 0) == before.get("refused", 0)
        # another client is not affected, up to its own cap
        others = [connect_from(limits_node, "127.0.0.2") for _ in range(4)]
        try:
            for i, s in enumerate(others):
                ask(s, i)
        finally:
            for s in others:
                s.close()
        for i, s in enumerate(held):
            ask(s, i)  # the first four still work
    finally:
        held.pop().close()
    try:
        # one slot of 127.0.0.1 is free again (the server notices the close asynchronously)
        assert any(served(limits_node, "127.0.0.1", 6) for _ in range(50))
    finally:
        for s in held:
            s.close()


def test_slowloris_cut_at_read_timeout_while_others_are_answered(limits_node):
    """One byte a second of a query: each byte resets the idle timer (5 s), never the read
    timer (1 s), so the connection is cut long before its message is whole."""
    before = closed(limits_node)
    wire = frame(query_wire(3))
    sent = 0
    with connect_from(limits_node, "127.0.0.4") as slow:
        for sent in range(1, len(wire) + 1):
            slow.sendall(wire[sent - 1 : sent])
            udp_ok(limits_node, sent % N_NAMES)
            assert served(limits_node, "127.0.0.3", sent % N_NAMES)
            time.sleep(1.0)
            if closed_by_peer(slow):
                break
        else:
            raise AssertionError("the slow connection was never closed")
    assert sent < len(wire) // 2, f"closed only after {sent} of {len(wire)} bytes"
    after = closed(limits_node)
    assert after.get("read_timeout", 0) == before.get("read_timeout", 0) + 1
    assert after.get("idle", 0) == before.get("idle", 0)
    udp_ok(limits_node)


def _stuff(sock: socket.socket, count: int) -> int:
    """``count`` queries for the ~8 KB TXT, never reading the replies."""
    return send_without_reading(sock, [dns.message.make_query("big.limits.test", "TXT").to_wire()] * count)


def test_client_that_stops_reading_is_cut_at_write_timeout(limits_node):
    before = closed(limits_node)
    stuck = connect_from(limits_node, "127.0.0.5", rcvbuf=4096)
    try:
        assert _stuff(stuck, 3000) > 0
        wait_for(lambda: closed(limits_node).get("write_timeout", 0) > before.get("write_timeout", 0),
                 "the non-reading client closed for write_timeout")
        assert open_from(limits_node, "127.0.0.5") == 0
        assert served(limits_node, "127.0.0.3", 2)
        udp_ok(limits_node)
    finally:
        stuck.close()
    after = closed(limits_node)
    assert after.get("write_timeout", 0) == before.get("write_timeout", 0) + 1
    assert limits_node.node.handler.errors == 0


def test_at_the_cap_the_least_recently_active_idle_connection_makes_room(small_node):
    """Three slots: an idle connection, one in the middle of a message, one idle but more
    recent. A fourth client gets the slot of the first; the half-sent message survives
    and is answered when it is complete."""
    first = connect_from(small_node, "127.0.0.11")
    partial = connect_from(small_node, "127.0.0.12")
    third = connect_from(small_node, "127.0.0.13")
    try:
        ask(first, 1)
        wire = frame(query_wire(2, 0x4002))
        partial.sendall(wire[:5])
        ask(third, 3)
        assert open_total(small_node) == 3
        time.sleep(0.5)  # past the quiet period (idle_timeout / 10 = 0.2 s) of all three
        before = closed(small_node)
        with connect_from(small_node, "127.0.0.14") as fourth:
            ask(fourth, 4)
        assert wait_closed(first) == b"", "the evicted connection got data"
        after = closed(small_node)
        assert after.get("evicted", 0) == before.get("evicted", 0) + 1
        assert after.get("refused", 0) == before.get("refused", 0)
        partial.sendall(wire[5:])
        r = dns.message.from_wire(read_frame(partial))
        assert r.id == 0x4002 and [rd.address for rrset in r.answer for rd in rrset] == ["192.0.2.102"]
    finally:
        for s in (first, partial, third):
            s.close()


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"this test needs {needed} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def test_flood_of_2000_connections_does_not_lock_out_a_new_client(limits_node):
    """2,000 connections from 500 addresses (4 each: at the per-client cap, not past it),
    all held open and silent. The server keeps at most 64, and a new client from another
    address is still served: idle connections quiet for 0.5 s make room for it."""
    _raise_fd_limit(4096)
    before = closed(limits_node)
    flood: list[socket.socket] = []
    failed = 0
    try:
        for n in range(2000):
            address = f"127.1.{n // 4 // 250}.{n // 4 % 250 + 1}"
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            flood.append(sock)
            sock.settimeout(TIMEOUT)
            try:
                sock.bind((address, 0))
                sock.connect(limits_node.addresses[0])
            except OSError:
                failed += 1
        assert failed < 2000
        assert open_total(limits_node) <= 64
        # a bounded number of tries, each a fresh connection: the first may come while
        # every flood connection is still within its quiet period
        ok = False
        for attempt in range(40):
            if served(limits_node, "127.0.0.2", attempt % N_NAMES):
                ok = True
                break
            time.sleep(0.1)
        assert ok, "a new client was never served during the flood"
        udp_ok(limits_node)
        assert open_total(limits_node) <= 64
    finally:
        for sock in flood:
            sock.close()

    def turned_away() -> int:  # every connection past the 64th was refused or took an idle one's slot
        after = closed(limits_node)
        return sum(after.get(k, 0) - before.get(k, 0) for k in ("refused", "evicted"))

    wait_for(lambda: turned_away() >= 2000 - 64 - failed, "every flood connection accounted for")
    assert limits_node.node.handler.errors == 0
