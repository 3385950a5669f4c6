"""The reply caches stay bounded under a random-name flood and keep the popular answers."""

from __future__ import annotations

import random

from dnslib import DNSRecord

from dnsserver.handler import NEGATIVE_CACHE_LIMIT, QueryHandler
from gslb.config import load_config
from gslb.snapshot import build_snapshot
from tests.support.servers import EXAMPLE


def wire(name: str, qtype: str = "A", qid: int = 1) -> bytes:
    query = DNSRecord.question(name, qtype)
    query.header.id = qid
    return bytes(query.pack())


def test_random_names_neither_grow_memory_nor_evict_positive_answers() -> None:
    handler = QueryHandler(build_snapshot(load_config(EXAMPLE).compiled))
    popular = wire("ns1.gslb.example.com")
    first = handler.handle(popular, "127.0.0.1")
    assert first is not None and len(handler.exact_udp) == 1
    rng = random.Random(7)
    for i in range(3 * NEGATIVE_CACHE_LIMIT):
        name = "".join(rng.choice("abcdefghij") for _ in range(12)) + ".gslb.example.com"
        reply = handler.handle(wire(name, qid=i & 0xFFFF), "127.0.0.1")
        assert reply is not None and reply[3] & 0xF == 3  # NXDOMAIN
    assert len(handler.negative_udp) <= NEGATIVE_CACHE_LIMIT
    assert len(handler.exact_udp) == 1 and popular[2:] in handler.exact_udp
    assert all(key[0][-3:] != (b"gslb", b"example", b"com") or key[0][0] == b"ns1" for key in handler._prepared)
    # a repeated negative query is answered from its cache with the new ID
    again = wire("nope.gslb.example.com", qid=100)
    one = handler.handle(again, "127.0.0.1")
    two = handler.handle(wire("nope.gslb.example.com", qid=200), "127.0.0.1")
    assert one is not None and two is not None and one[2:] == two[2:] and two[:2] == (200).to_bytes(2, "big")
    assert handler.negative_udp[again[2:]].hits == 1
