"""Located replies: a geo answer kept per GeoIP record and answered by the C UDP loop for every
client subnet of that record (dnsserver/_fastudp.c, gslb/_mmdb.c). Each test runs with the C
loop and with asyncio (which never reads located replies) and expects the same bytes apart
from the ID: the answer the core gives, the client's ECS address echoed, the record network's
scope. Queries are raw datagrams over real sockets to a node on the example config.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import pytest

from dnsserver import _fastudp, fastudp
from gslb.endpoint import Client
from gslb.resolve import Query, resolve
from tests.support.servers import EXAMPLE, ThreadedNode, threaded_node

MODES = ("fast", "asyncio")
APP = "app.gslb.example.com"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FIXTURES = ["81.2.69.160/27", "81.2.69.128/28", "89.160.20.128/25", "216.160.83.56/29", "175.16.199.0/24",
            "214.0.1.0/24", "2.3.3.0/24", "2001:218::/32", "2001:218:85a3::/48", "10.1.0.0/16"]


@pytest.fixture(params=MODES)
def node(request: pytest.FixtureRequest) -> Iterator[ThreadedNode]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(fastudp.ENV, "1" if request.param == "fast" else "0")
        with threaded_node(hosts=("127.0.0.1", "::1")) as running:
            server = running.node.dns
            assert server is not None
            if request.param == "fast":  # CI builds both extensions: their absence is a failure
                assert server.fast_udp is not None and _fastudp.LOCATED, "C UDP loop or gslb._mmdb not built"
            yield running


def subnets(count: int, seed: str) -> list[Network]:
    """The fixtures, then random IPv4 /24s and /20s and IPv6 /56s (located or not)."""
    rng = random.Random(seed)
    out: list[Network] = [ipaddress.ip_network(n) for n in FIXTURES]
    while len(out) < count:
        pick = rng.random()
        if pick < 0.5:
            out.append(ipaddress.IPv4Network((rng.getrandbits(32), 24), strict=False))
        elif pick < 0.6:
            out.append(ipaddress.IPv4Network((rng.getrandbits(32), 20), strict=False))
        elif pick < 0.8:
            out.append(ipaddress.IPv6Network((0x2001_0218 << 96 | rng.getrandbits(96), 56), strict=False))
        else:
            out.append(ipaddress.IPv6Network((rng.getrandbits(128), 56), strict=False))
    return out


def ecs_query(name: str, net: Network, ident: int) -> bytes:
    msg = dns.message.make_query(name, "A")
    msg.id = ident
    msg.use_edns(0, options=[dns.edns.ECSOption(str(net.network_address), net.prefixlen)])
    return msg.to_wire()


def ask(host: str, port: int, wires: list[bytes]) -> list[bytes]:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        out = []
        for wire in wires:  # one at a time: replies of the same query shape are alike
            sock.sendto(wire, (host, port))
            out.append(sock.recv(65535))
        return out


def ecs_of(msg: dns.message.Message) -> dns.edns.ECSOption:
    found = [o for o in msg.options if isinstance(o, dns.edns.ECSOption)]
    assert len(found) == 1
    return found[0]


def expected(node: ThreadedNode, net: Network | None, client: str) -> tuple[list[str], int]:
    """What the core answers (addresses, ECS scope) on the node's current snapshot."""
    answer = resolve(node.node.snapshot, Query(APP, 1), Client(ipaddress.ip_address(client), net))
    return sorted(str(rr.rdata) for rr in answer.answer), answer.scope if net is not None and net.prefixlen else 0


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_every_subnet_gets_its_records_answer(node: ThreadedNode, host: str, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    handler = node.node.handler
    calls: list[bytes] = []
    original = handler.handle

    def counting(data: bytes, client: str) -> bytes | None:
        calls.append(data)
        return original(data, client)

    monkeypatch.setattr(handler, "handle", counting)
    rng = random.Random(host)
    nets = subnets(300, host)
    wires = [ecs_query(APP, net, rng.randrange(65536)) for net in nets for _ in range(2)]
    port = dict(node.addresses)[host]
    replies = ask(host, port, wires)
    geo = node.node.snapshot.geo
    assert geo is not None
    for wire, reply, net in zip(wires, replies, [n for n in nets for _ in range(2)], strict=True):
        assert reply[:2] == wire[:2]
        msg = dns.message.from_wire(reply)
        addresses, scope = expected(node, net, host)
        assert sorted(rd.address for rrset in msg.answer for rd in rrset) == addresses, net
        ecs = ecs_of(msg)
        assert (ecs.address, ecs.srclen, ecs.scopelen) == (str(net.network_address), net.prefixlen, scope), net
    if node.node.dns.fast_udp is not None:  # type: ignore[union-attr]
        # the handler saw the first query of each (family, source prefix, GeoIP record) only
        firsts = {(net.version, net.prefixlen, geo.locate(net.network_address)[2]) for net in nets}
        assert len(calls) == len(firsts) < len(wires) // 10
        assert sum(len(kept.replies) for kept in handler.located_udp.values()) == len(firsts)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_without_ecs_the_resolver_address_is_located(node: ThreadedNode, host: str) -> None:
    rng = random.Random(f"plain-{host}")
    wires = []
    for _ in range(30):
        msg = dns.message.make_query(APP, "A", use_edns=rng.random() < 0.5)
        msg.id = rng.randrange(65536)
        wires.append(msg.to_wire())
    replies = ask(host, dict(node.addresses)[host], wires)
    want, _ = expected(node, None, host)
    for wire, reply in zip(wires, replies, strict=True):
        assert reply[:2] == wire[:2]
        msg = dns.message.from_wire(reply)
        assert sorted(rd.address for rrset in msg.answer for rd in rrset) == want
        assert not [o for o in msg.options if isinstance(o, dns.edns.ECSOption)]


def test_a_new_snapshot_drops_located_replies(tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    text = EXAMPLE.read_text().replace("database: geoip/", f"database: {EXAMPLE.parent / 'geoip'}/")
    config.write_text(text)
    for mode in MODES:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(fastudp.ENV, "1" if mode == "fast" else "0")
            config.write_text(text)
            with threaded_node(config) as running:
                london = [ipaddress.ip_network(f"81.2.69.{160 + i}/32") for i in range(6)]
                first = ask("127.0.0.1", running.port, [ecs_query(APP, london[0], 1), ecs_query(APP, london[1], 2)])
                assert [[rd.address for rrset in dns.message.from_wire(r).answer for rd in rrset]
                        for r in first] == [["192.0.2.20"]] * 2
                config.write_text(text.replace("192.0.2.20", "192.0.2.99"))
                assert running.call(running.node.reload) == []
                after = ask("127.0.0.1", running.port, [ecs_query(APP, net, 3) for net in london])
                assert [[rd.address for rrset in dns.message.from_wire(r).answer for rd in rrset]
                        for r in after] == [["192.0.2.99"]] * 6, mode


def test_metrics_count_located_hits(node: ThreadedNode) -> None:
    nets = subnets(60, "metrics")
    before = node.node.handler.current_stats().replies
    ask("127.0.0.1", node.port, [ecs_query(APP, net, i) for i, net in enumerate(nets * 3)])
    after = node.node.handler.current_stats().replies
    counted = sum(after.values()) - sum(before.values())
    assert counted == 180


def raw_ecs_query(family: int, source: int, address: bytes, ident: int = 7) -> bytes:
    """A query whose ECS option is written by hand, so it can break the rules."""
    qname = b"".join(bytes([len(p)]) + p for p in APP.encode().split(b".")) + b"\0"
    option = struct.pack("!HHHBB", 8, 4 + len(address), family, source, 0) + address
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(option)) + option
    return struct.pack("!6H", ident, 0, 1, 0, 0, 1) + qname + struct.pack("!HH", 1, 1) + opt


def test_bad_subnets_are_formerr_on_both_paths(node: ThreadedNode) -> None:
    good = raw_ecs_query(1, 20, bytes([81, 2, 64]))
    assert dns.message.from_wire(ask("127.0.0.1", node.port, [good])[0]).rcode() == dns.rcode.NOERROR
    bad = [raw_ecs_query(1, 20, bytes([81, 2, 69])),   # bits set past the source prefix
           raw_ecs_query(1, 20, bytes([81, 2])),       # too few address bytes
           raw_ecs_query(1, 33, bytes(5)),             # source longer than IPv4
           raw_ecs_query(3, 8, bytes([81]))]           # unknown family
    for reply in ask("127.0.0.1", node.port, bad):
        assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR


def test_located_key_shapes() -> None:
    assert _fastudp.LOCATED, "gslb._mmdb is not built (pip install -e . builds it)"
    plain = dns.message.make_query(APP, "A", use_edns=False).to_wire()
    assert _fastudp.located_key(plain) == plain[2:]
    with_ecs = raw_ecs_query(1, 24, bytes([81, 2, 69]))
    key = _fastudp.located_key(with_ecs)
    assert key is not None and key == with_ecs[2:-3] + bytes(3)
    assert _fastudp.located_key(raw_ecs_query(2, 0, b"")) == raw_ecs_query(2, 0, b"")[2:]
    refused = [
        raw_ecs_query(1, 20, bytes([81, 2, 69])),                       # bits past the source
        raw_ecs_query(1, 33, bytes(5)),                                 # source too long
        with_ecs[:2] + b"\x80" + with_ecs[3:],                          # a response
        with_ecs[:2] + b"\x20" + with_ecs[3:],                          # opcode NOTIFY
        with_ecs[:11] + b"\x02" + with_ecs[12:],                        # ARCOUNT 2
        with_ecs[:-16] + b"\x01" + with_ecs[-15:],                      # EDNS version 1
        with_ecs + b"\0",                                               # trailing byte
        with_ecs[:-1],                                                  # truncated
        plain[:12] + b"\xc0\x0c" + plain[-4:],                          # compressed name
    ]
    for wire in refused:
        assert _fastudp.located_key(wire) is None, wire
