"""A GSLB name's answer from a real config, through ``resolve``: fallback modes when no
endpoint is usable, ``answers`` trimming, address families, CNAME endpoints, and a GSLB
name at the zone apex."""

from __future__ import annotations

import dataclasses
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml

from gslb.config import load_config_text
from gslb.endpoint import Client
from gslb.errors import ConfigError
from gslb.policies import VARY_NONE
from gslb.resolve import (
    NOERROR,
    SERVFAIL,
    T_A,
    T_AAAA,
    T_ANY,
    T_CNAME,
    T_MX,
    T_NS,
    T_SOA,
    Answer,
    Query,
    resolve,
)
from gslb.snapshot import Snapshot, build_snapshot

ROOT = Path(__file__).resolve().parents[2]
APEX = "gslb.example.com"
NAME = f"app.{APEX}"
SITES = {
    "us-east": {"lat": 38.9, "lon": -77.0, "country": "US", "continent": "NA"},
    "eu-west": {"lat": 50.1, "lon": 8.7, "country": "DE", "continent": "EU"},
    "ap-northeast": {"lat": 35.7, "lon": 139.7, "country": "JP", "continent": "AS"},
}
US = {"site": "us-east", "name": "us", "ipv4": "192.0.2.10", "ipv6": "2001:db8:10::10"}
EU = {"site": "eu-west", "name": "eu", "ipv4": "192.0.2.20", "ipv6": "2001:db8:20::20"}
AP = {"site": "ap-northeast", "name": "ap", "ipv4": "192.0.2.30", "ipv6": "2001:db8:30::30"}


def off(endpoint: dict[str, Any]) -> dict[str, Any]:
    return {**endpoint, "enabled": False}


def config(services: dict[str, dict[str, Any]], *, records: list[dict[str, Any]] | None = None,
           geoip: bool = False) -> str:
    doc: dict[str, Any] = {
        "zones": {APEX: {
            "ttl": 300,
            "nameservers": [{"name": f"ns1.{APEX}", "addresses": ["192.0.2.53"]}],
            "records": records or [
                {"name": "mail", "type": "A", "address": "192.0.2.25"},
                {"name": "@", "type": "MX", "preference": 10, "exchange": f"mail.{APEX}"},
            ],
        }},
        "sites": SITES,
        "services": services,
    }
    if geoip:
        doc["geoip"] = {"database": "config/geoip/GeoIP2-City-Test.mmdb"}
    return yaml.safe_dump(doc, sort_keys=False)


def snapshot(service: dict[str, Any] | None = None, *, services: dict[str, dict[str, Any]] | None = None,
             **kwargs: Any) -> Snapshot:
    text = config(services if services is not None else {NAME: service or {}}, **kwargs)
    return build_snapshot(load_config_text(text, base_dir=ROOT).compiled)


def ask(snap: Snapshot, qtype: int = T_A, *, name: str = NAME, client: str = "192.0.2.1",
        ecs: str | None = None, qid: int = 0) -> Answer:
    return resolve(snap, Query(name, qtype), Client(ip_address(client), ip_network(ecs) if ecs else None, qid),
                   trace=[])


def data(answer: Answer) -> list[str]:
    return [str(rr.rdata) for rr in answer.answer]


def assert_nodata(answer: Answer) -> None:
    assert answer.rcode == NOERROR
    assert answer.authoritative
    assert answer.answer == ()
    assert [rr.rtype for rr in answer.authority] == [T_SOA]


def unusable(snap: Snapshot) -> Snapshot:
    """Every endpoint enabled but not usable (what failed health checks leave)."""
    services = {n: dataclasses.replace(t, candidates=()) for n, t in snap.services.items()}
    return dataclasses.replace(snap, services=services)


# --------------------------------------------------------------------------- fallback modes

POOL = [{"site": "us-east", "name": "spare-1", "ipv4": "198.51.100.1", "ipv6": "2001:db8:99::1"},
        {"site": "eu-west", "name": "spare-2", "ipv4": "198.51.100.2"}]


