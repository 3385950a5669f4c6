"""UDP answered by the C loop (dnsserver/_fastudp.c, one thread per socket) and by asyncio
(``GSLB_UDP_FASTPATH=0``): every test runs on both and expects the same, over IPv4 and IPv6.

The node runs the example config on 127.0.0.1 and ::1 (``threaded_node``); queries are raw
datagrams from real sockets, replies are parsed with dnspython.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator

import dns.message
import dns.rcode
import pytest

from dnsserver import fastudp
from dnsserver.server import DnsServer
from gslb.api.metrics import NodeCollector
from tests.support.servers import ThreadedNode, threaded_node

MODES = ("fast", "asyncio")
HOSTS = ("127.0.0.1", "::1")
ZONE = "gslb.example.com"
STATIC_V4 = "192.0.2.80"  # static.gslb.example.com A in config/example.yaml
IP_RECVERR, IPV6_RECVERR = 11, 25  # <linux/in.h>, <linux/in6.h>; not in Python's socket module
RRL_CONFIG = """\
server:
  dns:
    rrl: {responses_per_second: 1000}
zones:
  rrl.test:
    nameservers:
      - {name: ns1.rrl.test, addresses: [192.0.2.53]}
"""


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(fastudp.ENV, "1" if request.param == "fast" else "0")
        yield request.param


@pytest.fixture(scope="module", params=MODES)
def served(request: pytest.FixtureRequest) -> Iterator[ThreadedNode]:
    """One node per mode for the tests that only ask questions."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(fastudp.ENV, "1" if request.param == "fast" else "0")
        with threaded_node(hosts=HOSTS) as node:
            check_mode(node, request.param)
            yield node


def check_mode(node: ThreadedNode, mode: str) -> DnsServer:
    server = node.node.dns
    assert server is not None
    if mode == "fast":  # CI builds the extension (pip install -e .): its absence is a failure
        assert server.fast_udp is not None, "the C fast path is not in use: is dnsserver/_fastudp built?"
    else:
        assert server.fast_udp is None
    return server


def port_of(node: ThreadedNode, host: str) -> int:
    return dict(node.addresses)[host]


def client(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2.0)
    return sock


def query(name: str, qtype: str = "A", ident: int | None = None) -> bytes:
    msg = dns.message.make_query(name, qtype)
    msg.id = random.randrange(65536) if ident is None else ident
    return msg.to_wire()


def ask_all(host: str, port: int, wires: list[bytes]) -> list[bytes]:
    """Send every query, then read as many replies (the server answers a socket in order)."""
    with client(host) as sock:
        for wire in wires:
            sock.sendto(wire, (host, port))
        return [sock.recv(65535) for _ in wires]


def metrics(node: ThreadedNode) -> dict[tuple[str, tuple[str, ...]], float]:
    """What /metrics would show: the node's collector, read in place."""
    out = {}
    for family in NodeCollector(node.node).collect():
        for sample in family.samples:
            out[(sample.name, tuple(sample.labels.values()))] = sample.value
    return out


def delta(before: dict[tuple[str, tuple[str, ...]], float], after: dict[tuple[str, tuple[str, ...]], float],
          name: str, *labels: str) -> float:
    return after.get((name, labels), 0) - before.get((name, labels), 0)


def mixed_case(name: str, rng: random.Random) -> str:
    """A spelling of ``name`` no earlier test sent: a new exact-cache key, the same answer."""
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("host", HOSTS)
def test_hits_and_misses_echo_ids_and_answer_alike(served: ThreadedNode, host: str) -> None:
    rng = random.Random(f"answers-{host}")
    cases = [("static." + ZONE, "A", dns.rcode.NOERROR), ("static." + ZONE, "AAAA", dns.rcode.NOERROR),
             (ZONE, "SOA", dns.rcode.NOERROR), ("nonexistent." + ZONE, "A", dns.rcode.NXDOMAIN)]
    handler = served.node.handler
    for name, qtype, rcode in cases:
        spelled = mixed_case(name, rng)
        ids = rng.sample(range(65536), 20)
        wires = [query(spelled, qtype, ident) for ident in ids]
        replies = ask_all(host, port_of(served, host), wires)
        assert [int.from_bytes(r[:2], "big") for r in replies] == ids
        assert len({r[2:] for r in replies}) == 1, "a hit must be the miss's reply with the query's ID"
        msg = dns.message.from_wire(replies[0])
        assert msg.rcode() == rcode and msg.question[0].name.to_text() == spelled + "."
        if qtype == "A" and rcode == dns.rcode.NOERROR:
            assert [rd.address for rrset in msg.answer for rd in rrset] == [STATIC_V4]
        cache = handler.exact_udp if rcode == dns.rcode.NOERROR else handler.negative_udp
        assert wires[0][2:] in cache  # so the 19 after the first were hits


