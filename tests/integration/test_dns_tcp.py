"""DNS over TCP as RFC 7766 asks: several and pipelined queries per connection, messages
split across writes, idle timeout, a connection cap, and a client that never reads.

Three nodes: ``tcp_node`` (default TCP settings), ``idle_node`` (tcp_idle_timeout 0.5 s)
and ``cap_node`` (tcp_max_connections 2), all serving the zone below.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.dnswire import frame, recv_exact, send_without_reading
from tests.support.servers import ThreadedNode, threaded_node

TIMEOUT = 3.0
BIG_TEXT = ["".join(chr(ord("a") + (i + k) % 26) for i in range(4000)) for k in range(2)]  # ~8 KB reply
N_NAMES = 20

ZONE = f"""
zones:
  tcp.test:
    ttl: 300
    negative_ttl: 60
    nameservers:
      - {{name: ns1.tcp.test, addresses: [192.0.2.1]}}
    records:
      - {{name: host, type: A, address: 192.0.2.10}}
      - {{name: host, type: AAAA, address: "2001:db8::10"}}
      - {{name: big, type: TXT, text: [{BIG_TEXT[0]}, {BIG_TEXT[1]}]}}
""" + "".join(f"      - {{name: n{i}, type: A, address: 192.0.2.{100 + i}}}\n" for i in range(N_NAMES))


def _with_server(settings: str) -> str:
    return f"server:\n  dns:\n    {settings}\n" + ZONE


@pytest.fixture(scope="module")
def tcp_node() -> Iterator[ThreadedNode]:
    with threaded_node(ZONE) as node:
        yield node


@pytest.fixture(scope="module")
def idle_node() -> Iterator[ThreadedNode]:
    with threaded_node(_with_server("tcp_idle_timeout: 0.5")) as node:
        yield node


@pytest.fixture(scope="module")
def cap_node() -> Iterator[ThreadedNode]:
    with threaded_node(_with_server("tcp_max_connections: 2")) as node:
        yield node


# --------------------------------------------------------------------------- helpers





def read_message(sock: socket.socket) -> dns.message.Message:
    (size,) = struct.unpack("!H", recv_exact(sock, 2))
    return dns.message.from_wire(recv_exact(sock, size))


def connect(node: ThreadedNode, index: int = 0) -> socket.socket:
    host, port = node.addresses[index]
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def query(qname: str, rdtype: str = "A", ident: int | None = None) -> dns.message.Message:
    q = dns.message.make_query(qname, rdtype)
    if ident is not None:
        q.id = ident
    return q


def ask_on(sock: socket.socket, q: dns.message.Message) -> dns.message.Message:
    sock.sendall(frame(q.to_wire()))
    r = read_message(sock)
    assert r.id == q.id
    return r


def addresses(r: dns.message.Message) -> list[str]:
    return sorted(rd.address for rrset in r.answer for rd in rrset if rrset.rdtype in (1, 28))


def check_n(r: dns.message.Message, i: int) -> None:
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA and not r.flags & dns.flags.TC
    assert addresses(r) == [f"192.0.2.{100 + i}"]


def wait_closed(sock: socket.socket, timeout: float) -> bytes:
    """Read until the server closes (EOF or reset); returns what was read before. Bounded by
    ``timeout`` per read and a read count."""
    sock.settimeout(timeout)
    got = b""
    for _ in range(1000):
        try:
            chunk = sock.recv(65535)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk
    raise AssertionError("the server kept sending")


def udp_ok(node: ThreadedNode) -> None:
    r = dns.query.udp(query("host.tcp.test"), node.host, port=node.port, timeout=TIMEOUT)
    assert addresses(r) == ["192.0.2.10"]


# --------------------------------------------------------------------------- tests


def test_several_queries_on_one_connection(tcp_node):
    with connect(tcp_node) as s:
        for i in range(N_NAMES):
            check_n(ask_on(s, query(f"n{i}.tcp.test", ident=1000 + i)), i)
        r = ask_on(s, query("host.tcp.test", "AAAA"))
        assert addresses(r) == ["2001:db8::10"]
        r = ask_on(s, query("nope.tcp.test"))
        assert r.rcode() == dns.rcode.NXDOMAIN
        r = ask_on(s, query("example.org"))
        assert r.rcode() == dns.rcode.REFUSED
        check_n(ask_on(s, query("n0.tcp.test")), 0)  # still open after errors


def test_several_queries_on_one_ipv4_and_one_ipv6_connection(example_node):
    for index in (0, 1):
        with connect(example_node, index) as s:
            for _ in range(5):
                r = ask_on(s, query("static.gslb.example.com", "AAAA"))
                assert addresses(r) == ["2001:db8::80"]


def pipeline_batch() -> list[tuple[dns.message.Message, object]]:
    """20 queries with distinct IDs and what each answer must be."""
    batch: list[tuple[dns.message.Message, object]] = []
    for i in range(15):
        batch.append((query(f"n{i}.tcp.test", ident=0x7000 + i), i))
    batch.append((query("host.tcp.test", "AAAA", ident=0x7100), "aaaa"))
    batch.append((query("nope.tcp.test", "A", ident=0x7101), "nxdomain"))
    batch.append((query("example.org", "A", ident=0x7102), "refused"))
    batch.append((query("big.tcp.test", "TXT", ident=0x7103), "big"))
    batch.append((query("tcp.test", "SOA", ident=0x7104), "soa"))
    assert len(batch) == 20
    return batch


def check_expected(r: dns.message.Message, expected: object) -> None:
    if isinstance(expected, int):
        check_n(r, expected)
    elif expected == "aaaa":
        assert addresses(r) == ["2001:db8::10"]
    elif expected == "nxdomain":
        assert r.rcode() == dns.rcode.NXDOMAIN
    elif expected == "refused":
        assert r.rcode() == dns.rcode.REFUSED
    elif expected == "big":
        assert not r.flags & dns.flags.TC
        (rrset,) = r.answer
        assert [s.decode() for s in rrset[0].strings] == [
            BIG_TEXT[0][i : i + 255] for i in range(0, 4000, 255)] + [
            BIG_TEXT[1][i : i + 255] for i in range(0, 4000, 255)]
    elif expected == "soa":
        assert r.answer[0].rdtype == dns.rdatatype.SOA
    else:
        raise AssertionError(expected)


def test_pipelined_queries_in_one_write(tcp_node):
    batch = pipeline_batch()
    with connect(tcp_node) as s:
        s.sendall(b"".join(frame(q.to_wire()) for q, _ in batch))
        replies = {}
        for _ in range(len(batch)):
            r = read_message(s)
            assert r.id not in replies, f"two replies with ID {r.id}"
            replies[r.id] = r
        expected = {q.id: (q, e) for q, e in batch}
        assert set(replies) == set(expected)
        for ident, r in replies.items():
            q, e = expected[ident]
            assert q.is_response(r)
            check_expected(r, e)
        check_n(ask_on(s, query("n3.tcp.test")), 3)  # the connection still serves


def test_pipelined_queries_repeated_batches(tcp_node):
    """The same pipelined batch three times: the second and third come from the reply
    caches, and must still carry each query's own ID."""
    with connect(tcp_node) as s:
        for round_ in range(3):
            batch = pipeline_batch()
            for n, (q, _) in enumerate(batch):
                q.id = (round_ << 8) | n
            s.sendall(b"".join(frame(q.to_wire()) for q, _ in batch))
            replies = {r.id: r for r in (read_message(s) for _ in range(len(batch)))}
            assert set(replies) == {q.id for q, _ in batch}
            for q, e in batch:
                check_expected(replies[q.id], e)


