"""``GET /api/v1/mesh`` and the ``gslb_mesh_*`` metrics of a node polling real cluster-link gateways.

The node runs on its own loop in a thread (``threaded_node`` with its HTTP API); the
gateways and their status APIs (``clusterlink.api``) run in the test's loop, on separate
loopback addresses with certificates of the session's mesh PKI. West (site eu-west)
imports echo from east (site us-east); north has no status API and stays unknown. The
node polls every 2 s, so every wait here is bounded at WAIT seconds and polls the API.

Status APIs that answer wrongly (not JSON, an error status, too much, another cluster's status),
never answer, or are not there at all are fakes on loopback: each must show as
unreachable with its own error, and DNS must keep answering while a poll hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
import jsonschema
import pytest
import yaml
from aiohttp import web

from clusterlink.api import start_api
from clusterlink.gateway import Gateway
from gslb.api.openapi import openapi_document
from gslb.meshstatus import MAX_REPLY
from tests.support.mesh import Backend, call, gateways, wait_routed, write_mesh_config
from tests.support.mesh_pki import MeshPki
from tests.support.servers import EXAMPLE, ThreadedNode, free_port, threaded_node

WAIT = 10.0
SITES = {"us-east": {"lat": 38.9, "lon": -77.0, "country": "US", "continent": "NA"},
         "eu-west": {"lat": 50.1, "lon": 8.7, "country": "DE", "continent": "EU"}}


def with_sites(mesh_file: Path) -> Path:
    """The mesh file (zones and mesh) plus sites and an HTTP API on port 0: one file for the
    node and the gateways."""
    data = yaml.safe_load(mesh_file.read_text())
    data["sites"] = SITES
    data["server"] = {"http": {"listen": "127.0.0.1:0"}}
    mesh_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return mesh_file


def api_address(host: str) -> str:
    return f"{host}:{free_port(host)}"


@pytest.fixture
async def echo() -> AsyncIterator[Backend]:
    backend = await Backend("east").start()
    yield backend
    await backend.stop()


@pytest.fixture
def mesh_file(tmp_path: Path, mesh_pki: MeshPki, echo: Backend) -> Path:
    monitor = {"interval": 0.2, "timeout": 0.5, "rise": 1, "fall": 1}
    return with_sites(write_mesh_config(tmp_path / "mesh.yaml", mesh_pki, {
        "west": {"site": "eu-west", "api": api_address("127.0.0.11"),
                 "imports": {"echo": {"listen": "127.0.0.1:0"}}},
        "east": {"site": "us-east", "api": api_address("127.0.0.12"),
                 "exports": {"echo": {"endpoints": [echo.address], "to": ["west"], "monitor": monitor}}},
        "north": {},
    }))


def base_url(node: ThreadedNode) -> str:
    assert node.node.http_address is not None
    return "http://{}:{}".format(*node.node.http_address)


@contextlib.asynccontextmanager
async def status_api(gateway: Gateway) -> AsyncIterator[None]:
    """The gateway's status API on the address its config names (what the node polls)."""
    address = gateway.plan.cluster.api
    assert address is not None
    runner, _ = await start_api(gateway, address)
    try:
        yield
    finally:
        await runner.cleanup()


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as reply:
        assert reply.status == 200, (url, reply.status, await reply.text())
        return await reply.json()


async def get_text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as reply:
        assert reply.status == 200, (url, reply.status)
        return await reply.text()


