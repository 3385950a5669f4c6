"""Authoritative DNS semantics, end to end: real sockets to a real node.

Two nodes: the example config (``example_node`` from conftest, on 127.0.0.1 and ::1) and
``sem_node``, a config written below with the awkward zone content the example lacks
(a sub-delegation with glue, empty non-terminals, CNAME chains and loops, big RRsets, an
AXFR ACL that excludes 127.0.0.1, a zone whose SOA TTL is below its negative TTL).

"No reply" is checked without timing: the bad packet is followed on the same socket by a
sentinel query, and the first thing that comes back must be the sentinel's answer.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
import yaml

from tests.support.dnswire import frame, read_frame
from tests.support.servers import EXAMPLE, ThreadedNode, threaded_node

TIMEOUT = 3.0
TRANSPORTS = pytest.mark.parametrize("transport", ["udp", "tcp"])
NOTAUTH = 9
A, NS, CNAME, SOA, MX, TXT, AAAA, SRV, DS, IXFR, AXFR, ANY = (
    dns.rdatatype.A, dns.rdatatype.NS, dns.rdatatype.CNAME, dns.rdatatype.SOA, dns.rdatatype.MX,
    dns.rdatatype.TXT, dns.rdatatype.AAAA, dns.rdatatype.SRV, dns.rdatatype.DS, dns.rdatatype.IXFR,
    dns.rdatatype.AXFR, dns.rdatatype.ANY,
)

MANY = [f"198.51.100.{i}" for i in range(1, 41)]  # 40 A records: ~680 bytes, > 512, < 1232
MEDIUM = [f"203.0.113.{i}" for i in range(1, 21)]  # 20 A records: ~360 bytes, < 512
BIG_TEXT = "".join(chr(ord("a") + i % 26) for i in range(2000))  # one TXT > 1232 bytes
_BULK = "".join(f"      - {{name: many, type: A, address: {a}}}\n" for a in MANY) + "".join(
    f"      - {{name: medium, type: A, address: {a}}}\n" for a in MEDIUM)

SEM_CONFIG = f"""
zones:
  sem.test:
    ttl: 300
    negative_ttl: 60
    soa: {{rname: hostmaster@sem.test}}
    nameservers:
      - {{name: ns1.sem.test, addresses: [192.0.2.1]}}
      - {{name: ns.elsewhere.example}}
    allow_transfer: ["10.0.0.0/8", "2001:db8::/32"]
    records:
      - {{name: host, type: A, address: 192.0.2.10}}
      - {{name: host, type: AAAA, address: "2001:db8::10"}}
      - {{name: www, type: CNAME, target: host.sem.test}}
      - {{name: chain1, type: CNAME, target: chain2.sem.test}}
      - {{name: chain2, type: CNAME, target: www.sem.test}}
      - {{name: dangling, type: CNAME, target: nothere.sem.test}}
      - {{name: away, type: CNAME, target: www.example.org}}
      - {{name: loop1, type: CNAME, target: loop2.sem.test}}
      - {{name: loop2, type: CNAME, target: loop1.sem.test}}
      - {{name: self, type: CNAME, target: self.sem.test}}
      - {{name: _https._tcp.svc, type: SRV, priority: 1, weight: 1, port: 443, target: host.sem.test}}
      - {{name: leaf.a.b.c, type: A, address: 192.0.2.11}}
      - {{name: sub, type: NS, target: ns1.sub.sem.test}}
      - {{name: sub, type: NS, target: ns2.sub.sem.test}}
      - {{name: sub, type: NS, target: ns.elsewhere.example}}
      - {{name: ns1.sub, type: A, address: 192.0.2.101}}
      - {{name: ns2.sub, type: AAAA, address: "2001:db8::102"}}
      - {{name: big, type: TXT, text: {BIG_TEXT}}}
{_BULK}  lowsoa.test:
    ttl: 300
    negative_ttl: 600
    soa: {{ttl: 30}}
    nameservers:
      - {{name: ns1.sem.test}}
    records:
      - {{name: host, type: A, address: 192.0.2.50}}
"""


@pytest.fixture(scope="module")
def sem_node() -> Iterator[ThreadedNode]:
    with threaded_node(SEM_CONFIG) as node:
        yield node


# --------------------------------------------------------------------------- helpers


def exchange(addr: tuple[str, int], q: dns.message.Message, transport: str) -> dns.message.Message:
    host, port = addr
    if transport == "udp":
        return dns.query.udp(q, host, port=port, timeout=TIMEOUT)
    return dns.query.tcp(q, host, port=port, timeout=TIMEOUT)


def ask(node: ThreadedNode, qname: str, rdtype: str | int = "A", transport: str = "udp",
        **kwargs: object) -> dns.message.Message:
    return exchange(node.addresses[0], dns.message.make_query(qname, rdtype, **kwargs), transport)


def udp_wire(addr: tuple[str, int], wire: bytes) -> bytes:
    """Send one datagram, return the raw reply (to look at its exact size)."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(addr)
        s.send(wire)
        return s.recv(65535)


