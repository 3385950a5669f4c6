"""Query parsing and the small pieces of reply encoding that do not need a full message.

Parsing is strict and bounded: names are checked for length, compression pointers may only
point backwards and are followed a bounded number of times, every count in the header must
match what follows, and trailing bytes are an error. A problem raises ``WireError`` with the
rcode to answer (FORMERR, NOTIMP, BADVERS) or ``Drop`` when no reply should be sent.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

HEADER = struct.Struct("!6H")
OPT_TYPE = 41
OPTION_ECS = 8
OPCODE_QUERY, OPCODE_NOTIFY = 0, 4
FORMERR, SERVFAIL, NOTIMP, REFUSED, BADVERS = 1, 2, 4, 5, 16
FLAG_QR, FLAG_AA, FLAG_TC, FLAG_RD, FLAG_CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0010
COPIED_FLAGS = FLAG_RD | FLAG_CD
MAX_POINTER_HOPS = 64


class Drop(Exception):
    """The packet gets no reply at all (too short for a header, or itself a response)."""


class WireError(Exception):
    """The query is answered with ``rcode`` and no data."""

    def __init__(self, rcode: int, reason: str, query: ParsedQuery | None = None) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.query = query


@dataclass(frozen=True, slots=True)
class ClientSubnet:
    """An EDNS Client Subnet option (RFC 7871) as the resolver sent it."""

    network: IPv4Network | IPv6Network
    family: int
    source: int
    address: bytes

    def echo(self, scope: int) -> bytes:
        """The option for the reply: the query's family, source and address, our scope."""
        body = struct.pack("!HBB", self.family, self.source, scope) + self.address
        return struct.pack("!HH", OPTION_ECS, len(body)) + body


@dataclass(slots=True)
class Edns:
    udp_size: int
    version: int
    do: bool
    options: list[tuple[int, bytes]] = field(default_factory=list)
    ecs: ClientSubnet | None = None


@dataclass(slots=True)
class ParsedQuery:
    id: int
    flags: int
    qname: str
    qname_wire: bytes
    """The question name exactly as the client sent it (its letter case is echoed)."""
    labels: tuple[bytes, ...]
    qtype: int
    qclass: int
    edns: Edns | None

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


def _label_text(label: bytes) -> str:
    if label.isalnum() or all(c in _PLAIN for c in label):
        return label.decode("ascii")
    return "".join(chr(c) if c in _PLAIN else f"\\{c:03d}" for c in label)


_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_*")


def question_name_end(data: bytes, offset: int) -> int:
    """Offset after an uncompressed name (a question never needs a pointer), validated."""
    end = len(data)
    start = offset
    while True:
        if offset >= end:
            raise WireError(FORMERR, "question name runs past the end of the packet")
        length = data[offset]
        if length == 0:
            if offset + 1 - start > 255:
                raise WireError(FORMERR, "question name longer than 255 bytes")
            return offset + 1
        if length > 63:
            raise WireError(FORMERR, "compression pointer or bad label type in the question")
        offset += length + 1


@functools.lru_cache(maxsize=8192)
def decode_name(wire: bytes) -> tuple[tuple[bytes, ...], str]:
    """Labels and text form of a validated, lowercased wire name (memoised: names repeat)."""
    labels = []
    offset = 0
    while wire[offset]:
        length = wire[offset]
        labels.append(wire[offset + 1 : offset + 1 + length])
        offset += length + 1
    return tuple(labels), ".".join(_label_text(label) for label in labels)


def skip_name(data: bytes, offset: int) -> int:
    """Offset after a possibly compressed name, validating every pointer on the way."""
    end = len(data)
    hops = 0
    total = 1
    resume = -1
    lowest = offset
    while True:
        if offset >= end:
            raise WireError(FORMERR, "name runs past the end of the packet")
        length = data[offset]
        if length == 0:
            return resume if resume >= 0 else offset + 1
        kind = length & 0xC0
        if kind == 0xC0:
            if offset + 1 >= end:
                raise WireError(FORMERR, "truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[offset + 1]
            if resume < 0:
                resume = offset + 2
            if target >= lowest:
                raise WireError(FORMERR, "compression pointer does not point backwards")
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise WireError(FORMERR, "too many compression pointers")
            offset = lowest = target
            continue
        if kind:
            raise WireError(FORMERR, "unknown label type")
        total += length + 1
        if total > 255:
            raise WireError(FORMERR, "name longer than 255 bytes")
        offset += length + 1


def parse_query(data: bytes) -> ParsedQuery:
    if len(data) < 12:
        raise Drop("shorter than a DNS header")
    ident, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & FLAG_QR:
        raise Drop("a response, not a query")
    if qdcount != 1:
        rcode = FORMERR if (flags >> 11) & 0xF == OPCODE_QUERY else NOTIMP
        raise WireError(rcode, f"QDCOUNT is {qdcount}, expected 1")
    offset = question_name_end(data, 12)
    end = len(data)
    if offset + 4 > end:
        raise WireError(FORMERR, "question type and class missing")
    qtype, qclass = struct.unpack_from("!HH", data, offset)
    qname_wire = data[12:offset]
    offset += 4
    labels, qname = decode_name(qname_wire.lower())
    query = ParsedQuery(ident, flags, qname, qname_wire, labels, qtype, qclass, None)
    if not ancount and not nscount and arcount == 1 and data[offset : offset + 3] == b"\x00\x00\x29":
        # the usual shape: one OPT at the root, nothing else
        if offset + 11 > end:
            raise WireError(FORMERR, "truncated OPT record", query)
        udp_size, ttl, rdlen = struct.unpack_from("!HIH", data, offset + 3)
        if offset + 11 + rdlen != end:
            raise WireError(FORMERR, "OPT record length does not match the packet", query)
        query.edns = _parse_opt(data, udp_size, ttl, offset + 11, end, query)
        if query.edns.version > 0:
            raise WireError(BADVERS, f"EDNS version {query.edns.version}", query)
        return query
    for section, count in (("answer", ancount), ("authority", nscount), ("additional", arcount)):
        for _ in range(count):
            owner_at = offset
            offset = skip_name(data, offset)
            if offset + 10 > end:
                raise WireError(FORMERR, f"truncated record in the {section} section", query)
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, offset)
            rdata_start = offset + 10
            offset = rdata_start + rdlen
            if offset > end:
                raise WireError(FORMERR, f"record data runs past the end in the {section} section", query)
            if rtype == OPT_TYPE:
                if section != "additional" or data[owner_at] != 0:
                    raise WireError(FORMERR, "OPT record outside the additional section or not at the root",
                                    query)
                if query.edns is not None:
                    raise WireError(FORMERR, "more than one OPT record", query)
                query.edns = _parse_opt(data, rclass, ttl, rdata_start, offset, query)
    if offset != end:
        raise WireError(FORMERR, f"{end - offset} bytes after the last record", query)
    if query.edns is not None and query.edns.version > 0:
        raise WireError(BADVERS, f"EDNS version {query.edns.version}", query)
    return query


