"""What every reply to every packet must be, for the fuzzers of the DNS wire path.

Shared by the hypothesis properties (tests/unit/test_handler_properties.py) and the atheris
target (tests/fuzz/fuzz_handler.py): one rich config (GSLB names with geo and ECS, CNAME
chains and loops, delegations with glue, big RRsets, TXT, AXFR ACLs), the two exchanges the
transports perform (udp.py: exact cache, then ``handle``; tcp.py: exact cache, then
``handle_stream``), and ``check``, which raises ``AssertionError`` when a reply breaks an
invariant. The expected rcode comes from an independent reading of the packet: a lenient
record walker plus dnspython as the strict reader, never the server's own parser.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.name
import yaml

from dnsserver.handler import QueryHandler
from gslb.config import load_config_text
from gslb.snapshot import Snapshot, build_snapshot

ROOT = Path(__file__).resolve().parents[2]
GEOIP = ROOT / "config" / "geoip" / "GeoIP2-City-Test.mmdb"
OUR_UDP = 1232
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, NOTAUTH, BADVERS = 0, 1, 2, 3, 4, 5, 9, 16
T_CNAME, T_SOA, T_OPT, T_IXFR, T_AXFR, T_ANY = 5, 6, 41, 251, 252, 255
META_TYPES = (T_OPT, 249, 250)
OPCODE_NOTIFY, OPCODE_UPDATE = 4, 5
ECS = 8
NEUTRAL_OPTION = 65001  # what ECS options become before dnspython reads a packet (we check them)
TC = 0x0200

# Resolvers with known GeoIP answers (config/geoip/README.md), unknown ones, the transfer
# ACLs' insides and outsides, an IPv4-mapped IPv6 address.
CLIENTS = ("127.0.0.1", "::1", "81.2.69.160", "2001:218::1", "10.1.2.3", "::ffff:81.2.69.160",
           "216.160.83.57", "192.0.2.99")

_MANY = "".join(f"      - {{name: many, type: A, address: 198.51.100.{i}}}\n" for i in range(1, 61))
_MX = "".join(f"      - {{name: mx, type: MX, preference: {i}, exchange: mail{i}.fuzz.test}}\n"
              f"      - {{name: mail{i}, type: A, address: 192.0.2.{100 + i}}}\n"
              f"      - {{name: mail{i}, type: AAAA, address: '2001:db8:1::{i + 1:x}'}}\n" for i in range(25))
_GLUE = "".join(f"      - {{name: bigsub, type: NS, target: ns{i}.bigsub.fuzz.test}}\n"
                f"      - {{name: ns{i}.bigsub, type: A, address: 10.2.0.{i + 1}}}\n"
                f"      - {{name: ns{i}.bigsub, type: AAAA, address: '2001:db8:2::{i + 1:x}'}}\n" for i in range(25))
# big TXT sets: a transfer of fuzz.test needs several messages
_TXT = "".join(f"      - {{name: bulk{i % 3}, type: TXT, text: '{chr(97 + i) * 1800}'}}\n" for i in range(12))
_POOL = "".join(f"      - {{site: {('us-east', 'eu-west', 'ap-northeast')[i % 3]}, ipv4: 10.3.0.{i + 1}, "
                f"ipv6: '2001:db8:3::{i + 1:x}'}}\n" for i in range(60))
_THREE = """      - {site: us-east, ipv4: 192.0.2.10, ipv6: "2001:db8:10::10"}
      - {site: eu-west, ipv4: 192.0.2.20, ipv6: "2001:db8:20::20", weight: 3}
      - {site: ap-northeast, ipv4: 192.0.2.30, ipv6: "2001:db8:30::30"}
