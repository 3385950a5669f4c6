"""Mesh-aware names end to end: a real GSLB node (its own thread and loop), two real
cluster-link gateways with their status APIs (in the test's loop, as in test_link.py), real
TCP backends, DNS asked over UDP with ECS the way a resolver would.

Cluster east (site east, clients 10.1.0.0/16) and west (site west, clients 10.2.0.0/16) each
run one instance of ``svc`` and export it to the other; each imports it back on a listener.
Every address serving ``svc`` uses one port P, as a real deployment would (DNS carries no
port): 127.0.0.31 east's instance, 127.0.0.32 west's, 127.0.0.33 east's import listener,
127.0.0.34 west's. The node checks the instances (TCP) and the gateways' routes (HTTP), every
0.2 s with rise = fall = 1, so each change shows within a second or so; every wait is a
bounded poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.rdatatype
import pytest
import yaml

from clusterlink.api import start_api
from clusterlink.gateway import Gateway
from tests.support.mesh import Backend, call, start_gateway, wait_for, wait_routed, write_mesh_config
from tests.support.mesh_pki import MeshPki
from tests.support.servers import ThreadedNode, free_port, threaded_node

NAME = "app.gslb.test"
EAST_SVC, WEST_SVC, EAST_GW, WEST_GW = "127.0.0.31", "127.0.0.32", "127.0.0.33", "127.0.0.34"
GATEWAYS = frozenset({EAST_GW, WEST_GW})
IN_EAST, IN_WEST, OUTSIDE = ("10.1.2.0", 24), ("10.2.7.0", 24), ("192.0.2.0", 24)
CHECK = {"interval": 0.2, "timeout": 0.5, "rise": 1, "fall": 1}
WAIT = 10.0

pytestmark = pytest.mark.both_loops  # gateways run on uvloop in production, and must on asyncio's loop too


def common_port(hosts: tuple[str, ...]) -> int:
    """A port free on every one of ``hosts`` right now."""
    for _ in range(20):
        port = free_port(hosts[0])
        socks = []
        try:
            for host in hosts:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no port free on all of {hosts} in 20 tries")


@dataclass
class Mesh:
    config: Path
    port: int


def write_config(tmp_path: Path, pki: MeshPki) -> Mesh:
    port = common_port((EAST_SVC, WEST_SVC, EAST_GW, WEST_GW))
    path = write_mesh_config(tmp_path / "site.yaml", pki, {
        "east": {"site": "east", "networks": ["10.1.0.0/16"], "api": f"127.0.0.11:{free_port('127.0.0.11')}",
                 "imports": {"svc": {"listen": f"{EAST_GW}:{port}"}},
                 "exports": {"svc": {"endpoints": [f"{EAST_SVC}:{port}"], "to": ["west"], "monitor": CHECK}}},
        "west": {"site": "west", "networks": ["10.2.0.0/16"], "api": f"127.0.0.12:{free_port('127.0.0.12')}",
                 "imports": {"svc": {"listen": f"{WEST_GW}:{port}"}},
                 "exports": {"svc": {"endpoints": [f"{WEST_SVC}:{port}"], "to": ["east"], "monitor": CHECK}}},
    })
    doc = yaml.safe_load(path.read_text())
    doc["sites"] = {"east": {"lat": 40.0, "lon": -74.0, "country": "US", "continent": "NA"},
                    "west": {"lat": 37.0, "lon": -122.0, "country": "US", "continent": "NA"}}
    doc["services"] = {NAME: {
        "ttl": 30, "min_ttl": 1,
        "policy": [{"type": "mesh", "service": "svc", "monitor": CHECK}, {"type": "all"}],
        "monitor": {"type": "tcp", "port": port, "jitter": 0, **CHECK},
        "endpoints": [{"site": "east", "name": "east-1", "ipv4": EAST_SVC},
                      {"site": "west", "name": "west-1", "ipv4": WEST_SVC}],
    }}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Mesh(path, port)


@contextlib.asynccontextmanager
async def gateway(config: Path, cluster: str) -> AsyncIterator[Gateway]:
    """One cluster's gateway with its status API on the configured address."""
    gw = await start_gateway(config, cluster)
    runner = None
    try:
        assert gw.plan.cluster.api is not None
        runner, _ = await start_api(gw, gw.plan.cluster.api)
        yield gw
    finally:
        if runner is not None:
            await runner.cleanup()
        await gw.stop()


@dataclass(frozen=True)
class Reply:
    addresses: frozenset[str]
    scope: int | None


