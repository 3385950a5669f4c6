"""The node's view of the cluster-link mesh, from each gateway's status API polled in the background.

A gateway serves ``GET /api/v1/status`` on its ``api`` address (``clusterlink.api``). The
poller asks every cluster's gateway every ``INTERVAL`` seconds (all at once, ``TIMEOUT``
each) and keeps only the latest outcome per cluster: the last good status with when it
came, and the error of the last attempt. It is one task on the node's loop that never
touches the snapshot, so a gateway that hangs costs the poller a timeout and DNS nothing.

``mesh_view`` is pure: the config's mesh plus those reports make one table of clusters,
links (dialer -> acceptor), routes of the imported services and health of the exports.
``GET /api/v1/mesh``, the ``gslb_mesh_*`` metrics and the map page all read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dnsserver.server import format_address
from gslb.config import MeshConfig
from gslb.errors import GslbError
from gslb.mesh import cluster_plan

log = logging.getLogger("gslb.mesh")

INTERVAL = 2.0
"""Seconds between two rounds of polls."""
TIMEOUT = 1.0
"""Seconds one gateway has to answer, connect included."""
MAX_REPLY = 1 << 20
STATUS_PATH = "/api/v1/status"
LINK_STATES = {"up": 0, "draining": 1, "closed": 2}
"""A gateway may report several links to one peer (one draining after a rotation): the
first state in this order speaks for the pair."""


class GatewayStatusError(GslbError):
    """A cluster gateway's status API could not be read."""


# --------------------------------------------------------------------------- the gateway's reply


