"""Mesh-aware names, pure: real configs compiled into real snapshots, health applied the way
the node applies it (a verdict per check key), answers read from ``resolve``. No sockets.

The mesh: cluster east (site east, 10.1.0.0/16 and fd00:1::/48) and west (site west,
10.2.0.0/16) import ``db``; north (site north, 10.3.0.0/16) exports it and imports nothing.
The name has two endpoints in east, one in west, one in north.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from typing import Any

import pytest
import yaml

from gslb.config import load_config_text
from gslb.endpoint import Client, Endpoint, stable_seed
from gslb.errors import ConfigError
from gslb.explain import explain, format_explanation
from gslb.node import check_targets
from gslb.policies import POLICIES, VARY_CLIENT, Selection
from gslb.policies.mesh import MeshCluster, MeshPolicy, MeshPolicyConfig
from gslb.resolve import NOERROR, SERVFAIL, T_A, T_AAAA, Answer, Query, resolve
from gslb.snapshot import Snapshot, build_snapshot, same_answers
from gslb.store.base import Drain, Overrides

NAME = "app.gslb.test"
EAST_GW, WEST_GW = "10.1.255.10", "10.2.255.10"
E1, E2, W1, N1 = "192.0.2.11", "192.0.2.12", "192.0.2.21", "192.0.2.31"
EVERY = {E1, E2, W1, N1}
ADDRESS = {"e1": E1, "e2": E2, "w1": W1, "n1": N1}
NORMAL = {W1, N1}

BASE: dict[str, Any] = {
    "zones": {"gslb.test": {"nameservers": [{"name": "ns1.gslb.test", "addresses": ["192.0.2.53"]}]}},
    "sites": {
        "east": {"lat": 40.0, "lon": -74.0, "country": "US", "continent": "NA"},
        "west": {"lat": 37.0, "lon": -122.0, "country": "US", "continent": "NA"},
        "north": {"lat": 60.0, "lon": 10.0, "country": "NO", "continent": "EU"},
    },
    "services": {NAME: {
        "ttl": 30,
        "policy": [{"type": "mesh", "service": "db"}, {"type": "all"}],
        "monitor": {"type": "tcp", "port": 5432},
        "endpoints": [
            {"site": "east", "name": "e1", "ipv4": E1},
            {"site": "east", "name": "e2", "ipv4": E2},
            {"site": "west", "name": "w1", "ipv4": W1},
            {"site": "north", "name": "n1", "ipv4": N1, "ipv6": "2001:db8::31"},
        ],
    }},
    "mesh": {"trust_domain": "mesh.test", "clusters": {
        "east": {"gateway": "198.51.100.1:15443", "api": "198.51.100.1:15090", "site": "east",
                 "networks": ["10.1.0.0/16", "fd00:1::/48"],
                 "imports": {"db": {"listen": f"{EAST_GW}:5432"}}},
        "west": {"gateway": "198.51.100.2:15443", "api": "0.0.0.0:15090", "site": "west",
                 "networks": ["10.2.0.0/16"],
                 "imports": {"db": {"listen": "0.0.0.0:5432", "advertise": WEST_GW}}},
        "north": {"gateway": "198.51.100.3:15443", "site": "north", "networks": ["10.3.0.0/16"],
                  "exports": {"db": {"endpoints": ["10.3.0.5:5432"], "to": ["*"]}}},
    }},
}


def config(edit: Any = None) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    if edit is not None:
        edit(doc)
    return doc


def service(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["services"][NAME]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Verdict:
    """A check's state as the tracker would report it (HealthView)."""

    state: str

    def seconds_to_change(self) -> float | None:
        return None


def snapshot(doc: dict[str, Any] | None = None, *, down: set[str] | frozenset[str] = frozenset(),
             drains: tuple[Drain, ...] = ()) -> Snapshot:
    """``down``: endpoint ids (gateways too) whose check says down; the rest say up."""
    compiled = load_config_text(yaml.safe_dump(doc or config(), sort_keys=False)).compiled
    spec = compiled.zones["gslb.test"].services[NAME]
    health = {target.key: Verdict("down" if ident in down else "up") for ident, target in spec.checks.items()}
    return build_snapshot(compiled, health, Overrides(drains=drains))


