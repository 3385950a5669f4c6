"""The answer path's per-name shortcuts (issue 3: resolve() flat across the number of names).

A geo decision is memoised across every name with the same rules and usable sites, each name
maps a decision to its own records once (``ServiceTable.located``), and names with equal
policy options share one policy object. These tests check that the shortcuts answer exactly
what the policy chain answers (``trace=[]`` runs the chain without any memo), never mix up
names, site sets, health states or clients, and that the sharing really happens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path
from typing import Any

import maxminddb
import pytest
import yaml

from gslb.config import load_config_text
from gslb.endpoint import Client
from gslb.policies import VARY_CLIENT, VARY_LOCATION
from gslb.resolve import NOERROR, T_A, T_AAAA, Answer, Query, resolve
from gslb.snapshot import Snapshot, build_snapshot

ROOT = Path(__file__).resolve().parents[2]
CITY = ROOT / "config" / "geoip" / "GeoIP2-City-Test.mmdb"
ZONE = "gslb.example.com"
SITES = {"us-east": (38.9, -77.0, "US", "NA"), "eu-west": (50.1, 8.7, "DE", "EU"),
         "ap-northeast": (35.7, 139.7, "JP", "AS")}
LONDON, MILTON, CHANGCHUN, JAPAN = "81.2.69.160", "216.160.83.56", "175.16.199.1", "2001:218::1"
UNKNOWN = "10.0.0.1"


def endpoint(site: str, i: int, *, v6: bool = True, cname: str | None = None) -> dict[str, Any]:
    number = list(SITES).index(site) + 1
    if cname is not None:
        return {"name": f"{site}-{i}", "site": site, "cname": cname}
    out: dict[str, Any] = {"name": f"{site}-{i}", "site": site, "ipv4": f"198.{17 + number}.{i // 250}.{i % 250 + 1}"}
    if v6:
        out["ipv6"] = f"2001:db8:{number}::{i + 1:x}"
    return out


def config_text(services: dict[str, dict[str, Any]], sites: dict[str, tuple[float, float, str, str]] | None = None
                ) -> str:
    doc: dict[str, Any] = {
        "geoip": {"database": str(CITY)},
        "zones": {ZONE: {
            "nameservers": [{"name": f"ns1.{ZONE}", "addresses": ["192.0.2.53"]}],
            "records": [{"name": "static", "type": "A", "address": "192.0.2.80"}],
        }},
        "sites": {name: {"lat": lat, "lon": lon, "country": country, "continent": continent}
                  for name, (lat, lon, country, continent) in (sites or SITES).items()},
        "services": services,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def snapshot_of(services: dict[str, dict[str, Any]], **kwargs: Any) -> Snapshot:
    return build_snapshot(load_config_text(config_text(services, **kwargs)).compiled)


def ask(snapshot: Snapshot, name: str, client: str, qtype: int = T_A, *, traced: bool = False) -> Answer:
    """A query from resolver 192.0.2.1 with ECS ``client``/32 (or /128); ``traced`` runs the
    policy chain itself, with no memo and no shortcut."""
    subnet = ip_network(f"{client}/{ip_address(client).max_prefixlen}")
    return resolve(snapshot, Query(name, qtype), Client(ip_address("192.0.2.1"), subnet, 7),
                   trace=[] if traced else None)


def addrs(answer: Answer) -> list[str]:
    return [str(rr.rdata) for rr in answer.answer]


def summary(answer: Answer) -> tuple[object, ...]:
    return (answer.rcode, [(str(rr.rname), rr.rtype, rr.ttl, str(rr.rdata)) for rr in answer.answer],
            answer.vary, answer.scope, answer.record, answer.service, answer.sites)


def located_clients() -> list[str]:
    """One address per network of the City test database that has coordinates."""
    out = []
    with maxminddb.open_database(str(CITY)) as reader:
        for network, record in reader:
            if isinstance(record, dict) and (record.get("location") or {}).get("latitude") is not None:
                out.append(str(network.network_address))
    return out


def mixed_services() -> dict[str, dict[str, Any]]:
    """Names that share rules but not sites, rules but not address families, and names
    with their own rules, answer counts and CNAME endpoints."""
    three = ["us-east", "eu-west", "ap-northeast"]
    services: dict[str, dict[str, Any]] = {}
    for i in range(8):
        services[f"three{i}.{ZONE}"] = {"policy": {"type": "geo"},
                                        "endpoints": [endpoint(s, i) for s in three]}
        services[f"two{i}.{ZONE}"] = {"policy": {"type": "geo"},
                                      "endpoints": [endpoint(s, 10 + i) for s in ("us-east", "ap-northeast")]}
        services[f"v4eu{i}.{ZONE}"] = {"policy": {"type": "geo"},
                                       "endpoints": [endpoint(s, 20 + i, v6=s != "eu-west") for s in three]}
        services[f"bias{i}.{ZONE}"] = {"policy": {"type": "geo", "bias": {"us-east": 90}},
                                       "endpoints": [endpoint(s, 30 + i) for s in three]}
        services[f"pair{i}.{ZONE}"] = {"policy": {"type": "geo", "sites": 2}, "answers": 1,
                                       "endpoints": [endpoint(s, 40 + i) for s in three]
                                       + [endpoint("eu-west", 50 + i)]}
        services[f"cname{i}.{ZONE}"] = {"policy": {"type": "geo"},
                                        "endpoints": [endpoint("us-east", 60 + i),
                                                      endpoint("eu-west", 60 + i, cname=f"static.{ZONE}"),
                                                      endpoint("ap-northeast", 60 + i)]}
    return services


@pytest.fixture(scope="module")
def mixed() -> Iterator[Snapshot]:
    snapshot = snapshot_of(mixed_services())
    yield snapshot
    assert snapshot.geo is not None
    snapshot.geo.close()


def test_every_name_answers_what_its_policy_chain_answers(mixed: Snapshot) -> None:
    clients = [*located_clients(), UNKNOWN, "127.0.0.1", "2001:db8::1"]
    assert len(clients) > 100
    names = list(mixed.services)
    shortcut = 0
    for client in clients:          # clients outside, names inside: decisions are shared across names
        for name in names:
            for qtype in (T_A, T_AAAA):
                want = summary(ask(mixed, name, client, qtype, traced=True))
                first = summary(ask(mixed, name, client, qtype))
                again = summary(ask(mixed, name, client, qtype))  # from the memos
                assert first == want, (name, client, qtype)
                assert again == want, (name, client, qtype)
                shortcut += want[2] == VARY_LOCATION
    assert shortcut > len(clients) * len(names) // 2  # most answers took the located path


def test_names_with_the_same_rules_keep_their_own_sites_and_records(mixed: Snapshot) -> None:
    # London: eu-west 637 km, us-east 5898 km, ap-northeast 9556 km
    assert addrs(ask(mixed, f"three0.{ZONE}", LONDON)) == ["198.19.0.1"]
    assert addrs(ask(mixed, f"two0.{ZONE}", LONDON)) == ["198.18.0.11"]     # no eu-west: us-east
    assert addrs(ask(mixed, f"three1.{ZONE}", LONDON)) == ["198.19.0.2"]
    assert addrs(ask(mixed, f"v4eu0.{ZONE}", LONDON, T_AAAA)) == ["2001:db8:1::15"]  # eu-west has no IPv6
    assert addrs(ask(mixed, f"v4eu0.{ZONE}", LONDON, T_A)) == ["198.19.0.21"]
    assert addrs(ask(mixed, f"bias0.{ZONE}", LONDON)) == ["198.18.0.31"]    # 5898 x 0.1 < 637
    assert addrs(ask(mixed, f"pair0.{ZONE}", LONDON)) == ["198.19.0.41"]    # answers: 1 of eu-west, us-east
    # Milton: us-east; Changchun and Japan: ap-northeast
    assert addrs(ask(mixed, f"three0.{ZONE}", MILTON)) == ["198.18.0.1"]
    assert addrs(ask(mixed, f"three0.{ZONE}", CHANGCHUN)) == ["198.20.0.1"]
    assert addrs(ask(mixed, f"two3.{ZONE}", JAPAN, T_AAAA)) == ["2001:db8:3::e"]
    answer = ask(mixed, f"three0.{ZONE}", LONDON)
    assert (answer.rcode, answer.vary, answer.scope, answer.sites) == (NOERROR, VARY_LOCATION, 27, ("eu-west",))


def test_cname_endpoint_is_chased_in_the_zone(mixed: Snapshot) -> None:
    answer = ask(mixed, f"cname0.{ZONE}", LONDON)
    assert [rr.rtype for rr in answer.answer] == [5, T_A]
    assert addrs(answer) == [f"static.{ZONE}.", "192.0.2.80"]
    assert answer.service == f"cname0.{ZONE}" and answer.sites == ("eu-west",)
    assert addrs(ask(mixed, f"cname0.{ZONE}", MILTON)) == ["198.18.0.61"]


def test_a_new_health_state_is_answered_from_its_own_tables() -> None:
    name = f"app.{ZONE}"
    healthy = snapshot_of({name: {"policy": {"type": "geo"},
                                  "endpoints": [endpoint(s, 0) for s in SITES]}})
    eu_down = dataclasses.replace(healthy, services={
        n: dataclasses.replace(t, candidates=tuple(e for e in t.candidates if e.site != "eu-west"))
        for n, t in healthy.services.items()})
    for _ in range(2):
        assert addrs(ask(healthy, name, LONDON)) == ["198.19.0.1"]
        assert addrs(ask(eu_down, name, LONDON)) == ["198.18.0.1"]
        assert addrs(ask(eu_down, name, LONDON, T_AAAA)) == ["2001:db8:1::1"]


def test_a_tie_is_broken_per_client_subnet_not_remembered_for_the_next_client() -> None:
    twins = {"fra-a": (50.1, 8.7, "DE", "EU"), "fra-b": (50.1, 8.7, "DE", "EU"), "us-east": (38.9, -77.0, "US", "NA")}
    services = {f"n{i}.{ZONE}": {"policy": {"type": "geo", "prefix_v4": 32},
                                 "endpoints": [{"name": f"{s}-{i}", "site": s, "ipv4": f"192.0.2.{10 * j + i + 1}"}
                                               for j, s in enumerate(twins)]}
                for i in range(3)}
    snapshot = snapshot_of(services, sites=twins)
    london_block = [str(IPv4Address(LONDON) + i) for i in range(32)]  # 81.2.69.160/27: all London
    for name in services:
        winners = []
        for client in london_block:
            answer = ask(snapshot, name, client)
            assert summary(answer) == summary(ask(snapshot, name, client, traced=True))
            assert (answer.vary, answer.scope) == (VARY_CLIENT, 32)
            winners.append(answer.sites)
        assert set(winners) == {("fra-a",), ("fra-b",)}


def test_names_with_equal_policy_options_share_one_policy_object(mixed: Snapshot) -> None:
    specs = {name: table.spec for name, table in mixed.services.items()}
    plain = specs[f"three0.{ZONE}"].policies[0]
    assert all(specs[f"{kind}{i}.{ZONE}"].policies[0] is plain
               for kind in ("three", "two", "v4eu", "cname") for i in range(8))
    assert specs[f"bias0.{ZONE}"].policies[0] is not plain
    assert specs[f"bias0.{ZONE}"].policies[0] is specs[f"bias7.{ZONE}"].policies[0]
    assert specs[f"pair0.{ZONE}"].policies[0] not in (plain, specs[f"bias0.{ZONE}"].policies[0])
