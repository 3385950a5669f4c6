"""Geo answers and EDNS Client Subnet (RFC 7871) through the real server: the example
config (geo policy, ``config/geoip/GeoIP2-City-Test.mmdb``) served on 127.0.0.1 and ::1,
queried with dnspython over UDP and TCP.

The example's sites: us-east 192.0.2.10 / 2001:db8:10::10, eu-west 192.0.2.20 /
2001:db8:20::20, ap-northeast 192.0.2.30 / 2001:db8:30::30. Fixture networks of the test
database (config/geoip/README.md): 81.2.69.160/27 London, 89.160.20.128/25 Linköping,
216.160.83.56/29 Milton WA, 2001:218::/32 Japan, 175.16.199.0/24 Changchun.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from ipaddress import ip_address

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.servers import ROOT, ThreadedNode

TIMEOUT = 3.0
TRANSPORTS = pytest.mark.parametrize("transport", ["udp", "tcp"])
APP = "app.gslb.example.com"
ALL_THREE = ["192.0.2.10", "192.0.2.20", "192.0.2.30"]
ECS_CODE = 8


def send(node: ThreadedNode, message: dns.message.Message, transport: str, *, listener: int = 0
         ) -> dns.message.Message:
    host, port = node.addresses[listener]
    if transport == "udp":
        return dns.query.udp(message, host, port=port, timeout=TIMEOUT)
    return dns.query.tcp(message, host, port=port, timeout=TIMEOUT)


def ecs_query(name: str, rdtype: str, subnet: str | None, **kwargs: object) -> dns.message.Message:
    options: list[dns.edns.Option] = []
    if subnet is not None:
        address, _, prefix = subnet.partition("/")
        options.append(dns.edns.ECSOption(address, int(prefix)))
    return dns.message.make_query(name, rdtype, use_edns=0, options=options, **kwargs)  # type: ignore[arg-type]


def raw_ecs_query(name: str, *payloads: bytes) -> dns.message.Message:
    """A query carrying hand-built ECS option bodies (family, source, scope, address)."""
    return dns.message.make_query(name, "A", use_edns=0,
                                  options=[dns.edns.GenericOption(ECS_CODE, p) for p in payloads])


def ecs_body(family: int, source: int, scope: int, address: bytes) -> bytes:
    return struct.pack("!HBB", family, source, scope) + address


def addresses(reply: dns.message.Message, rdtype: int = dns.rdatatype.A) -> list[str]:
    return sorted(rd.address for rrset in reply.answer if rrset.rdtype == rdtype for rd in rrset)


def reply_ecs(reply: dns.message.Message) -> list[bytes]:
    """The reply's ECS options, as wire bodies."""
    return [opt.to_wire() for opt in reply.options if opt.otype == ECS_CODE]