def ask(snap: Snapshot, *, ecs: str | None = None, address: str = "192.0.2.200", qtype: int = T_A,
        trace: list[str] | None = None) -> Answer:
    return resolve(snap, Query(NAME, qtype), Client(ip_address(address), ip_network(ecs) if ecs else None),
                   trace=trace)


def addrs(answer: Answer) -> set[str]:
    return {str(rr.rdata) for rr in answer.answer}


def steps(snap: Snapshot, ecs: str, qtype: str = "A") -> str:
    return "\n".join(explain(snap, NAME, qtype, "192.0.2.200", ecs)["steps"])


IN_EAST, IN_WEST, IN_NORTH, OUTSIDE = "10.1.2.0/24", "10.2.7.0/24", "10.3.1.0/24", "192.0.2.0/24"


# --------------------------------------------------------------------------- compile


def test_compile_adds_hidden_gateway_endpoints_with_route_checks() -> None:
    compiled = load_config_text(yaml.safe_dump(config(), sort_keys=False)).compiled
    spec = compiled.zones["gslb.test"].services[NAME]
    assert [ep.id for ep in spec.endpoints] == ["e1", "e2", "w1", "n1"]  # the configured ones only
    gateways = {ep.id: ep for ep in spec.gateways}
    assert set(gateways) == {"gateway/east", "gateway/west"}  # north imports nothing
    assert (gateways["gateway/east"].site, str(gateways["gateway/east"].ipv4)) == ("east", EAST_GW)
    assert (gateways["gateway/west"].site, str(gateways["gateway/west"].ipv4)) == ("west", WEST_GW)
    assert "gateway/east" not in spec.enabled
    east, west = spec.checks["gateway/east"], spec.checks["gateway/west"]
    assert east.name == "http://198.51.100.1:15090/api/v1/routes/db"
    # west's API listens on a wildcard: it is checked at the gateway's own address
    assert west.name == "http://198.51.100.2:15090/api/v1/routes/db"
    assert (east.address, west.address) == ("198.51.100.1", "198.51.100.2")
    assert east.monitor.config.expect_status == [200]
    # the node schedules them like every other check (and so shares them through the store)
    keys = {target.key for target in check_targets(compiled)}
    assert east.key in keys and west.key in keys
    assert spec.mesh is not None and spec.policies[0] is spec.mesh
    assert [c.name for c in spec.mesh.clusters] == ["east", "west", "north"]


def test_gateway_check_options_come_from_the_policy() -> None:
    def edit(doc: dict[str, Any]) -> None:
        service(doc)["policy"][0]["monitor"] = {"interval": 0.2, "timeout": 0.5, "rise": 1, "fall": 3}
    spec = load_config_text(yaml.safe_dump(config(edit), sort_keys=False)).compiled.zones["gslb.test"].services[NAME]
    cfg = spec.checks["gateway/east"].monitor.config
    assert (cfg.interval, cfg.timeout, cfg.rise, cfg.fall) == (0.2, 0.5, 1, 3)


# --------------------------------------------------------------------------- in-cluster clients


def test_in_cluster_client_gets_its_local_endpoints_when_healthy() -> None:
    snap = snapshot()
    trace: list[str] = []
    answer = ask(snap, ecs=IN_EAST, trace=trace)
    assert (answer.rcode, addrs(answer)) == (NOERROR, {E1, E2})
    assert (answer.vary, answer.scope) == (VARY_CLIENT, 16)
    assert answer.sites == ("east",)
    assert any("inside cluster east (10.1.0.0/16)" in step and "answering its site east: e1, e2" in step
               for step in trace), trace
    assert addrs(ask(snap, ecs=IN_WEST)) == {W1}
    assert addrs(ask(snap, ecs=IN_NORTH)) == {N1}


def test_in_cluster_one_local_endpoint_left_is_still_local() -> None:
    assert addrs(ask(snapshot(down={"e1"}), ecs=IN_EAST)) == {E2}