def _parse_opt(data: bytes, udp_size: int, ttl: int, start: int, end: int, query: ParsedQuery) -> Edns:
    options = []
    offset = start
    while offset < end:
        if offset + 4 > end:
            raise WireError(FORMERR, "truncated EDNS option header", query)
        code, length = struct.unpack_from("!HH", data, offset)
        offset += 4
        if offset + length > end:
            raise WireError(FORMERR, "EDNS option runs past its record", query)
        options.append((code, data[offset : offset + length]))
        offset += length
    edns = Edns(max(udp_size, 512), (ttl >> 16) & 0xFF, bool(ttl & 0x8000), options)
    query.edns = edns  # an error below still answers with OPT (RFC 6891 6.1.1)
    if edns.version > 0:
        return edns  # BADVERS (RFC 6891 6.1.3): options of a version we lack mean nothing to us
    for code, value in options:
        if code == OPTION_ECS:
            if edns.ecs is not None:
                raise WireError(FORMERR, "more than one client subnet option", query)
            edns.ecs = parse_client_subnet(value, query)
    return edns


def parse_client_subnet(value: bytes, query: ParsedQuery | None = None) -> ClientSubnet:
    """Validate an ECS option as RFC 7871 section 6 asks: known family, source within the
    address size, exactly the address bytes the source needs, no bits set past the source."""
    if len(value) < 4:
        raise WireError(FORMERR, "client subnet option shorter than 4 bytes", query)
    family, source, _scope = struct.unpack_from("!HBB", value)
    address = value[4:]
    if family == 1:
        size = 4
    elif family == 2:
        size = 16
    else:
        raise WireError(FORMERR, f"client subnet family {family} is not IPv4 (1) or IPv6 (2)", query)
    if source > size * 8:
        raise WireError(FORMERR, f"client subnet source prefix {source} is longer than the address", query)
    if len(address) != (source + 7) // 8:
        raise WireError(FORMERR, "client subnet address length does not match its source prefix", query)
    full = address + bytes(size - len(address))
    value_int = int.from_bytes(full, "big")
    if value_int & ((1 << (size * 8 - source)) - 1):
        raise WireError(FORMERR, "client subnet address has bits set past its source prefix", query)
    network = (IPv4Network if size == 4 else IPv6Network)((value_int, source))
    return ClientSubnet(network, family, source, address)


def opt_record(edns: Edns, *, udp_size: int, rcode: int = 0, options: bytes = b"") -> bytes:
    """Our OPT: our UDP size, the upper rcode bits, version 0, DO echoed, unknown flags cleared."""
    flags = 0x8000 if edns.do else 0
    return (
        b"\x00\x00\x29"
        + struct.pack("!HBBHH", udp_size, rcode >> 4, 0, flags, len(options))
        + options
    )


def header_only_reply(data: bytes, rcode: int, query: ParsedQuery | None, udp_size: int) -> bytes:
    """A reply carrying only an rcode: header, the question when it parsed, OPT when sent."""
    ident, flags = struct.unpack_from("!HH", data)
    reply_flags = FLAG_QR | (flags & (0x7800 | COPIED_FLAGS)) | (rcode & 0xF)
    if query is None:
        return struct.pack("!6H", ident, reply_flags, 0, 0, 0, 0)
    opt = b"" if query.edns is None else opt_record(query.edns, udp_size=udp_size, rcode=rcode)
    return (
        struct.pack("!6H", ident, reply_flags, 1, 0, 0, 1 if opt else 0)
        + query.qname_wire
        + struct.pack("!HH", query.qtype, query.qclass)
        + opt
    )
