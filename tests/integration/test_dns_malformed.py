"""Hostile and broken packets over UDP and TCP against a real node.

Every crafted packet must get either no reply or a well-formed reply (matching ID, QR set,
counts that match the bytes, no SERVFAIL from an internal error), usually FORMERR. After
each packet a sentinel query goes down the same socket and must be answered correctly, so
"no reply" is checked without timing and the server is shown to keep answering. At the end
``handler.errors`` must still be 0: no packet reached an internal exception.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Callable, Iterator

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.dnswire import frame, recv_exact

TIMEOUT = 3.0
TRANSPORTS = pytest.mark.parametrize("transport", ["udp", "tcp"])
FORMERR, SERVFAIL, REFUSED, NOERROR = dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.NOERROR
T_A, T_TXT, T_OPT = 1, 16, 41
APP_ADDRS = {"192.0.2.10", "192.0.2.20", "192.0.2.30"}


# --------------------------------------------------------------------------- packet building


def header(ident: int = 0xABCD, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!6H", ident, flags, qd, an, ns, ar)


def wire_name(text: str) -> bytes:
    return dns.name.from_text(text).to_wire()


def question(name: str = "app.gslb.example.com.", qtype: int = T_A, qclass: int = 1) -> bytes:
    return wire_name(name) + struct.pack("!HH", qtype, qclass)


def rr(owner: bytes, rtype: int, rdata: bytes, rclass: int = 1, ttl: int = 0, rdlen: int | None = None) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata) if rdlen is None else rdlen) + rdata


def opt(options: bytes = b"", owner: bytes = b"\x00", size: int = 1232, ttl: int = 0,
        rdlen: int | None = None) -> bytes:
    return rr(owner, T_OPT, options, rclass=size, ttl=ttl, rdlen=rdlen)


def option(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


Q = question()
QUERY = header() + Q
EDNS_QUERY = header(ar=1) + Q + opt()


def _additional_at(base: bytes) -> int:
    """Offset of the first byte after ``base`` (where an appended record's owner starts)."""
    return len(base)


def _pointer(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def _self_pointer() -> bytes:
    base = header(ar=1) + Q
    at = _additional_at(base)
    return base + rr(_pointer(at), T_A, bytes(4))


def _pointer_loop() -> bytes:
    # record 1 at Y: label "a" then a pointer forward to record 2's owner at X;
    # record 2 at X: a pointer back to Y. Following them never reaches a root label.
    base = header(ar=2) + Q
    y = len(base)
    rec1_owner_len = 2 + 2
    x = y + rec1_owner_len + 10 + 4
    return base + rr(b"\x01a" + _pointer(x), T_A, bytes(4)) + rr(_pointer(y), T_A, bytes(4))


def _two_pointer_cycle() -> bytes:
    # the owner is a pointer to the next two bytes, which are a pointer back
    base = header(ar=1) + Q
    at = len(base)
    return base + _pointer(at + 2) + _pointer(at) + struct.pack("!HIH", 1, 0, 0)


def _forward_pointer() -> bytes:
    # owner points forward into its own rdata, which holds a valid name
    base = header(ar=1) + Q
    at = len(base)
    rdata = b"\x03foo\x00"
    return base + rr(_pointer(at + 2 + 10), T_TXT, rdata)


def _backward_pointer_ok() -> bytes:
    return header(ar=1) + Q + rr(_pointer(12), T_A, bytes(4))


def _long_name(sizes: list[int]) -> bytes:
    return b"".join(bytes([n]) + b"a" * n for n in sizes) + b"\x00"


assert len(_long_name([63, 63, 63, 61])) == 255
assert len(_long_name([63, 63, 63, 62])) == 256

# (id, packet, expectation): "none" = no reply; "formerr" = FORMERR or no reply;
# an int = that rcode; "app" = the normal answer for app.gslb.example.com A.
CASES: list[tuple[str, bytes, str | int]] = [
    *[(f"truncated-header-{n}", QUERY[:n], "none") for n in (0, 1, 2, 6, 11)],
    ("header-only", header(), "formerr"),
    ("qr-set", header(flags=0x8100) + Q, "none"),
    ("qr-set-garbage", header(flags=0x8000, qd=7) + b"\xff" * 30, "none"),
    ("label-64", header() + b"\x40" + b"a" * 64 + b"\x00" + struct.pack("!HH", 1, 1), "formerr"),
    ("label-type-0x80", header() + b"\x80" + b"a" * 10 + b"\x00" + struct.pack("!HH", 1, 1), "formerr"),
    ("name-256-bytes", header() + _long_name([63, 63, 63, 62]) + struct.pack("!HH", 1, 1), "formerr"),
    ("name-321-bytes", header() + _long_name([63] * 5) + struct.pack("!HH", 1, 1), "formerr"),
    ("name-255-bytes-ok", header() + _long_name([63, 63, 63, 61]) + struct.pack("!HH", 1, 1), REFUSED),
    ("question-pointer", header() + _pointer(12) + struct.pack("!HH", 1, 1), "formerr"),
    ("question-pointer-after-label", header() + b"\x03app" + _pointer(12) + struct.pack("!HH", 1, 1), "formerr"),
    ("question-name-past-end", header() + b"\x03app\x04gslb", "formerr"),
    ("question-label-past-end", header() + b"\x3fabc", "formerr"),
    ("question-no-class", header() + wire_name("app.gslb.example.com.") + b"\x00\x01", "formerr"),
    ("additional-pointer-to-self", _self_pointer(), "formerr"),
    ("additional-pointer-loop", _pointer_loop(), "formerr"),
    ("additional-pointer-cycle", _two_pointer_cycle(), "formerr"),
    ("additional-forward-pointer", _forward_pointer(), "formerr"),
    ("additional-truncated-pointer", header(ar=1) + Q + b"\xc0", "formerr"),
    ("additional-backward-pointer-ok", _backward_pointer_ok(), "app"),
    ("rdlength-past-end", header(ar=1) + Q + rr(b"\x00", T_A, bytes(4), rdlen=100), "formerr"),
    ("rdlength-past-end-answer", header(an=1) + Q + rr(_pointer(12), T_A, bytes(4), rdlen=5), "formerr"),
    ("record-header-truncated", header(ar=1) + Q + b"\x00\x00\x01\x00", "formerr"),
    ("ancount-without-record", header(an=1) + Q, "formerr"),
    ("arcount-without-record", header(ar=1) + Q, "formerr"),
    ("arcount-3-with-one-record", header(ar=3) + Q + opt(), "formerr"),
    ("trailing-bytes", QUERY + b"\x00\x00\x00", "formerr"),
    ("trailing-bytes-after-opt", EDNS_QUERY + b"\x00", "formerr"),
    ("trailing-bytes-after-records", header(ar=1) + Q + rr(b"\x00", T_A, bytes(4)) + b"\xff", "formerr"),
    ("huge-trailing", QUERY + bytes(60000), "formerr"),
    ("opt-in-answer", header(an=1) + Q + opt(), "formerr"),
    ("opt-in-authority", header(ns=1) + Q + opt(), "formerr"),
    ("opt-non-root-owner", header(ar=1) + Q + opt(owner=b"\x01a\x00"), "formerr"),
    ("opt-non-root-owner-after-record", header(ar=2) + Q + rr(b"\x00", T_A, bytes(4))
     + opt(owner=wire_name("x.")), "formerr"),
    ("two-opt", header(ar=2) + Q + opt() + opt(), "formerr"),
    ("opt-truncated-fixed-part", header(ar=1) + Q + b"\x00\x00\x29\x04\xd0\x00", "formerr"),
    ("opt-rdlength-past-end", header(ar=1) + Q + opt(b"\x00\x0a\x00\x00", rdlen=40), "formerr"),
    ("edns-option-header-truncated", header(ar=1) + Q + opt(b"\x00\x0a"), "formerr"),
    ("edns-option-header-3-bytes", header(ar=1) + Q + opt(b"\xfd\xe9\x00"), "formerr"),
    ("edns-option-data-truncated", header(ar=1) + Q + opt(b"\xfd\xe9\x00\x0a" + b"abc"), "formerr"),
    ("edns-option-ok-then-truncated", header(ar=1) + Q + opt(option(65001, b"ok") + b"\x00"), "formerr"),
    ("ecs-bad-family", header(ar=1) + Q + opt(option(8, struct.pack("!HBB", 3, 0, 0))), "formerr"),
    ("ecs-source-too-long", header(ar=1) + Q + opt(option(8, struct.pack("!HBB", 1, 33, 0) + bytes(5))),
     "formerr"),
    ("ecs-too-short", header(ar=1) + Q + opt(option(8, b"\x00\x01")), "formerr"),
    ("edns-unknown-option-ok", header(ar=1) + Q + opt(option(65001, b"\x01\x02")), "app"),
    ("qdcount-0-with-opt", header(qd=0, ar=1) + opt(), "formerr"),
    ("qdcount-65535", header(qd=65535) + Q, "formerr"),
    ("qtype-opt", header() + question(qtype=T_OPT), "formerr"),
]


# --------------------------------------------------------------------------- probing





SENTINEL_NAME = "static.gslb.example.com."


class Prober:
    """One socket to the node; ``exchange`` sends a packet and a sentinel query and returns
    the replies that came before the sentinel's (checked to be the right answer)."""

    def __init__(self, addr: tuple[str, int], transport: str) -> None:
        self.addr = addr
        self.transport = transport
        self.family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.closed_by_server = 0
        self.sock = self._connect()
        self._seq = 0

    def _connect(self) -> socket.socket:
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        sock = socket.socket(self.family, kind)
        sock.settimeout(TIMEOUT)
        sock.connect(self.addr)
        if self.transport == "tcp":
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close(self) -> None:
        self.sock.close()

    def _send(self, wire: bytes) -> None:
        if self.transport == "udp":
            self.sock.send(wire)
        else:
            self.sock.sendall(frame(wire))

    def _recv(self) -> bytes:
        if self.transport == "udp":
            return self.sock.recv(65535)
        (size,) = struct.unpack("!H", recv_exact(self.sock, 2))
        return recv_exact(self.sock, size)

    def exchange(self, packet: bytes) -> list[bytes]:
        self._seq = (self._seq + 1) & 0xFFFF
        ident = self._seq if packet[:2] != struct.pack("!H", self._seq) else self._seq ^ 0x8000
        sentinel = header(ident) + question(SENTINEL_NAME)
        try:
            if self.transport == "udp":
                self.sock.send(packet)
                self.sock.send(sentinel)
            else:
                self.sock.sendall(frame(packet) + frame(sentinel))
            return self._collect(sentinel)
        except (ConnectionError, BrokenPipeError):
            if self.transport == "udp":
                raise
            # the server may close a TCP connection on garbage; that counts as "no reply"
            self.closed_by_server += 1
            self.sock.close()
            self.sock = self._connect()
            self._send(sentinel)
            return self._collect(sentinel)

    def _collect(self, sentinel: bytes) -> list[bytes]:
        replies = []
        for _ in range(4):
            data = self._recv()
            if len(data) >= 12 and data[:2] == sentinel[:2] and data[12 : len(sentinel)] == sentinel[12:]:
                r = dns.message.from_wire(data)
                assert r.rcode() == NOERROR, dns.rcode.to_text(r.rcode())
                assert [rd.address for rrset in r.answer for rd in rrset] == ["192.0.2.80"]
                return replies
            replies.append(data)
        raise AssertionError(f"the sentinel was never answered; got {replies!r}")


def reply_structure(reply: bytes) -> tuple[int, int, int, list[int], int]:
    """Walk a reply like a strict client would: (id, flags, qdcount, record types, extended
    rcode bits from OPT); raises when counts do not match the bytes, names are bad, or
    bytes trail."""
    assert len(reply) >= 12, reply
    ident, flags, qd, an, ns, ar = struct.unpack_from("!6H", reply)
    offset = 12
    for _ in range(qd):
        _, used = dns.name.from_wire(reply, offset)
        offset += used + 4
    types = []
    ext = 0
    for section, count in enumerate((an, ns, ar)):
        for _ in range(count):
            _, used = dns.name.from_wire(reply, offset)
            offset += used
            rtype, _, ttl, rdlen = struct.unpack_from("!HHIH", reply, offset)
            offset += 10 + rdlen
            if rtype == T_OPT:
                assert section == 2, "OPT outside the additional section of a reply"
                assert (ttl >> 16) & 0xFF == 0, "reply OPT is not EDNS version 0"
                ext = ttl >> 24
            types.append(rtype)
    assert offset == len(reply), f"reply is {len(reply)} bytes, records end at {offset}"
    assert types.count(T_OPT) <= 1
    return ident, flags, qd, types, ext


def check_reply(packet: bytes, reply: bytes) -> int:
    """A reply to ``packet`` must be well-formed and match it; returns the full rcode."""
    _, flags, qd, _, ext = reply_structure(reply)
    assert reply[:2] == packet[:2], "reply ID differs from the query's"
    assert flags & 0x8000, "QR clear in a reply"
    assert (flags >> 11) & 0xF == (packet[2] >> 3) & 0xF, "opcode not echoed"
    rcode = (ext << 4) | (flags & 0xF)
    if qd:
        assert qd == 1
        qend = 12 + dns.name.from_wire(reply, 12)[1] + 4
        assert reply[12:qend] == packet[12:qend], "question not echoed byte for byte"
    assert rcode != SERVFAIL, "SERVFAIL: the server hit an internal error"
    return rcode


def expect(packet: bytes, replies: list[bytes], expectation: str | int) -> None:
    assert len(replies) <= 1, f"{len(replies)} replies to one query"
    if expectation == "none":
        assert replies == [], f"expected no reply, got {replies!r}"
        return
    if expectation == "formerr":
        if replies:
            rcode = check_reply(packet, replies[0])
            assert rcode == FORMERR, dns.rcode.to_text(rcode)
        return
    assert replies, "expected a reply"
    rcode = check_reply(packet, replies[0])
    if expectation == "app":
        r = dns.message.from_wire(replies[0])
        assert rcode == NOERROR
        assert {rd.address for rrset in r.answer for rd in rrset} == APP_ADDRS
    else:
        assert rcode == expectation, dns.rcode.to_text(rcode)


# --------------------------------------------------------------------------- tests


@pytest.fixture(params=["udp", "tcp"])
def prober(request, example_node) -> Iterator[Prober]:
    p = Prober(example_node.addresses[0], request.param)
    yield p
    p.close()


@pytest.mark.parametrize("packet,expectation", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_crafted_packet(example_node, prober, packet, expectation):
    expect(packet, prober.exchange(packet), expectation)
    assert example_node.node.handler.errors == 0


@pytest.mark.parametrize("packet,expectation", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_crafted_packet_over_ipv6(example_node, packet, expectation):
    p = Prober(example_node.addresses[1], "udp")
    try:
        expect(packet, p.exchange(packet), expectation)
    finally:
        p.close()


def random_packets(rng: random.Random, count: int) -> Iterator[bytes]:
    """Pure noise, then noise shaped like a query header (QR clear, small counts) so that
    more of it reaches the question and record parsers."""
    for i in range(count):
        body = rng.randbytes(rng.randint(0, 300))
        if i % 2 and len(body) >= 12:
            ident = body[:2]
            flags = rng.randint(0, 0xFFFF) & ~0x8000 & (0xFFFF if rng.random() < 0.2 else 0x87FF)
            counts = [1, rng.choice([0, 0, 1, 2]), rng.choice([0, 0, 1]), rng.choice([0, 1, 1, 2])]
            body = ident + struct.pack("!5H", flags, *counts) + body[12:]
        yield body


def _mutation_bases() -> list[bytes]:
    with_options = dns.message.make_query(
        "app.gslb.example.com", "A", use_edns=0, want_dnssec=True,
        options=[dns.edns.ECSOption("192.0.2.0", 24), dns.edns.GenericOption(65001, b"xyz")]).to_wire()
    return [QUERY, EDNS_QUERY, with_options, _backward_pointer_ok(),
            header(ar=2) + Q + rr(_pointer(12), T_TXT, b"\x03abc") + opt(option(10, bytes(8)))]


def mutated_packets(rng: random.Random, count: int) -> Iterator[bytes]:
    bases = _mutation_bases()
    ops: list[Callable[[bytearray], None]] = []

    def flip(b: bytearray) -> None:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)

    def truncate(b: bytearray) -> None:
        del b[rng.randrange(len(b)) :]

    def insert(b: bytearray) -> None:
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.randbytes(rng.randint(1, 8))

    def counts(b: bytearray) -> None:
        struct.pack_into("!H", b, rng.choice([4, 6, 8, 10]), rng.choice([0, 1, 2, 3, 255, 65535]))

    def pointer(b: bytearray) -> None:
        at = rng.randrange(12, len(b))
        b[at : at + 2] = struct.pack("!H", 0xC000 | rng.randrange(len(b) + 16))

    ops.extend([flip, truncate, insert, counts, pointer])
    for _ in range(count):
        b = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            if len(b) > 12:
                rng.choice(ops)(b)
        if len(b) > 2:
            b[2] &= 0x7F  # keep QR clear so the parser has to look at it
        yield bytes(b)


@TRANSPORTS
def test_random_garbage_barrage(example_node, transport):
    rng = random.Random(0x6D616C66 + (transport == "tcp"))
    p = Prober(example_node.addresses[0], transport)
    answered = 0
    try:
        for packet in random_packets(rng, 2000):
            replies = p.exchange(packet)
            assert len(replies) <= 1, (packet, replies)
            if len(packet) < 12 or packet[2] & 0x80:
                assert replies == [], (packet, replies)
            for reply in replies:
                check_reply(packet, reply)
                answered += 1
    finally:
        p.close()
    assert answered > 0
    assert example_node.node.handler.errors == 0


@TRANSPORTS
def test_mutated_query_barrage(example_node, transport):
    rng = random.Random(0x6D757461 + (transport == "tcp"))
    p = Prober(example_node.addresses[0], transport)
    rcodes: dict[int, int] = {}
    try:
        for packet in mutated_packets(rng, 2000):
            replies = p.exchange(packet)
            assert len(replies) <= 1, (packet, replies)
            for reply in replies:
                rcode = check_reply(packet, reply)
                rcodes[rcode] = rcodes.get(rcode, 0) + 1
    finally:
        p.close()
    assert rcodes.get(FORMERR, 0) > 0 and rcodes.get(NOERROR, 0) > 0, rcodes
    assert example_node.node.handler.errors == 0


@TRANSPORTS
def test_tcp_garbage_stream_then_new_connection(example_node, transport):
    """Unframed noise on a TCP connection (the length prefix is noise too), then closing it:
    the server must keep answering on other connections. Over UDP, the same noise as one
    datagram per chunk."""
    rng = random.Random(0x73747265)
    noise = rng.randbytes(20000)
    if transport == "tcp":
        with socket.create_connection(example_node.addresses[0], timeout=TIMEOUT) as s:
            s.sendall(noise)
            s.shutdown(socket.SHUT_WR)
            for _ in range(1000):  # drain whatever comes back until the server closes
                if not s.recv(65535):
                    break
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(0, len(noise), 500):
                s.sendto(noise[i : i + 500], example_node.addresses[0])
    p = Prober(example_node.addresses[0], transport)
    try:
        assert p.exchange(QUERY[:5]) == []
    finally:
        p.close()
    assert example_node.node.handler.errors == 0


@TRANSPORTS
def test_normal_query_after_barrage(example_node, transport):
    """Last in the module: after everything above, ordinary queries are answered right."""
    q = dns.message.make_query("app.gslb.example.com", "A", use_edns=0)
    host, port = example_node.addresses[0]
    send = dns.query.udp if transport == "udp" else dns.query.tcp
    r = send(q, host, port=port, timeout=TIMEOUT)
    assert r.rcode() == NOERROR and r.flags & dns.flags.AA
    assert {rd.address for rrset in r.answer for rd in rrset} == APP_ADDRS
    r = send(dns.message.make_query("nope.gslb.example.com", "A"), host, port=port, timeout=TIMEOUT)
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert example_node.node.handler.errors == 0

