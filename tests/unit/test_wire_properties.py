"""Property-based tests of the DNS wire path, in-process: ``QueryHandler.handle`` (UDP) and
``handle_stream`` (TCP) fed generated packets, replies checked with dnspython.

Properties:
1. arbitrary bytes (and noise shaped like a query header) never raise, never count an
   internal error, and get either no reply (short or QR set) or a well-formed one;
2. valid queries built with dnspython (names in and out of the zone, any type and class,
   EDNS with random options and client subnets), then mutated, keep those invariants and
   echo the question byte for byte; unmutated ones get the rcode the RFCs ask for;
3. owner names made of labels and compression pointers (forward, self, into the header,
   chains) are accepted exactly when a strict reference reader (dnspython) accepts them
   (either answer is allowed where only dnspython's own extra limits reject a packet);
4. the exact-reply cache and the per-name cache give the same bytes as a fresh handler,
   whatever the ID and the letter case of the name;
5. UDP replies fit the size the client offered (512..1232) and are truncated to no records
   when they do not; TCP replies are never truncated.

Properties 1-3 also send every packet through a long-lived handler whose caches hold
everything seen before, and its reply must equal a fresh handler's: cached state never
leaks between queries. The examples are derandomized and the database is off, so every run checks the
same inputs.
"""

from __future__ import annotations

import string
import struct
from pathlib import Path

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from dnsserver.handler import QueryHandler
from gslb.config import load_config, load_config_text
from gslb.snapshot import build_snapshot

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example.yaml"
CLIENT = "127.0.0.1"
APP = [b"app", b"gslb", b"example", b"com"]
ZONE = [b"gslb", b"example", b"com"]
PLAIN = {"qclass": 1, "flags": 0x0100, "edns": None, "options": []}

FLAG_QR, FLAG_TC = 0x8000, 0x0200
T_A, T_NS, T_CNAME, T_SOA, T_MX, T_TXT, T_AAAA, T_SRV, T_OPT = 1, 2, 5, 6, 15, 16, 28, 33, 41
T_IXFR, T_AXFR, T_ANY, T_CAA = 251, 252, 255, 257
META = (T_OPT, 249, 250)
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, NOTAUTH, BADVERS = 0, 1, 2, 3, 4, 5, 9, 16

EXAMPLE_SNAPSHOT = build_snapshot(load_config(EXAMPLE).compiled)
# Warmed by every example of every property that uses the example config.
SHARED = QueryHandler(EXAMPLE_SNAPSHOT)