@dataclass
class Dig:
    """Asks the node for NAME/A on behalf of a client subnet (ECS); never blocks the loop,
    which also serves the gateways the node is checking. Remembers every reply per subnet."""

    node: ThreadedNode
    seen: dict[tuple[str, int], list[Reply]]

    async def __call__(self, subnet: tuple[str, int]) -> Reply:
        query = dns.message.make_query(NAME, "A", use_edns=0, options=[dns.edns.ECSOption(*subnet)])
        for _ in range(3):
            try:
                response = await dns.asyncquery.udp(query, self.node.host, port=self.node.port, timeout=1.0)
                break
            except dns.exception.Timeout:
                continue
        else:
            raise AssertionError("the node did not answer three queries in a row")
        ecs = [opt for opt in response.options if isinstance(opt, dns.edns.ECSOption)]
        reply = Reply(frozenset(rd.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A
                                for rd in rrset), ecs[0].scopelen if ecs else None)
        self.seen.setdefault(subnet, []).append(reply)
        return reply

    async def until(self, subnet: tuple[str, int], predicate: Callable[[Reply], bool], what: str) -> Reply:
        """Poll (every 50 ms, at most WAIT seconds) until a reply satisfies ``predicate``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        last: list[Reply] = []
        for _ in range(int(WAIT / 0.05) + 20):
            reply = await self(subnet)
            last = [*last[-5:], reply]
            if predicate(reply):
                return reply
            if loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"not within {WAIT}s: {what}; last replies: {last}")


def never_a_gateway(dig: Dig, subnet: tuple[str, int]) -> None:
    replies = dig.seen.get(subnet, [])
    assert replies, "no replies recorded"
    leaked = [r for r in replies if r.addresses & GATEWAYS]
    assert not leaked, f"{subnet} was answered a gateway: {leaked}"


async def test_mesh_aware_name_fails_over_to_the_cluster_gateway(tmp_path: Path, mesh_pki: MeshPki) -> None:
    mesh = write_config(tmp_path, mesh_pki)
    east_svc = await Backend("east").start(EAST_SVC, mesh.port)
    west_svc = await Backend("west").start(WEST_SVC, mesh.port)
    try:
        async with gateway(mesh.config, "east") as east, contextlib.AsyncExitStack() as west_stack:
            west = await west_stack.enter_async_context(gateway(mesh.config, "west"))
            await wait_routed(east, "svc", "west")
            await wait_routed(west, "svc", "east")
            with threaded_node(mesh.config) as node:
                dig = Dig(node, {})
                # everything up: each cluster's clients get their own instance, others both
                reply = await dig.until(IN_EAST, lambda r: r.addresses == {EAST_SVC}, "east's instance for east")
                assert reply.scope == 16
                assert (await dig(IN_WEST)).addresses == {WEST_SVC}
                assert (await dig(OUTSIDE)).addresses == {EAST_SVC, WEST_SVC}

                # east's instance dies: east's clients get east's gateway listener ...
                await east_svc.stop()
                reply = await dig.until(IN_EAST, lambda r: r.addresses == {EAST_GW}, "east's gateway for east")
                assert reply.scope == 16
                await dig.until(OUTSIDE, lambda r: r.addresses == {WEST_SVC}, "west's instance for outsiders")
                assert (await dig(IN_WEST)).addresses == {WEST_SVC}
                # ... and a connection to it reaches the instance in west, bytes intact
                payload = os.urandom(64 * 1024)
                assert await call((EAST_GW, mesh.port), payload) == payload
                await wait_for(lambda: west.services["svc"].streams["done"] >= 1, what="west's export stream done")
                assert east.services["svc"].bytes_up >= len(payload)

                # west's gateway goes too: east's gateway has no route, so east's clients get
                # the usual chain (west's instance), never a gateway
                await west_stack.aclose()
                await dig.until(IN_EAST, lambda r: r.addresses == {WEST_SVC}, "the usual chain for east")
                for subnet in (IN_EAST, IN_WEST, OUTSIDE):
                    assert (await dig(subnet)).addresses == {WEST_SVC}

                never_a_gateway(dig, OUTSIDE)
                never_a_gateway(dig, IN_WEST)  # west's instance stayed up: west's clients never needed one
                assert any(r.addresses == {EAST_GW} for r in dig.seen[IN_EAST])
    finally:
        await east_svc.stop()
        await west_svc.stop()


async def test_route_endpoint_of_the_status_api(tmp_path: Path, mesh_pki: MeshPki) -> None:
    """What nodes check: 200 naming the serving cluster while the gateway has a route, 503
    with why when it has none, 404 for a service it does not import."""
    mesh = write_config(tmp_path, mesh_pki)
    west_svc = await Backend("west").start(WEST_SVC, mesh.port)
    try:
        async with gateway(mesh.config, "east") as east, aiohttp.ClientSession() as http:
            assert east.plan.cluster.api is not None
            base = "http://{}:{}/api/v1/routes/".format(*east.plan.cluster.api)

            async def get(service: str) -> tuple[int, Any]:
                async with http.get(base + service) as response:
                    return response.status, await response.json()

            status, body = await get("svc")
            assert status == 503 and body["cluster"] is None
            assert "no link to west" in body["reason"]
            assert await get("nope") == (404, {"service": "nope", "error": "cluster east does not import nope"})
            async with gateway(mesh.config, "west"):
                await wait_routed(east, "svc", "west")
                status, body = await get("svc")
                assert status == 200, body
                assert body["service"] == "svc" and body["cluster"] == "west"
                assert body["rtt_ms"] is None or body["rtt_ms"] >= 0
                # west's instance stops: the link stays up, but west has nothing to offer
                await west_svc.stop()
                await wait_for(lambda: east.route_table()["svc"] is None, timeout=WAIT, what="route withdrawn")
                status, body = await get("svc")
                assert status == 503 and body["reason"] == "west reports no healthy endpoint"
    finally:
        await west_svc.stop()