@pytest.mark.parametrize("fallback,a,aaaa", [
    (None, None, None),           # default 'all': every *enabled* endpoint, and none is -> NODATA
    ("all", None, None),
    ({"mode": "pool", "endpoints": POOL}, ["198.51.100.1", "198.51.100.2"], ["2001:db8:99::1"]),
    ({"mode": "static", "addresses": ["203.0.113.5", "2001:db8:5::5", "203.0.113.6"]},
     ["203.0.113.5", "203.0.113.6"], ["2001:db8:5::5"]),
    ("empty", None, None),
    ("servfail", "SERVFAIL", "SERVFAIL"),
])
def test_fallback_modes_with_every_endpoint_disabled(fallback: Any, a: Any, aaaa: Any) -> None:
    service: dict[str, Any] = {"ttl": 30, "endpoints": [off(US), off(EU), off(AP)]}
    if fallback is not None:
        service["fallback"] = fallback
    snap = snapshot(service)
    for qtype, want in ((T_A, a), (T_AAAA, aaaa)):
        answer = ask(snap, qtype)
        if want == "SERVFAIL":
            assert answer.rcode == SERVFAIL
            assert not answer.authoritative
            assert answer.answer == answer.authority == ()
        elif want is None:
            assert_nodata(answer)
        else:
            assert answer.rcode == NOERROR and answer.authoritative
            assert data(answer) == want
            assert all(rr.ttl == 30 for rr in answer.answer)
            assert all(str(rr.rname) == f"{NAME}." for rr in answer.answer)


def test_fallback_all_answers_every_enabled_endpoint_when_none_is_usable() -> None:
    snap = unusable(snapshot({"endpoints": [US, off(EU), AP]}))
    assert data(ask(snap)) == ["192.0.2.10", "192.0.2.30"]
    assert data(ask(snap, T_AAAA)) == ["2001:db8:10::10", "2001:db8:30::30"]
    # the policy still chooses among them
    snap = unusable(snapshot({"endpoints": [US, EU, AP], "answers": 1,
                              "policy": {"type": "failover", "groups": [["ap-northeast"]]}}))
    assert data(ask(snap)) == ["192.0.2.30"]


@pytest.mark.parametrize("mode", ["pool", "static", "empty", "servfail"])
def test_fallback_modes_when_enabled_endpoints_are_unusable(mode: str) -> None:
    service: dict[str, Any] = {"endpoints": [US, EU], "fallback": {"mode": mode}}
    if mode == "pool":
        service["fallback"]["endpoints"] = POOL
    if mode == "static":
        service["fallback"]["addresses"] = ["203.0.113.5"]
    answer = ask(unusable(snapshot(service)))
    want = {"pool": ["198.51.100.1", "198.51.100.2"], "static": ["203.0.113.5"], "empty": [], "servfail": []}[mode]
    assert data(answer) == want
    assert answer.rcode == (SERVFAIL if mode == "servfail" else NOERROR)


@pytest.mark.parametrize("mode", ["pool", "static", "empty", "servfail"])
def test_fallback_is_not_used_while_an_endpoint_is_usable(mode: str) -> None:
    fallback: dict[str, Any] = {"mode": mode}
    if mode == "pool":
        fallback["endpoints"] = POOL
    if mode == "static":
        fallback["addresses"] = ["203.0.113.5"]
    snap = snapshot({"endpoints": [off(US), EU, off(AP)], "fallback": fallback})
    assert data(ask(snap)) == ["192.0.2.20"]
    assert data(ask(snap, T_AAAA)) == ["2001:db8:20::20"]


def test_fallback_pool_is_chosen_by_the_policy_and_trimmed() -> None:
    pool = [{"site": "us-east", "name": "p-us", "ipv4": "198.51.100.1"},
            {"site": "eu-west", "name": "p-eu", "ipv4": "198.51.100.2"},
            {"site": "ap-northeast", "name": "p-ap", "ipv4": "198.51.100.3"}]
    snap = snapshot({"endpoints": [off(US), off(EU)], "policy": {"type": "geo"},
                     "fallback": {"mode": "pool", "endpoints": pool}}, geoip=True)
    assert data(ask(snap, ecs="81.2.69.160/32")) == ["198.51.100.2"]      # London: eu-west
    assert data(ask(snap, ecs="216.160.83.56/32")) == ["198.51.100.1"]    # Milton: us-east
    trimmed = snapshot({"endpoints": [off(US)], "answers": 2, "fallback": {"mode": "pool", "endpoints": pool}})
    assert data(ask(trimmed)) == ["198.51.100.1", "198.51.100.2"]


# --------------------------------------------------------------------------- answers: N


