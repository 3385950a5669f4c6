"""Property-based tests of ``QueryHandler`` as the transports drive it, on the rich config of
tests/fuzz/oracle.py (GSLB names with geo and ECS, CNAME chains and loops, delegations with
glue, big RRsets, transfer ACLs), from resolvers GeoIP knows, does not know, and that the
transfer ACLs let in or not.

test_wire_properties.py holds the parser's properties on the example config; here every
packet goes through ``oracle.check``: UDP (exact cache, then ``handle``) and TCP (exact
cache, then ``handle_stream``), through a fresh handler and a warmed one; every reply read
by dnspython, with the query's ID, QR set, within the client's UDP limit (512 without EDNS,
else max(512, min(offered, 1232))), OPT and client subnet echoed, and the rcode that an
independent reading of the packet expects. The generators aim where parsers break (bit
flips, inserted and deleted bytes, every truncation, huge counts, pointer loops and chains,
broken OPT records and client subnets), and each crafted defect also gets the rcode it must.

The examples are derandomized and the database is off, so each run checks the same inputs;
``GSLB_HYPOTHESIS_SCALE=N`` multiplies every example count for a long run.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from dnsserver.handler import QueryHandler
from dnsserver.wire import MAX_POINTER_HOPS
from tests.fuzz import oracle

SCALE = int(os.environ.get("GSLB_HYPOTHESIS_SCALE", "1"))
SNAPSHOT = oracle.rich_snapshot()
WARM = QueryHandler(SNAPSHOT)  # sees every packet of every property
NOERROR, FORMERR, BADVERS = 0, 1, 16
T_A, T_NS, T_CNAME, T_SOA, T_MX, T_TXT, T_AAAA, T_SRV, T_OPT = 1, 2, 5, 6, 15, 16, 28, 33, 41
T_IXFR, T_AXFR, T_ANY = 251, 252, 255
TYPES = [T_A, T_NS, T_CNAME, T_SOA, T_MX, T_TXT, T_AAAA, T_SRV, T_ANY, T_AXFR, T_IXFR, 257, 99, 0, 65535]


def props(n: int) -> settings:
    return settings(max_examples=n * SCALE, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def run(packet: bytes, client: str) -> bytes | None:
    """``packet`` through the oracle: raises on any broken invariant; the UDP reply."""
    reply = oracle.check(packet, client, WARM, QueryHandler(SNAPSHOT))
    event("no reply" if reply is None else f"rcode {rcode(reply)}")
    return reply


def rcode(reply: bytes | None) -> int:
    assert reply is not None
    return int(oracle.parse_reply(reply).rcode())


# --------------------------------------------------------------------------- building queries


@dataclass(frozen=True)
class Opt:
    payload: int = 1232
    version: int = 0
    do: bool = False
    options: tuple[tuple[int, bytes], ...] = ()
    owner: bytes = b"\x00"

    def rdata(self) -> bytes:
        return b"".join(struct.pack("!HH", code, len(value)) + value for code, value in self.options)

    def wire(self, rdata: bytes | None = None, rdlen: int | None = None) -> bytes:
        """The record; ``rdata`` and ``rdlen`` replace the options and their length."""
        rdata = self.rdata() if rdata is None else rdata
        ttl = (self.version << 16) | (0x8000 if self.do else 0)
        return self.owner + struct.pack("!HHIH", T_OPT, self.payload, ttl,
                                        len(rdata) if rdlen is None else rdlen) + rdata


@dataclass(frozen=True)
class Query:
    labels: tuple[bytes, ...]
    qtype: int = T_A
    qclass: int = 1
    ident: int = 0x1234
    flags: int = 0x0100
    opt: Opt | None = None
    extra: tuple[bytes, ...] = field(default=())
    """Records placed in the additional section before the OPT."""

    def question(self) -> bytes:
        return wire_name(self.labels) + struct.pack("!HH", self.qtype, self.qclass)

    def wire(self) -> bytes:
        ar = len(self.extra) + (self.opt is not None)
        tail = b"".join(self.extra) + (self.opt.wire() if self.opt is not None else b"")
        return struct.pack("!6H", self.ident, self.flags, 1, 0, 0, ar) + self.question() + tail


def wire_name(labels: tuple[bytes, ...]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def recase(label: bytes, mask: int) -> bytes:
    return bytes(c ^ 0x20 if chr(c).isalpha() and c < 128 and mask >> (i % 64) & 1 else c
                 for i, c in enumerate(label))


@st.composite
def names(draw: st.DrawFn, pool: list[str] | None = None) -> tuple[bytes, ...]:
    base = draw(st.sampled_from(pool or oracle.NAMES))
    labels = [p.encode() for p in base.split(".") if p]
    if draw(st.integers(0, 3)) == 0:
        prefix = draw(st.lists(st.one_of(st.sampled_from([b"x", b"*", b"www", b"_tcp"]),
                                         st.binary(min_size=1, max_size=63)), min_size=1, max_size=3))
        labels = prefix + labels
    while sum(len(label) + 1 for label in labels) + 1 > 255:
        labels = labels[1:]
    mask = draw(st.integers(0, 2**64 - 1))
    return tuple(recase(label, mask >> i) for i, label in enumerate(labels))


def valid_ecs(family: int, source: int, address: bytes, scope: int = 0) -> bytes:
    """A client subnet option body: ``address`` cut to the bytes ``source`` needs, bits past it cleared."""
    size = (source + 7) // 8
    raw = bytearray(address[:size])
    if source % 8:
        raw[-1] &= 0xFF << (8 - source % 8) & 0xFF
    return struct.pack("!HBB", family, source, scope) + bytes(raw)


@st.composite
def ecs_options(draw: st.DrawFn) -> bytes:
    """Valid client subnets, mostly inside the GeoIP test database's fixture networks."""
    family, address, top = draw(st.sampled_from([
        (1, bytes([81, 2, 69, 160]), 32), (1, bytes([216, 160, 83, 56]), 32), (1, bytes([175, 16, 199, 1]), 32),
        (2, bytes.fromhex("20010218") + bytes(12), 128), (1, bytes([10, 0, 0, 1]), 32)]))
    if draw(st.booleans()):
        address = draw(st.binary(min_size=len(address), max_size=len(address)))
    return valid_ecs(family, draw(st.integers(0, top)), address)