@pytest.mark.parametrize("host", HOSTS)
def test_handle_sees_the_client_address_and_only_misses(served: ThreadedNode, host: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    handler = served.node.handler
    seen: list[tuple[bytes, str]] = []
    original = handler.handle

    def recording(data: bytes, client: str) -> bytes | None:
        seen.append((data, client))
        return original(data, client)

    monkeypatch.setattr(handler, "handle", recording)  # the instance's: both paths look it up there
    wires = [query(mixed_case("static." + ZONE, random.Random(f"client-{host}"))) for _ in range(5)]
    replies = ask_all(host, port_of(served, host), wires)
    assert len(replies) == 5
    assert seen == [(wires[0], host)], "the first query is a miss, the other four are cache hits"


@pytest.mark.parametrize("host", HOSTS)
def test_metrics_count_every_reply_hits_included(served: ThreadedNode, host: str) -> None:
    rng = random.Random(f"metrics-{host}")
    before = metrics(served)
    positive = [query(mixed_case("static." + ZONE, rng), "A") for _ in range(3)] * 40
    negative = [query(mixed_case("nonexistent." + ZONE, rng), "A") for _ in range(2)] * 15
    rng.shuffle(mixed := positive + negative)
    assert len(ask_all(host, port_of(served, host), mixed)) == 150
    after = metrics(served)
    assert delta(before, after, "gslb_dns_replies_total", "udp", ZONE, "A", "NOERROR") == 120
    assert delta(before, after, "gslb_dns_replies_total", "udp", ZONE, "A", "NXDOMAIN") == 30


def test_counts_hold_while_snapshots_swap(served: ThreadedNode) -> None:
    """Each swap folds the old caches' hit counters into the totals while hits keep coming
    (on the UDP thread, or the loop's): none may be lost or counted twice. A tiny GIL switch
    interval makes the threads interleave inside the swap as often as they can."""
    handler = served.node.handler
    rng = random.Random("swaps")
    wires = [query(mixed_case("static." + ZONE, rng), "A") for _ in range(4)]
    swaps = [0]
    done = threading.Event()

    def swapper() -> None:  # bounded: until the queries are answered, or 2,000 swaps
        while not done.is_set() and swaps[0] < 2000:
            served.loop.call_soon_threadsafe(handler.set_snapshot, handler.snapshot)
            swaps[0] += 1
            time.sleep(0.0005)

    before = metrics(served)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            assert len(ask_all("127.0.0.1", port_of(served, "127.0.0.1"), wires * 10)) == 40
    finally:
        done.set()
        thread.join(5)
        sys.setswitchinterval(old_interval)
    served.call(lambda: asyncio.sleep(0))  # the last swaps have run
    assert swaps[0] > 10
    assert delta(before, metrics(served), "gslb_dns_replies_total", "udp", ZONE, "A", "NOERROR") == 4000


# --------------------------------------------------------------------------- what clients may send


@pytest.mark.parametrize("host", HOSTS)
def test_short_and_malformed_datagrams(served: ThreadedNode, host: str) -> None:
    port = port_of(served, host)
    header_only = bytes.fromhex("abcd 0100 0000 0000 0000 0000")  # a query without a question
    response = bytearray(query("static." + ZONE, ident=0x1234))
    response[2] |= 0x80  # QR: a response, never answered
    silent = [b"", b"\x12", b"\x12\x34", b"\x12\x34" + b"\x01" * 9, bytes(response)]
    rng = random.Random(f"garbage-{host}")
    garbage = [bytes(rng.randrange(256) for _ in range(n)) for n in (12, 13, 40, 512, 4000)]
    before = metrics(served)
    with client(host) as sock:
        for wire in silent:
            sock.sendto(wire, (host, port))
        marker = query("static." + ZONE, ident=0x4242)
        sock.sendto(marker, (host, port))
        first = sock.recv(65535)  # replies come in order: nothing may come before the marker's
        assert first[:2] == b"\x42\x42", first
        sock.sendto(header_only, (host, port))
        reply = dns.message.from_wire(sock.recv(65535), question_only=True)
        assert reply.id == 0xABCD and reply.rcode() == dns.rcode.FORMERR
        for wire in garbage:  # answered or not, as the handler decides; the loop must go on
            sock.sendto(wire, (host, port))
        sock.sendto(marker, (host, port))
        for _ in range(len(garbage) + 1):
            if sock.recv(65535) == first:
                break
        else:
            raise AssertionError("no answer to a good query after the garbage")
    after = metrics(served)
    assert delta(before, after, "gslb_dns_dropped_total") >= len(silent)


# --------------------------------------------------------------------------- errors and stopping


@pytest.mark.parametrize("host", HOSTS)
def test_replies_to_closed_ports_do_not_stop_the_loop(mode: str, host: str) -> None:
    """Clients that are gone before their reply: the kernel answers the reply with ICMP port
    unreachable. With IP_RECVERR on the server's socket these come back as ECONNREFUSED from
    the next receive and as POLLERR (without it Linux drops them on unconnected sockets).
    The kernel's global ICMP rate limit (icmp_msgs_per_sec, burst 50) may swallow a round's
    errors when other tests just sent many: a few rounds, a pause between them."""
    errors = []
    for _round in range(5):
        with threaded_node(hosts=(host,)) as node:
            server = check_mode(node, mode)
            sock = server.listeners[0].udp
            if ":" in host:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            wire = query("static." + ZONE)
            with client(host) as live:
                for i in range(50):
                    gone = client(host)
                    gone.sendto(wire, (host, node.port))
                    gone.close()
                    live.sendto(query("static." + ZONE, ident=i), (host, node.port))
                    assert live.recv(65535)[:2] == i.to_bytes(2, "big")
            fast = server.fast_udp
            node.call(server.stop)
        if fast is None:
            return  # the asyncio path: answering the live client throughout is the point
        (counts,) = fast.counts.values()
        assert counts["received"] == 100 and counts["sent"] == 100, counts
        errors.append(counts["recv_errors"] + counts["send_errors"])
        if errors[-1]:
            break
        time.sleep(0.5)
    assert errors[-1] > 0, f"no error came back in {len(errors)} rounds"


def test_stop_when_idle_and_under_load(mode: str) -> None:
    with threaded_node(hosts=HOSTS) as node:
        server = check_mode(node, mode)
        halt = threading.Event()
        sent = [0]

        def flood() -> None:  # bounded: at most 200,000 datagrams or 20 s
            with client("127.0.0.1") as sock:
                wire = query("static." + ZONE)
                deadline = time.monotonic() + 20
                while not halt.is_set() and sent[0] < 200_000 and time.monotonic() < deadline:
                    sock.sendto(wire, ("127.0.0.1", node.port))
                    sent[0] += 1

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        try:
            while sent[0] < 2000 and sender.is_alive():
                time.sleep(0.01)
            # 127.0.0.1 answers under load, ::1 has been idle all along: stop() must end both threads.
            node.call(server.stop, timeout=1.0)
        finally:
            halt.set()
            sender.join(5)
        assert not [t.name for t in threading.enumerate() if t.name.startswith("dns-udp-")]
        if server.fast_udp is not None:
            assert set(server.fast_udp.counts) == {f"dns-udp-{port}" for _, port in node.addresses}
    assert all(lst.udp.fileno() == -1 for lst in server.listeners), "UDP sockets left open"


def test_release_leaves_the_queue_to_a_successor(mode: str) -> None:
    """What a hand-over does (gslb/handover.py): the successor gets its own descriptor of the
    socket, then the old node's ``release`` stops reading. A query sent after that must wait in
    the socket for the successor, not be read (and lost) by a thread still running."""
    with threaded_node(hosts=("127.0.0.1",)) as node:
        server = check_mode(node, mode)
        successor = server.listeners[0].udp.dup()
        try:
            node.call(lambda: server.release(0.1))
            assert not [t.name for t in threading.enumerate() if t.name.startswith("dns-udp-")]
            wire = query("static." + ZONE, ident=0x5151)
            with client("127.0.0.1") as sock:
                sock.sendto(wire, ("127.0.0.1", node.port))
                successor.settimeout(2.0)
                data, _ = successor.recvfrom(65535)
            assert data == wire
        finally:
            successor.close()


# --------------------------------------------------------------------------- when the C loop is not used


def test_rate_limiting_keeps_the_asyncio_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fastudp.ENV, "1")
    with threaded_node(RRL_CONFIG) as node:
        assert node.node.dns is not None and node.node.dns.rrl is not None
        assert node.node.dns.fast_udp is None, "RRL accounts every reply: the C loop does not"
        (reply,) = ask_all(node.host, node.port, [query("rrl.test", "SOA")])
        assert dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR


def test_without_the_extension_asyncio_answers(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(fastudp.ENV, "1")
    monkeypatch.setattr(fastudp, "_native", None)
    monkeypatch.setattr(fastudp, "_why", "No module named 'dnsserver._fastudp'")
    monkeypatch.setattr(fastudp, "_explained", False)
    caplog.set_level(logging.WARNING, logger="gslb.dns")
    for _ in range(2):
        with threaded_node() as node:
            assert node.node.dns is not None and node.node.dns.fast_udp is None
            (reply,) = ask_all(node.host, node.port, [query("static." + ZONE)])
            assert dns.message.from_wire(reply).answer[0][0].address == STATIC_V4
    lines = [r.getMessage() for r in caplog.records if "fast path is not built" in r.getMessage()]
    assert len(lines) == 1 and "No module named" in lines[0], lines


def test_serve_refuses_what_it_cannot_serve() -> None:
    from dnsserver import _fastudp  # built by pip install -e .; missing here is a failure

    stop = os.eventfd(0)
    try:
        with pytest.raises(ValueError, match="batch"):
            _fastudp.serve(0, object(), stop, 0)
        with pytest.raises(OSError) as bad_fd:
            _fastudp.serve(-1, object(), stop)
        assert bad_fd.value.errno == errno.EBADF
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:  # not a datagram socket
            tcp.bind(("127.0.0.1", 0))
            tcp.listen()
            with pytest.raises(OSError):
                _fastudp.serve(tcp.fileno(), object(), stop)
    finally:
        os.close(stop)