"""

RICH_CONFIG = f"""
geoip: {{database: {GEOIP}}}
zones:
  fuzz.test:
    ttl: 300
    negative_ttl: 60
    soa: {{rname: hostmaster@fuzz.test}}
    nameservers:
      - {{name: ns1.fuzz.test, addresses: [192.0.2.53, "2001:db8::53"]}}
      - {{name: ns.elsewhere.example}}
    allow_transfer: [127.0.0.0/8, "::1/128"]
    records:
      - {{name: "@", type: TXT, text: "v=spf1 -all"}}
      - {{name: "@", type: MX, preference: 10, exchange: mail0.fuzz.test}}
      - {{name: "@", type: CAA, flags: 0, tag: issue, value: letsencrypt.org}}
      - {{name: www, type: CNAME, target: app.fuzz.test}}
      - {{name: chain1, type: CNAME, target: chain2.fuzz.test}}
      - {{name: chain2, type: CNAME, target: www.fuzz.test}}
      - {{name: tocloud, type: CNAME, target: cloud.fuzz.test}}
      - {{name: loop1, type: CNAME, target: loop2.fuzz.test}}
      - {{name: loop2, type: CNAME, target: loop1.fuzz.test}}
      - {{name: self, type: CNAME, target: self.fuzz.test}}
      - {{name: away, type: CNAME, target: www.example.org}}
      - {{name: dangling, type: CNAME, target: nothere.fuzz.test}}
      - {{name: intodeleg, type: CNAME, target: host.sub.fuzz.test}}
      - {{name: host, type: A, address: 192.0.2.80}}
      - {{name: host, type: AAAA, address: "2001:db8::80"}}
      - {{name: _https._tcp.app, type: SRV, priority: 10, weight: 5, port: 443, target: app.fuzz.test}}
      - {{name: leaf.a.b.c, type: A, address: 192.0.2.81}}
      - {{name: txt, type: TXT, text: ["one", "two", "{"t" * 255}"]}}
      - {{name: bigtxt, type: TXT, text: "{"x" * 2000}"}}
      - {{name: sub, type: NS, target: ns1.sub.fuzz.test}}
      - {{name: sub, type: NS, target: ns.elsewhere.example}}
      - {{name: ns1.sub, type: A, address: 192.0.2.101}}
      - {{name: ns1.sub, type: AAAA, address: "2001:db8::101"}}
{_MANY}{_MX}{_GLUE}{_TXT}  inner.fuzz.test:
    nameservers:
      - {{name: ns1.fuzz.test}}
    allow_transfer: []
    records:
      - {{name: "@", type: TXT, text: "inner"}}
      - {{name: x, type: CNAME, target: app.fuzz.test}}
  other.test:
    nameservers:
      - {{name: ns1.other.test, addresses: [192.0.2.54]}}
    allow_transfer: [10.0.0.0/8]
    records:
      - {{name: www, type: CNAME, target: app.fuzz.test}}
sites:
  us-east:      {{lat: 38.9, lon: -77.0, country: US, continent: NA}}
  eu-west:      {{lat: 50.1, lon: 8.7, country: DE, continent: EU}}
  ap-northeast: {{lat: 35.7, lon: 139.7, country: JP, continent: AS}}
