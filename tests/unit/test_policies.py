"""Answer policies, table-driven and without mocks: the core is pure, so every test builds
real ``Endpoint`` lists and ``Selection`` objects (or a real config and snapshot) and looks
at what comes out.

GeoIP lookups use MaxMind's test database (``config/geoip/GeoIP2-City-Test.mmdb``); its
fixture networks are listed in ``config/geoip/README.md``:
81.2.69.160/27 London GB/EU, 89.160.20.128/25 Linköping SE/EU, 216.160.83.56/29 Milton US/NA,
175.16.199.0/24 Changchun CN/AS, 2001:218::/32 JP/AS, 214.0.1.0/24 Melbourne AU/OC,
2.3.3.0/24 continent EU only, 127.0.0.1 / 10.0.0.1 not found, 2a02:d180::/29 DE/EU.

Distances from the fixtures to the three example sites (us-east 38.9,-77.0; eu-west
50.1,8.7; ap-northeast 35.7,139.7), in km, for the hand-computed expectations below:
London 5898 / 637 / 9556, Linköping 6551 / 1027 / 8340, Milton 3740 / 8215 / 7716,
Changchun 10541 / 7902 / 1525, JP 10903 / 9335 / 5, Melbourne 16387 / 16321 / 8193.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address, ip_network
from pathlib import Path
from typing import Any

import maxminddb
import pytest
import yaml

from gslb.config import load_config_text
from gslb.endpoint import Client, Endpoint, stable_seed
from gslb.errors import ConfigError
from gslb.geo import GeoDatabase
from gslb.policies import POLICIES, VARY_CLIENT, VARY_LOCATION, VARY_NONE, VARY_QUERY, Policy, Selection
from gslb.policies.base import mix64, rendezvous_order
from gslb.resolve import NOERROR, SERVFAIL, T_A, Answer, Query, choose_endpoints, resolve
from gslb.snapshot import Snapshot, build_snapshot

ROOT = Path(__file__).resolve().parents[2]
CITY = ROOT / "config" / "geoip" / "GeoIP2-City-Test.mmdb"
NAME = "app.gslb.example.com"

SITES: dict[str, tuple[float, float]] = {
    "us-east": (38.9, -77.0),
    "eu-west": (50.1, 8.7),
    "ap-northeast": (35.7, 139.7),
}
SITE_META = {
    "us-east": {"country": "US", "continent": "NA"},
    "eu-west": {"country": "DE", "continent": "EU"},
    "ap-northeast": {"country": "JP", "continent": "AS"},
}

LONDON, LINKOPING, MILTON = "81.2.69.160", "89.160.20.128", "216.160.83.56"
CHANGCHUN, JAPAN, MELBOURNE = "175.16.199.1", "2001:218::1", "214.0.1.1"
EU_ONLY, UNKNOWN = "2.3.3.1", "127.0.0.1"

# --------------------------------------------------------------------------- helpers


def ep(ident: str, site: str = "us-east", *, v4: str | None = None, v6: str | None = None,
       cname: str | None = None, weight: int = 1) -> Endpoint:
    return Endpoint(ident, site, IPv4Address(v4) if v4 else None, IPv6Address(v6) if v6 else None,
                    cname, weight, stable_seed(ident))


US = ep("us", "us-east", v4="192.0.2.10", v6="2001:db8:10::10")
EU = ep("eu", "eu-west", v4="192.0.2.20", v6="2001:db8:20::20")
AP = ep("ap", "ap-northeast", v4="192.0.2.30", v6="2001:db8:30::30")
THREE = (US, EU, AP)


def make(kind: str, coordinates: dict[str, tuple[float, float]] | None = None, **options: Any) -> Policy:
    cls = POLICIES[kind]
    config = cls.config_model.model_validate({"type": kind, **options})
    return cls(config, SITES if coordinates is None else coordinates)


def sel(address: str = "192.0.2.1", *, ecs: str | None = None, qid: int = 0,
        geo: GeoDatabase | None = None) -> Selection:
    subnet = ip_network(ecs, strict=True) if ecs else None
    return Selection(Client(ip_address(address), subnet, qid), geo, trace=[])


def ids(endpoints: Sequence[Endpoint]) -> list[str]:
    return [e.id for e in endpoints]


def first(policy: Policy, candidates: Sequence[Endpoint], selection: Selection) -> str:
    out = policy.select(candidates, selection)
    assert out, "a policy never returns an empty list for a non-empty input"
    return out[0].id


def subnets_v4(count: int, *, base: str = "1.0.0.0") -> Iterator[str]:
    """``count`` addresses in distinct /24s, host part varying so it cannot matter."""
    start = int(IPv4Address(base))
    for i in range(count):
        yield str(IPv4Address(start + (i << 8) + (i * 37) % 256))


def subnets_v6(count: int, *, base: str = "2a02:d180::") -> Iterator[str]:
    """``count`` addresses in distinct /56s (default: inside 2a02:d180::/29, DE in the DB)."""
    start = int(IPv6Address(base))
    for i in range(count):
        yield str(IPv6Address(start + (i << 72) + 0x1234 + i))


def assert_shares(counts: Counter[str], weights: dict[str, int], total: int, tolerance: float = 0.03) -> None:
    assert sum(counts.values()) == total
    wsum = sum(weights.values())
    for ident, weight in weights.items():
        share, want = counts[ident] / total, weight / wsum
        assert abs(share - want) <= tolerance, f"{ident}: share {share:.4f}, weight ratio {want:.4f} ({counts})"


@pytest.fixture(scope="module")
def geo() -> Iterator[GeoDatabase]:
    db = GeoDatabase(CITY)
    yield db
    db.close()


def config_yaml(service: dict[str, Any], *, sites: dict[str, tuple[float, float]] | None = None,
                geoip: bool = True) -> str:
    site_map = sites or SITES
    doc: dict[str, Any] = {
        "zones": {"gslb.example.com": {
            "nameservers": [{"name": "ns1.gslb.example.com", "addresses": ["192.0.2.53"]}],
        }},
        "sites": {name: {"lat": lat, "lon": lon, **SITE_META.get(name, {"country": "DE", "continent": "EU"})}
                  for name, (lat, lon) in site_map.items()},
        "services": {NAME: service},
    }
    if geoip:
        doc["geoip"] = {"database": str(CITY)}
    return yaml.safe_dump(doc, sort_keys=False)


def snapshot_for(service: dict[str, Any], **kwargs: Any) -> Snapshot:
    return build_snapshot(load_config_text(config_yaml(service, **kwargs)).compiled)


def with_down(snapshot: Snapshot, down: set[str]) -> Snapshot:
    """The snapshot as health checks would leave it: ``down`` endpoints are not usable
    (still enabled, so fallback 'all' may answer with them)."""
    services = {name: dataclasses.replace(t, candidates=tuple(e for e in t.candidates if e.id not in down))
                for name, t in snapshot.services.items()}
    return dataclasses.replace(snapshot, services=services)


def ask(snapshot: Snapshot, *, address: str = "192.0.2.1", ecs: str | None = None, qid: int = 0,
        qtype: int = T_A, name: str = NAME) -> Answer:
    subnet = ip_network(ecs) if ecs else None
    return resolve(snapshot, Query(name, qtype), Client(ip_address(address), subnet, qid), trace=[])


def addrs(answer: Answer) -> list[str]:
    return [str(rr.rdata) for rr in answer.answer]


STD_ENDPOINTS = [
    {"site": "us-east", "name": "us", "ipv4": "192.0.2.10", "ipv6": "2001:db8:10::10"},
    {"site": "eu-west", "name": "eu", "ipv4": "192.0.2.20", "ipv6": "2001:db8:20::20"},
    {"site": "ap-northeast", "name": "ap", "ipv4": "192.0.2.30", "ipv6": "2001:db8:30::30"},
]
ADDR = {"us": "192.0.2.10", "eu": "192.0.2.20", "ap": "192.0.2.30"}

EVERY_POLICY = [
    pytest.param({"type": "all"}, id="all"),
    pytest.param({"type": "round_robin"}, id="round_robin"),
    pytest.param({"type": "weighted"}, id="weighted"),
    pytest.param({"type": "weighted", "sticky": True}, id="weighted-sticky"),
    pytest.param({"type": "failover", "groups": [["us-east"], ["ap-northeast"]]}, id="failover"),
    pytest.param({"type": "geo"}, id="geo"),
    pytest.param({"type": "topology", "rules": [{"countries": ["GB"], "sites": ["ap-northeast"]}],
                  "default": ["us-east"]}, id="topology"),
    pytest.param({"type": "consistent_hash"}, id="consistent_hash"),
    pytest.param([{"type": "topology", "rules": [{"continents": ["EU"], "sites": ["eu-west", "us-east"]}]},
                  {"type": "geo"}], id="chain-topology-geo"),
    pytest.param([{"type": "geo"}, {"type": "consistent_hash"}], id="chain-geo-consistent_hash"),
]
CLIENTS = [
    pytest.param({"address": "192.0.2.1", "ecs": f"{LONDON}/32"}, id="london"),
    pytest.param({"address": "192.0.2.1", "ecs": f"{MILTON}/32"}, id="milton"),
    pytest.param({"address": "192.0.2.1", "ecs": f"{JAPAN}/128"}, id="japan"),
    pytest.param({"address": UNKNOWN}, id="unknown"),
]


# --------------------------------------------------------------------------- base helpers


def test_mix64_is_deterministic_and_spreads() -> None:
    assert mix64(0) == mix64(0)
    assert mix64(1) != mix64(2)
    assert len({mix64(i) >> 60 for i in range(1000)}) == 16  # the top bits take every value


def test_rendezvous_order_is_a_permutation_and_deterministic() -> None:
    out = rendezvous_order(THREE, 12345)
    assert sorted(ids(out)) == ["ap", "eu", "us"]
    assert ids(out) == ids(rendezvous_order(list(reversed(THREE)), 12345))  # input order does not matter


def test_selection_starts_out_depending_on_nothing() -> None:
    s = sel()
    assert (s.vary, s.scope) == (VARY_NONE, 0)
    s.depends_on(16)
    s.depends_on(8)
    assert (s.vary, s.scope) == (VARY_CLIENT, 16)  # scope only widens
    s.per_query()
    assert s.vary == VARY_QUERY
    s.depends_on(4)
    assert s.vary == VARY_QUERY  # never narrowed back


def test_selection_subnet_key_masks_host_bits_and_separates_families() -> None:
    assert sel("10.1.2.3").subnet_key(24, 56) == sel("10.1.2.200").subnet_key(24, 56)
    assert sel("10.1.2.3").subnet_key(24, 56) != sel("10.1.3.3").subnet_key(24, 56)
    assert sel("2001:db8:0:1::1").subnet_key(24, 56) == sel("2001:db8:0:1:ffff::1").subnet_key(24, 56)
    assert sel("2001:db8:0:100::1").subnet_key(24, 56) != sel("2001:db8:0:200::1").subnet_key(24, 56)
    # 0.0.0.0/24 and ::/56 are different subnets
    assert sel("0.0.0.1").subnet_key(24, 56) != sel("::1").subnet_key(24, 56)
    # an IPv4-mapped resolver address stands for its IPv4 address
    assert sel("::ffff:10.1.2.3").subnet_key(24, 56) == sel("10.1.2.9").subnet_key(24, 56)
    # ECS: the subnet, not the resolver
    assert sel("192.0.2.1", ecs="10.1.2.0/24").subnet_key(24, 56) == sel("10.1.2.7").subnet_key(24, 56)


def test_selection_location_widens_scope_to_the_geoip_network(geo: GeoDatabase) -> None:
    s = sel("192.0.2.1", ecs=f"{LONDON}/32", geo=geo)
    loc = s.location()
    assert loc is not None and loc.country == "GB"
    assert (s.vary, s.scope) == (VARY_LOCATION, 27)
    assert s.record is not None and s.record == geo.locate(ip_address(LONDON))[2]
    assert s.trace and "GB" in s.trace[-1]
    no_db = sel(LONDON)
    assert no_db.location() is None
    assert (no_db.vary, no_db.scope) == (VARY_NONE, 0)


# --------------------------------------------------------------------------- every policy


@pytest.mark.parametrize("policy", EVERY_POLICY)
@pytest.mark.parametrize("client", CLIENTS)
def test_one_site_left_answers_with_it(policy: Any, client: dict[str, Any]) -> None:
    snap = with_down(snapshot_for({"policy": policy, "endpoints": STD_ENDPOINTS}), {"us", "ap"})
    for qid in range(5):
        answer = ask(snap, qid=qid, **client)
        assert answer.rcode == NOERROR
        assert addrs(answer) == ["192.0.2.20"]


@pytest.mark.parametrize("policy", EVERY_POLICY)
@pytest.mark.parametrize("client", CLIENTS)
def test_all_down_fallback_all_lets_the_policy_choose_among_every_enabled_endpoint(
        policy: Any, client: dict[str, Any]) -> None:
    up = snapshot_for({"policy": policy, "endpoints": STD_ENDPOINTS})
    down = with_down(up, {"us", "eu", "ap"})
    for qid in range(5):
        # fail open: the same answer as when everything is up
        assert addrs(ask(down, qid=qid, **client)) == addrs(ask(up, qid=qid, **client))
        assert addrs(ask(down, qid=qid, **client))


@pytest.mark.parametrize("policy", EVERY_POLICY)
def test_all_down_fallback_servfail_and_empty(policy: Any) -> None:
    for mode, rcode in (("servfail", SERVFAIL), ("empty", NOERROR)):
        snap = with_down(snapshot_for({"policy": policy, "fallback": mode, "endpoints": STD_ENDPOINTS}),
                         {"us", "eu", "ap"})
        answer = ask(snap, ecs=f"{LONDON}/32")
        assert answer.rcode == rcode
        assert answer.answer == ()


@pytest.mark.parametrize("policy", EVERY_POLICY)
def test_all_down_fallback_pool_answers_from_the_pool(policy: Any) -> None:
    service = {"policy": policy, "endpoints": STD_ENDPOINTS,
               "fallback": {"mode": "pool", "endpoints": [
                   {"site": "us-east", "name": "spare", "ipv4": "198.51.100.7"}]}}
    snap = with_down(snapshot_for(service), {"us", "eu", "ap"})
    for ecs in (f"{LONDON}/32", f"{MILTON}/32", None):
        assert addrs(ask(snap, ecs=ecs)) == ["198.51.100.7"]


def test_choose_endpoints_with_nothing_usable() -> None:
    for mode, want in (("all", ["us", "eu", "ap"]), ("empty", []), ("servfail", None)):
        snap = with_down(snapshot_for({"policy": {"type": "all"}, "fallback": mode, "endpoints": STD_ENDPOINTS}),
                         {"us", "eu", "ap"})
        s = sel()
        got = choose_endpoints(snap.services[NAME], T_A, s)
        assert (None if got is None else ids(got)) == want
        assert any("fallback" in note for note in s.trace or [])


# --------------------------------------------------------------------------- all


def test_all_keeps_config_order_and_depends_on_nothing() -> None:
    s = sel()
    assert ids(make("all").select(THREE, s)) == ["us", "eu", "ap"]
    assert (s.vary, s.scope) == (VARY_NONE, 0)


# --------------------------------------------------------------------------- round_robin


def test_round_robin_rotates_by_query_id_and_varies_per_query() -> None:
    policy = make("round_robin")
    for qid in range(12):
        s = sel(qid=qid)
        start = qid % 3
        assert ids(policy.select(THREE, s)) == ids([*THREE[start:], *THREE[:start]])
        assert s.vary == VARY_QUERY
        assert s.scope == 0


def test_round_robin_single_candidate_is_not_per_query() -> None:
    s = sel(qid=7)
    assert ids(make("round_robin").select([EU], s)) == ["eu"]
    assert s.vary == VARY_NONE


def test_round_robin_through_resolve_marks_vary_query_and_spreads_evenly() -> None:
    snap = snapshot_for({"policy": {"type": "round_robin"}, "answers": 1, "endpoints": STD_ENDPOINTS})
    seen: Counter[str] = Counter()
    for qid in range(300):
        answer = ask(snap, qid=qid)
        assert answer.vary == VARY_QUERY
        assert len(answer.answer) == 1
        seen[addrs(answer)[0]] += 1
    assert seen == {"192.0.2.10": 100, "192.0.2.20": 100, "192.0.2.30": 100}


# --------------------------------------------------------------------------- weighted

WEIGHTS = {"w1": 1, "w2": 2, "w3": 3, "w4": 4}
WEIGHTED_EPS = [ep(name, "us-east", v4=f"192.0.2.{i + 1}", weight=w) for i, (name, w) in enumerate(WEIGHTS.items())]


def test_weighted_per_query_converges_to_the_weight_ratios() -> None:
    policy = make("weighted")
    counts: Counter[str] = Counter()
    for qid in range(20_000):
        s = sel("192.0.2.1", qid=qid)
        counts[first(policy, WEIGHTED_EPS, s)] += 1
        assert s.vary == VARY_QUERY
        assert s.scope == 0
    assert_shares(counts, WEIGHTS, 20_000)


def test_weighted_per_query_is_a_pure_function_of_the_query_id() -> None:
    policy = make("weighted")
    for qid in range(50):
        assert ids(policy.select(WEIGHTED_EPS, sel("192.0.2.1", qid=qid))) == \
            ids(policy.select(WEIGHTED_EPS, sel("198.51.100.9", qid=qid)))


def test_weighted_sticky_converges_to_the_weight_ratios_over_client_subnets() -> None:
    policy = make("weighted", sticky=True)
    counts: Counter[str] = Counter()
    for address in subnets_v4(20_000):
        s = sel(address)
        counts[first(policy, WEIGHTED_EPS, s)] += 1
        assert (s.vary, s.scope) == (VARY_CLIENT, 24)
    assert_shares(counts, WEIGHTS, 20_000)


def test_weighted_sticky_converges_to_the_weight_ratios_over_ipv6_subnets() -> None:
    policy = make("weighted", sticky=True)
    counts: Counter[str] = Counter()
    for address in subnets_v6(20_000, base="2001:db8::"):
        s = sel(address)
        counts[first(policy, WEIGHTED_EPS, s)] += 1
        assert (s.vary, s.scope) == (VARY_CLIENT, 56)
    assert_shares(counts, WEIGHTS, 20_000)


def test_weighted_equal_weights_tie_splits_evenly() -> None:
    eps = [ep(f"e{i}", "us-east", v4=f"192.0.2.{i + 1}") for i in range(4)]
    counts_q: Counter[str] = Counter(first(make("weighted"), eps, sel(qid=q)) for q in range(20_000))
    counts_s: Counter[str] = Counter(first(make("weighted", sticky=True), eps, sel(a)) for a in subnets_v4(20_000))
    for counts in (counts_q, counts_s):
        assert_shares(counts, {e.id: 1 for e in eps}, 20_000)


def test_weighted_sticky_keeps_a_client_on_its_endpoint() -> None:
    policy = make("weighted", sticky=True)
    for address in list(subnets_v4(200)):
        base = IPv4Address(address)
        net = IPv4Network(f"{base}/24", strict=False)
        want = first(policy, WEIGHTED_EPS, sel(address, qid=1))
        for host in (0, 1, 254, 255):
            assert first(policy, WEIGHTED_EPS, sel(str(net.network_address + host), qid=host * 7)) == want


def test_weighted_sticky_prefixes_set_the_scope() -> None:
    policy = make("weighted", sticky=True, prefix_v4=16, prefix_v6=48)
    s4 = sel("10.1.2.3")
    policy.select(WEIGHTED_EPS, s4)
    assert (s4.vary, s4.scope) == (VARY_CLIENT, 16)
    s6 = sel("2001:db8:1:2::1")
    policy.select(WEIGHTED_EPS, s6)
    assert (s6.vary, s6.scope) == (VARY_CLIENT, 48)
    # the whole /16 shares one endpoint
    assert len({first(policy, WEIGHTED_EPS, sel(f"10.1.{i}.{i}")) for i in range(256)}) == 1


def test_weighted_sticky_uses_the_ecs_subnet_not_the_resolver() -> None:
    policy = make("weighted", sticky=True)
    by_ecs = [first(policy, WEIGHTED_EPS, sel("192.0.2.1", ecs=f"{a}/32")) for a in subnets_v4(300)]
    direct = [first(policy, WEIGHTED_EPS, sel(a)) for a in subnets_v4(300)]
    assert by_ecs == direct
    assert len(set(by_ecs)) == 4


def test_weighted_zero_weight_only_when_nothing_positive_is_left() -> None:
    eps = [ep("zero-a", v4="192.0.2.1", weight=0), ep("pos-a", v4="192.0.2.2", weight=3),
           ep("zero-b", v4="192.0.2.3", weight=0), ep("pos-b", v4="192.0.2.4", weight=1)]
    zeros = [e for e in eps if e.weight == 0]
    for sticky in (False, True):
        policy = make("weighted", sticky=sticky)
        for i, address in enumerate(subnets_v4(2000)):
            out = policy.select(eps, sel(address, qid=i))
            assert set(ids(out)) <= {"pos-a", "pos-b"}, "weight 0 must not be answered while a positive one is usable"
        # nothing positive left: the weight-0 ones answer, and both get a share
        winners = Counter(first(policy, zeros, sel(a, qid=i)) for i, a in enumerate(subnets_v4(2000)))
        assert set(winners) == {"zero-a", "zero-b"}
        assert min(winners.values()) > 800


def test_weighted_zero_weight_through_resolve() -> None:
    endpoints = [dict(e, weight=w) for e, w in zip(STD_ENDPOINTS, (0, 1, 0), strict=True)]
    for sticky in (False, True):
        snap = snapshot_for({"policy": {"type": "weighted", "sticky": sticky}, "answers": 1, "endpoints": endpoints})
        for i, address in enumerate(subnets_v4(300)):
            assert addrs(ask(snap, address=address, qid=i)) == ["192.0.2.20"]
        drained = with_down(snap, {"eu"})
        seen = {addrs(ask(drained, address=a, qid=i))[0] for i, a in enumerate(subnets_v4(300))}
        assert seen == {"192.0.2.10", "192.0.2.30"}


def _assignments(policy: Policy, candidates: Sequence[Endpoint], clients: list[str]) -> list[str]:
    return [first(policy, candidates, sel(address)) for address in clients]


@pytest.mark.parametrize("kind,options", [("weighted", {"sticky": True}), ("consistent_hash", {})])
def test_removing_one_of_four_moves_only_its_clients(kind: str, options: dict[str, Any]) -> None:
    policy = make(kind, **options)
    eps = [ep(f"e{i}", "us-east", v4=f"192.0.2.{i + 1}", weight=w) for i, w in enumerate((1, 2, 3, 4))]
    clients = list(subnets_v4(20_000))
    before = _assignments(policy, eps, clients)
    gone = "e2"
    after = _assignments(policy, [e for e in eps if e.id != gone], clients)
    moved = Counter()
    for old, new in zip(before, after, strict=True):
        if old != gone:
            assert new == old, "a client whose endpoint stayed must not move"
        else:
            moved[new] += 1
    assert sum(moved.values()) == before.count(gone) > 0
    assert set(moved) == {"e0", "e1", "e3"}  # its clients spread over every remaining endpoint
    # and when it comes back, exactly those clients return to it
    assert _assignments(policy, eps, clients) == before


@pytest.mark.parametrize("kind,options", [("weighted", {"sticky": True}), ("consistent_hash", {})])
def test_adding_an_endpoint_takes_clients_only_for_itself(kind: str, options: dict[str, Any]) -> None:
    policy = make(kind, **options)
    eps = [ep(f"e{i}", "us-east", v4=f"192.0.2.{i + 1}") for i in range(3)]
    clients = list(subnets_v4(5000))
    before = _assignments(policy, eps, clients)
    after = _assignments(policy, [*eps, ep("new", "us-east", v4="192.0.2.99")], clients)
    changed = [(o, n) for o, n in zip(before, after, strict=True) if o != n]
    assert changed and all(n == "new" for _, n in changed)
    assert abs(len(changed) / len(clients) - 0.25) <= 0.03


# --------------------------------------------------------------------------- consistent_hash


def test_consistent_hash_converges_to_the_weight_ratios_over_client_subnets() -> None:
    policy = make("consistent_hash")
    counts: Counter[str] = Counter()
    for address in subnets_v4(20_000):
        s = sel(address)
        counts[first(policy, WEIGHTED_EPS, s)] += 1
        assert (s.vary, s.scope) == (VARY_CLIENT, 24)
    assert_shares(counts, WEIGHTS, 20_000)


def test_consistent_hash_equal_weights_split_evenly_v4() -> None:
    policy = make("consistent_hash")
    eps = [ep(f"e{i}", "us-east", v4=f"192.0.2.{i + 1}") for i in range(4)]
    assert_shares(Counter(first(policy, eps, sel(a)) for a in subnets_v4(20_000)), {e.id: 1 for e in eps}, 20_000)


def test_consistent_hash_equal_weights_split_evenly_v6() -> None:
    policy = make("consistent_hash")
    eps = [ep(f"e{i}", "us-east", v6=f"2001:db8::{i + 1}") for i in range(4)]
    counts = Counter(first(policy, eps, sel(a)) for a in subnets_v6(20_000, base="2001:db8::"))
    assert_shares(counts, {e.id: 1 for e in eps}, 20_000)
    s = sel("2001:db8:0:1::1")
    policy.select(eps, s)
    assert (s.vary, s.scope) == (VARY_CLIENT, 56)


def test_consistent_hash_is_sticky_per_subnet_and_ignores_query_id() -> None:
    policy = make("consistent_hash", prefix_v4=20, prefix_v6=48)
    for address in subnets_v4(100, base="10.0.0.0"):
        net = IPv4Network(f"{address}/20", strict=False)
        want = first(policy, THREE, sel(address))
        for offset, qid in ((0, 0), (1, 1), (4095, 65535), (300, 4)):
            assert first(policy, THREE, sel(str(net.network_address + offset), qid=qid)) == want
    s = sel("10.1.2.3")
    policy.select(THREE, s)
    assert s.scope == 20


def test_consistent_hash_weight_zero_comes_last() -> None:
    policy = make("consistent_hash")
    eps = [ep("z", v4="192.0.2.1", weight=0), ep("p1", v4="192.0.2.2"), ep("p2", v4="192.0.2.3")]
    for address in subnets_v4(2000):
        assert ids(policy.select(eps, sel(address)))[-1] == "z"
    zeros = [ep("z1", v4="192.0.2.1", weight=0), ep("z2", v4="192.0.2.2", weight=0)]
    assert {first(policy, zeros, sel(a)) for a in subnets_v4(200)} == {"z1", "z2"}


def test_consistent_hash_single_candidate_depends_on_nothing() -> None:
    s = sel("10.1.2.3")
    assert ids(make("consistent_hash").select([AP], s)) == ["ap"]
    assert (s.vary, s.scope) == (VARY_NONE, 0)


# --------------------------------------------------------------------------- failover

FAILOVER = {"groups": [["us-east"], ["eu-west", "ap-northeast"]]}


@pytest.mark.parametrize("options,usable,want", [
    (FAILOVER, THREE, ["us"]),
    (FAILOVER, (EU, AP), ["eu", "ap"]),                       # spill to the next group, ties keep config order
    (FAILOVER, (AP,), ["ap"]),
    ({"groups": [["us-east"]]}, (EU, AP), ["eu", "ap"]),      # endpoints in no group form a last one
    ({"groups": [["us-east"]]}, THREE, ["us"]),
    ({"groups": [["eu"], ["us"]]}, THREE, ["eu"]),            # groups by endpoint id
    ({"groups": [["eu"], ["us"]]}, (US, AP), ["us"]),
    ({"groups": [["ap-northeast", "us-east"]]}, THREE, ["us", "ap"]),  # candidate order inside a group
    ({"groups": [["us-east", "eu-west"], ["eu-west"], ["ap-northeast"]]}, (EU, AP), ["eu"]),
])
def test_failover_groups(options: dict[str, Any], usable: Sequence[Endpoint], want: list[str]) -> None:
    s = sel(LONDON)
    assert ids(make("failover", **options).select(usable, s)) == want
    assert (s.vary, s.scope) == (VARY_NONE, 0)


def test_failover_min_healthy_spills_and_falls_back_to_the_best_partial_group() -> None:
    us1, us2 = ep("us1", "us-east", v4="192.0.2.11"), ep("us2", "us-east", v4="192.0.2.12")
    eu1, eu2 = ep("eu1", "eu-west", v4="192.0.2.21"), ep("eu2", "eu-west", v4="192.0.2.22")
    policy = make("failover", groups=[["us-east"], ["eu-west"]], min_healthy=2)
    assert ids(policy.select([us1, us2, eu1, eu2], sel())) == ["us1", "us2"]
    assert ids(policy.select([us1, eu1, eu2], sel())) == ["eu1", "eu2"]  # us-east below min_healthy
    # no group is healthy enough and nothing is left outside the groups:
    # the highest-priority group that has anything usable
    assert ids(policy.select([us1, eu1], sel())) == ["us1"]
    assert ids(policy.select([eu2], sel())) == ["eu2"]


def test_failover_through_resolve() -> None:
    snap = snapshot_for({"policy": {"type": "failover", **FAILOVER}, "endpoints": STD_ENDPOINTS})
    assert addrs(ask(snap)) == ["192.0.2.10"]
    assert ask(snap).vary == VARY_NONE
    assert addrs(ask(with_down(snap, {"us"}))) == ["192.0.2.20", "192.0.2.30"]
    assert addrs(ask(with_down(snap, {"us", "eu"}))) == ["192.0.2.30"]


# --------------------------------------------------------------------------- topology

TOPOLOGY = {
    "rules": [
        {"cidrs": ["10.0.0.0/8"], "sites": ["us-east"]},
        {"cidrs": ["10.1.2.0/24", "2001:db8:1::/48"], "sites": ["eu-west"]},
        {"countries": ["JP"], "sites": ["ap-northeast", "us-east"]},
        {"continents": ["EU"], "sites": ["eu-west", "us-east"]},
    ],
    "default": ["ap-northeast"],
}


@pytest.mark.parametrize("address,ecs,want", [
    ("10.1.2.3", None, ["eu"]),             # longest prefix first, though the /8 rule is listed first
    ("10.9.9.9", None, ["us"]),
    ("::ffff:10.1.2.3", None, ["eu"]),      # an IPv4-mapped resolver address is its IPv4 address
    ("192.0.2.1", "10.1.2.0/24", ["eu"]),   # ECS wins over the resolver address
    ("10.1.2.3", "10.200.0.0/16", ["us"]),
    ("2001:db8:1::5", None, ["eu"]),
    ("192.0.2.1", f"{JAPAN}/128", ["ap", "us"]),         # country, in the rule's order
    ("192.0.2.1", f"{LONDON}/32", ["eu", "us"]),         # continent
    ("192.0.2.1", f"{LINKOPING}/32", ["eu", "us"]),
    ("192.0.2.1", f"{EU_ONLY}/32", ["eu", "us"]),        # a record with only a continent
    ("192.0.2.1", f"{MILTON}/32", ["ap"]),               # no rule: default
    (UNKNOWN, None, ["ap"]),                             # not in the database: default
    ("192.0.2.1", "2001:db8:2::/48", ["ap"]),
])
def test_topology_rules(geo: GeoDatabase, address: str, ecs: str | None, want: list[str]) -> None:
    s = sel(address, ecs=ecs, geo=geo)
    assert ids(make("topology", **TOPOLOGY).select(THREE, s)) == want
    assert s.vary == VARY_CLIENT


def test_topology_without_a_database_uses_cidrs_then_default() -> None:
    policy = make("topology", **TOPOLOGY)
    assert ids(policy.select(THREE, sel("10.1.2.3"))) == ["eu"]
    assert ids(policy.select(THREE, sel(LONDON))) == ["ap"]


@pytest.mark.parametrize("rules,address,want", [
    # CIDR beats country
    ([{"countries": ["GB"], "sites": ["eu-west"]}, {"cidrs": ["81.2.69.0/24"], "sites": ["ap-northeast"]}],
     LONDON, ["ap"]),
    # country beats continent, whatever the rule order
    ([{"continents": ["AS"], "sites": ["us-east"]}, {"countries": ["CN"], "sites": ["eu-west"]}],
     CHANGCHUN, ["eu"]),
    # ties: the same network or country in two rules -> the first rule wins
    ([{"cidrs": ["81.2.69.0/24"], "sites": ["us-east"]}, {"cidrs": ["81.2.69.0/24"], "sites": ["eu-west"]}],
     LONDON, ["us"]),
    ([{"countries": ["SE"], "sites": ["ap-northeast"]}, {"countries": ["SE"], "sites": ["us-east"]}],
     LINKOPING, ["ap"]),
    ([{"continents": ["OC"], "sites": ["eu-west"]}, {"continents": ["OC"], "sites": ["us-east"]}],
     MELBOURNE, ["eu"]),
])
def test_topology_precedence_and_ties(geo: GeoDatabase, rules: list[dict[str, Any]], address: str,
                                      want: list[str]) -> None:
    policy = make("topology", rules=rules, default=["us-east"])
    assert ids(policy.select(THREE, sel("192.0.2.1", ecs=f"{address}/{ip_address(address).max_prefixlen}",
                                        geo=geo))) == want


def test_topology_falls_through_when_the_rule_sites_are_down(geo: GeoDatabase) -> None:
    policy = make("topology", **TOPOLOGY)
    london = f"{LONDON}/32"
    assert ids(policy.select((US, AP), sel("192.0.2.1", ecs=london, geo=geo))) == ["us"]  # rule's 2nd site
    assert ids(policy.select((AP,), sel("192.0.2.1", ecs=london, geo=geo))) == ["ap"]     # default
    # neither the rule's nor the default's sites are usable: every candidate, unchanged
    assert ids(policy.select((EU, US), sel("192.0.2.1", ecs=f"{MILTON}/32", geo=geo))) == ["eu", "us"]


CIDR_ONLY = {
    "rules": [
        {"cidrs": ["10.0.0.0/8"], "sites": ["us-east"]},
        {"cidrs": ["10.1.2.0/24"], "sites": ["eu-west"]},
        {"cidrs": ["2001:db8::/32"], "sites": ["eu-west"]},
        {"cidrs": ["2001:db8:1::/48"], "sites": ["us-east"]},
    ],
    "default": ["ap-northeast"],
}


@pytest.mark.parametrize("address,ecs,want,scope", [
    # inside the /24: the /24 itself
    ("10.1.2.77", None, ["eu"], 24),
    # in the /8 next to the /24: 10.1.3.5 and 10.1.2.0 share 23 bits, so /24 is needed to exclude it
    ("10.1.3.5", None, ["us"], 24),
    # 10.1.0.1 shares 22 bits with 10.1.2.0: 10.1.0.0/23 already excludes the /24
    ("10.1.0.1", None, ["us"], 23),
    # 10.200.0.1 shares 8 bits with 10.1.2.0: /9 (10.128.0.0/9) excludes it; the /8 match needs 8
    ("10.200.0.1", None, ["us"], 9),
    # no match: 11.0.0.1 shares 7 bits with 10/8: /8 excludes both rules
    ("11.0.0.1", None, ["ap"], 8),
    # no match: 192.0.2.1 differs from 10/8 in the first bit
    ("192.0.2.1", None, ["ap"], 1),
    # ECS: the subnet's address is matched; the scope may exceed the source prefix (RFC 7871 7.2.1)
    ("192.0.2.1", "10.1.0.0/16", ["us"], 23),
    # IPv6: 2001:db8:2:: and 2001:db8:1:: share 46 bits -> /47
    ("2001:db8:2::5", None, ["eu"], 47),
    ("2001:db8:1::5", None, ["us"], 48),
    ("2001:db9::1", None, ["ap"], 32),
])
def test_topology_cidr_scope_excludes_non_matching_rules(address: str, ecs: str | None, want: list[str],
                                                         scope: int) -> None:
    s = sel(address, ecs=ecs)
    assert ids(make("topology", **CIDR_ONLY).select(THREE, s)) == want
    assert (s.vary, s.scope) == (VARY_CLIENT, scope)


def _longest_match(address: IPv4Address, nets: list[tuple[IPv4Network, int]]) -> int | None:
    best: tuple[int, int] | None = None
    for i, (net, rule) in enumerate(nets):
        if address in net and (best is None or net.prefixlen > nets[best[0]][0].prefixlen):
            best = (i, rule)
    return None if best is None else best[1]


def test_topology_scope_is_sound_for_random_rule_sets() -> None:
    """Property: every address inside the reported client/scope network gets the same rule
    (RFC 7871 7.3.1: a cached answer is reused for the whole scope network)."""
    rng = random.Random(7871)
    sites = ["us-east", "eu-west", "ap-northeast"]
    for _ in range(150):
        nets: list[tuple[IPv4Network, int]] = []
        rules = []
        for r in range(rng.randint(1, 6)):
            prefix = rng.randint(8, 30)
            net = IPv4Network((0x0A000000 | rng.getrandbits(24) & ~((1 << (32 - prefix)) - 1) & 0xFFFFFF, prefix))
            nets.append((net, r))
            rules.append({"cidrs": [str(net)], "sites": [sites[r % 3]]})
        policy = make("topology", rules=rules)
        for _ in range(10):
            address = IPv4Address(0x0A000000 | rng.getrandbits(24)) if rng.random() < 0.7 else \
                IPv4Address(nets[rng.randrange(len(nets))][0].network_address + rng.randint(0, 3))
            s = sel(str(address))
            policy.select(THREE, s)
            want = _longest_match(address, nets)
            block = IPv4Network(f"{address}/{s.scope}", strict=False)
            probes = [block.network_address, block.broadcast_address,
                      *(block.network_address + rng.randrange(block.num_addresses) for _ in range(20))]
            for probe in probes:
                got = _longest_match(probe, nets)
                assert got == want or nets[got][0] == nets[want][0], (
                    f"{probe} in {block} (scope of {address}) matches rule {got}, {address} matches {want}; "
                    f"rules {[str(n) for n, _ in nets]}")


def test_topology_country_rule_scope_is_the_geoip_network(geo: GeoDatabase) -> None:
    s = sel("192.0.2.1", ecs=f"{LONDON}/32", geo=geo)
    make("topology", rules=[{"countries": ["GB"], "sites": ["eu-west"]}]).select(THREE, s)
    assert (s.vary, s.scope) == (VARY_LOCATION, 27)


# --------------------------------------------------------------------------- geo


@pytest.mark.parametrize("address,want", [
    (LONDON, "eu"), (LINKOPING, "eu"), (MILTON, "us"), (CHANGCHUN, "ap"), (JAPAN, "ap"), (MELBOURNE, "ap"),
    (EU_ONLY, "eu"),
])
def test_geo_closest_site(geo: GeoDatabase, address: str, want: str) -> None:
    s = sel(address, geo=geo)
    assert ids(make("geo").select(THREE, s)) == [want]
    assert s.vary == VARY_LOCATION
    assert s.scope == geo.locate(ip_address(address))[1]


def test_geo_scope_from_the_fixture_networks(geo: GeoDatabase) -> None:
    for address, scope in ((LONDON, 27), (LINKOPING, 25), (MILTON, 29), (CHANGCHUN, 24), (JAPAN, 32)):
        s = sel("192.0.2.1", ecs=f"{address}/{ip_address(address).max_prefixlen}", geo=geo)
        make("geo").select(THREE, s)
        assert (address, s.scope) == (address, scope)


@pytest.mark.parametrize("bias,want", [
    ({}, "eu"),
    ({"us-east": 89}, "eu"),    # 5898 km x 0.11 = 649 km > 637 km
    ({"us-east": 90}, "us"),    # 5898 km x 0.10 = 590 km < 637 km
    ({"eu-west": -99, "us-east": 80}, "us"),  # 637 x 1.99 = 1268 > 5898 x 0.2 = 1180
    ({"eu-west": -99, "us-east": 78}, "eu"),  # 1268 < 5898 x 0.22 = 1298
])
def test_geo_bias_changes_the_winner(geo: GeoDatabase, bias: dict[str, int], want: str) -> None:
    assert ids(make("geo", bias=bias).select(THREE, sel(LONDON, geo=geo))) == [want]


@pytest.mark.parametrize("options,address,want", [
    ({"countries": {"GB": ["us-east"]}}, LONDON, ["us"]),
    ({"countries": {"GB": ["us-east"]}}, LINKOPING, ["eu"]),            # other countries: distance
    ({"continents": {"EU": ["ap-northeast"]}}, LINKOPING, ["ap"]),
    ({"continents": {"EU": ["ap-northeast"]}}, EU_ONLY, ["ap"]),
    ({"countries": {"GB": ["us-east"]}, "continents": {"EU": ["ap-northeast"]}}, LONDON, ["us"]),  # country first
    ({"countries": {"GB": ["us-east"]}, "continents": {"EU": ["ap-northeast"]}}, LINKOPING, ["ap"]),
    ({"countries": {"GB": ["ap-northeast", "us-east"]}}, LONDON, ["us"]),  # closest among the preferred
    ({"countries": {"GB": ["ap-northeast", "us-east"]}, "sites": 2}, LONDON, ["us", "ap"]),
])
def test_geo_country_and_continent_preferences(geo: GeoDatabase, options: dict[str, Any], address: str,
                                               want: list[str]) -> None:
    assert ids(make("geo", **options).select(THREE, sel(address, geo=geo))) == want


def test_geo_preference_for_unusable_sites_is_ignored(geo: GeoDatabase) -> None:
    policy = make("geo", countries={"GB": ["ap-northeast"]}, continents={"EU": ["ap-northeast"]})
    assert ids(policy.select((US, EU), sel(LONDON, geo=geo))) == ["eu"]


@pytest.mark.parametrize("options,db,want", [
    ({"default_sites": ["us-east"]}, True, ["us"]),
    ({"default_sites": ["ap-northeast", "us-east"]}, True, ["us", "ap"]),   # candidate order
    ({}, True, ["us", "eu", "ap"]),                                         # every candidate, unchanged
    ({"default_sites": ["us-east"]}, False, ["us"]),                        # no database at all
    ({}, False, ["us", "eu", "ap"]),
])
def test_geo_unknown_location(geo: GeoDatabase, options: dict[str, Any], db: bool, want: list[str]) -> None:
    for address in (UNKNOWN, "10.0.0.1"):
        s = sel(address, geo=geo if db else None)
        assert ids(make("geo", **options).select(THREE, s)) == want
        if not db:
            assert (s.vary, s.scope) == (VARY_NONE, 0)


def test_geo_default_sites_that_are_down_keep_every_candidate(geo: GeoDatabase) -> None:
    assert ids(make("geo", default_sites=["us-east"]).select((EU, AP), sel(UNKNOWN, geo=geo))) == ["eu", "ap"]


def test_geo_sites_two_returns_the_two_closest_in_order(geo: GeoDatabase) -> None:
    policy = make("geo", sites=2)
    assert ids(policy.select(THREE, sel(LONDON, geo=geo))) == ["eu", "us"]
    assert ids(policy.select(THREE, sel(MILTON, geo=geo))) == ["us", "ap"]
    assert ids(policy.select(THREE, sel(CHANGCHUN, geo=geo))) == ["ap", "eu"]
    assert ids(make("geo", sites=5).select(THREE, sel(LONDON, geo=geo))) == ["eu", "us", "ap"]


def test_geo_keeps_every_endpoint_of_the_chosen_site(geo: GeoDatabase) -> None:
    eu2 = ep("eu2", "eu-west", v4="192.0.2.21")
    assert ids(make("geo").select((US, EU, eu2, AP), sel(LONDON, geo=geo))) == ["eu", "eu2"]


TWINS = {"fra-a": (50.1, 8.7), "fra-b": (50.1, 8.7), "us-east": (38.9, -77.0)}
FRA_A, FRA_B = ep("a", "fra-a", v4="192.0.2.1"), ep("b", "fra-b", v4="192.0.2.2")
US_T = ep("u", "us-east", v4="192.0.2.3")


LONDON_BLOCK = [str(IPv4Address(LONDON) + i) for i in range(32)]  # 81.2.69.160/27: every address is London


def test_geo_tie_is_broken_by_client_subnet_and_stable_per_client_v4(geo: GeoDatabase) -> None:
    # prefix_v4 32: each address of the London /27 is its own subnet for the tie-break
    policy = make("geo", coordinates=TWINS, prefix_v4=32)
    winners = [first(policy, (FRA_A, FRA_B, US_T), sel(a, geo=geo)) for a in LONDON_BLOCK]
    assert set(winners) == {"a", "b"}
    for address, want in zip(LONDON_BLOCK, winners, strict=True):
        s = sel("192.0.2.1", ecs=f"{address}/32", geo=geo, qid=99)
        assert first(policy, (FRA_B, US_T, FRA_A), s) == want  # another query, another input order
        assert (s.vary, s.scope) == (VARY_CLIENT, 32)         # the tie used the /32
    # with the default /24 the whole block is one subnet: one site for all of it
    assert len({first(make("geo", coordinates=TWINS), (FRA_A, FRA_B), sel(a, geo=geo)) for a in LONDON_BLOCK}) == 1
    # no tie: the scope stays the GeoIP network's
    s = sel(LONDON, geo=geo)
    make("geo", prefix_v4=32).select(THREE, s)
    assert s.scope == 27


def test_geo_tie_is_broken_by_client_subnet_evenly_and_stably_v6(geo: GeoDatabase) -> None:
    policy = make("geo", coordinates=TWINS)
    clients = list(subnets_v6(4000))  # distinct /56s inside 2a02:d180::/29 (DE): all equally far from both
    winners = [first(policy, (FRA_A, FRA_B, US_T), sel(a, geo=geo)) for a in clients]
    for address, want in list(zip(clients, winners, strict=True))[:300]:
        s = sel(address, geo=geo, qid=99)
        # the same client keeps its site: other hosts of its /56, another query, reversed input order
        other_host = str(IPv6Address(int(IPv6Address(address)) ^ 0xFFFF_0000_0000))
        assert first(policy, (FRA_B, US_T, FRA_A), s) == want
        assert first(policy, (FRA_A, FRA_B, US_T), sel(other_host, geo=geo)) == want
        assert (s.vary, s.scope) == (VARY_CLIENT, 56)  # the tie used the /56
    counts = Counter(winners)
    assert set(counts) == {"a", "b"}, f"every IPv6 /56 got the same site: {counts}"
    assert abs(counts["a"] / len(clients) - 0.5) <= 0.03


def test_geo_tie_with_sites_two_returns_both(geo: GeoDatabase) -> None:
    policy = make("geo", coordinates=TWINS, sites=2)
    for address in [*subnets_v6(50), *LONDON_BLOCK]:
        assert sorted(ids(policy.select((FRA_A, FRA_B, US_T), sel(address, geo=geo)))) == ["a", "b"]


def test_geo_tie_km_decides_what_counts_as_a_tie(geo: GeoDatabase) -> None:
    near = {"x": (50.1, 8.7), "y": (50.1, 8.75), "us-east": (38.9, -77.0)}  # London: x 637.1 km, y 640.5 km
    x, y = ep("x", "x", v4="192.0.2.1"), ep("y", "y", v4="192.0.2.2")
    strict = {first(make("geo", coordinates=near, prefix_v4=32), (x, y), sel(a, geo=geo)) for a in LONDON_BLOCK}
    loose = {first(make("geo", coordinates=near, prefix_v4=32, tie_km=10), (x, y), sel(a, geo=geo))
             for a in LONDON_BLOCK}
    assert strict == {"x"}  # default tie_km 1: the nearer one always wins
    assert loose == {"x", "y"}


def test_geo_one_site_left_needs_no_location(geo: GeoDatabase) -> None:
    eu2 = ep("eu2", "eu-west", v4="192.0.2.21")
    s = sel(MILTON, geo=geo)
    assert ids(make("geo").select((EU, eu2), s)) == ["eu", "eu2"]
    assert (s.vary, s.scope) == (VARY_NONE, 0)


def _located_clients(geo: GeoDatabase) -> list[str]:
    """One address per network of the City test database that has a location."""
    out = []
    with maxminddb.open_database(str(CITY)) as reader:
        for network, _record in reader:
            address = network.network_address
            loc, _prefix, _record = geo.locate(address)
            if loc is not None and loc.lat is not None:
                out.append(str(address))
    return out


def test_geo_removing_a_site_moves_only_its_clients(geo: GeoDatabase) -> None:
    clients = _located_clients(geo)
    assert len(clients) > 100
    policy = make("geo")
    before = [first(policy, THREE, sel(a, geo=geo)) for a in clients]
    assert set(before) == {"us", "eu", "ap"}
    for gone in ("us", "eu", "ap"):
        rest = [e for e in THREE if e.id != gone]
        after = [first(policy, rest, sel(a, geo=geo)) for a in clients]
        for address, old, new in zip(clients, before, after, strict=True):
            if old != gone:
                assert new == old, f"{address} moved from {old} to {new} when {gone} left"
            else:
                assert new != gone


# --------------------------------------------------------------------------- chains


@pytest.mark.parametrize("ecs,want,scope", [
    (f"{CHANGCHUN}/32", "192.0.2.20", 24),   # topology leaves us-east/eu-west; geo picks eu-west (7902 km)
    (f"{JAPAN}/128", "192.0.2.20", 32),      # not ap-northeast, though it is 5 km away
    (f"{MILTON}/32", "192.0.2.10", 29),      # default: all three; geo: us-east
    (f"{LONDON}/32", "192.0.2.20", 27),
    (f"{MELBOURNE}/32", "192.0.2.30", 24),
])
def test_chain_topology_then_geo(ecs: str, want: str, scope: int) -> None:
    snap = snapshot_for({"policy": [
        {"type": "topology", "rules": [{"continents": ["AS"], "sites": ["us-east", "eu-west"]}],
         "default": ["us-east", "eu-west", "ap-northeast"]},
        {"type": "geo"},
    ], "endpoints": STD_ENDPOINTS})
    answer = ask(snap, ecs=ecs)
    assert addrs(answer) == [want]
    assert (answer.vary, answer.scope) == (VARY_LOCATION, scope)
    assert answer.record is not None


def test_chain_geo_then_consistent_hash() -> None:
    endpoints = [
        {"site": "eu-west", "name": "eu-a", "ipv4": "192.0.2.21"},
        {"site": "eu-west", "name": "eu-b", "ipv4": "192.0.2.22"},
        *STD_ENDPOINTS,
    ]
    snap = snapshot_for({"policy": [{"type": "geo"}, {"type": "consistent_hash", "prefix_v4": 32}],
                         "answers": 1, "endpoints": endpoints})
    london_block = [str(IPv4Address(LONDON) + i) for i in range(32)]  # 81.2.69.160/27, all London
    seen: Counter[str] = Counter()
    for address in london_block:
        answer = ask(snap, ecs=f"{address}/32")
        got = addrs(answer)
        assert len(got) == 1 and got[0] in {"192.0.2.20", "192.0.2.21", "192.0.2.22"}
        assert (answer.vary, answer.scope) == (VARY_CLIENT, 32)
        assert addrs(ask(snap, ecs=f"{address}/32", qid=777)) == got  # sticky
        seen[got[0]] += 1
    assert len(seen) == 3  # every endpoint of the closest site gets some clients
    assert addrs(ask(snap, ecs=f"{MILTON}/32")) == ["192.0.2.10"]
    # the site's endpoints drop one by one: its clients move inside the site, never elsewhere
    drained = with_down(snap, {"eu-a", "eu"})
    assert {addrs(ask(drained, ecs=f"{a}/32"))[0] for a in london_block} == {"192.0.2.22"}


def test_chain_geo_then_round_robin_varies_per_query() -> None:
    endpoints = [{"site": "eu-west", "name": "eu-a", "ipv4": "192.0.2.21"}, *STD_ENDPOINTS]
    snap = snapshot_for({"policy": [{"type": "geo"}, {"type": "round_robin"}], "answers": 1,
                         "endpoints": endpoints})
    got = Counter(addrs(ask(snap, ecs=f"{LONDON}/32", qid=q))[0] for q in range(20))
    assert got == {"192.0.2.21": 10, "192.0.2.20": 10}
    assert ask(snap, ecs=f"{LONDON}/32").vary == VARY_QUERY


# --------------------------------------------------------------------------- check() through the config


def _errors(policy: Any) -> dict[str, str]:
    text = config_yaml({"policy": policy, "endpoints": STD_ENDPOINTS})
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    return {e.dotted: e.message for e in info.value.errors}


P = f"services[{NAME}].policy"


@pytest.mark.parametrize("policy,path,fragment", [
    ({"type": "geo", "bias": {"nowhere": 10}}, f"{P}.bias.nowhere", "unknown site 'nowhere'"),
    ({"type": "geo", "bias": {"eu-west": 150}}, f"{P}.bias.eu-west", "between -99 and 99"),
    ({"type": "geo", "countries": {"GB": ["eu-west", "nope"]}}, f"{P}.countries.GB[1]", "unknown site 'nope'"),
    ({"type": "geo", "continents": {"EU": ["mars"]}}, f"{P}.continents.EU[0]", "unknown site 'mars'"),
    ({"type": "geo", "default_sites": ["zz"]}, f"{P}.default_sites[0]", "unknown site 'zz'"),
    ({"type": "topology", "rules": [{"countries": ["GB"], "sites": ["eu-west", "moon"]}]},
     f"{P}.rules[0].sites[1]", "unknown site 'moon'"),
    ({"type": "topology", "default": ["moon"]}, f"{P}.default[0]", "unknown site 'moon'"),
    ({"type": "topology", "rules": [{"sites": ["eu-west"]}]}, f"{P}.rules[0]", "cidrs, countries or continents"),
    ({"type": "failover", "groups": [["us-east"], ["moon"]]}, f"{P}.groups[1][0]", "neither a site nor"),
    ([{"type": "topology", "rules": [{"continents": ["EU"], "sites": ["eu-west"]}]},
      {"type": "geo", "bias": {"nowhere": 10}}], f"{P}[1].bias.nowhere", "unknown site 'nowhere'"),
])
def test_check_reports_unknown_sites_at_their_field_path(policy: Any, path: str, fragment: str) -> None:
    errors = _errors(policy)
    assert path in errors, f"expected an error at {path}, got {errors}"
    assert fragment in errors[path]


def test_check_reports_every_problem_at_once() -> None:
    errors = _errors({"type": "geo", "bias": {"nowhere": 10, "eu-west": 5},
                      "countries": {"GB": ["nope"]}, "default_sites": ["zz"]})
    assert len(errors) == 3
    assert all("unknown site" in message for message in errors.values())


def test_check_accepts_endpoint_ids_in_failover_groups_and_known_sites() -> None:
    text = config_yaml({"policy": [{"type": "failover", "groups": [["eu"], ["us-east", "ap"]]},
                                   {"type": "geo", "bias": {"eu-west": -20}, "countries": {"GB": ["eu-west"]},
                                    "default_sites": ["us-east"]}],
                        "endpoints": STD_ENDPOINTS})
    loaded = load_config_text(text)
    snap = build_snapshot(loaded.compiled)
    assert addrs(ask(snap, ecs=f"{LONDON}/32")) == ["192.0.2.20"]