options_st = st.tuples(
    st.lists(st.tuples(st.sampled_from([10, 12, 3, 15, 65001]), st.binary(max_size=24)), max_size=2),
    st.one_of(st.none(), ecs_options()),
).map(lambda parts: tuple(parts[0]) + (((8, parts[1]),) if parts[1] is not None else ()))


@st.composite
def opts(draw: st.DrawFn) -> Opt:
    payload = draw(st.one_of(st.sampled_from([0, 1, 511, 512, 1232, 1233, 4096, 65535]), st.integers(0, 65535)))
    return Opt(payload=payload, do=draw(st.booleans()), options=draw(options_st))


@st.composite
def queries(draw: st.DrawFn, pool: list[str] | None = None) -> Query:
    """A well-formed QUERY for the rich config (or a name near it), EDNS half the time."""
    return Query(
        labels=draw(names(pool)),
        qtype=draw(st.one_of(st.sampled_from(TYPES), st.integers(0, 65535))),
        qclass=draw(st.sampled_from([1, 1, 1, 1, 3, 255, 254, 0])),
        ident=draw(st.integers(0, 65535)),
        flags=draw(st.sampled_from([0x0000, 0x0100, 0x0110, 0x0010, 0x0500, 0x0120])),
        opt=draw(st.one_of(st.none(), opts())),
    )


clients = st.sampled_from(oracle.CLIENTS)


# --------------------------------------------------------------------------- noise and mutations


@props(150)
@given(st.binary(max_size=300), clients)
@example(b"", "127.0.0.1")
@example(bytes(12), "127.0.0.1")
@example(b"\xff" * 12, "127.0.0.1")
def test_random_bytes(data: bytes, client: str) -> None:
    run(data, client)


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 4095), st.integers(0, 7)),
    st.tuples(st.just("insert"), st.integers(0, 4095), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 4095), st.integers(1, 8)),
    st.tuples(st.just("count"), st.integers(0, 3), st.sampled_from([0, 2, 3, 255, 0x7FFF, 0xFFFF])),
    st.tuples(st.just("truncate"), st.integers(0, 4095)),
)