def expected_echo(subnet: str, scope: int) -> bytes:
    address, _, prefix = subnet.partition("/")
    ip = ip_address(address)
    source = int(prefix)
    family = 1 if ip.version == 4 else 2
    return ecs_body(family, source, scope, ip.packed[: (source + 7) // 8])


# --------------------------------------------------------------------------- geo answers with ECS


GEO_CASES = [
    # subnet, qtype, answer, scope (the GeoIP network's prefix)
    pytest.param("81.2.69.160/32", "A", ["192.0.2.20"], 27, id="london-A"),
    pytest.param("81.2.69.160/32", "AAAA", ["2001:db8:20::20"], 27, id="london-AAAA"),
    pytest.param("89.160.20.128/32", "A", ["192.0.2.20"], 25, id="linkoping-A"),
    pytest.param("89.160.20.128/32", "AAAA", ["2001:db8:20::20"], 25, id="linkoping-AAAA"),
    pytest.param("216.160.83.56/32", "A", ["192.0.2.10"], 29, id="milton-A"),
    pytest.param("216.160.83.56/32", "AAAA", ["2001:db8:10::10"], 29, id="milton-AAAA"),
    pytest.param("2001:218::1/128", "A", ["192.0.2.30"], 32, id="japan-v6-A"),
    pytest.param("2001:218::1/128", "AAAA", ["2001:db8:30::30"], 32, id="japan-v6-AAAA"),
    pytest.param("175.16.199.1/32", "A", ["192.0.2.30"], 24, id="changchun-A"),
    pytest.param("175.16.199.0/24", "A", ["192.0.2.30"], 24, id="changchun-slash24"),
    pytest.param("216.160.83.56/29", "A", ["192.0.2.10"], 29, id="milton-slash29"),
]


@TRANSPORTS
@pytest.mark.parametrize("subnet,qtype,want,scope", GEO_CASES)
def test_geo_answer_and_scope_from_ecs(example_node: ThreadedNode, transport: str, subnet: str, qtype: str,
                                       want: list[str], scope: int) -> None:
    reply = send(example_node, ecs_query(APP, qtype, subnet), transport)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert addresses(reply, dns.rdatatype.from_text(qtype)) == want
    # RFC 7871 7.2.1: FAMILY, SOURCE PREFIX-LENGTH and ADDRESS as sent, our SCOPE PREFIX-LENGTH
    assert reply_ecs(reply) == [expected_echo(subnet, scope)]


@pytest.mark.parametrize("listener", [0, 1], ids=["127.0.0.1", "::1"])
def test_ecs_over_both_listeners(example_node: ThreadedNode, listener: int) -> None:
    for subnet, want in (("81.2.69.160/32", ["192.0.2.20"]), ("2001:218::1/128", ["192.0.2.30"])):
        reply = send(example_node, ecs_query(APP, "A", subnet), "udp", listener=listener)
        assert addresses(reply) == want


@TRANSPORTS
def test_without_ecs_the_source_address_is_located(example_node: ThreadedNode, transport: str) -> None:
    # 127.0.0.1 / ::1 are not in the database: every endpoint
    for message in (dns.message.make_query(APP, "A"), ecs_query(APP, "A", None)):
        reply = send(example_node, message, transport)
        assert reply.rcode() == dns.rcode.NOERROR
        assert addresses(reply) == ALL_THREE
        assert reply_ecs(reply) == []  # no ECS in the query, none in the reply
    reply = send(example_node, ecs_query(APP, "A", None), transport, listener=1)
    assert addresses(reply) == ALL_THREE


@TRANSPORTS
@pytest.mark.parametrize("subnet", ["0.0.0.0/0", "::/0"])
def test_ecs_source_prefix_zero_gets_scope_zero(example_node: ThreadedNode, transport: str, subnet: str) -> None:
    # RFC 7871 7.1.2: SOURCE PREFIX-LENGTH 0 asks for no client information to be used;
    # the answer falls back to the source address and the reply's scope must be 0
    reply = send(example_node, ecs_query(APP, "A", subnet), transport)
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == ALL_THREE
    assert reply_ecs(reply) == [expected_echo(subnet, 0)]


@TRANSPORTS
def test_static_name_echoes_ecs_with_scope_zero(example_node: ThreadedNode, transport: str) -> None:
    # the answer does not depend on the client: scope 0, valid for every client (RFC 7871 7.2.1)
    for subnet, qtype, want in (("81.2.69.160/32", "A", ["192.0.2.80"]),
                                ("2001:218::1/128", "AAAA", ["2001:db8::80"]),
                                ("216.160.83.56/29", "A", ["192.0.2.80"])):
        for _ in range(3):  # the second and third come from the caches
            reply = send(example_node, ecs_query("static.gslb.example.com", qtype, subnet), transport)
            assert reply.rcode() == dns.rcode.NOERROR
            assert addresses(reply, dns.rdatatype.from_text(qtype)) == want
            assert reply_ecs(reply) == [expected_echo(subnet, 0)]


@TRANSPORTS
def test_repeated_ecs_queries_keep_per_subnet_answers(example_node: ThreadedNode, transport: str) -> None:
    """The exact-reply cache must never hand one subnet's answer to another."""
    cases = [("81.2.69.160/32", ["192.0.2.20"], 27), ("216.160.83.56/32", ["192.0.2.10"], 29),
             ("81.2.69.160/32", ["192.0.2.20"], 27)]
    fixed = [(ecs_query(APP, "A", subnet), subnet, want, scope) for subnet, want, scope in cases]
    for round_ in range(4):
        for message, subnet, want, scope in fixed:
            # identical bytes each round (exact cache) and a fresh ID every other round
            if round_ % 2:
                message = ecs_query(APP, "A", subnet)
            reply = send(example_node, message, transport)
            assert addresses(reply) == want, f"round {round_}, {subnet}"
            assert reply_ecs(reply) == [expected_echo(subnet, scope)]
            assert reply.id == message.id
        # and a query without ECS in between still gets every endpoint
        assert addresses(send(example_node, dns.message.make_query(APP, "A"), transport)) == ALL_THREE


@TRANSPORTS
def test_cname_to_the_gslb_name_with_ecs(example_node: ThreadedNode, transport: str) -> None:
    reply = send(example_node, ecs_query("www.gslb.example.com", "A", "81.2.69.160/32"), transport)
    assert reply.rcode() == dns.rcode.NOERROR
    cnames = [rrset for rrset in reply.answer if rrset.rdtype == dns.rdatatype.CNAME]
    assert len(cnames) == 1
    assert cnames[0].name.to_text() == "www.gslb.example.com."
    assert [rd.target.to_text() for rd in cnames[0]] == ["app.gslb.example.com."]
    a_sets = [rrset for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A]
    assert [rrset.name.to_text() for rrset in a_sets] == ["app.gslb.example.com."]
    assert addresses(reply) == ["192.0.2.20"]
    assert reply_ecs(reply) == [expected_echo("81.2.69.160/32", 27)]
    us = send(example_node, ecs_query("www.gslb.example.com", "A", "216.160.83.56/32"), transport)
    assert addresses(us) == ["192.0.2.10"]


# --------------------------------------------------------------------------- malformed ECS: FORMERR


MALFORMED = [
    pytest.param(ecs_body(3, 24, 0, bytes([81, 2, 69])), id="family-3"),
    pytest.param(ecs_body(0, 0, 0, b""), id="family-0"),
    pytest.param(ecs_body(1, 33, 0, bytes([81, 2, 69, 160, 0])), id="ipv4-source-33"),
    pytest.param(ecs_body(2, 129, 0, bytes(17)), id="ipv6-source-129"),
    pytest.param(ecs_body(1, 24, 0, bytes([81, 2, 69, 0])), id="address-longer-than-prefix"),
    pytest.param(ecs_body(1, 24, 0, bytes([81, 2])), id="address-shorter-than-prefix"),
    pytest.param(ecs_body(1, 0, 0, bytes([0])), id="source-0-with-address"),
    pytest.param(ecs_body(1, 20, 0, bytes([81, 2, 69])), id="bits-past-source-v4"),   # 69 = 0100 0101
    pytest.param(ecs_body(1, 31, 0, bytes([81, 2, 69, 161])), id="last-bit-past-source-v4"),
    pytest.param(ecs_body(2, 33, 0, bytes.fromhex("200102180f")), id="bits-past-source-v6"),
    pytest.param(b"\x00\x01\x18", id="shorter-than-4-bytes"),
]


@TRANSPORTS
@pytest.mark.parametrize("payload", MALFORMED)
def test_malformed_ecs_is_formerr(example_node: ThreadedNode, transport: str, payload: bytes) -> None:
    # RFC 7871 7.1: a malformed option (unknown family, source longer than the address,
    # ADDRESS not of the length the source needs or with bits set past it) gets FORMERR
    message = raw_ecs_query(APP, payload)
    reply = send(example_node, message, transport)
    assert reply.rcode() == dns.rcode.FORMERR
    assert reply.id == message.id
    assert reply.answer == []


@TRANSPORTS
def test_two_ecs_options_are_formerr(example_node: ThreadedNode, transport: str) -> None:
    message = dns.message.make_query(APP, "A", use_edns=0, options=[
        dns.edns.ECSOption("81.2.69.160", 32), dns.edns.ECSOption("216.160.83.56", 32)])
    assert send(example_node, message, transport).rcode() == dns.rcode.FORMERR
    same_twice = raw_ecs_query(APP, ecs_body(1, 24, 0, bytes([81, 2, 69])), ecs_body(1, 24, 0, bytes([81, 2, 69])))
    assert send(example_node, same_twice, transport).rcode() == dns.rcode.FORMERR


@TRANSPORTS
def test_well_formed_edge_cases_are_answered(example_node: ThreadedNode, transport: str) -> None:
    cases = [
        (ecs_body(1, 32, 0, bytes([81, 2, 69, 160])), ["192.0.2.20"], 27),
        (ecs_body(1, 27, 0, bytes([81, 2, 69, 160])), ["192.0.2.20"], 27),
        (ecs_body(2, 32, 0, bytes.fromhex("20010218")), ["192.0.2.30"], 32),
        (ecs_body(1, 0, 0, b""), ALL_THREE, 0),
    ]
    for payload, want, scope in cases:
        reply = send(example_node, raw_ecs_query(APP, payload), transport)
        assert reply.rcode() == dns.rcode.NOERROR
        assert addresses(reply) == want
        assert reply_ecs(reply) == [payload[:3] + bytes([scope]) + payload[4:]]
    # a non-zero SCOPE in the query is ignored (RFC 7871 6: it MUST be 0 in queries); our own is sent back
    reply = send(example_node, raw_ecs_query(APP, ecs_body(1, 32, 9, bytes([81, 2, 69, 160]))), transport)
    assert addresses(reply) == ["192.0.2.20"]
    assert reply_ecs(reply) == [ecs_body(1, 32, 27, bytes([81, 2, 69, 160]))]


def test_server_still_answers_after_malformed_ecs(example_node: ThreadedNode) -> None:
    for payload in MALFORMED:
        send(example_node, raw_ecs_query(APP, payload.values[0]), "udp")
    assert addresses(send(example_node, ecs_query(APP, "A", "81.2.69.160/32"), "udp")) == ["192.0.2.20"]


# --------------------------------------------------------------------------- gslb explain


EXPLAIN = [sys.executable, "-m", "gslb.cli", "explain", "-c", "config/example.yaml", APP,
           "--client", "192.0.2.1", "--ecs", "81.2.69.160/32"]


def run_explain(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXPLAIN, *extra], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def test_explain_text() -> None:
    proc = run_explain()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "eu-west" in out
    assert "192.0.2.20" in out
    assert re.search(r"^scope\s+/27$", out, re.MULTILINE), out
    answer_lines = [line for line in out.splitlines() if line.startswith("answer")]
    assert len(answer_lines) == 1 and "192.0.2.20" in answer_lines[0]
    assert "81.2.69.160/32" in out


def test_explain_json() -> None:
    proc = run_explain("--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["query"] == {"name": APP, "type": "A"}
    assert result["client"] == "192.0.2.1"
    assert result["ecs"] == "81.2.69.160/32"
    assert result["rcode"] == "NOERROR"
    assert len(result["answer"]) == 1 and "192.0.2.20" in result["answer"][0]
    assert any("eu-west" in step for step in result["steps"])
    assert result["ecs_scope"] == 27


def test_explain_json_aaaa_from_japan() -> None:
    proc = subprocess.run([sys.executable, "-m", "gslb.cli", "explain", "-c", "config/example.yaml", APP,
                           "--type", "AAAA", "--client", "192.0.2.1", "--ecs", "2001:218::1/128", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["answer"]) == 1 and "2001:db8:30::30" in result["answer"][0]
    assert any("ap-northeast" in step for step in result["steps"])
    assert result["ecs_scope"] == 32