def test_later_policies_order_and_trim_the_local_endpoints() -> None:
    def edit(doc: dict[str, Any]) -> None:
        service(doc)["policy"][1] = {"type": "round_robin"}
        service(doc)["answers"] = 1
    snap = snapshot(config(edit))
    seen = [addrs(resolve(snap, Query(NAME, T_A), Client(ip_address("192.0.2.200"), ip_network(IN_EAST), qid)))
            for qid in range(6)]
    assert seen == [{E1}, {E2}] * 3


def test_in_cluster_local_down_gateway_up_answers_the_gateway() -> None:
    snap = snapshot(down={"e1", "e2"})
    answer = ask(snap, ecs=IN_EAST)
    assert (answer.rcode, addrs(answer)) == (NOERROR, {EAST_GW})
    assert answer.scope == 16
    assert answer.sites == ("east",)
    text = steps(snap, "10.1.2.3/32")
    assert "client 10.1.2.3 is inside cluster east (10.1.0.0/16); local endpoints down; " \
           f"answering gateway/east {EAST_GW}" in text, text
    # west's gateway is up too, but never for east's clients
    assert addrs(ask(snap, ecs=IN_WEST)) == {W1}


def test_in_cluster_local_drained_by_site_answers_the_gateway() -> None:
    drain = Drain("site", "east", "maintenance", 0.0)
    assert addrs(ask(snapshot(drains=(drain,)), ecs=IN_EAST)) == {EAST_GW}
    # an endpoint drain naming the gateway takes it out
    gw_drain = Drain("endpoint", "gateway/east", "gateway maintenance", 0.0)
    assert addrs(ask(snapshot(drains=(drain, gw_drain)), ecs=IN_EAST)) == NORMAL


def test_in_cluster_everything_down_but_the_gateway_answers_the_gateway() -> None:
    """The mesh step decides before any fallback: with every endpoint down the gateway,
    which has a route, is the one place that can serve the cluster's clients."""
    snap = snapshot(down={"e1", "e2", "w1", "n1"})
    assert addrs(ask(snap, ecs=IN_EAST)) == {EAST_GW}
    assert addrs(ask(snap, ecs=IN_WEST)) == {WEST_GW}


def test_in_cluster_local_and_gateway_down_runs_the_chain_without_gateways() -> None:
    snap = snapshot(down={"e1", "e2", "gateway/east"})
    answer = ask(snap, ecs=IN_EAST)
    assert addrs(answer) == NORMAL  # not west's gateway, though it is up
    assert answer.scope == 16
    text = steps(snap, IN_EAST)
    assert "local endpoints down; gateway/east down (no route); the rest of the chain decides" in text, text


def test_in_cluster_everything_down_falls_back_without_gateways() -> None:
    down = {"e1", "e2", "w1", "n1", "gateway/east", "gateway/west"}
    assert addrs(ask(snapshot(down=down), ecs=IN_EAST)) == EVERY  # fallback 'all': fail open

    def servfail(doc: dict[str, Any]) -> None:
        service(doc)["fallback"] = "servfail"
    assert ask(snapshot(config(servfail), down=down), ecs=IN_EAST).rcode == SERVFAIL


def test_cluster_without_an_import_is_local_first_then_the_chain() -> None:
    snap = snapshot(down={"n1"})
    assert addrs(ask(snap, ecs=IN_NORTH)) == {E1, E2, W1}
    assert "cluster north does not import db" in steps(snap, IN_NORTH)


def test_resolver_address_counts_when_there_is_no_ecs() -> None:
    answer = ask(snapshot(down={"e1", "e2"}), address="10.1.9.9")
    assert addrs(answer) == {EAST_GW}
    assert answer.vary == VARY_CLIENT


def test_aaaa_needs_a_gateway_with_an_ipv6_address() -> None:
    snap = snapshot(down={"e1", "e2"})
    answer = ask(snap, ecs="fd00:1:0:1::/64", qtype=T_AAAA)
    assert addrs(answer) == {"2001:db8::31"}  # east's gateway has IPv4 only: the chain decides
    assert answer.scope == 48
    assert "gateway/east has no IPv6 address" in steps(snap, "fd00:1:0:1::/64", "AAAA")
    assert addrs(ask(snap, ecs="fd00:1:0:1::/64")) == {EAST_GW}  # an A query gets it

    def v6_gateway(doc: dict[str, Any]) -> None:
        doc["mesh"]["clusters"]["east"]["imports"]["db"]["advertise"] = "fd00:1::10"
    snap6 = snapshot(config(v6_gateway), down={"e1", "e2"})
    assert addrs(ask(snap6, ecs="fd00:1:0:1::/64", qtype=T_AAAA)) == {"fd00:1::10"}