def mutate(packet: bytes, mutations: list[tuple]) -> bytes:
    b = bytearray(packet)
    for kind, at, *args in mutations:
        if kind == "flip" and b:
            b[at % len(b)] ^= 1 << args[0]
        elif kind == "insert":
            b[at % (len(b) + 1) : at % (len(b) + 1)] = args[0]
        elif kind == "delete" and b:
            del b[at % len(b) : at % len(b) + args[0]]
        elif kind == "count" and len(b) >= 12:
            struct.pack_into("!H", b, 4 + 2 * at, args[0])
        elif kind == "truncate":
            del b[at % (len(b) + 1) :]
    return bytes(b)


@props(250)
@given(queries(), st.lists(mutation, min_size=1, max_size=4), clients)
def test_mutated_queries(query: Query, mutations: list[tuple], client: str) -> None:
    run(mutate(query.wire(), mutations), client)


@props(25)
@given(queries(), clients)
def test_truncated_at_every_offset(query: Query, client: str) -> None:
    """Every proper prefix of a query: no reply without a whole header, else FORMERR (the
    header announces more than follows)."""
    packet = query.wire()
    for n in range(len(packet)):
        reply = run(packet[:n], client)
        if n < 12:
            assert reply is None
        else:
            assert rcode(reply) == FORMERR, f"{packet[:n].hex()} got {rcode(reply)}"


@props(100)
@given(queries(), st.integers(0, 3), st.one_of(st.sampled_from([0xFFFF, 0x8000, 2]), st.integers(2, 0xFFFF)),
       clients)
def test_huge_counts(query: Query, which: int, count: int, client: str) -> None:
    """A count larger than what follows (or a second question) is FORMERR, at once: the
    parser stops at the first record that is not there."""
    b = bytearray(replace(query, flags=query.flags & ~0x7800).wire())
    present = struct.unpack_from("!H", b, 4 + 2 * which)[0]
    struct.pack_into("!H", b, 4 + 2 * which, max(count, present + 1))
    assert rcode(run(bytes(b), client)) == FORMERR


# --------------------------------------------------------------------------- compression pointers


def _base(query: Query, client: str) -> bytes:
    reply = QueryHandler(SNAPSHOT).handle(query.wire(), client)
    assert reply is not None
    return reply


