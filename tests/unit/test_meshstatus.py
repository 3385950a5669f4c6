"""``gslb.meshstatus.mesh_view``: how the config's mesh and the gateways' reports merge (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from gslb.config import MeshConfig
from gslb.meshstatus import GatewayReport, GatewayStatus, mesh_view

MESH = MeshConfig.model_validate({
    "trust_domain": "mesh.test",
    "clusters": {
        "west": {"gateway": "127.0.0.11:4000", "site": "eu-west", "api": "127.0.0.11:4001",
                 "imports": {"db": {"listen": "127.0.0.1:5432"}}},
        "east": {"gateway": "127.0.0.12:4000", "site": "us-east", "api": "127.0.0.12:4001",
                 "exports": {"db": {"endpoints": ["10.0.0.1:5432", "10.0.0.2:5432"], "to": ["west"]}}},
        "north": {"gateway": "127.0.0.13:4000"},
    },
})
NOW = 100.0


def link(peer: str, direction: str, state: str = "up", **extra: Any) -> dict[str, Any]:
    return {"peer": peer, "direction": direction, "state": state, "rtt_ms": 0.5, "streams": 1,
            "bytes_in": 10, "bytes_out": 20, **extra}


def ok(cluster: str, at: float = 99.0, **status: Any) -> GatewayReport:
    return GatewayReport(GatewayStatus.model_validate({"cluster": cluster, **status}), at, None)


def west_to_east(view: dict[str, Any]) -> dict[str, Any]:
    (found,) = [entry for entry in view["links"] if (entry["from"], entry["to"]) == ("west", "east")]
    return found


def test_no_mesh() -> None:
    assert mesh_view(None, {}, NOW) == {"configured": False, "clusters": [], "links": [], "routes": [],
                                        "exports": []}


def test_nothing_polled_yet_is_unknown() -> None:
    view = mesh_view(MESH, {}, NOW)
    assert [(c["name"], c["state"], c["api"]) for c in view["clusters"]] == [
        ("west", "unknown", "127.0.0.11:4001"), ("east", "unknown", "127.0.0.12:4001"), ("north", "unknown", None)]
    assert view["links"] == [{"from": "west", "to": "east", "from_site": "eu-west", "to_site": "us-east",
                              "state": "unknown", "rtt_ms": None, "streams": 0, "bytes_sent": None,
                              "bytes_received": None, "reported_by": None, "error": None}]
    assert [(r["service"], r["state"], r["sources"]) for r in view["routes"]] == [("db", "unknown", ["east"])]
    assert [(e["service"], e["state"], e["healthy"], e["endpoints"]) for e in view["exports"]] == [
        ("db", "unknown", None, 2)]


def test_the_dialer_speaks_for_its_link() -> None:
    """West (the dialer) has lost the link while east still holds its end: west is right."""
    reports = {"west": ok("west", dialers={"east": {"connected": False, "last_error": "refused"}}),
               "east": ok("east", links=[link("west", "in")])}
    found = west_to_east(mesh_view(MESH, reports, NOW))
    assert (found["state"], found["reported_by"], found["error"], found["rtt_ms"]) == ("down", "west", "refused", None)


def test_the_acceptor_speaks_while_the_dialer_is_unreadable() -> None:
    reports = {"west": GatewayReport(None, None, "cannot connect"), "east": ok("east", links=[link("west", "in")])}
    found = west_to_east(mesh_view(MESH, reports, NOW))
    assert (found["state"], found["reported_by"], found["rtt_ms"]) == ("up", "east", 0.5)
    # east received 10 and sent 20: west sent 10 and received 20
    assert (found["bytes_sent"], found["bytes_received"]) == (10, 20)


def test_a_stale_status_counts_for_nothing_but_its_age() -> None:
    stale = ok("west", at=90.0, links=[link("east", "out")], routes={"db": "east"})
    reports = {"west": GatewayReport(stale.status, stale.fetched_at, "no reply within 1 s")}
    view = mesh_view(MESH, reports, NOW)
    west = view["clusters"][0]
    assert (west["state"], west["reachable"], west["error"], west["age"]) == ("unreachable", False,
                                                                               "no reply within 1 s", 10.0)
    assert west_to_east(view)["state"] == "unknown"
    assert view["routes"][0]["state"] == "unknown" and view["routes"][0]["served_by"] is None


@pytest.mark.parametrize(("states", "expected"), [
    (["draining", "up"], "up"),
    (["closed", "draining"], "draining"),
    (["closed"], "down"),
])
def test_the_best_of_several_links_to_one_peer(states: list[str], expected: str) -> None:
    reports = {"west": ok("west", links=[link("east", "out", state) for state in states])}
    assert west_to_east(mesh_view(MESH, reports, NOW))["state"] == expected


def test_links_the_config_does_not_plan_are_listed() -> None:
    reports = {"east": ok("east", links=[link("north", "in")])}
    pairs = [(entry["from"], entry["to"], entry["state"], entry["from_site"])
             for entry in mesh_view(MESH, reports, NOW)["links"]]
    assert pairs == [("west", "east", "down", "eu-west"), ("north", "east", "up", None)]  # east has no link from west


@pytest.mark.parametrize(("healthy", "state"), [(2, "healthy"), (1, "degraded"), (0, "down")])
def test_export_health(healthy: int, state: str) -> None:
    endpoints = ["10.0.0.1:5432", "10.0.0.2:5432"]
    reports = {"east": ok("east", exports={"db": {"healthy": endpoints[:healthy], "endpoints": endpoints,
                                                  "to": ["west"]}})}
    (export,) = mesh_view(MESH, reports, NOW)["exports"]
    assert (export["cluster"], export["healthy"], export["endpoints"], export["state"]) == ("east", healthy, 2, state)


@pytest.mark.parametrize(("served_by", "state"), [("east", "routed"), (None, "no-route")])
def test_routes(served_by: str | None, state: str) -> None:
    reports = {"west": ok("west", routes={"db": served_by})}
    assert mesh_view(MESH, reports, NOW)["routes"] == [
        {"cluster": "west", "site": "eu-west", "service": "db", "sources": ["east"], "served_by": served_by,
         "state": state}]


def test_failure_counters_are_summed() -> None:
    reports = {"east": ok("east", handshake_failures={"certificate": 2, "refused": 1},
                          identity_failures={"denied": 4})}
    east = mesh_view(MESH, reports, NOW)["clusters"][1]
    assert (east["handshake_failures"], east["identity_failures"], east["age"]) == (3, 4, 1.0)