# --------------------------------------------------------------------------- outside clients


@pytest.mark.parametrize("down", [set(), {"e1", "e2"}, {"e1", "e2", "w1", "n1"}, {"w1", "n1", "gateway/east"}])
def test_outside_client_never_gets_a_gateway(down: set[str]) -> None:
    snap = snapshot(down=down)
    for ecs in (OUTSIDE, "10.9.0.0/16", "2001:db8:77::/48", None):
        answer = ask(snap, ecs=ecs)
        assert answer.rcode == NOERROR
        got = addrs(answer)
        assert got and not got & {EAST_GW, WEST_GW}, (ecs, got)
        # the chain as usual: every usable endpoint, or every enabled one when none is
        usable = {address for ident, address in ADDRESS.items() if ident not in down}
        assert got == (usable or EVERY)


@pytest.mark.parametrize("mode,rcode,want", [("empty", NOERROR, set()), ("servfail", SERVFAIL, set()),
                                             ("static", NOERROR, {"203.0.113.9"})])
def test_outside_client_fallback_modes_never_use_a_gateway(mode: str, rcode: int, want: set[str]) -> None:
    def edit(doc: dict[str, Any]) -> None:
        service(doc)["fallback"] = {"mode": mode, "addresses": ["203.0.113.9"]} if mode == "static" else mode
    answer = ask(snapshot(config(edit), down={"e1", "e2", "w1", "n1"}), ecs=OUTSIDE)
    assert (answer.rcode, addrs(answer)) == (rcode, want)


def test_outside_client_trace_says_so() -> None:
    assert "client 192.0.2.0/24 is inside no cluster of the mesh; gateways are not answered" in \
        steps(snapshot(), OUTSIDE)


# --------------------------------------------------------------------------- ECS scope


@pytest.mark.parametrize("ecs,want", [
    (IN_EAST, 16),             # the matched network
    ("10.1.2.3/32", 16),
    ("fd00:1:0:1::/64", 48),
    (OUTSIDE, 1),              # 192/1 holds no 10.x network
    ("10.4.0.0/24", 14),       # 10.4.0.0/14 is the widest subnet that holds no cluster network
    ("10.0.0.0/24", 16),       # 10.0.0.0/15 would reach 10.1.0.0/16
    ("10.0.0.0/8", 16),        # a wide source around cluster networks: ask with more bits
    ("2001:db8::/48", 1),      # 2000::/1 holds no fd00:1::/48
])
def test_ecs_scope(ecs: str, want: int) -> None:
    answer = ask(snapshot(), ecs=ecs)
    assert answer.scope == want
    assert answer.vary == VARY_CLIENT


def test_scope_of_a_family_without_cluster_networks_is_zero_but_client_dependent() -> None:
    def v4_only(doc: dict[str, Any]) -> None:
        doc["mesh"]["clusters"]["east"]["networks"] = ["10.1.0.0/16"]
    answer = ask(snapshot(config(v4_only)), ecs="2001:db8::/48")
    assert (answer.vary, answer.scope) == (VARY_CLIENT, 0)


def test_nested_networks_longest_match_wins_and_scope_keeps_them_apart() -> None:
    def nested(doc: dict[str, Any]) -> None:
        doc["mesh"]["clusters"]["north"]["networks"] = ["10.0.0.0/8"]
    snap = snapshot(config(nested))
    assert addrs(ask(snap, ecs=IN_EAST)) == {E1, E2}
    answer = ask(snap, ecs="10.9.0.0/24")  # in north's /8 only
    assert addrs(answer) == {N1}
    assert answer.scope == 13  # 10.8.0.0/13 holds neither 10.1/16 nor 10.2/16; /8 would hold both