def test_message_split_byte_by_byte(tcp_node):
    """Two queries written one byte per send; after each byte a UDP round trip lets the
    server's loop run, so it really sees the message in pieces."""
    qs = [query("n5.tcp.test", ident=0x5151), query("host.tcp.test", "AAAA", ident=0x5252)]
    stream = b"".join(frame(q.to_wire()) for q in qs)
    with connect(tcp_node) as s:
        for i in range(len(stream)):
            s.sendall(stream[i : i + 1])
            if i % 4 == 0:
                udp_ok(tcp_node)
        first, second = read_message(s), read_message(s)
    assert (first.id, second.id) == (0x5151, 0x5252)
    check_n(first, 5)
    assert addresses(second) == ["2001:db8::10"]


def test_messages_split_at_random_points(tcp_node):
    rng = random.Random(7766)
    qs = [query(f"n{i}.tcp.test", ident=0x6000 + i) for i in range(10)]
    stream = b"".join(frame(q.to_wire()) for q in qs)
    with connect(tcp_node) as s:
        at = 0
        for _ in range(len(stream)):
            if at >= len(stream):
                break
            step = rng.randint(1, 40)
            s.sendall(stream[at : at + step])
            at += step
            udp_ok(tcp_node)
        replies = {r.id: r for r in (read_message(s) for _ in qs)}
    for i in range(10):
        check_n(replies[0x6000 + i], i)