def fits_the_document(view: dict[str, Any]) -> dict[str, Any]:
    """The view as the OpenAPI document's ``Mesh`` schema describes it (schemathesis only
    ever sees the example config's empty one)."""
    document = openapi_document()
    schema = {"$ref": "#/components/schemas/Mesh", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(view)
    return view


async def wait_mesh(session: aiohttp.ClientSession, base: str, predicate: Callable[[dict[str, Any]], bool],
                    what: str) -> dict[str, Any]:
    """Poll ``/api/v1/mesh`` until ``predicate`` holds, at most WAIT seconds."""
    view: dict[str, Any] = {}
    for _ in range(int(WAIT / 0.1)):
        view = await get_json(session, f"{base}/api/v1/mesh")
        if predicate(view):
            return fits_the_document(view)
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {WAIT}s: {what}; /api/v1/mesh: {json.dumps(view, indent=1)}")


def by_name(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in view["clusters"]}


def the_link(view: dict[str, Any]) -> dict[str, Any]:
    (link,) = [link for link in view["links"] if (link["from"], link["to"]) == ("west", "east")]
    return link


def samples(metrics: str, family: str) -> dict[str, float]:
    """``{'label="v",...': value}`` of one metric family in Prometheus text."""
    return {labels: float(value) for labels, value in
            re.findall(rf"^{family}\{{([^}}]*)\}} (\S+)$", metrics, flags=re.MULTILINE)}


# --------------------------------------------------------------------------- real gateways


async def test_mesh_follows_the_gateways(mesh_file: Path) -> None:
    with threaded_node(mesh_file, http=True) as node:
        base = base_url(node)
        async with aiohttp.ClientSession() as session, gateways(mesh_file, "west") as gw, \
                status_api(gw["west"]):
            west = gw["west"]
            async with gateways(mesh_file, "east") as east_gw, status_api(east_gw["east"]):
                await wait_routed(west, "echo", "east")

                def linked(v: dict[str, Any]) -> bool:
                    return (the_link(v)["state"] == "up" and the_link(v)["rtt_ms"] is not None
                            and v["routes"][0]["state"] == "routed" and v["exports"][0]["state"] == "healthy")

                view = await wait_mesh(session, base, linked, "the west -> east link up with an RTT, echo routed")
                clusters = by_name(view)
                assert view["configured"] is True
                assert [c["name"] for c in view["clusters"]] == ["west", "east", "north"]
                for name, site in (("west", "eu-west"), ("east", "us-east")):
                    assert clusters[name]["state"] == "reachable" and clusters[name]["reachable"] is True
                    assert clusters[name]["site"] == site and clusters[name]["error"] is None
                    assert clusters[name]["age"] is not None and clusters[name]["age"] >= 0
                assert clusters["north"] == {"name": "north", "site": None, "api": None, "state": "unknown",
                                             "reachable": False, "error": None, "age": None,
                                             "handshake_failures": 0, "identity_failures": 0}
                # east's incoming end of the same link is not a second link
                assert len(view["links"]) == 1
                link = the_link(view)
                assert (link["from_site"], link["to_site"], link["reported_by"]) == ("eu-west", "us-east", "west")
                assert link["error"] is None and link["rtt_ms"] > 0
                assert view["routes"] == [{"cluster": "west", "site": "eu-west", "service": "echo",
                                           "sources": ["east"], "served_by": "east", "state": "routed"}]
                assert view["exports"] == [{"cluster": "east", "site": "us-east", "service": "echo", "to": ["west"],
                                            "endpoints": 1, "healthy": 1, "state": "healthy"}]

                # bytes through the link show up, counted from west's side
                payload = b"m" * 5000
                assert await call(west.listen_addresses["echo"], payload) == payload
                view = await wait_mesh(session, base, lambda v: (the_link(v)["bytes_sent"] or 0) >= len(payload)
                                       and (the_link(v)["bytes_received"] or 0) >= len(payload),
                                       "5000 bytes each way on the link")

                metrics = await get_text(session, f"{base}/metrics")
                assert samples(metrics, "gslb_mesh_link_up") == {'from="west",to="east"': 1.0}
                (rtt,) = samples(metrics, "gslb_mesh_link_rtt_seconds").values()
                assert rtt > 0
                assert samples(metrics, "gslb_mesh_gateway_reachable") == {'cluster="west"': 1.0,
                                                                           'cluster="east"': 1.0}
                assert set(samples(metrics, "gslb_mesh_gateway_status_age_seconds")) == {'cluster="west"',
                                                                                         'cluster="east"'}

            # east's gateway (and its status API) stopped
            def east_gone(v: dict[str, Any]) -> bool:
                return (by_name(v)["east"]["state"] == "unreachable" and the_link(v)["state"] == "down"
                        and the_link(v)["error"] is not None and v["routes"][0]["state"] == "no-route")

            view = await wait_mesh(session, base, east_gone, "east unreachable, the link down, echo unrouted")
            east = by_name(view)["east"]
            assert east["reachable"] is False and "cannot connect to 127.0.0.12:" in east["error"], east
            assert east["age"] is not None  # when east last answered is kept
            assert by_name(view)["west"]["state"] == "reachable"
            link = the_link(view)
            assert link["reported_by"] == "west" and link["rtt_ms"] is None and link["error"] == "refused", link
            assert view["routes"][0]["served_by"] is None
            assert view["exports"][0]["state"] == "unknown" and view["exports"][0]["healthy"] is None
            metrics = await get_text(session, f"{base}/metrics")
            assert samples(metrics, "gslb_mesh_link_up") == {'from="west",to="east"': 0.0}
            assert samples(metrics, "gslb_mesh_link_rtt_seconds") == {}
            assert samples(metrics, "gslb_mesh_gateway_reachable") == {'cluster="west"': 1.0, 'cluster="east"': 0.0}

            # east comes back on the same addresses: the node sees it recover
            async with gateways(mesh_file, "east") as east_gw, status_api(east_gw["east"]):
                await wait_routed(west, "echo", "east")
                view = await wait_mesh(session, base, lambda v: by_name(v)["east"]["state"] == "reachable"
                                       and the_link(v)["state"] == "up" and v["routes"][0]["served_by"] == "east",
                                       "east reachable again, the link up, echo routed to east")
                assert by_name(view)["east"]["error"] is None
                assert the_link(view)["error"] is None


async def test_acceptor_speaks_for_the_link_while_the_dialer_is_unreadable(mesh_file: Path) -> None:
    """West's gateway runs but its status API does not: east's incoming end reports the link."""
    with threaded_node(mesh_file, http=True) as node:
        base = base_url(node)
        async with aiohttp.ClientSession() as session, gateways(mesh_file, "east", "west") as gw, \
                status_api(gw["east"]):
            await wait_routed(gw["west"], "echo", "east")
            view = await wait_mesh(session, base, lambda v: the_link(v)["state"] == "up",
                                   "the link up as east sees it")
            assert by_name(view)["west"]["state"] == "unreachable"
            link = the_link(view)
            assert link["reported_by"] == "east" and link["error"] is None
            assert view["routes"][0]["state"] == "unknown"  # only west knows where it routes


# --------------------------------------------------------------------------- status APIs that fail


class FakeApis:
    """Status APIs on loopback that answer wrongly, or accept and never answer."""

    def __init__(self) -> None:
        self.runners: list[web.AppRunner] = []
        self.servers: list[asyncio.Server] = []
        self.hung: list[asyncio.StreamWriter] = []

    async def http(self, handler: Callable[[web.Request], Any]) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/status", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self.runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"127.0.0.1:{runner.addresses[0][1]}"

    async def silent(self) -> str:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.hung.append(writer)
            await reader.read()  # until the node gives up and closes
            writer.close()

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.servers.append(server)
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        for server in self.servers:
            server.close()
        for writer in self.hung:
            writer.close()


async def not_json(request: web.Request) -> web.Response:
    return web.Response(text="<html>a web server, not a gateway</html>")


async def server_error(request: web.Request) -> web.Response:
    return web.json_response({"error": "boom"}, status=500)


async def too_big(request: web.Request) -> web.Response:
    return web.Response(body=b" " * (MAX_REPLY + 1), content_type="application/json")


async def someone_else(request: web.Request) -> web.Response:
    return web.json_response({"cluster": "someone", "links": []})


async def test_status_apis_that_fail_are_unreachable_with_their_error(tmp_path: Path, mesh_pki: MeshPki) -> None:
    fakes = FakeApis()
    try:
        apis = {"garbage": await fakes.http(not_json), "broken": await fakes.http(server_error),
                "impostor": await fakes.http(someone_else), "huge": await fakes.http(too_big),
                "hang": await fakes.silent(),
                "closed": api_address("127.0.0.1")}
        mesh_file = write_mesh_config(tmp_path / "mesh.yaml", mesh_pki,
                                      {name: {"api": api} for name, api in apis.items()})
        expected = {"garbage": f"{apis['garbage']}: not a gateway status",
                    "broken": f"HTTP 500 from {apis['broken']}",
                    "impostor": f"{apis['impostor']} is the gateway of cluster 'someone', not 'impostor'",
                    "huge": f"{apis['huge']}: status over {MAX_REPLY} bytes",
                    "hang": f"{apis['hang']}: no reply within 1 s",
                    "closed": f"cannot connect to {apis['closed']}"}
        with threaded_node(with_sites(mesh_file), http=True) as node:
            base = base_url(node)
            async with aiohttp.ClientSession() as session:
                view = await wait_mesh(session, base, lambda v: all(c["error"] for c in v["clusters"]),
                                       "every cluster with an error")
                for name, cluster in by_name(view).items():
                    assert cluster["state"] == "unreachable" and cluster["reachable"] is False, cluster
                    assert cluster["error"].startswith(expected[name]), (name, cluster["error"])
                    assert cluster["age"] is None  # never answered
                assert view["links"] == view["routes"] == view["exports"] == []
                metrics = await get_text(session, f"{base}/metrics")
                assert samples(metrics, "gslb_mesh_gateway_reachable") == {
                    f'cluster="{name}"': 0.0 for name in apis}
                assert samples(metrics, "gslb_mesh_gateway_status_age_seconds") == {}

                # DNS answers while the poller waits on the silent API (a round takes its
                # 1 s timeout): twenty queries over two rounds, every one answered
                await dns_answers_while_polls_hang(node, fakes, count=20)
    finally:
        await fakes.close()


async def dns_answers_while_polls_hang(node: ThreadedNode, fakes: FakeApis, count: int) -> None:
    hung_before = len(fakes.hung)
    query = dns.message.make_query("gslb.test", "SOA")
    for _ in range(count):
        reply = await dns.asyncquery.udp(query, node.host, port=node.port, timeout=2.0)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer
        await asyncio.sleep(0.1)
    assert len(fakes.hung) > hung_before, "no poll reached the silent API meanwhile"


# --------------------------------------------------------------------------- no mesh


async def test_without_a_mesh_section() -> None:
    with threaded_node(EXAMPLE, http=True) as node:
        assert node.node.mesh is None
        base = base_url(node)
        async with aiohttp.ClientSession() as session:
            view = fits_the_document(await get_json(session, f"{base}/api/v1/mesh"))
            assert view == {"configured": False, "clusters": [], "links": [], "routes": [], "exports": []}
            assert "gslb_mesh_" not in await get_text(session, f"{base}/metrics")
