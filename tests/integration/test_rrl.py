"""Response rate limiting against a spoofed-source flood, end to end.

``gslb serve`` runs as its own process with ``server.dns.rrl`` on (10 answers/s per key,
window 5, slip 2, /32 networks, 127.0.0.4 exempt). A socket bound to 127.0.0.2 plays the
victim whose address a flood forges: it fires 3,000 queries for a ~1 KB TXT answer in bursts,
and we count the bytes it gets back against the bytes "it" sent. The same flood from the
exempt 127.0.0.4 measures the unlimited amplification on the same server. Between bursts a
legitimate resolver on 127.0.0.3 asks for that name and others and must be answered; TCP
from the victim still gets the full answer; /metrics shows what RRL did.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.servers import NodeProcess, node_process

VICTIM, LEGIT, EXEMPT = "127.0.0.2", "127.0.0.3", "127.0.0.4"
FLOOD, BURST = 3000, 25
RATE = 10
BIG = "big.amp.test"
LEGIT_NAMES = [(f"n{i}.amp.test", "A") for i in range(30)] + [(BIG, "TXT")]
TEXT = "".join(chr(ord("a") + i % 26) for i in range(1000))

CONFIG = f"""\
server:
  dns:
    rrl:
      responses_per_second: {RATE}
      window: 5
      slip: 2
      ipv4_prefix_length: 32
      exempt_clients: [{EXEMPT}/32]
zones:
  amp.test:
    nameservers:
      - {{name: ns1.amp.test, addresses: [192.0.2.53]}}
    records:
      - {{name: big, type: TXT, text: {TEXT}}}