class _Reply(BaseModel):
    """Part of a gateway's status, typed at the boundary; keys not used here are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class LinkReply(_Reply):
    peer: str | None
    direction: Literal["in", "out"]
    state: Literal["up", "draining", "closed"]
    rtt_ms: float | None = None
    streams: int = Field(0, ge=0)
    bytes_in: int = Field(0, ge=0)
    bytes_out: int = Field(0, ge=0)


class DialerReply(_Reply):
    connected: bool
    last_error: str = ""


class ExportReply(_Reply):
    healthy: list[str]
    endpoints: list[str]


class GatewayStatus(_Reply):
    cluster: str
    links: list[LinkReply] = []
    dialers: dict[str, DialerReply] = {}
    routes: dict[str, str | None] = {}
    exports: dict[str, ExportReply] = {}
    handshake_failures: dict[str, int] = {}
    identity_failures: dict[str, int] = {}


async def fetch_status(session: aiohttp.ClientSession, cluster: str, api: tuple[str, int],
                       timeout: float = TIMEOUT) -> GatewayStatus:
    """One read of ``cluster``'s status; every way it can fail becomes a ``GatewayStatusError``."""
    where = format_address(*api)
    url = f"http://{where}{STATUS_PATH}"
    try:
        async with session.get(url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
            if reply.status != 200:
                raise GatewayStatusError(f"HTTP {reply.status} from {where}")
            body = bytearray()
            async for chunk in reply.content.iter_chunked(64 << 10):
                body += chunk
                if len(body) > MAX_REPLY:
                    raise GatewayStatusError(f"{where}: status over {MAX_REPLY} bytes")
        status = GatewayStatus.model_validate_json(body)
    except TimeoutError:
        raise GatewayStatusError(f"{where}: no reply within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        errno = exc.os_error.errno
        reason = os.strerror(errno).lower() if errno else str(exc.os_error)
        raise GatewayStatusError(f"cannot connect to {where}: {reason}") from None
    except aiohttp.ClientError as exc:
        raise GatewayStatusError(f"{where}: {exc or type(exc).__name__}") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "<body>"
        raise GatewayStatusError(f"{where}: not a gateway status ({field}: {first['msg']})") from None
    if status.cluster != cluster:
        raise GatewayStatusError(f"{where} is the gateway of cluster {status.cluster!r}, not {cluster!r}")
    return status


# --------------------------------------------------------------------------- the poller


@dataclass(frozen=True, slots=True)
class GatewayReport:
    """The latest outcome of polling one cluster's gateway."""

    status: GatewayStatus | None = None
    """The last status read; kept while later attempts fail, but then only its age is shown."""
    fetched_at: float | None = None
    """Clock time ``status`` was read."""
    error: str | None = None
    """Why the last attempt failed; None when it succeeded."""


class MeshPoller:
    """Polls the status API of every gateway the mesh config gives an ``api`` address, from
    ``__aenter__`` until ``__aexit__``. ``mesh`` is read every round, so reloads are followed."""

    def __init__(self, mesh: Callable[[], MeshConfig | None], *, interval: float = INTERVAL,
                 timeout: float = TIMEOUT, clock: Callable[[], float] = time.monotonic) -> None:
        self._mesh = mesh
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.reports: dict[str, GatewayReport] = {}
        self.rounds = 0
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MeshPoller:
        # a new connection per poll: a gateway that restarted is never asked on a dead socket
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mesh-poller")
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    def view(self) -> dict[str, Any]:
        return mesh_view(self._mesh(), self.reports, self.clock())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.poll()
            except Exception:  # a bug here must not end the polling for good
                log.exception("mesh status poll failed")
            await asyncio.sleep(max(0.0, started + self.interval - loop.time()))

    async def poll(self) -> None:
        """One round: every gateway with an ``api`` address, concurrently."""
        mesh = self._mesh()
        apis = {name: c.api for name, c in mesh.clusters.items() if c.api is not None} if mesh else {}
        for gone in self.reports.keys() - apis.keys():
            del self.reports[gone]
        await asyncio.gather(*(self._poll_one(name, api) for name, api in apis.items()))
        self.rounds += 1

    async def _poll_one(self, cluster: str, api: tuple[str, int]) -> None:
        assert self._session is not None
        previous = self.reports.get(cluster, GatewayReport())
        try:
            status = await fetch_status(self._session, cluster, api, self.timeout)
        except GatewayStatusError as exc:
            if previous.error is None:
                log.warning("mesh: the gateway of cluster %s is unreachable: %s", cluster, exc)
            self.reports[cluster] = GatewayReport(previous.status, previous.fetched_at, str(exc))
            return
        if previous.error is not None:
            log.info("mesh: the gateway of cluster %s answers again", cluster)
        self.reports[cluster] = GatewayReport(status, self.clock(), None)


# --------------------------------------------------------------------------- the view


def mesh_view(mesh: MeshConfig | None, reports: Mapping[str, GatewayReport], now: float) -> dict[str, Any]:
    """Clusters, links, routes and exports as the config plans them and the gateways report them.

    Only the latest status of a gateway that answered counts for links, routes and exports;
    what is known of nobody is ``unknown``. A link is the dialer's to report (it owns it);
    the acceptor speaks for it only while the dialer's gateway cannot be read."""
    if mesh is None:
        return {"configured": False, "clusters": [], "links": [], "routes": [], "exports": []}
    fresh = {name: r.status for name, r in reports.items() if r.error is None and r.status is not None}
    sites = {name: cluster.site for name, cluster in mesh.clusters.items()}
    # base_dir only places certificate files, which the view does not use
    plans = [cluster_plan(mesh, name, Path()) for name in mesh.clusters]
    pairs = dict.fromkeys((plan.name, peer) for plan in plans for peer in plan.peers)
    for name, status in fresh.items():  # links the config does not plan (a stale peer config)
        for link in status.links:
            if link.peer is not None:
                pairs.setdefault((name, link.peer) if link.direction == "out" else (link.peer, name))
    routes = []
    for plan in plans:
        importer = fresh.get(plan.name)
        for imp in plan.imports:
            served_by = importer.routes.get(imp.service) if importer is not None else None
            routes.append({"cluster": plan.name, "site": sites[plan.name], "service": imp.service,
                           "sources": list(imp.sources), "served_by": served_by,
                           "state": "unknown" if importer is None else "routed" if served_by else "no-route"})
    exports = []
    for name, cluster in mesh.clusters.items():
        exporter = fresh.get(name)
        for service, export in cluster.exports.items():
            reply = exporter.exports.get(service) if exporter is not None else None
            healthy = len(reply.healthy) if reply is not None else None
            total = len(export.endpoints)
            state = ("unknown" if healthy is None else "healthy" if healthy >= total
                     else "down" if healthy == 0 else "degraded")
            exports.append({"cluster": name, "site": sites[name], "service": service, "to": list(export.to),
                            "endpoints": total, "healthy": healthy, "state": state})
    return {
        "configured": True,
        "clusters": [_cluster(name, sites[name], cluster.api, reports.get(name), now)
                     for name, cluster in mesh.clusters.items()],
        "links": [_link(a, b, sites, fresh) for a, b in pairs],
        "routes": routes,
        "exports": exports,
    }


def _cluster(name: str, site: str | None, api: tuple[str, int] | None, report: GatewayReport | None,
             now: float) -> dict[str, Any]:
    if api is None or report is None:
        state = "unknown"  # no status API configured, or not asked yet
    else:
        state = "unreachable" if report.error is not None else "reachable"
    status = report.status if report is not None else None
    return {
        "name": name, "site": site, "api": format_address(*api) if api else None,
        "state": state, "reachable": state == "reachable",
        "error": report.error if report is not None else None,
        "age": round(now - report.fetched_at, 3) if report is not None and report.fetched_at is not None else None,
        "handshake_failures": sum(status.handshake_failures.values()) if status else 0,
        "identity_failures": sum(status.identity_failures.values()) if status else 0,
    }


def _find(links: list[LinkReply], direction: str, peer: str) -> LinkReply | None:
    found = [link for link in links if link.direction == direction and link.peer == peer]
    return min(found, key=lambda link: LINK_STATES[link.state], default=None)


def _link(dialer: str, acceptor: str, sites: Mapping[str, str | None],
          fresh: Mapping[str, GatewayStatus]) -> dict[str, Any]:
    out = fresh.get(dialer)
    seen, reported_by, error = None, None, None
    if out is not None:
        seen, reported_by = _find(out.links, "out", acceptor), dialer
        dial = out.dialers.get(acceptor)
        if dial is not None and not dial.connected and dial.last_error:
            error = dial.last_error
    elif (into := fresh.get(acceptor)) is not None:
        seen, reported_by = _find(into.links, "in", dialer), acceptor
    if seen is None:
        state = "unknown" if reported_by is None else "down"
    else:
        state = "down" if seen.state == "closed" else seen.state
    sent, received = (None, None) if seen is None else (
        (seen.bytes_out, seen.bytes_in) if reported_by == dialer else (seen.bytes_in, seen.bytes_out))
    return {
        "from": dialer, "to": acceptor, "from_site": sites.get(dialer), "to_site": sites.get(acceptor),
        "state": state, "rtt_ms": seen.rtt_ms if seen is not None and state != "down" else None,
        "streams": seen.streams if seen is not None else 0,
        "bytes_sent": sent, "bytes_received": received,
        "reported_by": reported_by, "error": error,
    }