def pointer(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def chain_records(query: Query, hops: int) -> tuple[bytes, ...]:
    """A NULL record at the root whose RDATA is ``hops - 1`` pointers, each to the one before
    (the first to the question name), then an A record owned by a pointer to the last: a
    name reached through ``hops`` pointers in a row."""
    start = 12 + len(query.question()) + 11  # first pointer, after the NULL record's fixed part
    links = [pointer(12)] + [pointer(start + 2 * i) for i in range(hops - 2)]
    rdata = b"".join(links)
    null = b"\x00" + struct.pack("!HHIH", 10, 1, 0, len(rdata)) + rdata
    owner = pointer(start + 2 * (len(links) - 1))
    return null, owner + struct.pack("!HHIH", T_A, 1, 0, 4) + bytes(4)


@props(60)
@given(queries(pool=["app.fuzz.test", "host.fuzz.test", "nothere.fuzz.test", "example.org"]),
       st.integers(2, MAX_POINTER_HOPS + 8), clients)
@example(Query((b"app", b"fuzz", b"test")), MAX_POINTER_HOPS, "127.0.0.1")
@example(Query((b"app", b"fuzz", b"test")), MAX_POINTER_HOPS + 1, "127.0.0.1")
def test_pointer_chains(query: Query, hops: int, client: str) -> None:
    """An owner name reached through a chain of backward pointers (0xC0 0x..): up to the
    documented limit it reads as the question's name, and the record (ignored) changes
    nothing; past it, FORMERR."""
    query = replace(query, qtype=T_A, qclass=1, flags=0x0100)
    reply = run(replace(query, extra=chain_records(query, hops)).wire(), client)
    if hops <= MAX_POINTER_HOPS:
        assert reply == _base(query, client), f"{hops} pointers in a row changed the answer"
    else:
        assert rcode(reply) == FORMERR


BAD_OWNERS = ["self", "loop", "cycle", "forward", "beyond", "label-forward", "unknown-type", "runs-off"]


def bad_owner_record(kind: str, at: int, size: int) -> bytes:
    """An additional record at offset ``at`` whose owner name no reader can finish: a pointer
    to itself, a label then a pointer back to the label (a loop), two pointers to each other,
    a pointer forward into the record's own RDATA (which holds a valid name), one past the
    end of the packet, an unknown label type, a label running past the end."""
    fixed = struct.pack("!HHIH", T_TXT, 1, 0, 5) + b"\x03foo\x00"
    if kind == "self":
        return pointer(at) + fixed
    if kind == "loop":
        return b"\x01a" + pointer(at) + fixed
    if kind == "cycle":
        return pointer(at + 2) + pointer(at) + fixed
    if kind == "forward":
        return pointer(at + 2 + 10) + fixed
    if kind == "beyond":
        return pointer(min(0x3FFF, at + size + 64)) + fixed
    if kind == "label-forward":
        return b"\x01a" + pointer(at + 4) + fixed
    if kind == "unknown-type":
        return b"\x41abc" + fixed
    return b"\x3fab"  # runs-off: a 63-byte label with two bytes, then the packet ends


@props(80)
@given(queries(pool=["app.fuzz.test", "www.fuzz.test", "example.org"]), st.sampled_from(BAD_OWNERS),
       st.booleans(), clients)
def test_bad_owner_names(query: Query, kind: str, with_opt: bool, client: str) -> None:
    with_opt = with_opt and kind != "runs-off"  # that name must be the last thing in the packet
    query = replace(query, flags=query.flags & ~0x7800, opt=query.opt if with_opt else None)
    at = 12 + len(query.question())
    packet = replace(query, extra=(bad_owner_record(kind, at, len(query.wire()) + 16),)).wire()
    assert rcode(run(packet, client)) == FORMERR, kind


@props(40)
@given(queries(), st.integers(0, 11), st.booleans(), clients)
def test_pointer_in_question(query: Query, target: int, after_label: bool, client: str) -> None:
    """A question name never needs a pointer; one is FORMERR (even to a name in the header)."""
    query = replace(query, flags=query.flags & ~0x7800)
    name = (b"\x03app" if after_label else b"") + pointer(target)
    packet = query.wire()
    qlen = len(wire_name(query.labels))
    assert rcode(run(packet[:12] + name + packet[12 + qlen :], client)) == FORMERR


# --------------------------------------------------------------------------- EDNS


ECS_V4, ECS_V6 = bytes([81, 2, 69, 160]), bytes.fromhex("20010218") + bytes(12)


@st.composite
def broken_ecs(draw: st.DrawFn) -> tuple[str, bytes]:
    """An ECS option body that RFC 7871 section 6 rejects, and how it is broken."""
    kind = draw(st.sampled_from(["family", "source", "long", "short", "bits", "tiny"]))
    family = draw(st.sampled_from([1, 2]))
    bits = 32 if family == 1 else 128
    address = ECS_V4 if family == 1 else ECS_V6
    if kind == "family":
        fam = draw(st.integers(0, 65535).filter(lambda f: f not in (1, 2)))
        return kind, struct.pack("!HBB", fam, 24, 0) + address[:3]
    if kind == "source":  # 33+ for IPv4, 129+ for IPv6
        source = draw(st.integers(bits + 1, 255))
        return kind, struct.pack("!HBB", family, source, 0) + address + bytes(draw(st.integers(0, 20)))
    if kind == "long":  # more address bytes than the source needs
        source = draw(st.integers(0, bits - 1))
        extra = draw(st.integers(1, 8))
        return kind, valid_ecs(family, source, address) + bytes(extra)
    if kind == "short":
        source = draw(st.integers(1, bits))
        body = valid_ecs(family, source, address)
        return kind, body[: len(body) - draw(st.integers(1, (source + 7) // 8))]
    if kind == "bits":  # a bit set past the source prefix, inside the last address byte
        source = draw(st.integers(1, bits - 1).filter(lambda s: s % 8))
        body = bytearray(valid_ecs(family, source, address))
        body[-1] |= 1 << draw(st.integers(0, 7 - source % 8))
        return kind, bytes(body)
    return kind, bytes(draw(st.integers(0, 3)))  # tiny: shorter than family, source and scope


@props(120)
@given(queries(), broken_ecs(), st.booleans(), clients)
def test_broken_client_subnet(query: Query, ecs: tuple[str, bytes], first: bool, client: str) -> None:
    """A client subnet option RFC 7871 section 6 rejects is FORMERR, with our OPT: unknown
    family, source prefix longer than the family (33+ for IPv4, 129+ for IPv6), address
    bytes more or fewer than the source needs, bits set past the source, too short."""
    kind, body = ecs
    event(f"ECS broken: {kind}")
    others = tuple(o for o in (query.opt.options if query.opt else ()) if o[0] != 8)
    options = ((8, body), *others) if first else (*others, (8, body))
    packet = replace(query, flags=query.flags & ~0x7800, opt=replace(query.opt or Opt(), options=options)).wire()
    reply = run(packet, client)
    assert rcode(reply) == FORMERR, kind
    assert oracle.parse_reply(reply or b"").opt is not None, "no OPT in the FORMERR for a bad client subnet"


EDNS_DEFECTS = ["truncated-fixed", "rdlen-long", "trailing", "option-header", "option-long", "two-ecs",
                "two-opt", "opt-in-answer", "opt-in-authority", "opt-owner"]


@props(150)
@given(queries(), st.sampled_from(EDNS_DEFECTS), st.integers(1, 10), clients)
def test_broken_opt(query: Query, defect: str, n: int, client: str) -> None:
    """OPT records a server must answer FORMERR: cut short, RDLENGTH wrong, options that do
    not tile the RDATA, two client subnets, two OPTs, OPT outside the additional section or
    not at the root."""
    event(defect)
    opt = replace(query.opt or Opt(), version=0)
    query = replace(query, flags=query.flags & ~0x7800, opt=opt)
    head, question = query.wire()[:12], query.question()
    good = opt.wire()
    rdata = opt.rdata()
    body = {
        "truncated-fixed": lambda: good[: 1 + n % 10],  # the owner and 0..9 of the 10 fixed bytes
        "rdlen-long": lambda: opt.wire(rdlen=len(rdata) + n),
        "trailing": lambda: opt.wire() + bytes(n),  # bytes after the OPT's RDATA
        "option-header": lambda: opt.wire(rdata + bytes(1 + n % 3)),
        "option-long": lambda: opt.wire(rdata + struct.pack("!HH", 65001, 10 + n) + bytes(10)),
        "two-ecs": lambda: replace(opt, options=((8, valid_ecs(1, 24, ECS_V4)),) * 2).wire(),
        "two-opt": lambda: good + good,
        "opt-owner": lambda: replace(opt, owner=b"\x01x\x00").wire(),
    }
    counts = (1, 0, 0, 2 if defect == "two-opt" else 1)
    if defect in ("opt-in-answer", "opt-in-authority"):
        tail = good
        counts = (1, 1, 0, 0) if defect == "opt-in-answer" else (1, 0, 1, 0)
    else:
        tail = body[defect]()
    packet = head[:4] + struct.pack("!4H", *counts) + question + tail
    assert rcode(run(packet, client)) == FORMERR, defect


@props(100)
@given(queries(), st.integers(1, 255), st.one_of(st.none(), broken_ecs().map(lambda kb: kb[1])), clients)
# Found by the atheris target: version 0x13 with a client subnet shorter than its source
# (40 bits) needs got FORMERR; RFC 6891 6.1.3 asks for BADVERS, without reading the
# options of a version we do not know.
@example(Query((b"pool", b"fuzz", b"test"), ident=0x5E72, flags=0x0110, opt=Opt(0x0200, 0x13, True)),
         0x13, bytes.fromhex("00022800ba010218"), "81.2.69.160")
def test_edns_version(query: Query, version: int, ecs: bytes | None, client: str) -> None:
    """An OPT of any version but 0 gets BADVERS with our OPT (version 0), whatever its
    options say."""
    options = (query.opt.options if query.opt else ()) + (((8, ecs),) if ecs is not None else ())
    opt = replace(query.opt or Opt(), version=version, options=options)
    reply = run(replace(query, flags=query.flags & ~0x7800, opt=opt).wire(), client)
    assert rcode(reply) == BADVERS
    msg = oracle.parse_reply(reply or b"")
    assert msg.opt is not None and msg.edns == 0


# --------------------------------------------------------------------------- sizes, transfers


BIG = ["pool.fuzz.test", "many.fuzz.test", "bigtxt.fuzz.test", "mx.fuzz.test", "fuzz.test", "x.bigsub.fuzz.test",
       "txt.fuzz.test", "chain1.fuzz.test", "x.sub.fuzz.test", "app.fuzz.test"]


@props(150)
@given(queries(pool=BIG), st.sampled_from([T_A, T_AAAA, T_ANY, T_TXT, T_MX, T_NS]),
       st.one_of(st.none(), st.sampled_from([0, 1, 100, 511, 512, 513, 1000, 1232, 1233, 4096, 65535]),
                 st.integers(0, 65535)), clients)
def test_udp_limits(query: Query, qtype: int, payload: int | None, client: str) -> None:
    """Big answers against every offered size (below 512 too): the UDP reply fits the
    client's limit, and unless truncated holds what TCP holds (the additional section
    may go)."""
    opt = None if payload is None else replace(query.opt or Opt(), payload=payload)
    query = replace(query, qtype=qtype, qclass=1, flags=query.flags & ~0x7800, opt=opt)
    packet = query.wire()
    udp = run(packet, client)
    want = 512 if opt is None else max(512, min(opt.payload, 1232))
    assert udp is not None and len(udp) <= want
    tcp = QueryHandler(SNAPSHOT).handle_stream(packet, client)
    u, t = oracle.parse_reply(udp), oracle.parse_reply(tcp[0])
    if u.flags & oracle.TC:
        event("truncated")
        assert t.answer or t.authority, "truncated over UDP, yet nothing to send over TCP"
    else:
        event("whole" if len(u.additional) == len(t.additional) else "additional section dropped")
        assert (u.rcode(), u.answer, u.authority) == (t.rcode(), t.answer, t.authority)


ZONE_NAMES = ["fuzz.test", "other.test", "inner.fuzz.test", "sub.fuzz.test", "www.fuzz.test", "example.org", ""]


@props(120)
@given(queries(pool=ZONE_NAMES), st.sampled_from([T_AXFR, T_IXFR]), st.sampled_from([1, 1, 1, 3, 255, 0, 0x41]),
       clients)
# Found by the atheris target: an AXFR of other.test in class 0x41 from a client its ACL
# allows was answered over TCP with the class IN zone; now NOTAUTH.
@example(Query((b"other", b"test"), ident=0x0424, flags=0x0100), T_AXFR, 0x41, "10.1.2.3")
def test_transfers(query: Query, qtype: int, qclass: int, client: str) -> None:
    """AXFR and IXFR of zones, non-apex names and names outside them, in several classes,
    from clients inside and outside each ACL: the oracle knows each verdict; a transfer
    over TCP is framed by the SOA and carries OPT in every message when asked with OPT."""
    query = replace(query, qtype=qtype, qclass=qclass, flags=query.flags & ~0x7800)
    packet = query.wire()
    run(packet, client)
    stream = QueryHandler(SNAPSHOT).handle_stream(packet, client)
    msgs = [oracle.parse_reply(m) for m in stream]
    event(f"{'AXFR' if qtype == T_AXFR else 'IXFR'} over TCP: rcode {msgs[0].rcode()}, {len(msgs)} messages")
    if msgs[0].rcode() == NOERROR:
        assert qclass == 1
        assert all((m.opt is not None) == (query.opt is not None) for m in msgs), "OPT not in every message"