""" + "".join(f"      - {{name: n{i}, type: A, address: 192.0.2.{100 + i}}}\n" for i in range(30))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("rrl")
    path = Path(tmp) / "rrl.yaml"
    path.write_text(CONFIG)
    with node_process(path, tmp_path=tmp, expect=3) as proc:
        yield proc


def flood_query() -> bytes:
    return dns.message.make_query(BIG, "TXT", use_edns=0, payload=1232).to_wire()


@dataclass
class Flood:
    sent: int = 0                  # query bytes "the victim" sent
    received: int = 0              # reply bytes that reached it
    whole: int = 0                 # replies sent as they were (not truncated)
    rcodes: Counter[int] = field(default_factory=Counter)
    truncated: list[bytes] = field(default_factory=list)

    @property
    def factor(self) -> float:
        return self.received / self.sent


def same_name(i: int, base: bytes = flood_query()) -> bytes:
    return struct.pack("!H", i) + base[2:]


def flood(server: tuple[str, int], source: str, between: Callable[[], None] = lambda: time.sleep(0.002), *,
          count: int = FLOOD, make: Callable[[int], bytes] = same_name) -> Flood:
    """``count`` queries ``make(i)`` from ``source`` in bursts of BURST, ``between`` called after
    each burst (it paces the flood so the server is not simply overrun); bounded in time."""
    out = Flood()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind((source, 0))
    sock.setblocking(False)

    def drain() -> None:
        for _ in range(FLOOD + 1):
            try:
                reply = sock.recv(65535)
            except BlockingIOError:
                return
            out.received += len(reply)
            flags = struct.unpack_from("!H", reply, 2)[0]
            out.rcodes[flags & 0xF] += 1
            if flags & dns.flags.TC:
                out.truncated.append(reply)
            else:
                out.whole += 1

    deadline = time.monotonic() + 60
    with sock:
        for start in range(0, count, BURST):
            for i in range(start, min(start + BURST, count)):
                query = make(i)
                sock.sendto(query, server)
                out.sent += len(query)
            between()
            drain()
            assert time.monotonic() < deadline, "flood took over a minute"
        quiet_until = time.monotonic() + 0.5
        end = time.monotonic() + 5
        while time.monotonic() < min(quiet_until, end):
            before = out.received
            drain()
            if out.received != before:
                quiet_until = time.monotonic() + 0.5
            time.sleep(0.01)
    return out


@dataclass
class Resolver:
    """A legitimate client: one query at a time, waits for its answer."""

    server: tuple[str, int]
    asked: int = 0
    answered: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LEGIT, 0))
        self.sock.settimeout(2.0)

    def ask(self) -> None:
        name, qtype = LEGIT_NAMES[self.asked % len(LEGIT_NAMES)]
        self.asked += 1
        query = dns.message.make_query(name, qtype, use_edns=0, payload=1232)
        self.sock.sendto(query.to_wire(), self.server)
        try:
            for _ in range(10):
                reply = dns.message.from_wire(self.sock.recv(65535))
                if reply.id == query.id:
                    break
            else:
                return
        except TimeoutError:
            return
        if reply.rcode() == dns.rcode.NOERROR and reply.answer and not reply.flags & dns.flags.TC:
            self.answered += 1


def scrape(node: NodeProcess) -> dict[str, float]:
    conn = http.client.HTTPConnection(*node.listeners["http"], timeout=5)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    return {name: float(value) for name, value in re.findall(r"(?m)^(gslb_dns_rrl\S*) (\S+)$", body)}


def counted(before: dict[str, float], after: dict[str, float], action: str, kind: str) -> float:
    name = f'gslb_dns_rrl_responses_total{{action="{action}",kind="{kind}"}}'
    return after[name] - before[name]


def test_spoofed_flood_is_not_amplified_and_real_clients_still_get_answers(node: NodeProcess) -> None:
    server = node.listeners["dns/udp"]
    query_size = len(flood_query())
    before = scrape(node)

    unlimited = flood(server, EXEMPT, lambda: None)
    assert unlimited.whole >= 0.99 * FLOOD and not unlimited.truncated
    assert unlimited.factor > 15, "the test name should be a real amplifier"

    resolver = Resolver(server)
    limited = flood(server, VICTIM, resolver.ask)

    # the victim gets the first second's worth of answers, then tiny TC=1 replies only
    assert 1 <= limited.whole <= 2 * RATE
    assert len(limited.truncated) >= 0.99 * (FLOOD - limited.whole) / 2
    for reply in limited.truncated:
        msg = dns.message.from_wire(reply)
        assert msg.flags & dns.flags.TC and not msg.answer and len(reply) <= query_size
        assert str(msg.question[0].name) == BIG + "."
    assert limited.factor < 1.0
    assert limited.factor < unlimited.factor / 15

    # the legitimate resolver asked for the flooded name too, from its own address
    assert resolver.asked == FLOOD // BURST
    assert resolver.answered >= 0.99 * resolver.asked

    # TCP is never limited, for the victim either (a real client retries there after TC=1)
    tcp = dns.query.tcp(dns.message.make_query(BIG, "TXT"), server[0], port=server[1], timeout=5,
                        source=VICTIM)
    assert tcp.rcode() == dns.rcode.NOERROR and not tcp.flags & dns.flags.TC
    assert "".join(s.decode() for s in tcp.answer[0][0].strings) == TEXT

    after = scrape(node)
    dropped, slipped = counted(before, after, "dropped", "answer"), counted(before, after, "slipped", "answer")
    assert slipped in (dropped, dropped - 1)  # slip 2: every other limited reply, on one account
    assert dropped + slipped + limited.whole >= 0.99 * FLOOD
    assert 0.99 * slipped <= len(limited.truncated) <= slipped
    assert counted(before, after, "exempt", "any") >= 0.99 * FLOOD
    assert counted(before, after, "dropped", "nxdomain") == counted(before, after, "slipped", "nxdomain") == 0
    assert after["gslb_dns_rrl_table_entries"] >= 1
    assert re.search(r"rate limiting answer replies to the network of 127\.0\.0\.2", node.log())


@pytest.mark.parametrize(
    ("source", "qname", "rcode", "kind", "slips_truncated"),
    [
        # random names: every query misses the caches; all share the zone's NXDOMAIN account
        ("127.0.0.5", "r{}.amp.test", dns.rcode.NXDOMAIN, "nxdomain", True),
        # outside our zones: REFUSED, which is as small as a TC=1 reply and slips as itself
        ("127.0.0.6", "r{}.example.org", dns.rcode.REFUSED, "error", False),
    ],
)
def test_random_name_and_error_floods_are_limited_per_zone_and_kind(
        node: NodeProcess, source: str, qname: str, rcode: int, kind: str, slips_truncated: bool) -> None:
    server = node.listeners["dns/udp"]
    count = 1000
    before = scrape(node)

    def make(i: int) -> bytes:
        return dns.message.make_query(qname.format(i), "A", use_edns=0, payload=1232).to_wire()

    out = flood(server, source, count=count, make=make)
    after = scrape(node)
    dropped, slipped = counted(before, after, "dropped", kind), counted(before, after, "slipped", kind)
    assert dropped + slipped >= 0.99 * count - 2 * RATE
    assert slipped - dropped in (0, -1)
    assert set(out.rcodes) == {rcode}
    replies = [dns.message.from_wire(r) for r in out.truncated]
    if slips_truncated:
        assert 1 <= out.whole <= 2 * RATE
        assert 0.99 * slipped <= len(replies) <= slipped
        assert all(r.rcode() == rcode and not r.answer and not r.authority for r in replies)
    else:
        assert not replies
        assert 0.99 * slipped + 1 <= out.whole <= slipped + 2 * RATE
    assert out.factor < 1.0
    assert f"rate limiting {kind} replies to the network of {source}" in node.log()