def header(ident: int, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!6H", ident, flags, qd, an, ns, ar)


def question(name: str, qtype: int = 1, qclass: int = 1) -> bytes:
    return dns.name.from_text(name).to_wire() + struct.pack("!HH", qtype, qclass)


SENTINEL_Q = question("sentinel.invalid.")


def raw_exchange(addr: tuple[str, int], transport: str, packet: bytes, max_replies: int = 4) -> list[bytes]:
    """Send ``packet`` and then a sentinel query on the same socket; return every reply that
    came before the sentinel's (so an empty list means: no reply to ``packet``)."""
    ident = 0x5EED if packet[:2] != b"\x5e\xed" else 0x5EEE
    probe = header(ident) + SENTINEL_Q
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    replies: list[bytes] = []
    if transport == "udp":
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(TIMEOUT)
            s.connect(addr)
            s.send(packet)
            s.send(probe)
            for _ in range(max_replies):
                data = s.recv(65535)
                if _answers(data, probe):
                    return replies
                replies.append(data)
    else:
        with socket.create_connection(addr, timeout=TIMEOUT) as s:
            s.sendall(frame(packet) + frame(probe))
            for _ in range(max_replies):
                data = read_frame(s)
                if _answers(data, probe):
                    return replies
                replies.append(data)
    raise AssertionError(f"the sentinel query was never answered; got {replies!r}")


def _answers(reply: bytes, query: bytes) -> bool:
    return (len(reply) >= 12 and reply[:2] == query[:2] and bool(reply[2] & 0x80)
            and reply[12 : 12 + len(SENTINEL_Q)] == query[12:])


def rcode_of(reply: bytes) -> int:
    return reply[3] & 0xF


def counts(reply: bytes) -> tuple[int, int, int, int]:
    return struct.unpack_from("!4H", reply, 4)  # type: ignore[return-value]


def rrset_of(msg: dns.message.Message, section: str, rdtype: int) -> list[dns.rrset.RRset]:
    return [rr for rr in getattr(msg, section) if rr.rdtype == rdtype]


def texts(rrset: dns.rrset.RRset) -> set[str]:
    """Rdata as lower-case text (names in rdata may be compressed against the question and
    so carry the client's letter case, which DNS allows)."""
    return {rd.to_text().lower() for rd in rrset}


def answer_summary(msg: dns.message.Message) -> list[tuple[str, str, frozenset[str]]]:
    return [(rr.name.to_text().lower(), dns.rdatatype.to_text(rr.rdtype), frozenset(texts(rr))) for rr in msg.answer]


def aa(msg: dns.message.Message) -> bool:
    return bool(msg.flags & dns.flags.AA)


def assert_negative(msg: dns.message.Message, rcode: int, apex: str, ttl: int) -> None:
    assert msg.rcode() == rcode, dns.rcode.to_text(msg.rcode())
    assert aa(msg)
    soas = rrset_of(msg, "authority", SOA)
    assert len(soas) == 1 and len(msg.authority) == 1, msg.authority
    assert soas[0].name == dns.name.from_text(apex)
    assert soas[0].ttl == ttl


APP_ADDRS = {"192.0.2.10", "192.0.2.20", "192.0.2.30"}


# --------------------------------------------------------------------------- header flags


@TRANSPORTS
def test_aa_set_on_in_zone_answer(example_node, transport):
    r = ask(example_node, "app.gslb.example.com", "A", transport)
    assert r.rcode() == dns.rcode.NOERROR
    assert aa(r)
    assert r.flags & dns.flags.QR


@TRANSPORTS
def test_ra_clear(example_node, transport):
    r = ask(example_node, "app.gslb.example.com", "A", transport)
    assert not r.flags & dns.flags.RA


@TRANSPORTS
@pytest.mark.parametrize("rd", [True, False])
def test_rd_copied(example_node, transport, rd):
    q = dns.message.make_query("static.gslb.example.com", "A", flags=dns.flags.RD if rd else 0)
    r = exchange(example_node.addresses[0], q, transport)
    assert bool(r.flags & dns.flags.RD) == rd
    assert r.rcode() == dns.rcode.NOERROR and aa(r)


@TRANSPORTS
@pytest.mark.parametrize("cd", [True, False])
def test_cd_copied(example_node, transport, cd):
    q = dns.message.make_query("static.gslb.example.com", "A")
    if cd:
        q.flags |= dns.flags.CD
    r = exchange(example_node.addresses[0], q, transport)
    assert bool(r.flags & dns.flags.CD) == cd
    assert r.rcode() == dns.rcode.NOERROR


@TRANSPORTS
def test_question_echoed_with_client_letter_case(example_node, transport):
    q = dns.message.make_query("ApP.GsLb.ExAmPlE.CoM", "A")
    r = exchange(example_node.addresses[0], q, transport)
    assert r.rcode() == dns.rcode.NOERROR and aa(r)
    assert len(r.question) == 1
    assert r.question[0].name.labels == (b"ApP", b"GsLb", b"ExAmPlE", b"CoM", b"")
    assert {rd.address for rrset in rrset_of(r, "answer", A) for rd in rrset} == APP_ADDRS


@TRANSPORTS
def test_mixed_case_after_lower_case_still_echoes_case(example_node, transport):
    """The per-name answer cache must not leak the first client's spelling to the next."""
    ask(example_node, "static.gslb.example.com", "AAAA", transport)
    q = dns.message.make_query("STATIC.gslb.EXAMPLE.com", "AAAA")
    r = exchange(example_node.addresses[0], q, transport)
    assert r.question[0].name.labels[:3] == (b"STATIC", b"gslb", b"EXAMPLE")
    assert {rd.address for rrset in r.answer for rd in rrset} == {"2001:db8::80"}


# --------------------------------------------------------------------------- apex, NS, glue, referrals


@TRANSPORTS
def test_soa_at_apex(example_node, transport):
    r = ask(example_node, "gslb.example.com", "SOA", transport)
    assert r.rcode() == dns.rcode.NOERROR and aa(r)
    (soa,) = rrset_of(r, "answer", SOA)
    assert len(r.answer) == 1 and len(soa) == 1
    rd = soa[0]
    assert soa.ttl == 300
    assert rd.mname == dns.name.from_text("ns1.gslb.example.com")
    assert rd.rname == dns.name.from_text("hostmaster.example.com")
    assert (rd.refresh, rd.retry, rd.expire, rd.minimum) == (3600, 900, 1209600, 60)


@TRANSPORTS
def test_ns_at_apex(example_node, transport):
    r = ask(example_node, "gslb.example.com", "NS", transport)
    assert r.rcode() == dns.rcode.NOERROR and aa(r)
    (ns,) = rrset_of(r, "answer", NS)
    assert len(r.answer) == 1
    assert texts(ns) == {"ns1.gslb.example.com.", "ns2.gslb.example.com."}


@TRANSPORTS
def test_ns_query_has_glue_for_in_zone_nameservers(example_node, transport):
    r = ask(example_node, "gslb.example.com", "NS", transport)
    glue = {(rr.name.to_text(), rd.address) for rr in rrset_of(r, "additional", A) for rd in rr}
    assert glue == {("ns1.gslb.example.com.", "192.0.2.53"), ("ns2.gslb.example.com.", "198.51.100.53")}


@TRANSPORTS
def test_ns_query_glue_only_for_in_zone_nameserver(sem_node, transport):
    r = ask(sem_node, "sem.test", "NS", transport)
    (ns,) = rrset_of(r, "answer", NS)
    assert texts(ns) == {"ns1.sem.test.", "ns.elsewhere.example."}
    addresses = {(rr.name.to_text(), rd.address) for rr in r.additional for rd in rr}
    assert addresses == {("ns1.sem.test.", "192.0.2.1")}


def assert_sub_referral(r: dns.message.Message) -> None:
    assert r.rcode() == dns.rcode.NOERROR
    assert not aa(r), "a referral is not authoritative"
    assert r.answer == []
    (ns,) = r.authority
    assert ns.rdtype == NS and ns.name == dns.name.from_text("sub.sem.test")
    assert texts(ns) == {"ns1.sub.sem.test.", "ns2.sub.sem.test.", "ns.elsewhere.example."}
    glue = {(rr.name.to_text().lower(), dns.rdatatype.to_text(rr.rdtype), rd.address)
            for rr in r.additional for rd in rr}
    assert glue == {("ns1.sub.sem.test.", "A", "192.0.2.101"), ("ns2.sub.sem.test.", "AAAA", "2001:db8::102")}


@TRANSPORTS
def test_referral_at_delegation_point(sem_node, transport):
    assert_sub_referral(ask(sem_node, "sub.sem.test", "A", transport))


@TRANSPORTS
@pytest.mark.parametrize("qname,qtype", [
    ("www.sub.sem.test", "A"),
    ("deep.below.the.cut.sub.sem.test", "AAAA"),
    ("ns1.sub.sem.test", "A"),  # the glue name itself is below the cut
    ("x.sub.sem.test", "DS"),  # DS below the cut belongs to the child
    ("Www.SUB.sem.test", "MX"),
])
def test_referral_for_names_below_the_cut(sem_node, transport, qname, qtype):
    assert_sub_referral(ask(sem_node, qname, qtype, transport))


@TRANSPORTS
def test_ns_query_at_cut_is_a_referral(sem_node, transport):
    assert_sub_referral(ask(sem_node, "sub.sem.test", "NS", transport))


@TRANSPORTS
def test_ds_at_cut_answered_from_parent_side(sem_node, transport):
    r = ask(sem_node, "sub.sem.test", "DS", transport)
    assert r.answer == []
    assert_negative(r, dns.rcode.NOERROR, "sem.test", 60)


# --------------------------------------------------------------------------- negative answers


@TRANSPORTS
def test_nxdomain_with_soa_negative_ttl(example_node, transport):
    r = ask(example_node, "nope.gslb.example.com", "A", transport)
    assert r.answer == []
    assert_negative(r, dns.rcode.NXDOMAIN, "gslb.example.com", 60)  # min(300, 60)
    assert rrset_of(r, "authority", SOA)[0][0].minimum == 60


@TRANSPORTS
def test_nodata_with_soa_negative_ttl(example_node, transport):
    r = ask(example_node, "mail.gslb.example.com", "AAAA", transport)
    assert r.answer == []
    assert_negative(r, dns.rcode.NOERROR, "gslb.example.com", 60)


@TRANSPORTS
def test_nodata_at_gslb_name_for_other_type(example_node, transport):
    r = ask(example_node, "app.gslb.example.com", "MX", transport)
    assert r.answer == []
    assert_negative(r, dns.rcode.NOERROR, "gslb.example.com", 60)


@TRANSPORTS
def test_nxdomain_below_existing_leaf(example_node, transport):
    r = ask(example_node, "x.mail.gslb.example.com", "A", transport)
    assert_negative(r, dns.rcode.NXDOMAIN, "gslb.example.com", 60)


@TRANSPORTS
@pytest.mark.parametrize("qname,rcode", [("nothing.lowsoa.test", dns.rcode.NXDOMAIN),
                                         ("host.lowsoa.test", dns.rcode.NOERROR)])
def test_negative_ttl_is_soa_ttl_when_lower(sem_node, transport, qname, rcode):
    r = ask(sem_node, qname, "TXT", transport)
    assert r.answer == []
    assert_negative(r, rcode, "lowsoa.test", 30)  # min(soa ttl 30, negative_ttl 600)
    assert rrset_of(r, "authority", SOA)[0][0].minimum == 600


@TRANSPORTS
def test_empty_non_terminal_under_gslb_name_is_nodata(example_node, transport):
    r = ask(example_node, "_tcp.app.gslb.example.com", "A", transport)
    assert r.answer == []
    assert_negative(r, dns.rcode.NOERROR, "gslb.example.com", 60)
    srv = ask(example_node, "_https._tcp.app.gslb.example.com", "SRV", transport)
    assert texts(rrset_of(srv, "answer", SRV)[0]) == {"10 5 443 app.gslb.example.com."}


@TRANSPORTS
@pytest.mark.parametrize("qname", ["c.sem.test", "b.c.sem.test", "a.b.c.sem.test", "svc.sem.test",
                                   "_tcp.svc.sem.test"])
def test_empty_non_terminals_are_nodata(sem_node, transport, qname):
    r = ask(sem_node, qname, "A", transport)
    assert r.answer == []
    assert_negative(r, dns.rcode.NOERROR, "sem.test", 60)


@TRANSPORTS
def test_nonexistent_name_below_empty_non_terminal_is_nxdomain(sem_node, transport):
    r = ask(sem_node, "zzz.a.b.c.sem.test", "A", transport)
    assert_negative(r, dns.rcode.NXDOMAIN, "sem.test", 60)


# --------------------------------------------------------------------------- CNAME


@TRANSPORTS
def test_cname_to_gslb_name_includes_target_records(example_node, transport):
    r = ask(example_node, "www.gslb.example.com", "A", transport)
    assert r.rcode() == dns.rcode.NOERROR and aa(r)
    (cname,) = rrset_of(r, "answer", CNAME)
    assert cname.name == dns.name.from_text("www.gslb.example.com")
    assert texts(cname) == {"app.gslb.example.com."}
    (a,) = rrset_of(r, "answer", A)
    assert a.name == dns.name.from_text("app.gslb.example.com")
    assert texts(a) == APP_ADDRS
    assert [rr.rdtype for rr in r.answer] == [CNAME, A]  # CNAME first


@TRANSPORTS
def test_cname_chain_followed_inside_zone(sem_node, transport):
    r = ask(sem_node, "chain1.sem.test", "AAAA", transport)
    assert r.rcode() == dns.rcode.NOERROR and aa(r)
    assert answer_summary(r) == [
        ("chain1.sem.test.", "CNAME", frozenset({"chain2.sem.test."})),
        ("chain2.sem.test.", "CNAME", frozenset({"www.sem.test."})),
        ("www.sem.test.", "CNAME", frozenset({"host.sem.test."})),
        ("host.sem.test.", "AAAA", frozenset({"2001:db8::10"})),
    ]


@TRANSPORTS
def test_cname_to_target_without_that_type_is_nodata_with_chain(sem_node, transport):
    r = ask(sem_node, "www.sem.test", "MX", transport)
    assert answer_summary(r) == [("www.sem.test.", "CNAME", frozenset({"host.sem.test."}))]
    assert_negative(r, dns.rcode.NOERROR, "sem.test", 60)


@TRANSPORTS
def test_cname_to_nonexistent_in_zone_name_is_nxdomain(sem_node, transport):
    r = ask(sem_node, "dangling.sem.test", "A", transport)
    assert answer_summary(r) == [("dangling.sem.test.", "CNAME", frozenset({"nothere.sem.test."}))]
    assert_negative(r, dns.rcode.NXDOMAIN, "sem.test", 60)


@TRANSPORTS
def test_cname_to_out_of_zone_name_stops_at_cname(sem_node, transport):
    r = ask(sem_node, "away.sem.test", "A", transport)
    assert r.rcode() == dns.rcode.NOERROR and aa(r)
    assert answer_summary(r) == [("away.sem.test.", "CNAME", frozenset({"www.example.org."}))]
    assert r.authority == []


@TRANSPORTS
@pytest.mark.parametrize("qname,chain", [
    ("loop1.sem.test", ["loop1.sem.test.", "loop2.sem.test."]),
    ("loop2.sem.test", ["loop2.sem.test.", "loop1.sem.test."]),
    ("self.sem.test", ["self.sem.test."]),
])
def test_cname_loop_terminates(sem_node, transport, qname, chain):
    r = ask(sem_node, qname, "A", transport)
    assert r.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(r.rcode())
    assert all(rr.rdtype == CNAME for rr in r.answer)
    assert [rr.name.to_text() for rr in r.answer] == chain


@TRANSPORTS
def test_qtype_cname_at_cname_returns_just_the_cname(sem_node, transport):
    r = ask(sem_node, "www.sem.test", "CNAME", transport)
    assert r.rcode() == dns.rcode.NOERROR and aa(r)
    assert answer_summary(r) == [("www.sem.test.", "CNAME", frozenset({"host.sem.test."}))]
    assert r.authority == []


@TRANSPORTS
def test_qtype_cname_at_example_www(example_node, transport):
    r = ask(example_node, "www.gslb.example.com", "CNAME", transport)
    assert answer_summary(r) == [("www.gslb.example.com.", "CNAME", frozenset({"app.gslb.example.com."}))]


@TRANSPORTS
@pytest.mark.parametrize("labels,rcode", [
    ((b"x.mail", b"gslb", b"example", b"com"), dns.rcode.NXDOMAIN),
    ((b"static.gslb", b"example", b"com"), dns.rcode.REFUSED),
    ((b"gslb.example.com",), dns.rcode.REFUSED),
    ((b"static\\", b"gslb", b"example", b"com"), dns.rcode.NXDOMAIN),
], ids=["dot-in-leaf-label", "dot-joins-labels", "one-label", "backslash"])
def test_dot_inside_a_label_is_not_a_separator(example_node, transport, labels, rcode):
    q = dns.message.make_query(dns.name.Name([*labels, b""]), "A")
    r = exchange(example_node.addresses[0], q, transport)
    assert r.rcode() == rcode, dns.rcode.to_text(r.rcode())
    assert r.answer == []
    assert r.question[0].name.labels == (*labels, b"")


# --------------------------------------------------------------------------- rcodes and opcodes


@TRANSPORTS
@pytest.mark.parametrize("qname", ["example.org", "com", "example.com", "xgslb.example.com", "."])
def test_refused_outside_every_zone(example_node, transport, qname):
    r = ask(example_node, qname, "A", transport)
    assert r.rcode() == dns.rcode.REFUSED
    assert not aa(r)
    assert r.answer == [] and r.authority == []


@TRANSPORTS
@pytest.mark.parametrize("opcode", [15, 5, 3, 6])
def test_unknown_opcode_notimp(example_node, transport, opcode):
    packet = header(0x1234, (opcode << 11) | 0x0100) + question("gslb.example.com.", SOA)
    (reply,) = raw_exchange(example_node.addresses[0], transport, packet)
    assert reply[:2] == b"\x12\x34"
    flags = struct.unpack_from("!H", reply, 2)[0]
    assert flags & 0x8000
    assert (flags >> 11) & 0xF == opcode
    assert rcode_of(reply) == dns.rcode.NOTIMP


@TRANSPORTS
def test_notify_refused(example_node, transport):
    packet = header(0x2345, (4 << 11) | 0x0400, qd=1) + question("gslb.example.com.", SOA)
    (reply,) = raw_exchange(example_node.addresses[0], transport, packet)
    assert reply[:2] == b"\x23\x45"
    assert (reply[2] >> 3) & 0xF == 4
    assert rcode_of(reply) == dns.rcode.REFUSED


@TRANSPORTS
def test_qdcount_zero_formerr(example_node, transport):
    (reply,) = raw_exchange(example_node.addresses[0], transport, header(0x3456, qd=0))
    assert reply[:2] == b"\x34\x56" and reply[2] & 0x80
    assert rcode_of(reply) == dns.rcode.FORMERR
    dns.message.from_wire(reply)  # well-formed


@TRANSPORTS
def test_qdcount_two_formerr(example_node, transport):
    packet = header(0x4567, qd=2) + question("app.gslb.example.com.") + question("static.gslb.example.com.")
    (reply,) = raw_exchange(example_node.addresses[0], transport, packet)
    assert reply[:2] == b"\x45\x67" and reply[2] & 0x80
    assert rcode_of(reply) == dns.rcode.FORMERR
    dns.message.from_wire(reply)


@TRANSPORTS
@pytest.mark.parametrize("body", [
    b"\x03app\x04gslb",  # name runs off the end
    b"\x03app\x04gslb\x07example\x03com\x00\x00",  # type and class cut short
    b"\x03app\xc0\x0c\x00\x01\x00\x01",  # compression pointer in the question
    b"\x45" + b"a" * 69 + b"\x00\x00\x01\x00\x01",  # extended label type
], ids=["name-past-end", "short-type-class", "pointer", "label-type"])
def test_malformed_question_formerr(example_node, transport, body):
    (reply,) = raw_exchange(example_node.addresses[0], transport, header(0x5678) + body)
    assert reply[:2] == b"\x56\x78" and reply[2] & 0x80
    assert rcode_of(reply) == dns.rcode.FORMERR
    dns.message.from_wire(reply)


@TRANSPORTS
@pytest.mark.parametrize("length", [0, 1, 2, 11])
def test_short_packet_gets_no_reply(example_node, transport, length):
    packet = (header(0x6789) + question("app.gslb.example.com."))[:length]
    assert raw_exchange(example_node.addresses[0], transport, packet) == []
    r = ask(example_node, "app.gslb.example.com", "A", transport)
    assert texts(r.answer[0]) == APP_ADDRS


@TRANSPORTS
def test_response_packet_gets_no_reply(example_node, transport):
    packet = header(0x789A, 0x8000 | 0x0100) + question("app.gslb.example.com.")
    assert raw_exchange(example_node.addresses[0], transport, packet) == []
    r = ask(example_node, "app.gslb.example.com", "A", transport)
    assert texts(r.answer[0]) == APP_ADDRS


# --------------------------------------------------------------------------- zone transfers


def expected_zone_records(config_path: Path, apex: str) -> set[tuple[dns.name.Name, int, int, dns.rdata.Rdata]]:
    """Every static record of ``apex`` as the config spells it (NS + glue from 'nameservers')."""
    zone = yaml.safe_load(config_path.read_text())["zones"][apex]
    ttl = zone.get("ttl", 300)
    origin = dns.name.from_text(apex)

    def owner(name: str) -> dns.name.Name:
        if name == "@":
            return origin
        return dns.name.from_text(name, None if name.endswith(".") else origin)

    def rdata(rtype: str, text: str) -> dns.rdata.Rdata:
        return dns.rdata.from_text(dns.rdataclass.IN, rtype, text)

    out = set()
    for ns in zone["nameservers"]:
        out.add((origin, NS, ttl, rdata("NS", ns["name"] + ".")))
        for addr in ns.get("addresses", []):
            rtype = "AAAA" if ":" in str(addr) else "A"
            out.add((dns.name.from_text(ns["name"]), dns.rdatatype.from_text(rtype), ttl, rdata(rtype, str(addr))))
    for rec in zone.get("records", []):
        t = rec["type"]
        if t in ("A", "AAAA"):
            text = str(rec["address"])
        elif t in ("CNAME", "NS"):
            text = rec["target"] + "."
        elif t == "MX":
            text = f"{rec['preference']} {rec['exchange']}."
        elif t == "TXT":
            strings = [rec["text"]] if isinstance(rec["text"], str) else rec["text"]
            text = " ".join(f'"{s}"' for s in strings)
        elif t == "SRV":
            text = f"{rec['priority']} {rec['weight']} {rec['port']} {rec['target']}."
        elif t == "CAA":
            text = f"{rec.get('flags', 0)} {rec['tag']} \"{rec['value']}\""
        else:
            raise AssertionError(t)
        out.add((owner(rec["name"]), dns.rdatatype.from_text(t), rec.get("ttl", ttl), rdata(t, text)))
    return out


def axfr(addr: tuple[str, int], zone: str, ident: int = 0x1A1A) -> list[dns.message.Message]:
    """All messages of an AXFR over TCP, until the closing SOA (or an error rcode)."""
    q = dns.message.make_query(zone, "AXFR")
    q.id = ident
    messages = []
    soas = 0
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(addr)
        s.sendall(frame(q.to_wire()))
        for _ in range(1000):
            msg = dns.message.from_wire(read_frame(s), one_rr_per_rrset=True)
            messages.append(msg)
            soas += sum(1 for rr in msg.answer if rr.rdtype == SOA)
            if msg.rcode() != dns.rcode.NOERROR or soas >= 2:
                return messages
    raise AssertionError("AXFR did not end within 1000 messages")


@pytest.mark.parametrize("host_index", [0, 1], ids=["ipv4", "ipv6"])
def test_axfr_allowed_returns_soa_first_last_and_every_static_record(example_node, host_index):
    messages = axfr(example_node.addresses[host_index], "gslb.example.com")
    for msg in messages:
        assert msg.id == 0x1A1A
        assert msg.rcode() == dns.rcode.NOERROR
        assert aa(msg)
    assert messages[0].question[0].name == dns.name.from_text("gslb.example.com")
    assert messages[0].question[0].rdtype == AXFR
    records = [rr for msg in messages for rr in msg.answer]
    assert records[0].rdtype == SOA and records[-1].rdtype == SOA
    assert records[0] == records[-1]
    assert records[0].name == dns.name.from_text("gslb.example.com")
    assert sum(1 for rr in records if rr.rdtype == SOA) == 2
    body = [(rr.name, rr.rdtype, rr.ttl, rr[0]) for rr in records[1:-1]]
    assert len(body) == len(set(body)), "a record was sent twice"
    assert set(body) == expected_zone_records(EXAMPLE, "gslb.example.com")


def test_axfr_zone_name_in_mixed_case(example_node):
    messages = axfr(example_node.addresses[0], "GsLb.ExAmPlE.cOm")
    assert messages[0].rcode() == dns.rcode.NOERROR
    assert messages[0].question[0].name.labels[0] == b"GsLb"
    records = [rr for msg in messages for rr in msg.answer]
    assert records[0].rdtype == SOA and records[-1].rdtype == SOA and len(records) > 2


def test_ixfr_over_tcp_from_allowed_client_is_a_full_transfer(example_node):
    q = ixfr_query("gslb.example.com")
    with socket.create_connection(example_node.addresses[0], timeout=TIMEOUT) as s:
        s.sendall(frame(q.to_wire()))
        records: list[dns.rrset.RRset] = []
        for _ in range(1000):
            msg = dns.message.from_wire(read_frame(s), one_rr_per_rrset=True)
            assert msg.id == q.id and msg.rcode() == dns.rcode.NOERROR
            records += msg.answer
            if sum(1 for rr in records if rr.rdtype == SOA) >= 2:
                break
    assert records[0].rdtype == SOA and records[-1].rdtype == SOA
    body = {(rr.name, rr.rdtype, rr.ttl, rr[0]) for rr in records[1:-1]}
    assert body == expected_zone_records(EXAMPLE, "gslb.example.com")


def test_axfr_refused_when_acl_excludes_client(sem_node):
    (msg,) = axfr(sem_node.addresses[0], "sem.test")
    assert msg.rcode() == dns.rcode.REFUSED
    assert msg.answer == []


def test_axfr_refused_when_zone_has_no_acl(sem_node):
    (msg,) = axfr(sem_node.addresses[0], "lowsoa.test")
    assert msg.rcode() == dns.rcode.REFUSED
    assert msg.answer == []


def test_ixfr_over_tcp_refused_when_acl_excludes_client(sem_node):
    q = dns.message.make_query("sem.test", "IXFR")
    r = dns.query.tcp(q, sem_node.host, port=sem_node.port, timeout=TIMEOUT)
    assert r.rcode() == dns.rcode.REFUSED
    assert r.answer == []


def test_axfr_over_udp_not_served(example_node):
    q = dns.message.make_query("gslb.example.com", "AXFR")
    r = dns.query.udp(q, example_node.host, port=example_node.port, timeout=TIMEOUT)
    assert r.rcode() == dns.rcode.NOTIMP
    assert r.answer == []


def ixfr_query(zone: str, serial: int = 1) -> dns.message.Message:
    q = dns.message.make_query(zone, "IXFR")
    q.authority.append(dns.rrset.from_text(zone + ".", 0, "IN", "SOA",
                                           f"ns1.{zone}. hostmaster.{zone}. {serial} 3600 900 1209600 60"))
    return q


def test_ixfr_over_udp_from_allowed_client_returns_soa(example_node):
    current = ask(example_node, "gslb.example.com", "SOA")
    r = dns.query.udp(ixfr_query("gslb.example.com"), example_node.host, port=example_node.port,
                      timeout=TIMEOUT)
    assert r.rcode() == dns.rcode.NOERROR and aa(r)
    assert len(r.answer) == 1
    (soa,) = r.answer
    assert soa.rdtype == SOA and soa.name == dns.name.from_text("gslb.example.com")
    assert soa[0] == current.answer[0][0]


def test_ixfr_over_udp_refused_when_acl_excludes_client(sem_node):
    r = dns.query.udp(ixfr_query("sem.test"), sem_node.host, port=sem_node.port, timeout=TIMEOUT)
    assert r.rcode() == dns.rcode.REFUSED
    assert r.answer == []


@pytest.mark.parametrize("qname", ["app.gslb.example.com", "mail.gslb.example.com", "nope.gslb.example.com"])
def test_axfr_for_non_apex_name_refused_or_notauth(example_node, qname):
    (msg,) = axfr(example_node.addresses[0], qname)
    assert msg.rcode() in (dns.rcode.REFUSED, NOTAUTH), dns.rcode.to_text(msg.rcode())
    assert msg.answer == []


def test_axfr_outside_every_zone_refused(example_node):
    (msg,) = axfr(example_node.addresses[0], "example.org")
    assert msg.rcode() in (dns.rcode.REFUSED, NOTAUTH)
    assert msg.answer == []


# --------------------------------------------------------------------------- EDNS(0)


@TRANSPORTS
@pytest.mark.parametrize("use_edns", [True, False])
def test_opt_in_reply_iff_query_had_one(example_node, transport, use_edns):
    r = ask(example_node, "app.gslb.example.com", "A", transport, use_edns=0 if use_edns else False)
    assert (r.edns >= 0) == use_edns
    assert r.rcode() == dns.rcode.NOERROR


@TRANSPORTS
@pytest.mark.parametrize("use_edns", [True, False])
@pytest.mark.parametrize("kind", ["refused", "nxdomain", "notimp"])
def test_opt_in_error_reply_iff_query_had_one(example_node, transport, use_edns, kind):
    if kind == "refused":
        q = dns.message.make_query("example.org", "A", use_edns=0 if use_edns else False)
    elif kind == "nxdomain":
        q = dns.message.make_query("nope.gslb.example.com", "A", use_edns=0 if use_edns else False)
    else:
        q = dns.message.make_query("gslb.example.com", "SOA", use_edns=0 if use_edns else False)
        q.flags |= 15 << 11
    (reply,) = raw_exchange(example_node.addresses[0], transport, q.to_wire())
    r = dns.message.from_wire(reply)
    assert r.id == q.id
    assert (r.edns >= 0) == use_edns
    expected = {"refused": dns.rcode.REFUSED, "nxdomain": dns.rcode.NXDOMAIN, "notimp": dns.rcode.NOTIMP}[kind]
    assert r.rcode() == expected


@TRANSPORTS
def test_advertised_payload_1232(example_node, transport):
    r = ask(example_node, "app.gslb.example.com", "A", transport, use_edns=0, payload=4096)
    assert r.edns == 0
    assert r.payload == 1232


@TRANSPORTS
def test_edns_version_1_badvers(example_node, transport):
    q = dns.message.make_query("app.gslb.example.com", "A", use_edns=1)
    r = exchange(example_node.addresses[0], q, transport)
    assert r.rcode() == dns.rcode.BADVERS
    assert r.edns == 0, "BADVERS is sent with the version we support"
    assert r.answer == []
    assert r.question[0].name == dns.name.from_text("app.gslb.example.com")


@TRANSPORTS
def test_two_opt_records_formerr(example_node, transport):
    q = dns.message.make_query("app.gslb.example.com", "A", use_edns=0)
    wire = bytearray(q.to_wire())
    assert struct.unpack_from("!H", wire, 10)[0] == 1
    struct.pack_into("!H", wire, 10, 2)
    wire += b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    (reply,) = raw_exchange(example_node.addresses[0], transport, bytes(wire))
    r = dns.message.from_wire(reply)
    assert r.id == q.id
    assert r.rcode() == dns.rcode.FORMERR
    assert r.answer == []


@TRANSPORTS
def test_unknown_edns_options_ignored(example_node, transport):
    opts = [dns.edns.GenericOption(65001, b"\x01\x02\x03"), dns.edns.GenericOption(65535, b"")]
    r = ask(example_node, "app.gslb.example.com", "A", transport, use_edns=0, options=opts)
    assert r.rcode() == dns.rcode.NOERROR and aa(r)
    assert texts(rrset_of(r, "answer", A)[0]) == APP_ADDRS
    assert r.edns == 0
    assert [o.otype for o in r.options if o.otype in (65001, 65535)] == [], "unknown options are not echoed"


@TRANSPORTS
@pytest.mark.parametrize("do", [True, False])
def test_do_bit_echoed(example_node, transport, do):
    r = ask(example_node, "app.gslb.example.com", "A", transport, use_edns=0, want_dnssec=do)
    assert r.edns == 0
    assert bool(r.ednsflags & dns.flags.DO) == do


@TRANSPORTS
@pytest.mark.parametrize("zflags,expected", [(0x4000, 0), (0x0001, 0), (0x7FFF, 0), (0xFFFF, 0x8000)])
def test_unknown_edns_flags_cleared(example_node, transport, zflags, expected):
    r = ask(example_node, "app.gslb.example.com", "A", transport, use_edns=0, ednsflags=zflags)
    assert r.rcode() == dns.rcode.NOERROR
    assert r.ednsflags == expected


# --------------------------------------------------------------------------- truncation


def test_udp_without_edns_over_512_truncated(sem_node):
    wire = udp_wire(sem_node.addresses[0], dns.message.make_query("many.sem.test", "A").to_wire())
    assert len(wire) <= 512
    r = dns.message.from_wire(wire)
    assert r.flags & dns.flags.TC
    assert r.rcode() == dns.rcode.NOERROR
    assert r.question[0].name == dns.name.from_text("many.sem.test")


def test_udp_long_txt_without_edns_truncated(sem_node):
    wire = udp_wire(sem_node.addresses[0], dns.message.make_query("big.sem.test", "TXT").to_wire())
    assert len(wire) <= 512
    assert dns.message.from_wire(wire).flags & dns.flags.TC


def test_udp_with_edns_4096_fits_within_1232(sem_node):
    q = dns.message.make_query("many.sem.test", "A", use_edns=0, payload=4096)
    wire = udp_wire(sem_node.addresses[0], q.to_wire())
    assert 512 < len(wire) <= 1232
    r = dns.message.from_wire(wire)
    assert not r.flags & dns.flags.TC
    assert texts(r.answer[0]) == set(MANY)


def test_udp_with_edns_4096_larger_than_1232_truncated(sem_node):
    q = dns.message.make_query("big.sem.test", "TXT", use_edns=0, payload=4096)
    wire = udp_wire(sem_node.addresses[0], q.to_wire())
    assert len(wire) <= 1232
    r = dns.message.from_wire(wire)
    assert r.flags & dns.flags.TC
    assert r.edns == 0


@pytest.mark.parametrize("qname,qtype,use_edns", [("many.sem.test", "A", False), ("big.sem.test", "TXT", False),
                                                  ("big.sem.test", "TXT", True)])
def test_tcp_returns_whole_answer(sem_node, qname, qtype, use_edns):
    q = dns.message.make_query(qname, qtype, use_edns=0 if use_edns else False, payload=4096 if use_edns else None)
    r = dns.query.tcp(q, sem_node.host, port=sem_node.port, timeout=TIMEOUT)
    assert not r.flags & dns.flags.TC
    assert r.rcode() == dns.rcode.NOERROR and aa(r)
    if qtype == "A":
        assert texts(r.answer[0]) == set(MANY)
    else:
        (rrset,) = r.answer
        assert b"".join(rrset[0].strings) == BIG_TEXT.encode()


@pytest.mark.parametrize("payload", [0, 100, 511])
def test_small_advertised_payload_treated_as_512(sem_node, payload):
    q = dns.message.make_query("medium.sem.test", "A", use_edns=0, payload=payload)
    wire = udp_wire(sem_node.addresses[0], q.to_wire())
    r = dns.message.from_wire(wire)
    assert len(wire) <= 512
    assert not r.flags & dns.flags.TC
    assert texts(r.answer[0]) == set(MEDIUM)
    big = dns.message.from_wire(udp_wire(sem_node.addresses[0], dns.message.make_query(
        "many.sem.test", "A", use_edns=0, payload=payload).to_wire()))
    assert big.flags & dns.flags.TC


# --------------------------------------------------------------------------- ANY


@TRANSPORTS
@pytest.mark.parametrize("qname", ["gslb.example.com", "static.gslb.example.com", "app.gslb.example.com",
                                   "www.gslb.example.com"])
def test_any_answered_with_one_rrset(example_node, transport, qname):
    r = ask(example_node, qname, "ANY", transport)
    assert r.rcode() == dns.rcode.NOERROR and aa(r)
    assert len(r.answer) == 1, answer_summary(r)
    assert r.answer[0].name == dns.name.from_text(qname)


# --------------------------------------------------------------------------- IPv6


@TRANSPORTS
def test_ipv6_listener_answers(example_node, transport):
    host, port = example_node.addresses[1]
    assert host == "::1"
    q = dns.message.make_query("app.gslb.example.com", "AAAA")
    r = exchange((host, port), q, transport)
    assert r.rcode() == dns.rcode.NOERROR and aa(r)
    assert texts(r.answer[0]) == {"2001:db8:10::10", "2001:db8:20::20", "2001:db8:30::30"}


def test_no_internal_errors(example_node, sem_node):
    assert example_node.node.handler.errors == 0
    assert sem_node.node.handler.errors == 0