@pytest.mark.parametrize("answers,count", [(None, 3), (1, 1), (2, 2), (3, 3), (64, 3)])
def test_answers_trims(answers: int | None, count: int) -> None:
    service: dict[str, Any] = {"endpoints": [US, EU, AP]}
    if answers is not None:
        service["answers"] = answers
    snap = snapshot(service)
    assert data(ask(snap)) == ["192.0.2.10", "192.0.2.20", "192.0.2.30"][:count]
    assert data(ask(snap, T_AAAA)) == ["2001:db8:10::10", "2001:db8:20::20", "2001:db8:30::30"][:count]


def test_answers_trims_after_the_policy_ordering() -> None:
    snap = snapshot({"endpoints": [US, EU, AP], "answers": 2,
                     "policy": {"type": "failover", "groups": [["ap-northeast", "eu-west"]]}})
    assert data(ask(snap)) == ["192.0.2.20", "192.0.2.30"]  # the group, in config order
    snap = snapshot({"endpoints": [US, EU, AP], "answers": 1, "policy": {"type": "round_robin"}})
    assert [data(ask(snap, qid=q)) for q in range(4)] == [["192.0.2.10"], ["192.0.2.20"], ["192.0.2.30"],
                                                          ["192.0.2.10"]]


def test_answers_zero_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(config({NAME: {"endpoints": [US], "answers": 0}}))
    assert [e.dotted for e in info.value.errors] == [f"services[{NAME}].answers"]


# --------------------------------------------------------------------------- address families


def test_dual_stack_a_and_aaaa() -> None:
    snap = snapshot({"endpoints": [US, EU, AP]})
    a, aaaa = ask(snap, T_A), ask(snap, T_AAAA)
    assert data(a) == ["192.0.2.10", "192.0.2.20", "192.0.2.30"]
    assert data(aaaa) == ["2001:db8:10::10", "2001:db8:20::20", "2001:db8:30::30"]
    assert {rr.rtype for rr in a.answer} == {T_A}
    assert {rr.rtype for rr in aaaa.answer} == {T_AAAA}
    assert a.vary == aaaa.vary == VARY_NONE  # policy 'all' depends on nobody
    # ANY gets one RRset (RFC 8482): the A records
    assert data(ask(snap, T_ANY)) == data(a)


def test_ipv4_only_endpoint_is_not_chosen_for_aaaa() -> None:
    v4_only = {"site": "us-east", "name": "us4", "ipv4": "192.0.2.10"}
    snap = snapshot({"endpoints": [v4_only, EU], "answers": 1})
    assert data(ask(snap, T_A)) == ["192.0.2.10"]
    assert data(ask(snap, T_AAAA)) == ["2001:db8:20::20"]  # not NODATA because the first has no IPv6
    # the family filter comes before the policy: failover spills past the IPv4-only group
    snap = snapshot({"endpoints": [v4_only, EU], "policy": {"type": "failover", "groups": [["us-east"], ["eu-west"]]}})
    assert data(ask(snap, T_A)) == ["192.0.2.10"]
    assert data(ask(snap, T_AAAA)) == ["2001:db8:20::20"]
    # geo: London's closest site has no IPv6, so AAAA goes to the closest that has
    eu4 = {"site": "eu-west", "name": "eu4", "ipv4": "192.0.2.20"}
    snap = snapshot({"endpoints": [US, eu4, AP], "policy": {"type": "geo"}}, geoip=True)
    assert data(ask(snap, T_A, ecs="81.2.69.160/32")) == ["192.0.2.20"]
    assert data(ask(snap, T_AAAA, ecs="81.2.69.160/32")) == ["2001:db8:10::10"]


def test_ipv6_only_endpoint_is_not_chosen_for_a() -> None:
    v6_only = {"site": "us-east", "name": "us6", "ipv6": "2001:db8:10::10"}
    snap = snapshot({"endpoints": [v6_only, EU], "answers": 1})
    assert data(ask(snap, T_A)) == ["192.0.2.20"]
    assert data(ask(snap, T_AAAA)) == ["2001:db8:10::10"]


def test_no_endpoint_of_the_family_is_nodata() -> None:
    snap = snapshot({"endpoints": [{"site": "us-east", "ipv4": "192.0.2.10"},
                                   {"site": "eu-west", "ipv4": "192.0.2.20"}]})
    assert_nodata(ask(snap, T_AAAA))
    assert data(ask(snap, T_A)) == ["192.0.2.10", "192.0.2.20"]
    # a GSLB name of addresses has no CNAME: NODATA too
    assert_nodata(ask(snap, T_CNAME))