def _decision(clusters: list[tuple[str, list[IPv4Network]]], value: int) -> str | None:
    """Brute force: the cluster of the longest network holding ``value`` (first on ties)."""
    best: tuple[int, str] | None = None
    for name, nets in clusters:
        for net in nets:
            if int(net.network_address) <= value <= int(net.broadcast_address) and (
                    best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, name)
    return best[1] if best else None


def test_scope_is_sound_for_random_network_sets() -> None:
    """Every address inside the reported scope gets the same cluster as the client, so a
    resolver caching the answer for that subnet never serves it to the wrong cluster."""
    rng = random.Random(7)
    config_ = MeshPolicyConfig(type="mesh", service="db")
    for _ in range(200):
        clusters = []
        for c in range(rng.randint(1, 4)):
            nets = []
            for _ in range(rng.randint(1, 3)):
                prefix = rng.randint(4, 28)
                nets.append(IPv4Network((rng.getrandbits(32) >> (32 - prefix) << (32 - prefix), prefix)))
            clusters.append((f"c{c}", nets))
        policy = MeshPolicy(config_, clusters=[MeshCluster(n, n, tuple(nets), None) for n, nets in clusters])
        for _ in range(20):
            # clients near the networks, not only far away
            net = rng.choice([n for _, nets in clusters for n in nets])
            value = (int(net.network_address) ^ (rng.getrandbits(32) >> rng.randint(0, 32))) & 0xFFFFFFFF
            s = Selection(Client(IPv4Address(value)), None)
            found = policy.cluster_of(s)
            assert (found[0].name if found else None) == _decision(clusters, value)
            scope = s.scope
            for _ in range(20):
                other = (value >> (32 - scope) << (32 - scope) if scope else 0) | (
                    rng.getrandbits(32 - scope) if scope < 32 else 0)
                assert _decision(clusters, other) == _decision(clusters, value), (clusters, value, scope, other)


# --------------------------------------------------------------------------- snapshot and policy object


def test_gateway_health_changes_are_a_different_answer() -> None:
    up, down = snapshot(), snapshot(down={"gateway/east"})
    assert [ep.id for ep in up.services[NAME].gateways] == ["gateway/east", "gateway/west"]
    assert [ep.id for ep in down.services[NAME].gateways] == ["gateway/west"]
    assert not same_answers(up, down)
    assert up.services[NAME].candidates == down.services[NAME].candidates


def test_as_a_plain_policy_it_prefers_the_client_site() -> None:
    east = MeshCluster("east", "east", (IPv4Network("10.1.0.0/16"),), None)
    policy = POLICIES["mesh"](MeshPolicyConfig(type="mesh", service="db"), None)
    assert isinstance(policy, MeshPolicy) and not policy.clusters
    eps = [Endpoint(i, site, IPv4Address(a), None, None, 1, stable_seed(i))
           for i, site, a in (("e", "east", E1), ("w", "west", W1))]
    s = Selection(Client(IPv4Address("10.1.0.1")), None)
    assert policy.select(eps, s) == eps and s.vary == 0  # no clusters: depends on nothing
    bound = MeshPolicy(policy.config, clusters=[east])
    assert [e.id for e in bound.select(eps, Selection(Client(IPv4Address("10.1.0.1")), None))] == ["e"]
    assert [e.id for e in bound.select(eps, Selection(Client(IPv4Address("10.7.0.1")), None))] == ["e", "w"]
    assert [e.id for e in bound.select(eps[1:], Selection(Client(IPv4Address("10.1.0.1")), None))] == ["w"]


def test_explain_shows_the_decision() -> None:
    result = explain(snapshot(down={"e1", "e2"}), NAME, "A", "192.0.2.200", "10.1.2.3/32")
    assert [rr.split()[-1] for rr in result["answer"]] == [EAST_GW]
    assert result["ecs_scope"] == 16
    text = format_explanation(result)
    assert f"answering gateway/east {EAST_GW}" in text and "scope   /16" in text


# --------------------------------------------------------------------------- config errors