services:
  app.fuzz.test:
    policy: {{type: geo}}
    endpoints:
{_THREE}  w.fuzz.test:
    policy: {{type: weighted}}
    answers: 1
    endpoints:
{_THREE}  sticky.fuzz.test:
    policy: {{type: weighted, sticky: true}}
    endpoints:
{_THREE}  rr.fuzz.test:
    policy: {{type: round_robin}}
    answers: 2
    endpoints:
{_THREE}  ch.other.test:
    policy: {{type: consistent_hash}}
    answers: 1
    endpoints:
{_THREE}  fo.fuzz.test:
    policy: {{type: failover, groups: [[us-east], [eu-west, ap-northeast]]}}
    endpoints:
{_THREE}  topo.fuzz.test:
    policy:
      - type: topology
        rules:
          - {{cidrs: [81.2.69.0/24], sites: [ap-northeast]}}
          - {{countries: [JP], sites: [us-east]}}
          - {{continents: [EU], sites: [eu-west]}}
        default: [us-east]
      - {{type: geo}}
    endpoints:
{_THREE}  cloud.fuzz.test:
    endpoints:
      - {{site: us-east, cname: lb-1.cloud.example.net}}
      - {{site: eu-west, ipv4: 192.0.2.21}}
  pool.fuzz.test:
    policy: {{type: geo}}
    endpoints:
{_POOL}"""

CONFIG_DATA: dict[str, Any] = yaml.safe_load(RICH_CONFIG)
ZONES: dict[tuple[bytes, ...], list[IPv4Network | IPv6Network]] = {
    tuple(apex.encode().split(b".")): [ip_network(n) for n in zone.get("allow_transfer", [])]
    for apex, zone in CONFIG_DATA["zones"].items()
}

# Names worth asking for (the fuzzers add prefixes, change case and mix in others).
NAMES = sorted({
    *(apex for apex in CONFIG_DATA["zones"]),
    *CONFIG_DATA["services"],
    *(f"{r['name']}.{apex}".removeprefix("@.") for apex, zone in CONFIG_DATA["zones"].items()
      for r in zone.get("records", [])),
    "nothere.fuzz.test", "x.y.sub.fuzz.test", "a.b.c.fuzz.test", "example.org", "test", "",
})


def rich_snapshot() -> Snapshot:
    return build_snapshot(load_config_text(RICH_CONFIG, "<fuzz>").compiled)


# --------------------------------------------------------------------------- the transports


def udp_exchange(handler: QueryHandler, packet: bytes, client: str) -> bytes | None:
    """What ``UdpProtocol.datagram_received`` sends: the exact cache first, then ``handle``."""
    entry = handler.exact_udp.get(packet[2:])
    if entry is not None:
        return packet[:2] + entry.tail
    return handler.handle(packet, client)


def tcp_exchange(handler: QueryHandler, message: bytes, client: str) -> list[bytes]:
    """What ``TcpProtocol._answer_buffered`` sends for one framed message."""
    entry = handler.exact_tcp.get(message[2:])
    if entry is not None:
        return [message[:2] + entry.tail]
    return handler.handle_stream(message, client)


# --------------------------------------------------------------------------- reading queries


@dataclass(frozen=True, slots=True)
class Record:
    section: int  # 0 answer, 1 authority, 2 additional
    owner: int
    rtype: int
    rclass: int
    ttl: int
    rdata: slice


def skip_name(data: bytes, offset: int) -> tuple[int, bool]:
    """Offset after the name at ``offset`` without following pointers, and whether it ends
    in one. Raises ValueError when it runs past the end or uses an unknown label type."""
    while True:
        if offset >= len(data):
            raise ValueError("name past the end")
        length = data[offset]
        if length == 0:
            return offset + 1, False
        if length & 0xC0 == 0xC0:
            if offset + 2 > len(data):
                raise ValueError("truncated pointer")
            return offset + 2, True
        if length & 0xC0:
            raise ValueError("label type")
        offset += length + 1


def walk(data: bytes) -> tuple[int, list[Record]]:
    """The end of the question and the records as their lengths say, or ValueError."""
    qdcount, an, ns, ar = struct.unpack_from("!4H", data, 4)
    if qdcount != 1:
        raise ValueError("not one question")
    offset, _ = skip_name(data, 12)
    offset += 4
    if offset > len(data):
        raise ValueError("question past the end")
    question_end = offset
    records = []
    for section, count in enumerate((an, ns, ar)):
        for _ in range(count):
            owner = offset
            offset, _ = skip_name(data, offset)
            if offset + 10 > len(data):
                raise ValueError("record past the end")
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, offset)
            offset += 10 + rdlen
            if offset > len(data):
                raise ValueError("rdata past the end")
            records.append(Record(section, owner, rtype, rclass, ttl, slice(offset - rdlen, offset)))
    if offset != len(data):
        raise ValueError("trailing bytes")
    return question_end, records


def ecs_valid(value: bytes) -> bool:
    """RFC 7871 section 6: a known family, a source no longer than the address, exactly the
    address bytes the source needs, no bits set past it."""
    if len(value) < 4:
        return False
    family, source, _scope = struct.unpack_from("!HBB", value)
    bits = {1: 32, 2: 128}.get(family)
    if bits is None or source > bits or len(value) - 4 != (source + 7) // 8:
        return False
    padded = int.from_bytes(value[4:] + bytes(bits // 8 - (len(value) - 4)), "big")
    return padded & ((1 << (bits - source)) - 1) == 0


def options_of(data: bytes, rdata: slice) -> list[tuple[int, int, bytes]] | None:
    """(offset, code, value) of each option in an OPT's RDATA; None when they do not tile it."""
    out = []
    offset = rdata.start
    while offset < rdata.stop:
        if offset + 4 > rdata.stop:
            return None
        code, length = struct.unpack_from("!HH", data, offset)
        if offset + 4 + length > rdata.stop:
            return None
        out.append((offset, code, data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    return out


@dataclass(frozen=True, slots=True)
class Expect:
    """What a packet's reply must look like; ``rcodes`` None means any (no verdict)."""

    reply: bool
    rcodes: frozenset[int] | None = None
    limit: int = 512
    """The largest UDP reply the client accepts."""
    opt: bool | None = None
    """The reply carries an OPT (RFC 6891 6.1.1) or must not; None: either."""
    ecs: bytes | None = None
    """A valid ECS option whose family, source and address the reply must echo."""


def _in_zone(labels: tuple[bytes, ...]) -> tuple[bytes, ...] | None:
    best = None
    for apex in ZONES:
        if len(labels) >= len(apex) and labels[len(labels) - len(apex) :] == apex:
            best = apex if best is None or len(apex) > len(best) else best
    return best


def _transfer_allowed(apex: tuple[bytes, ...], client: str) -> bool:
    addr = ip_address(client)
    mapped = getattr(addr, "ipv4_mapped", None)
    addr = mapped or addr
    return any(addr in net for net in ZONES[apex])


def expect(packet: bytes, client: str, *, tcp: bool) -> Expect:
    """The verdict of an independent reading of ``packet`` from ``client``."""
    if len(packet) < 12 or packet[2] & 0x80:
        return Expect(reply=False)
    flags, qdcount = struct.unpack_from("!HH", packet, 2)
    opcode = (flags >> 11) & 0xF
    if qdcount != 1:
        return Expect(True, frozenset({FORMERR} if opcode == 0 else {FORMERR, NOTIMP}))
    try:
        question_end, records = walk(packet)
    except ValueError:
        return Expect(True, frozenset({FORMERR}))  # the counts do not match the bytes
    if _question_compressed(packet):
        return Expect(True, frozenset({FORMERR}))  # a question never needs a pointer
    opts = [r for r in records if r.rtype == T_OPT]
    if len(opts) > 1 or any(r.section != 2 or packet[r.owner] != 0 for r in opts):
        return Expect(True, frozenset({FORMERR}))
    # ECS options are checked here; dnspython sees them under a neutral code
    neutral = bytearray(packet)
    ecs: list[bytes] = []
    opt = opts[0] if opts else None
    if opt is not None:
        options = options_of(packet, opt.rdata)
        if options is None:
            return Expect(True, frozenset({FORMERR}))
        for at, code, value in options:
            if code == ECS:
                ecs.append(value)
                struct.pack_into("!H", neutral, at, NEUTRAL_OPTION)
    limit = 512 if opt is None else max(512, min(opt.rclass, OUR_UDP))
    neutral[2] &= 0x87  # read as a QUERY: dnspython applies UPDATE's rules otherwise
    msg = _strict_read(bytes(neutral))
    if opt is not None and (opt.ttl >> 16) & 0xFF:
        # whatever the options say; a bad name elsewhere (the walk follows no pointer) may come first
        return Expect(True, frozenset({BADVERS} if msg is not None else {BADVERS, FORMERR}), limit)
    if len(ecs) > 1 or not all(map(ecs_valid, ecs)):
        return Expect(True, frozenset({FORMERR}), limit, opt is not None)
    echo = ecs[0] if ecs else None
    if msg is None:
        # only the strict reader objects (RDATA it cannot decode, its own name limits):
        # the server need not read RDATA it ignores, so either answer is fine
        return Expect(True, None, limit, opt is not None, echo)
    if opcode:  # NOTIFY and UPDATE may be refused; other opcodes are not implemented
        allowed = {REFUSED, NOTIMP} if opcode in (OPCODE_NOTIFY, OPCODE_UPDATE) else {NOTIMP}
        return Expect(True, frozenset(allowed), limit, opt is not None, echo)
    q = msg.question[0]
    labels = tuple(label.lower() for label in q.name.labels[:-1])
    qtype, qclass = struct.unpack_from("!HH", packet, question_end - 4)
    if qtype in META_TYPES:
        return Expect(True, frozenset({FORMERR}), limit, opt is not None, echo)
    apex = _in_zone(labels)
    if qtype in (T_AXFR, T_IXFR):
        rcodes = _transfer_rcodes(labels, apex, qtype, qclass, client, tcp)
        return Expect(True, rcodes, limit, opt is not None, echo)
    if qclass not in (1, 255) or apex is None:
        return Expect(True, frozenset({REFUSED}), limit, opt is not None, echo)
    return Expect(True, frozenset({NOERROR, NXDOMAIN}), limit, opt is not None, echo)


def _transfer_rcodes(labels: tuple[bytes, ...], apex: tuple[bytes, ...] | None, qtype: int, qclass: int,
                     client: str, tcp: bool) -> frozenset[int]:
    """RFC 5936 2.2.1 / RFC 1995: a transfer of something that is not one of our zones (in
    the zone's class, IN) is refused or NOTAUTH; an unlisted client is refused; AXFR needs
    TCP; an IXFR over UDP gets the SOA."""
    if not tcp and qtype == T_AXFR:
        return frozenset({NOTIMP, FORMERR, REFUSED, NOTAUTH})
    if apex is None or qclass != 1 or labels != apex:
        return frozenset({REFUSED, NOTAUTH})
    if not _transfer_allowed(apex, client):
        return frozenset({REFUSED})
    return frozenset({NOERROR})


@functools.lru_cache(maxsize=1024)
def _strict_read(packet: bytes) -> dns.message.Message | None:
    try:
        return dns.message.from_wire(packet)
    except (dns.exception.DNSException, ValueError, TypeError, KeyError):
        return None


def _question_compressed(packet: bytes) -> bool:
    try:
        _, pointer = skip_name(packet, 12)
    except ValueError:
        return False
    return pointer


# --------------------------------------------------------------------------- checking replies


def parse_reply(reply: bytes) -> dns.message.Message:
    """dnspython's reading of a reply as a plain QUERY (for opcode UPDATE it would apply RFC
    2136 rules to the echoed question). Memoised without the ID: most replies repeat, and
    reading them is most of a fuzzing iteration's cost."""
    return _parse_tail(bytes([reply[2] & 0x87]) + reply[3:])


@functools.lru_cache(maxsize=4096)
def _parse_tail(tail: bytes) -> dns.message.Message:
    return dns.message.from_wire(b"\0\0" + tail)


def check_reply(packet: bytes, reply: bytes, want: Expect, *, tcp: bool, first: bool = True) -> dns.message.Message:
    """One reply message: header matches the query, parses strictly, rcode and EDNS as
    ``want`` says, fits the client's UDP limit or the TCP frame."""
    assert len(reply) >= 12, f"a {len(reply)}-byte reply"
    assert reply[:2] == packet[:2], "reply ID differs from the query's"
    assert reply[2] & 0x80, "QR clear in a reply"
    assert (reply[2] >> 3) & 0xF == (packet[2] >> 3) & 0xF, "opcode not echoed"
    assert reply[2] & 0x01 == packet[2] & 0x01 and reply[3] & 0x10 == packet[3] & 0x10, "RD/CD not copied"
    if tcp:
        assert len(reply) <= 65535, f"a {len(reply)}-byte TCP message does not fit its frame"
    else:
        assert len(reply) <= want.limit, f"a {len(reply)}-byte UDP reply; the client's limit is {want.limit}"
    msg = parse_reply(reply)  # counts match the bytes, names valid, no trailing bytes
    qd, an, ns, _ = struct.unpack_from("!4H", reply, 4)
    rcode = msg.rcode()
    assert rcode != SERVFAIL, "SERVFAIL (no name here is configured to fail)"
    if msg.flags & TC:
        assert not tcp, "TC over TCP"
        assert an == 0 and ns == 0, "a truncated reply carries records"
    if msg.opt is not None:
        assert msg.edns == 0, "reply OPT is not version 0"
        assert msg.payload == OUR_UDP, f"reply OPT offers {msg.payload}, not our {OUR_UDP}"
    if not first:
        return msg
    assert qd <= 1, f"{qd} questions in a reply"
    if qd:
        _, used = dns.name.from_wire(reply, 12)
        qend = 12 + used + 4
        assert reply[12:qend] == packet[12:qend], "question not echoed byte for byte"
    elif rcode in (NOERROR, NXDOMAIN):
        raise AssertionError("an answer without the question")
    if want.rcodes is not None:
        names = sorted(map(_rcode_text, want.rcodes))
        assert rcode in want.rcodes, f"rcode {_rcode_text(rcode)}, expected one of {names}"
    if want.opt is not None and qd:
        assert (msg.opt is not None) == want.opt, "OPT in the reply not as in the query (RFC 6891 6.1.1)"
    if want.ecs is not None and rcode in (NOERROR, NXDOMAIN) and not (tcp and _asks_transfer(msg)):
        # (a zone transfer is no answer tailored to a client: its messages need not echo it)
        echoed = [o.to_wire() for o in msg.options if o.otype == ECS]
        assert len(echoed) == 1, "the client subnet option is not echoed (RFC 7871 7.2.1)"
        assert echoed[0][:3] == want.ecs[:3] and echoed[0][4:] == want.ecs[4:], (
            "the echoed client subnet differs in family, source or address")
        assert want.ecs[2] or not echoed[0][3], "a scope for a client subnet of source 0 (RFC 7871 7.1.2)"
    if msg.answer and qd and rcode in (NOERROR, NXDOMAIN):
        q = msg.question[0]
        assert msg.answer[0].name == q.name, "the answer does not start at the question's name"
        if q.rdtype not in (T_ANY, T_AXFR, T_IXFR):
            assert all(rrset.rdtype in (q.rdtype, T_CNAME) for rrset in msg.answer), (
                "an answer record of another type than asked (RFC 1034 4.3.2)")
    if not msg.flags & TC and (rcode == NXDOMAIN or (rcode == NOERROR and not msg.answer and msg.flags & 0x0400)):
        soa = [rrset for rrset in msg.authority if rrset.rdtype == T_SOA]
        assert msg.flags & 0x0400, "NXDOMAIN without AA"
        assert len(soa) == 1 and msg.question[0].name.is_subdomain(soa[0].name), (
            "a negative answer without its zone's SOA")
    return msg


@functools.lru_cache(maxsize=256)
def _parse_tail_rr(tail: bytes) -> dns.message.Message:
    return dns.message.from_wire(b"\0\0" + tail, one_rr_per_rrset=True)


def _rcode_text(rcode: int) -> str:
    return {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
            9: "NOTAUTH", 16: "BADVERS"}.get(rcode, str(rcode))


def check(packet: bytes, client: str, warm: QueryHandler, fresh: QueryHandler) -> bytes | None:
    """``packet`` from ``client`` over UDP and TCP through a fresh handler and a long-lived
    one whose caches hold everything seen before. Raises AssertionError on any broken
    invariant; returns the UDP reply."""
    want_udp = expect(packet, client, tcp=False)
    reply = fresh.handle(packet, client)
    if not want_udp.reply:
        assert reply is None, "a reply to a packet too short for a header, or to a response"
    else:
        assert reply is not None, "no reply to a query with a full header"
        check_reply(packet, reply, want_udp, tcp=False)
    assert udp_exchange(fresh, packet, client) == reply, "the exact cache replays a different reply"
    assert udp_exchange(warm, packet, client) == reply, "a warmed handler answers differently"
    if len(packet) <= 65535:
        want_tcp = expect(packet, client, tcp=True)
        stream = fresh.handle_stream(packet, client)
        if not want_tcp.reply:
            assert stream == [], "a TCP reply to a packet too short for a header, or to a response"
        else:
            assert stream, "no TCP reply to a query with a full header"
            msgs = [check_reply(packet, r, want_tcp, tcp=True, first=i == 0) for i, r in enumerate(stream)]
            if len(stream) > 1 or _is_transfer(msgs[0]):
                _check_transfer(stream)
            elif reply is not None and not reply[2] & (TC >> 8) and not _asks_transfer(msgs[0]):
                udp = parse_reply(reply)  # not truncated: what TCP has (the additional section may go)
                assert (udp.rcode(), udp.answer, udp.authority) == (msgs[0].rcode(), msgs[0].answer,
                                                                   msgs[0].authority), "UDP and TCP answers differ"
        assert tcp_exchange(fresh, packet, client) == stream, "the exact TCP cache replays a different reply"
        assert tcp_exchange(warm, packet, client) == stream, "a warmed handler answers differently over TCP"
    assert fresh.errors == 0 and warm.errors == 0, "an internal error (SERVFAIL) in the handler"
    return reply


def _asks_transfer(msg: dns.message.Message) -> bool:
    return bool(msg.question) and msg.question[0].rdtype in (T_AXFR, T_IXFR)


def _is_transfer(msg: dns.message.Message) -> bool:
    return _asks_transfer(msg) and msg.rcode() == NOERROR


def _check_transfer(stream: list[bytes]) -> None:
    """RFC 5936 2.2: the records start and end with the zone's SOA, which appears nowhere else."""
    msgs = [_parse_tail_rr(r[2:]) for r in stream]
    assert all(m.rcode() == NOERROR for m in msgs), "a failed message inside a zone transfer"
    types = [rrset.rdtype for m in msgs for rrset in m.answer]
    assert len(types) >= 2 and types[0] == T_SOA and types[-1] == T_SOA, "a transfer not framed by SOAs"
    assert types.count(T_SOA) == 2, "a zone transfer carries the SOA more than twice"