# --------------------------------------------------------------------------- CNAME endpoints


def test_cname_endpoint_answers_cname() -> None:
    lb = {"site": "us-east", "name": "lb", "cname": "my-lb.us-east-1.elb.example.net"}
    snap = snapshot({"endpoints": [lb], "ttl": 45})
    for qtype in (T_A, T_AAAA, T_CNAME, T_ANY):
        answer = ask(snap, qtype)
        assert answer.rcode == NOERROR and answer.authoritative
        assert [rr.rtype for rr in answer.answer] == [T_CNAME]
        assert data(answer) == ["my-lb.us-east-1.elb.example.net."]
        assert answer.answer[0].ttl == 45
        assert str(answer.answer[0].rname) == f"{NAME}."


def test_cname_endpoint_into_the_zone_is_chased() -> None:
    lb = {"site": "us-east", "name": "lb", "cname": f"mail.{APEX}"}
    answer = ask(snapshot({"endpoints": [lb]}), T_A)
    assert [rr.rtype for rr in answer.answer] == [T_CNAME, T_A]
    assert data(answer) == [f"mail.{APEX}.", "192.0.2.25"]


def test_cname_endpoint_mixed_with_address_endpoints() -> None:
    lb = {"site": "us-east", "name": "lb", "cname": "lb.example.net"}
    snap = snapshot({"endpoints": [lb, EU], "policy": {"type": "failover", "groups": [["us-east"], ["eu-west"]]}})
    assert data(ask(snap, T_A)) == ["lb.example.net."]
    drained = snapshot({"endpoints": [off(lb), EU],
                        "policy": {"type": "failover", "groups": [["us-east"], ["eu-west"]]}})
    assert data(ask(drained, T_A)) == ["192.0.2.20"]
    assert_nodata(ask(drained, T_CNAME))


def test_static_cname_to_a_gslb_name() -> None:
    snap = snapshot({"endpoints": [US, EU], "answers": 1},
                    records=[{"name": "www", "type": "CNAME", "target": NAME}])
    answer = ask(snap, T_A, name=f"www.{APEX}")
    assert [rr.rtype for rr in answer.answer] == [T_CNAME, T_A]
    assert data(answer) == [f"{NAME}.", "192.0.2.10"]


# --------------------------------------------------------------------------- GSLB name at the apex


def test_gslb_name_at_the_apex() -> None:
    snap = snapshot(services={APEX: {"endpoints": [US, EU], "policy": {"type": "geo"}}}, geoip=True)
    assert data(ask(snap, T_A, name=APEX, ecs="81.2.69.160/32")) == ["192.0.2.20"]
    assert data(ask(snap, T_AAAA, name=APEX, ecs="216.160.83.56/32")) == ["2001:db8:10::10"]
    # the apex keeps its static data
    soa = ask(snap, T_SOA, name=APEX)
    assert [rr.rtype for rr in soa.answer] == [T_SOA]
    assert data(ask(snap, T_NS, name=APEX)) == [f"ns1.{APEX}."]
    assert [rr.rtype for rr in ask(snap, T_MX, name=APEX).answer] == [T_MX]
    # and names below it are unaffected
    assert data(ask(snap, T_A, name=f"mail.{APEX}")) == ["192.0.2.25"]


def test_gslb_name_at_the_apex_with_fallback() -> None:
    snap = snapshot(services={APEX: {"endpoints": [off(US)], "fallback": {"mode": "static",
                                                                          "addresses": ["203.0.113.9"]}}})
    assert data(ask(snap, T_A, name=APEX)) == ["203.0.113.9"]
    empty = snapshot(services={APEX: {"endpoints": [off(US)], "fallback": "empty"}})
    assert_nodata(ask(empty, T_A, name=APEX))


def test_gslb_name_at_the_apex_cannot_have_cname_endpoints() -> None:
    text = config({APEX: {"endpoints": [{"site": "us-east", "cname": "lb.example.net"}]}})
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    errors = {e.dotted: e.message for e in info.value.errors}
    assert f"services[{APEX}].endpoints" in errors
    assert "apex" in errors[f"services[{APEX}].endpoints"]
