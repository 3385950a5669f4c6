"""Answers to bytes: encode once per (name, type), then patch per query.

``prepare`` packs an ``Answer`` with dnslib (name compression included) into the sections
that follow the question. ``build_reply`` then only writes a header, copies the client's
question bytes (so its letter case is echoed; compression pointers into the question stay
valid because the length is the same) and appends OPT. Truncation picks the largest form
that fits: everything, everything but the additional section, or TC=1 with no records.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import RR, DNSBuffer, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from dnsserver.wire import COPIED_FLAGS, FLAG_AA, FLAG_QR, FLAG_TC, ParsedQuery, opt_record
from gslb.resolve import Answer

Section = tuple[int, int, int, bytes]
_COUNTS = struct.Struct("!6H")
_QTAIL = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class Prepared:
    flags: int
    full: Section
    reduced: Section | None
    """Without the additional section; None when it may not be dropped (referral glue)."""


def _pack(labels: tuple[bytes, ...], qtype: int, qclass: int, answer: Answer, additional: bool) -> Section:
    record = DNSRecord(
        DNSHeader(id=0),
        q=DNSQuestion(DNSLabel(labels), qtype, qclass),
        rr=list(answer.answer),
        auth=list(answer.authority),
        ar=list(answer.additional) if additional else [],
    )
    wire = record.pack()
    qlen = sum(len(lb) + 1 for lb in labels) + 1 + 4
    ar = len(answer.additional) if additional else 0
    return (len(answer.answer), len(answer.authority), ar, bytes(wire[12 + qlen :]))


def prepare(answer: Answer, labels: tuple[bytes, ...], qtype: int, qclass: int) -> Prepared:
    flags = FLAG_QR | (FLAG_AA if answer.authoritative else 0) | (answer.rcode & 0xF)
    full = _pack(labels, qtype, qclass, answer, True)
    if not answer.additional:
        reduced: Section | None = full
    elif answer.glue_required:
        reduced = None
    else:
        reduced = _pack(labels, qtype, qclass, answer, False)
    return Prepared(flags, full, reduced)


class _PlainBuffer(DNSBuffer):  # type: ignore[misc]
    """Writes names uncompressed, so packed rdata can be placed anywhere in a message."""

    def encode_name(self, name: object) -> None:
        self.encode_name_nocompress(name)


def plain_rdata(rr: RR) -> bytes:
    buffer = _PlainBuffer()
    rr.rdata.pack(buffer)
    return bytes(buffer.data)


def prepare_negative(answer: Answer, labels: tuple[bytes, ...], soa_rdata: bytes) -> Prepared:
    """NXDOMAIN/NODATA with only the SOA in authority, without a general encoder: the SOA's
    owner (the apex) is a pointer into the question, its rdata packed once per zone. This is
    the reply a random-subdomain flood asks for, so it must stay cheap."""
    soa = answer.authority[0]
    apex_labels = len(soa.rname.label)
    prefix = sum(len(label) + 1 for label in labels[: len(labels) - apex_labels])
    body = (struct.pack("!HHHIH", 0xC000 | (12 + prefix), soa.rtype, soa.rclass, soa.ttl, len(soa_rdata))
            + soa_rdata)
    flags = FLAG_QR | (FLAG_AA if answer.authoritative else 0) | (answer.rcode & 0xF)
    section = (0, 1, 0, body)
    return Prepared(flags, section, section)


def is_plain_negative(answer: Answer) -> bool:
    return (not answer.answer and not answer.additional and len(answer.authority) == 1
            and answer.authority[0].rtype == 6)


def build_reply(prepared: Prepared, query: ParsedQuery, *, max_size: int | None, udp_size: int,
                scope: int = 0) -> bytes:
    """The reply to ``query``; ``max_size`` is the UDP limit, None over TCP; ``scope`` is the
    ECS scope prefix to report when the query carried a client subnet."""
    edns = query.edns
    if edns is None:
        opt = b""
    else:
        options = b"" if edns.ecs is None else edns.ecs.echo(scope)
        opt = opt_record(edns, udp_size=udp_size, options=options)
    question = query.qname_wire + _QTAIL.pack(query.qtype, query.qclass)
    an, ns, ar, body = prepared.full
    tc = 0
    if max_size is not None:
        room = max_size - 12 - len(question) - len(opt)
        if len(body) > room:
            reduced = prepared.reduced
            if reduced is not None and len(reduced[3]) <= room:
                an, ns, ar, body = reduced
            else:
                an, ns, ar, body, tc = 0, 0, 0, b"", FLAG_TC
    flags = prepared.flags | tc | (query.flags & COPIED_FLAGS)
    header = _COUNTS.pack(query.id, flags, 1, an, ns, ar + (1 if opt else 0))
    return header + question + body + opt