def _errors(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(yaml.safe_dump(doc, sort_keys=False))
    return {e.dotted: e.message for e in info.value.errors}


P = f"services[{NAME}].policy"


def _set(path: list[Any], value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return edit


_DELETE = object()
SVC = ["services", NAME]


@pytest.mark.parametrize("edit,path,fragment", [
    pytest.param(_set([*SVC, "policy"], [{"type": "all"}, {"type": "mesh", "service": "db"}]),
                 f"{P}[1].type", "mesh must be the first policy", id="not-first"),
    pytest.param(_set(["mesh"], _DELETE), f"{P}[0].service", "needs the config's 'mesh' section", id="no-mesh"),
    pytest.param(_set([*SVC, "policy", 0, "service"], "cache"), f"{P}[0].service",
                 "no cluster of the mesh with 'site' and 'networks' imports 'cache'", id="not-imported"),
    pytest.param(_set(["mesh", "clusters", "east", "api"], _DELETE), "mesh.clusters.east.api",
                 "set 'api'", id="no-api"),
    pytest.param(_set(["mesh", "clusters", "west", "imports", "db", "advertise"], _DELETE),
                 "mesh.clusters.west.imports.db.advertise", "set 'advertise'", id="wildcard-listen"),
    pytest.param(_set(["mesh", "clusters", "west", "gateway"], "0.0.0.0:15443"), "mesh.clusters.west.api",
                 "no address to check it at", id="wildcard-api-and-gateway"),
    pytest.param(_set([*SVC, "policy", 0, "bogus"], 1), f"{P}[0].bogus", "unknown key", id="unknown-key"),
    pytest.param(_set([*SVC, "policy", 0, "service"], _DELETE), f"{P}[0].service", "Field required",
                 id="no-service"),
    pytest.param(_set([*SVC, "policy", 0, "monitor"], {"interval": 0}), f"{P}[0].monitor.interval",
                 "greater than or equal to 0.05", id="bad-interval"),
])
def test_config_errors(edit: Any, path: str, fragment: str) -> None:
    errors = _errors(config(edit))
    assert path in errors, f"expected an error at {path}, got {errors}"
    assert fragment in errors[path], errors[path]


def test_config_error_single_mesh_policy_path_has_no_index() -> None:
    errors = _errors(config(_set([*SVC, "policy"], {"type": "mesh", "service": "cache"})))
    assert f"{P}.service" in errors


def test_config_error_gateway_id_taken_by_an_endpoint() -> None:
    def edit(doc: dict[str, Any]) -> None:
        service(doc)["endpoints"].append({"site": "gateway", "cname": "east"})
        doc["sites"]["gateway"] = {"lat": 0, "lon": 0, "country": "US", "continent": "NA"}
    errors = _errors(config(edit))
    assert "'gateway/east' is taken by endpoints[4]" in errors.get(f"{P}[0].service", ""), errors


def test_default_advertise_is_the_concrete_listen_host() -> None:
    doc = load_config_text(yaml.safe_dump(config(), sort_keys=False)).config
    assert doc.mesh is not None
    assert str(doc.mesh.clusters["east"].imports["db"].advertised()) == EAST_GW
    assert str(doc.mesh.clusters["west"].imports["db"].advertised()) == WEST_GW


def test_wildcard_listen_is_fine_for_a_gateway_no_mesh_aware_name_uses() -> None:
    def edit(doc: dict[str, Any]) -> None:
        service(doc)["policy"] = [{"type": "all"}]
        del doc["mesh"]["clusters"]["west"]["imports"]["db"]["advertise"]
    loaded = load_config_text(yaml.safe_dump(config(edit), sort_keys=False))
    assert loaded.config.mesh is not None
    assert loaded.config.mesh.clusters["west"].imports["db"].advertised() is None


def test_the_docstring_example_loads() -> None:
    import gslb.policies.mesh as module

    example = yaml.safe_load((module.__doc__ or "").split("```yaml\n")[1].split("```")[0])

    def edit(doc: dict[str, Any]) -> None:
        service(doc)["policy"] = example["policy"]
    spec = load_config_text(yaml.safe_dump(config(edit), sort_keys=False)).compiled.zones["gslb.test"].services[NAME]
    assert [p.name for p in spec.policies] == ["mesh", "geo"]