def test_half_close_after_queries_still_answered(tcp_node):
    qs = [query(f"n{i}.tcp.test", ident=0x4400 + i) for i in range(3)]
    with connect(tcp_node) as s:
        s.sendall(b"".join(frame(q.to_wire()) for q in qs))
        s.shutdown(socket.SHUT_WR)
        replies = [read_message(s) for _ in qs]
        assert wait_closed(s, TIMEOUT) == b"", "nothing after the replies, then EOF"
    for i, r in enumerate(sorted(replies, key=lambda m: m.id)):
        check_n(r, i)


def test_idle_timeout_closes_connection_after_a_query(idle_node):
    with connect(idle_node) as s:
        check_n(ask_on(s, query("n1.tcp.test")), 1)
        assert wait_closed(s, 3.0) == b""


def test_idle_timeout_closes_silent_connection(idle_node):
    with connect(idle_node) as s:
        assert wait_closed(s, 3.0) == b""


def test_idle_timeout_closes_connection_with_partial_message(idle_node):
    wire = frame(query("n1.tcp.test").to_wire())
    with connect(idle_node) as s:
        s.sendall(wire[:7])
        assert wait_closed(s, 3.0) == b""
    udp_ok(idle_node)
    with connect(idle_node) as s:
        check_n(ask_on(s, query("n2.tcp.test")), 2)


def test_connection_cap(cap_node):
    first, second = connect(cap_node), connect(cap_node)
    try:
        # both answered: the server has accepted and counted them
        check_n(ask_on(first, query("n1.tcp.test")), 1)
        check_n(ask_on(second, query("n2.tcp.test")), 2)
        refused_before = cap_node.node.dns.connections.refused

        with connect(cap_node) as third:
            with contextlib.suppress(OSError):  # already reset by the server
                third.sendall(frame(query("n3.tcp.test", ident=0x3333).to_wire()))
            assert wait_closed(third, TIMEOUT) == b"", "the third connection got an answer"
        assert cap_node.node.dns.connections.refused == refused_before + 1

        # the first two still work
        check_n(ask_on(first, query("n4.tcp.test")), 4)
        check_n(ask_on(second, query("n5.tcp.test")), 5)
    finally:
        first.close()
        second.close()

    # with the slots free again, new connections are served (the server notices the close
    # asynchronously, so a few attempts may still be turned away)
    for _ in range(50):
        with connect(cap_node) as s:
            try:
                r = ask_on(s, query("n6.tcp.test"))
            except (ConnectionError, TimeoutError, OSError):
                continue
            check_n(r, 6)
            break
    else:
        raise AssertionError("no connection was served after the first two closed")


def _stuff(sock: socket.socket, count: int) -> int:
    """``count`` queries for the ~8 KB TXT, never reading the replies."""
    return send_without_reading(sock, [query("big.tcp.test", "TXT", ident=i & 0xFFFF).to_wire()
                                       for i in range(count)])


def _non_reader(node: ThreadedNode) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(node.addresses[0])
    return sock


def test_client_that_never_reads_does_not_stop_others(tcp_node):
    stuck = _non_reader(tcp_node)
    try:
        assert _stuff(stuck, 5000) > 0
        # other clients are still served, over TCP and UDP, several times over
        for i in range(5):
            with connect(tcp_node) as s:
                check_n(ask_on(s, query(f"n{i}.tcp.test")), i)
            udp_ok(tcp_node)
        r = dns.query.tcp(query("big.tcp.test", "TXT"), tcp_node.host, port=tcp_node.port, timeout=TIMEOUT)
        check_expected(r, "big")
    finally:
        stuck.close()
    with connect(tcp_node) as s:
        check_n(ask_on(s, query("n7.tcp.test")), 7)
    assert tcp_node.node.handler.errors == 0


def test_client_that_never_reads_gets_bounded_server_buffer(tcp_node):
    """Backpressure: once a non-reading client's replies pile up past the transport's
    high-water mark, the server stops taking its queries, so what it buffers for that
    client stays bounded (here: well under 4 MiB, with 5000 queries worth ~40 MB of
    replies on offer)."""
    stuck = _non_reader(tcp_node)
    try:
        _stuff(stuck, 5000)
        for _ in range(3):  # round trips: the server's loop has run over the stuffed data
            with connect(tcp_node) as s:
                check_n(ask_on(s, query("n1.tcp.test")), 1)
        local = stuck.getsockname()

        async def buffered() -> int:
            conns = tcp_node.node.dns.connections
            sizes = [c.transport.get_write_buffer_size() for c in conns.open
                     if c.transport is not None and c.transport.get_extra_info("peername")[:2] == local[:2]]
            assert len(sizes) == 1
            return sizes[0]

        size = tcp_node.call(buffered)
        assert size <= 4 * 1024 * 1024, f"the server buffers {size} bytes of replies for a client that never reads"
    finally:
        stuck.close()
    udp_ok(tcp_node)
