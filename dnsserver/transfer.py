"""Zone transfers (AXFR, RFC 5936) of the static zone data, for clients the zone's ACL allows.

GSLB names are not transferred: their answers depend on health and on the client, so a
secondary serving a copy would answer wrongly.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address

from dnslib import QTYPE, RR, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from dnsserver.wire import COPIED_FLAGS, FLAG_AA, FLAG_QR, ParsedQuery, opt_record
from gslb.compile import ZoneData

MAX_MESSAGE = 16_000  # keeps compression pointers (14 bits) valid and messages small


def transfer_allowed(zone: ZoneData, client: str) -> bool:
    addr: IPv4Address | IPv6Address = ip_address(client.partition("%")[0])
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in zone.allow_transfer)


def zone_records(zone: ZoneData) -> list[RR]:
    """SOA, every other record of the zone in canonical-ish order, SOA again."""
    soa = zone.soa.rrs[0]
    body = [
        rr
        for owner in sorted(zone.nodes, key=lambda n: tuple(reversed(n.split("."))))
        for rtype, rrset in sorted(zone.nodes[owner].items())
        if rtype != QTYPE.SOA
        for rr in rrset.rrs
    ]
    return [soa, *body, soa]


def axfr_messages(zone: ZoneData, query: ParsedQuery, *, udp_size: int = 1232) -> Iterator[bytes]:
    """The transfer as a series of messages, each under ``MAX_MESSAGE`` bytes; each carries
    our OPT when the query had one."""
    records = zone_records(zone)
    opt = b"" if query.edns is None else opt_record(query.edns, udp_size=udp_size)
    first = True
    while records:
        count = len(records)
        while True:
            wire = _message(query, records[:count], with_question=first, opt=opt)
            if len(wire) <= MAX_MESSAGE or count == 1:
                break
            count = max(1, count // 2)
        yield wire
        records = records[count:]
        first = False


def _message(query: ParsedQuery, records: list[RR], *, with_question: bool, opt: bytes) -> bytes:
    questions = [DNSQuestion(DNSLabel(query.labels), query.qtype, query.qclass)] if with_question else []
    wire = bytes(DNSRecord(DNSHeader(id=query.id), questions=questions, rr=records).pack())
    # our own flags (dnslib's header defaults would set RD): QR, AA, RD and CD copied
    flags = FLAG_QR | FLAG_AA | (query.flags & COPIED_FLAGS)
    arcount = int.from_bytes(wire[10:12], "big") + (1 if opt else 0)
    head = wire[:2] + flags.to_bytes(2, "big") + wire[4:10] + arcount.to_bytes(2, "big")
    body = wire[12:]
    if with_question:  # echo the client's letter case
        body = query.qname_wire + body[len(query.qname_wire) :]
    return head + body + opt