def props(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def fresh() -> QueryHandler:
    return QueryHandler(EXAMPLE_SNAPSHOT)


# --------------------------------------------------------------------------- exchanges and checks


def udp_exchange(handler: QueryHandler, packet: bytes, client: str = CLIENT) -> bytes | None:
    """What ``UdpProtocol.datagram_received`` sends: the exact cache first, then ``handle``."""
    entry = handler.exact_udp.get(packet[2:])
    if entry is not None:
        return packet[:2] + entry.tail
    return handler.handle(packet, client)


def tcp_exchange(handler: QueryHandler, packet: bytes, client: str = CLIENT) -> list[bytes]:
    """What ``TcpProtocol`` sends for one framed message."""
    entry = handler.exact_tcp.get(packet[2:])
    if entry is not None:
        return [packet[:2] + entry.tail]
    return handler.handle_stream(packet, client)


def counts(reply: bytes) -> tuple[int, int, int, int]:
    return struct.unpack_from("!4H", reply, 4)


def parse(reply: bytes) -> dns.message.Message:
    """dnspython's reading of a reply, as a plain QUERY: for opcode UPDATE it would apply
    RFC 2136 rules to the echoed question (zone section: type SOA, no meta class)."""
    return dns.message.from_wire(reply[:2] + bytes([reply[2] & 0x87]) + reply[3:])


def check_header(packet: bytes, reply: bytes) -> None:
    """The header of any reply, every message of a zone transfer included: the query's ID
    and opcode, QR set, RD and CD copied (RFC 1035 4.1.1, RFC 5936 2.2.1, RFC 6840 5.9)."""
    assert len(reply) >= 12
    assert reply[:2] == packet[:2], "reply ID differs from the query's"
    assert reply[2] & 0x80, "QR clear in a reply"
    assert (reply[2] >> 3) & 0xF == (packet[2] >> 3) & 0xF, "opcode not echoed"
    assert reply[2] & 0x01 == packet[2] & 0x01, f"RD not copied from the query: {packet.hex()}"
    assert reply[3] & 0x10 == packet[3] & 0x10, f"CD not copied from the query: {packet.hex()}"


def check_reply(packet: bytes, reply: bytes | None) -> dns.message.Message | None:
    """The invariants every reply to every packet keeps; returns the parsed reply."""
    if len(packet) < 12 or packet[2] & 0x80:
        assert reply is None, f"a packet that is short or a response got a reply: {reply!r}"
        return None
    assert reply is not None, "a packet with a header and QR clear got no reply"
    check_header(packet, reply)
    msg = parse(reply)  # counts match the bytes, names valid, no trailing bytes
    qd, an, ns, _ = counts(reply)
    assert qd <= 1
    if msg.rcode() in (NOERROR, NXDOMAIN):
        assert qd == 1, "an answer without the question"
    if qd:
        _, used = dns.name.from_wire(reply, 12)
        qend = 12 + used + 4
        assert reply[12:qend] == packet[12:qend], "question not echoed byte for byte"
    if msg.flags & dns.flags.TC:
        assert an == 0 and ns == 0, "a truncated reply carries records"
    return msg


def check_all(packet: bytes, handler: QueryHandler) -> bytes | None:
    """``packet`` through ``handler`` (UDP twice: the second may come from the exact cache),
    through the warmed shared handler, and over TCP; returns the UDP reply."""
    reply = handler.handle(packet, CLIENT)
    check_reply(packet, reply)
    assert udp_exchange(handler, packet) == reply, "the exact cache replays a different reply"
    if handler is not SHARED:
        assert udp_exchange(SHARED, packet) == reply, "a warmed handler answers differently"
    for i, stream_reply in enumerate(tcp_exchange(handler, packet)):
        if i:
            check_header(packet, stream_reply)
        msg = check_reply(packet, stream_reply) if i == 0 else parse(stream_reply)
        assert msg is not None and not msg.flags & dns.flags.TC, "TC over TCP"
    assert handler.errors == 0 and SHARED.errors == 0, "an internal error (SERVFAIL) was counted"
    event("no reply" if reply is None else f"rcode {dns.rcode.to_text(rcode_of(reply))}")
    return reply


def rcode_of(reply: bytes) -> int:
    return parse(reply).rcode()


# --------------------------------------------------------------------------- building queries

ZONE_NAMES = [
    "gslb.example.com", "app.gslb.example.com", "www.gslb.example.com", "static.gslb.example.com",
    "mail.gslb.example.com", "_https._tcp.app.gslb.example.com", "ns1.gslb.example.com",
    "_tcp.app.gslb.example.com", "nope.gslb.example.com",
]
OTHER_NAMES = ["example.com", "example.org", "com", "", "gslb.example.com.evil", "xgslb.example.com"]
COMMON_TYPES = [T_A, T_NS, T_CNAME, T_SOA, T_MX, T_TXT, T_AAAA, T_SRV, T_CAA, T_ANY, T_AXFR, T_IXFR, T_OPT,
                249, 250, 0, 65535, 99, 46]

labels_st = st.one_of(
    st.text(string.ascii_letters + string.digits + "-_*", min_size=1, max_size=20).map(str.encode),
    st.binary(min_size=1, max_size=63),
)


def recase(labels: list[bytes], mask: int) -> list[bytes]:
    """Swap the case of the ASCII letters whose position has its bit set in ``mask``."""
    out, k = [], 0
    for label in labels:
        b = bytearray(label)
        for i, c in enumerate(b):
            if chr(c) in string.ascii_letters and mask >> (k % 256) & 1:
                b[i] = c ^ 0x20
            k += 1
        out.append(bytes(b))
    return out


def fit(labels: list[bytes]) -> list[bytes]:
    """Drop leading labels until the name fits in 255 bytes."""
    while sum(len(label) + 1 for label in labels) + 1 > 255:
        labels = labels[1:]
    return labels


@st.composite
def names(draw: st.DrawFn, pool: list[str] | None = None, max_prefix: int = 4) -> list[bytes]:
    base = draw(st.sampled_from(pool if pool is not None else ZONE_NAMES + OTHER_NAMES))
    prefix = draw(st.one_of(st.just([]), st.lists(labels_st, min_size=1, max_size=max_prefix))) if max_prefix else []
    labels = prefix + [p.encode() for p in base.split(".") if p]
    return recase(fit(labels), draw(st.integers(0, 2**256 - 1)))


def wire_name(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def ecs_valid(value: bytes) -> bool:
    """RFC 7871 section 6, written independently of the server's parser."""
    if len(value) < 4:
        return False
    family, source, _scope = struct.unpack_from("!HBB", value)
    bits = {1: 32, 2: 128}.get(family)
    if bits is None or source > bits:
        return False
    address = value[4:]
    if len(address) * 8 < source or len(address) * 8 >= source + 8:
        return False
    padded = int.from_bytes(address + bytes(bits // 8 - len(address)), "big")
    return padded & ((1 << (bits - source)) - 1) == 0


@st.composite
def valid_ecs(draw: st.DrawFn) -> bytes:
    """A client subnet option body RFC 7871 accepts: family 1 or 2, the address bytes the
    source prefix needs, no bits set past it; any scope (a query should send 0)."""
    family = draw(st.sampled_from([1, 2]))
    bits = 32 if family == 1 else 128
    source = draw(st.integers(0, bits))
    size = (source + 7) // 8
    address = bytearray(draw(st.binary(min_size=size, max_size=size)))
    if size:
        address[-1] &= (0xFF << (8 - (source - (size - 1) * 8))) & 0xFF
    return struct.pack("!HBB", family, source, draw(st.sampled_from([0, 0, 24]))) + bytes(address)


@st.composite
def broken_ecs(draw: st.DrawFn) -> bytes:
    """Mostly invalid client subnet bodies: random family, prefix, scope, address length,
    and bits set past the prefix."""
    family = draw(st.one_of(st.sampled_from([1, 2]), st.integers(0, 65535)))
    bits = {1: 32, 2: 128}.get(family, 32)
    source = draw(st.one_of(st.integers(0, bits), st.integers(0, 255)))
    if draw(st.booleans()):
        size = (source + 7) // 8
        address = draw(st.binary(min_size=size, max_size=size))
    else:
        address = draw(st.binary(max_size=20))
    return struct.pack("!HBB", family, source, draw(st.integers(0, 255))) + address


def ecs_values() -> st.SearchStrategy[bytes]:
    return st.one_of(valid_ecs(), broken_ecs())


options_st = st.lists(
    st.one_of(
        ecs_values().map(lambda v: (8, v)),
        st.tuples(st.integers(0, 65535), st.binary(max_size=40)),
        st.tuples(st.sampled_from([3, 10, 12, 15]), st.binary(max_size=24)),
    ),
    max_size=3,
)


def make_wire(labels: list[bytes], qtype: int, qclass: int = 1, *, ident: int = 0x1234, flags: int = 0x0100,
              edns: int | None = None, payload: int = 1232, do: bool = False,
              options: list[tuple[int, bytes]] | None = None) -> bytes:
    """A query built by dnspython; ID and flags patched in afterwards (dnspython would
    refuse some of the flag combinations we want)."""
    name = dns.name.Name([*labels, b""])
    if edns is None:
        q = dns.message.make_query(name, qtype, qclass, use_edns=False)
    else:
        q = dns.message.make_query(name, qtype, qclass, use_edns=edns, payload=payload, want_dnssec=do,
                                   options=[dns.edns.GenericOption(code, data) for code, data in options or []])
    wire = q.to_wire()
    return struct.pack("!HH", ident, flags) + wire[4:]


@st.composite
def queries(draw: st.DrawFn) -> tuple[bytes, dict]:
    """A well-formed query and what it is made of."""
    labels = draw(names())
    qtype = draw(st.one_of(st.sampled_from(COMMON_TYPES), st.integers(0, 65535)))
    qclass = draw(st.one_of(st.sampled_from([1, 1, 1, 3, 254, 255]), st.integers(0, 65535)))
    flags = draw(st.one_of(st.sampled_from([0x0000, 0x0100, 0x0110, 0x0130]),
                           st.integers(0, 0xFFFF).map(lambda f: f & ~FLAG_QR)))
    use_edns = draw(st.booleans())
    info = {"labels": labels, "qtype": qtype, "qclass": qclass, "flags": flags, "edns": None, "options": []}
    if use_edns:
        version = draw(st.one_of(st.just(0), st.integers(0, 255)))
        payload = draw(st.one_of(st.sampled_from([0, 512, 1232, 4096, 65535]), st.integers(0, 65535)))
        options = draw(options_st)
        info.update(edns=version, options=options)
        wire = make_wire(labels, qtype, qclass, ident=draw(st.integers(0, 65535)), flags=flags, edns=version,
                         payload=payload, do=draw(st.booleans()), options=options)
    else:
        wire = make_wire(labels, qtype, qclass, ident=draw(st.integers(0, 65535)), flags=flags)
    return wire, info


def expected_rcodes(info: dict) -> set[int]:
    """Rcodes an unmutated query may get, in the order the checks apply."""
    ecs = [value for code, value in info["options"] if code == 8]
    if info["edns"]:
        return {BADVERS}  # before the options, whose meaning depends on the version
    if info["edns"] is not None and (len(ecs) > 1 or not all(ecs_valid(v) for v in ecs)):
        return {FORMERR}
    opcode = (info["flags"] >> 11) & 0xF
    if opcode:
        return {REFUSED} if opcode == 4 else {NOTIMP}
    if info["qtype"] in META:
        return {FORMERR}
    return {NOERROR, NXDOMAIN, REFUSED, NOTIMP, NOTAUTH}


# --------------------------------------------------------------------------- 1. arbitrary bytes


@props(500)
@given(st.binary(max_size=600))
@example(b"")
@example(bytes(12))
@example(b"\x00\x00\x80\x00" + bytes(8))
def test_arbitrary_bytes(data: bytes) -> None:
    check_all(data, fresh())


@st.composite
def query_shaped_noise(draw: st.DrawFn) -> bytes:
    """A header with QR clear, one question and small counts, then noise: reaches the
    question and record parsers far more often than plain bytes."""
    flags = draw(st.integers(0, 0xFFFF)) & ~FLAG_QR
    an, ns, ar = (draw(st.sampled_from([0, 0, 1, 2, 65535])) for _ in range(3))
    body = draw(st.one_of(st.binary(max_size=300),
                          st.tuples(names().map(wire_name), st.binary(max_size=40)).map(b"".join)))
    return struct.pack("!6H", draw(st.integers(0, 65535)), flags, 1, an, ns, ar) + body


@props(400)
@given(query_shaped_noise())
def test_query_shaped_noise(data: bytes) -> None:
    check_all(data, fresh())


# --------------------------------------------------------------------------- 2. mutated valid queries

mutation_st = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("dup_opt")),
    st.tuples(st.just("count"), st.integers(0, 4), st.one_of(st.sampled_from([0, 1, 2, 3, 65535]),
                                                            st.integers(0, 65535))),
)


def mutate(wire: bytes, opt_at: int | None, mutations: list[tuple]) -> bytes:
    b = bytearray(wire)
    for m in mutations:
        kind = m[0]
        if kind == "flip" and b:
            b[m[1] % len(b)] ^= 1 << m[2]
        elif kind == "truncate":
            del b[m[1] % (len(b) + 1) :]
        elif kind == "append":
            b += m[1]
        elif kind == "dup_opt" and opt_at is not None and opt_at < len(b) and len(b) >= 12:
            b += b[opt_at:]
            struct.pack_into("!H", b, 10, (struct.unpack_from("!H", b, 10)[0] + 1) & 0xFFFF)
        elif kind == "count" and len(b) >= 12:
            struct.pack_into("!H", b, 4 + 2 * (m[1] % 4), m[2])
    return bytes(b)


@props(700)
@given(queries(), st.lists(mutation_st, max_size=3))
@example((make_wire(APP, T_A, edns=0), {"labels": APP, "edns": 0}), [("dup_opt",)])
# Found by this property (fixed in 0edd0df): AXFR messages were built on dnslib's
# DNSHeader, whose rd defaults to 1, so RD was set even when the query cleared it
# (0000 0000 0001 0000 0000 0000 04gslb07example03com00 00fc 0001 over TCP: flags 0x8500,
# expected 0x8400) ...
@example((make_wire(ZONE, T_AXFR, ident=0, flags=0), {**PLAIN, "labels": ZONE, "qtype": T_AXFR, "flags": 0}), [])
# ... and an AXFR with an OPT got messages without one (RFC 6891 6.1.1).
@example((make_wire(ZONE, T_AXFR, edns=0), {**PLAIN, "labels": ZONE, "qtype": T_AXFR, "edns": 0}), [])
def test_mutated_queries(query: tuple[bytes, dict], mutations: list[tuple]) -> None:
    wire, info = query
    opt_at = 12 + len(wire_name(info["labels"])) + 4 if info.get("edns") is not None else None
    packet = mutate(wire, opt_at, mutations)
    handler = fresh()
    reply = check_all(packet, handler)
    if not mutations:
        assert reply is not None
        assert rcode_of(reply) in expected_rcodes(info), (dns.rcode.to_text(rcode_of(reply)), info)
        if info["edns"] is not None:
            # RFC 6891 6.1.1: an OPT in the request, an OPT in every response
            for r in [reply, *handler.handle_stream(packet, CLIENT)]:
                assert parse(r).opt is not None, f"no OPT in a reply to an EDNS query: {packet.hex()}"


# --------------------------------------------------------------------------- 3. compression pointers

# Each name element: a label, a pointer (with where it points), a bad label type, or the root.
pointer_target_st = st.one_of(
    st.just(("self", 0)),                                   # to the pointer itself
    st.just(("owner", 0)),                                  # to the start of this owner name
    st.tuples(st.just("forward"), st.integers(1, 60)),       # past the pointer
    st.tuples(st.just("known"), st.integers(0, 1000)),       # to where an earlier name element began
    st.tuples(st.just("back"), st.integers(1, 40)),          # a few bytes back, maybe mid-label
    st.tuples(st.just("abs"), st.integers(0, 0x3FFF)),       # anywhere, header included
)
element_st = st.one_of(
    st.tuples(st.just("label"), st.one_of(st.binary(min_size=1, max_size=8), st.binary(min_size=60, max_size=63))),
    st.tuples(st.just("pointer"), pointer_target_st),
    st.tuples(st.just("badtype"), st.integers(0x40, 0xBF)),
)
record_st = st.tuples(
    st.lists(element_st, min_size=0, max_size=6),
    st.sampled_from(["root", "root", "none"]),              # how the name ends if no pointer ended it
    st.booleans(),                                           # stop the name at the first pointer
    st.sampled_from([T_A, T_TXT, T_NS, 250, 65280]),
    st.binary(max_size=12),                                  # rdata (may itself look like a name)
    st.one_of(st.none(), st.integers(0, 20)),                # a wrong RDLENGTH, sometimes
)


def build_pointer_packet(qlabels: list[bytes], records: list[tuple], sections: list[int], with_opt: bool) -> bytes:
    question = wire_name(qlabels) + struct.pack("!HH", T_A, 1)
    buf = bytearray(bytes(12) + question)
    starts = [12 + sum(len(x) + 1 for x in qlabels[:i]) for i in range(len(qlabels) + 1)]
    for elements, ending, stop_at_pointer, rtype, rdata, bad_rdlen in records:
        owner = len(buf)
        ended = False
        for kind, arg in elements:
            here = len(buf)
            starts.append(here)
            if kind == "label":
                buf += bytes([len(arg)]) + arg
            elif kind == "badtype":
                buf.append(arg)
            else:
                how, n = arg
                target = {"self": here, "owner": owner, "forward": here + n, "back": max(0, here - n),
                          "known": starts[n % len(starts)], "abs": n}[how]
                buf += struct.pack("!H", 0xC000 | (target & 0x3FFF))
                if stop_at_pointer:
                    ended = True
                    break
        if not ended and ending == "root":
            buf.append(0)
        buf += struct.pack("!HHIH", rtype, 1, 0, len(rdata) if bad_rdlen is None else bad_rdlen) + rdata
    ar = sections.count(2) + (1 if with_opt else 0)
    if with_opt:
        buf += b"\x00" + struct.pack("!HHIH", T_OPT, 1232, 0, 0)
    struct.pack_into("!6H", buf, 0, 0xBEEF, 0x0100, 1, sections.count(0), sections.count(1), ar)
    return bytes(buf)


def dnspython_name_end(packet: bytes, offset: int) -> int:
    """Where the name at ``offset`` ends, read by dnspython: pointers must point strictly
    before the name and before every earlier target, names are at most 255 bytes, and
    (dnspython 2.8+) a pointer's target may not run into the name pointing at it and a
    chain has at most 16 pointers."""
    try:
        _, used = dns.name.from_wire(packet, offset)
    except dns.exception.DNSException as exc:
        raise ValueError(exc) from None
    return offset + used


def plain_name_end(packet: bytes, offset: int) -> int:
    """The same reading without dnspython's two extra rules (overlap, 16 pointers): only
    RFC 1035 and the 'backwards only, at most 64 pointers' rule the server documents."""
    lowest, resume, hops, length = offset, -1, 0, 1
    while True:
        if offset >= len(packet):
            raise ValueError("past the end")
        n = packet[offset]
        if n == 0:
            return resume if resume >= 0 else offset + 1
        if n >= 0xC0:
            if offset + 1 >= len(packet):
                raise ValueError("truncated pointer")
            target = ((n & 0x3F) << 8) | packet[offset + 1]
            resume = offset + 2 if resume < 0 else resume
            hops += 1
            if target >= lowest or hops > 64:
                raise ValueError("pointer not backwards")
            offset = lowest = target
        elif n >= 0x40:
            raise ValueError("label type")
        else:
            length += n + 1
            if length > 255:
                raise ValueError("name too long")
            offset += n + 1


def records_accepted(packet: bytes, question_end: int, opt_at: int | None, name_end) -> bool | None:
    """Fixed record fields present, RDATA inside the packet, nothing after the last record.
    None when a misread length makes an OPT record appear somewhere other than where the
    builder put the valid one: EDNS rules, not names, would decide that packet."""
    _, an, ns, ar = counts(packet)
    offset = question_end
    for _ in range(an + ns + ar):
        owner_at = offset
        try:
            offset = name_end(packet, offset)
        except ValueError:
            return False
        if offset + 10 > len(packet):
            return False
        rtype, _, _, rdlen = struct.unpack_from("!HHIH", packet, offset)
        if rtype == T_OPT and owner_at != opt_at:
            return None
        offset += 10 + rdlen
        if offset > len(packet):
            return False
    return offset == len(packet)


def reference_accepts(packet: bytes, question_end: int, opt_at: int | None) -> bool | None:
    """The verdict of a strict reader (dnspython); None (either answer is fine) when only
    dnspython's extra rules reject the packet, or an OPT shows up where it was not put."""
    strict = records_accepted(packet, question_end, opt_at, dnspython_name_end)
    if strict is None or strict:
        return strict
    if records_accepted(packet, question_end, opt_at, plain_name_end) is not False:
        return None
    return False


def _baseline(qlabels: list[bytes], with_opt: bool) -> bytes:
    packet = build_pointer_packet(qlabels, [], [], with_opt)
    reply = fresh().handle(packet, CLIENT)
    assert reply is not None
    return reply


@props(600)
@given(
    names(pool=["app.gslb.example.com", "static.gslb.example.com", "nope.gslb.example.com", "example.org"],
          max_prefix=1),
    st.lists(st.tuples(record_st, st.integers(0, 2)), min_size=1, max_size=4),
    st.booleans(),
)
# a label, then a pointer to the start of the same owner name: a loop
@example(APP,
         [(([("label", b"a"), ("pointer", ("owner", 0))], "root", True, T_A, bytes(4), None), 2)], False)
# a pointer into the header (offset 0): bytes there decode as a (garbage) name
@example(APP,
         [(([("pointer", ("abs", 0))], "root", True, T_A, bytes(4), None), 2)], False)
# a pointer back into the middle of an earlier pointer, whose second byte (0x1d) then
# reads as a 29-byte label running over the name itself: dnspython rejects the overlap,
# RFC 1035 and the server do not (no verdict)
@example(APP, [(([("label", b"\x00")], "root", True, T_A, b"\x00", None), 0),
               (([("label", b"\x00"), ("pointer", ("abs", 0x1D))], "root", True, T_A, bytes(12), None), 0),
               (([("label", b"\x00"), ("pointer", ("abs", 0x37))], "root", True, T_A, b"", None), 0)], False)
# a wrong RDLENGTH makes the reader see an OPT owned by "\\000\\000.": not a names question
@example(APP, [(([], "root", True, T_A, b"\x02\x00\x00\x00", 0), 0)], True)
def test_compression_pointers(qlabels: list[bytes], records: list[tuple], with_opt: bool) -> None:
    ordered = sorted(records, key=lambda r: r[1])
    packet = build_pointer_packet(qlabels, [r[0] for r in ordered], [r[1] for r in ordered], with_opt)
    reply = check_all(packet, fresh())
    assert reply is not None
    question_end = 12 + len(wire_name(qlabels)) + 4
    opt_at = len(packet) - 11 if with_opt else None
    verdict = reference_accepts(packet, question_end, opt_at)
    event(f"reference verdict {verdict}")
    if verdict is None:
        return
    if verdict:
        expected = _baseline(qlabels, with_opt)
        assert reply[2:] == expected[2:], (
            f"a packet a strict reader accepts got {dns.rcode.to_text(rcode_of(reply))}, "
            f"not the normal answer: {packet.hex()}")
    else:
        assert rcode_of(reply) == FORMERR, f"a packet a strict reader rejects was answered: {packet.hex()}"


# --------------------------------------------------------------------------- 4. caches


@st.composite
def cacheable_queries(draw: st.DrawFn) -> tuple[list[bytes], int, dict]:
    labels = draw(names(pool=ZONE_NAMES + ["example.org"], max_prefix=1))
    qtype = draw(st.sampled_from([T_A, T_AAAA, T_ANY, T_MX, T_TXT, T_SRV, T_SOA, T_NS, T_CNAME, T_CAA, 99]))
    kwargs: dict = {"flags": draw(st.sampled_from([0x0000, 0x0100, 0x0110]))}
    if draw(st.booleans()):
        kwargs.update(edns=0, payload=draw(st.integers(0, 65535)), do=draw(st.booleans()),
                      options=draw(st.lists(valid_ecs().map(lambda v: (8, v)), max_size=1)))
    return labels, qtype, kwargs


@props(400)
@given(cacheable_queries(), st.integers(0, 65535), st.integers(1, 65535), st.integers(1, 2**256 - 1))
def test_cache_consistency(query: tuple[list[bytes], int, dict], id1: int, delta: int, mask: int) -> None:
    labels, qtype, kwargs = query
    handler = fresh()
    q1 = make_wire(labels, qtype, ident=id1, **kwargs)
    r1 = handler.handle(q1, CLIENT)
    check_reply(q1, r1)
    assert r1 is not None

    id2 = (id1 + delta) & 0xFFFF
    q2 = struct.pack("!H", id2) + q1[2:]
    r2 = udp_exchange(handler, q2)
    assert r2 is not None and r2[:2] == q2[:2]
    assert r2[2:] == r1[2:], "the second reply (exact cache) differs beyond the ID"
    assert handler.handle(q2, CLIENT) == r2, "the exact cache and the full path disagree"
    entry = handler.exact_udp.get(q1[2:])
    event(f"exact cache {'hit' if entry is not None else 'miss (answer depends on the client)'}")
    if entry is not None:
        assert entry.tail == r1[2:]

    # the same question in another letter case: other exact-cache key, same per-name entry
    variant = recase(labels, mask)
    q3 = make_wire(variant, qtype, ident=id1, **kwargs)
    r3 = udp_exchange(handler, q3)
    m1, m3 = check_reply(q1, r1), check_reply(q3, r3)
    assert m1 is not None and m3 is not None
    assert r3 is not None and len(r3) == len(r1)
    assert (m3.rcode(), m3.flags) == (m1.rcode(), m1.flags)
    for section in ("answer", "authority", "additional"):
        s1, s3 = getattr(m1, section), getattr(m3, section)
        assert s3 == s1, f"{section} differs for a letter-case variant"
        assert [(r.name, r.ttl) for r in s3] == [(r.name, r.ttl) for r in s1]
    assert m3.options == m1.options
    # and a fresh handler agrees with the warmed one for the variant
    assert fresh().handle(q3, CLIENT) == r3
    assert handler.errors == 0


# --------------------------------------------------------------------------- 5. UDP size


def _big_config() -> str:
    lines = [
        "zones:",
        "  big.test:",
        "    nameservers:",
        "      - {name: ns1.big.test, addresses: [192.0.2.1]}",
        "    allow_transfer: [127.0.0.0/8]",
        "    records:",
    ]
    lines += [f"      - {{name: many, type: A, address: 10.0.{i // 250}.{i % 250 + 1}}}" for i in range(60)]
    lines += [f"      - {{name: many, type: AAAA, address: '2001:db8::{i + 1:x}'}}" for i in range(60)]
    lines += ["      - {name: www, type: CNAME, target: many.big.test}"]
    lines += ["      - {name: txt, type: TXT, text: '" + "t" * 900 + "'}"]
    lines += ["      - {name: bigtxt, type: TXT, text: '" + "x" * 3000 + "'}"]
    # an MX set whose additional-section addresses can be dropped
    lines += [f"      - {{name: mx, type: MX, preference: {i}, exchange: mail{i}.big.test}}" for i in range(30)]
    lines += [f"      - {{name: mail{i}.big.test, type: A, address: 10.1.0.{i + 1}}}" for i in range(30)]
    lines += [f"      - {{name: mail{i}.big.test, type: AAAA, address: '2001:db8:1::{i + 1:x}'}}" for i in range(30)]
    # a delegation whose glue must fit (RFC 9471) or the reply is truncated
    lines += [f"      - {{name: sub, type: NS, target: ns{i}.sub.big.test}}" for i in range(25)]
    lines += [f"      - {{name: ns{i}.sub, type: A, address: 10.2.0.{i + 1}}}" for i in range(25)]
    lines += [f"      - {{name: ns{i}.sub, type: AAAA, address: '2001:db8:2::{i + 1:x}'}}" for i in range(25)]
    lines += [
        "sites:",
        "  s1: {lat: 0, lon: 0, country: US, continent: NA}",
        "services:",
        "  pool.big.test:",
        "    policy: {type: weighted}",
        "    endpoints:",
    ]
    lines += [f"      - {{site: s1, ipv4: 10.3.0.{i + 1}, ipv6: '2001:db8:3::{i + 1:x}'}}" for i in range(60)]
    return "\n".join(lines) + "\n"


BIG_SNAPSHOT = build_snapshot(load_config_text(_big_config(), "<big>").compiled)
BIG_NAMES = ["many.big.test", "www.big.test", "txt.big.test", "bigtxt.big.test", "mx.big.test", "big.test",
             "x.sub.big.test", "sub.big.test", "pool.big.test", "nothing.big.test"]


BIG_TYPES = [T_A, T_AAAA, T_ANY, T_TXT, T_MX, T_NS, T_CNAME, T_SOA, T_IXFR, T_AXFR]
# the pairs with the largest answers, drawn half the time
BIG_PAIRS = [("many.big.test", T_A), ("many.big.test", T_AAAA), ("www.big.test", T_AAAA),
             ("txt.big.test", T_TXT), ("bigtxt.big.test", T_TXT), ("mx.big.test", T_MX),
             ("x.sub.big.test", T_A), ("pool.big.test", T_ANY)]
big_query_st = st.one_of(
    st.tuples(names(pool=BIG_NAMES, max_prefix=0), st.sampled_from(BIG_TYPES)),
    st.sampled_from(BIG_PAIRS).flatmap(lambda pair: st.tuples(names(pool=[pair[0]], max_prefix=0),
                                                              st.just(pair[1]))),
)


@props(400)
@given(
    big_query_st,
    st.one_of(st.none(), st.sampled_from([0, 1, 511, 512, 513, 1000, 1231, 1232, 1233, 4096, 65535]),
              st.integers(0, 65535)),
    st.lists(valid_ecs().map(lambda v: (8, v)), max_size=1),
    st.integers(0, 65535),
)
def test_udp_size(query: tuple[list[bytes], int], payload: int | None, options: list, ident: int) -> None:
    labels, qtype = query
    handler = QueryHandler(BIG_SNAPSHOT)
    if payload is None:
        q = make_wire(labels, qtype, ident=ident)
        limit = 512
    else:
        q = make_wire(labels, qtype, ident=ident, edns=0, payload=payload, options=options)
        limit = max(512, min(payload, 1232))
    udp = handler.handle(q, CLIENT)
    msg = check_reply(q, udp)
    assert udp is not None and msg is not None
    assert len(udp) <= limit, f"{len(udp)}-byte UDP reply, limit {limit}"
    assert udp_exchange(handler, q) == udp

    stream = tcp_exchange(handler, q)
    assert stream
    tcp = [dns.message.from_wire(r) for r in stream]
    check_reply(q, stream[0])
    for r in stream:
        check_header(q, r)
    assert not any(m.flags & dns.flags.TC for m in tcp), "TC over TCP"
    if qtype in (T_AXFR, T_IXFR):
        return
    assert len(tcp) == 1
    if msg.flags & dns.flags.TC:
        event("UDP: TC")
        assert not msg.answer and not msg.authority
        assert tcp[0].answer or tcp[0].authority, "truncated over UDP, yet nothing to send over TCP"
    else:
        event("UDP: additional section dropped" if len(msg.additional) < len(tcp[0].additional) else "UDP: whole")
        # not truncated: the same records as over TCP (the additional section may be dropped)
        assert (msg.rcode(), msg.answer, msg.authority) == (tcp[0].rcode(), tcp[0].answer, tcp[0].authority)
    assert handler.errors == 0
