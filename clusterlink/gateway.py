"""The gateway of one cluster: dials peers, accepts their links, serves imports and exports.

- Imports: a local listener per imported service; each accepted connection becomes a stream
  on the link to the best cluster exporting the service (clusterlink.routing).
- Exports: streams a peer opens are authorised by the caller's certificate identity (deny
  by default), then connected to a healthy local endpoint.
- Links are dialed once and kept; a dead link is redialed with exponential backoff and
  jitter. When certificate files change, new links use the new files and old links drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clusterlink.files import Watched
from clusterlink.identity import (
    IdentityError,
    PeerIdentity,
    TlsFiles,
    check_expected,
    client_context,
    peer_identity,
    server_context,
)
from clusterlink.link import Link, Stream
from clusterlink.proxyproto import proxy_header
from clusterlink.routing import Candidate, choose
from gslb.config import ExportConfig, GslbConfig
from gslb.mesh import ClusterPlan, ImportPlan, cluster_plan, exported_to
from healthmon.base import ProbeResult
from healthmon.tcp import TcpConfig, TcpMonitor
from healthmon.tracker import HealthTracker

log = logging.getLogger("gslb.link")

HANDSHAKE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
BACKOFF_START = 0.1
BACKOFF_MAX = 5.0


@dataclass
class ServiceStats:
    streams: Counter[str] = field(default_factory=Counter)
    """Finished streams by how they ended (done, reset, peer-*, link-lost, ...)."""
    active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    no_route: int = 0
    denied: Counter[str] = field(default_factory=Counter)
    """Refused calls by calling cluster (exports only)."""
    connect_failed: int = 0


@dataclass
class GatewayStats:
    handshake_failures: Counter[str] = field(default_factory=Counter)
    identity_failures: Counter[str] = field(default_factory=Counter)
    links_cut: Counter[str] = field(default_factory=Counter)
    rotations: int = 0


class Dialer:
    """Keeps one usable link to a peer: dial, wait until it dies or must be replaced, back off, redial."""

    def __init__(self, gateway: Gateway, peer: str) -> None:
        self.gateway = gateway
        self.peer = peer
        self.current: Link | None = None
        self.draining: list[Link] = []
        self.failures = 0
        self.last_error = ""
        self._wake = asyncio.Event()

    def replace(self) -> None:
        """Dial a new link now; the current one drains (rotation, peer going away)."""
        old, self.current = self.current, None
        if old is not None and not old.closed:
            old.go_away()
            self.draining.append(old)
        self._wake.set()

    def lost(self, link: Link) -> None:
        if link is self.current:
            self.current = None
            self._wake.set()
        if link in self.draining:
            self.draining.remove(link)

    async def run(self) -> None:
        backoff = BACKOFF_START
        while True:
            link = await self._dial()
            if link is not None:
                self.current = link
                self.failures = 0
                self.gateway.routes_changed()
                up_since = time.monotonic()
                self._wake.clear()
                while self.current is link and not link.closed:
                    await self._wake.wait()
                    self._wake.clear()
                if time.monotonic() - up_since > 10 or (self.current is None and not link.closed):
                    backoff = BACKOFF_START
                if self.current is None and not link.closed:
                    continue  # replaced on purpose: redial at once
            self.failures += 1
            delay = backoff * random.uniform(0.8, 1.2)
            backoff = min(BACKOFF_MAX, backoff * 2)
            await asyncio.sleep(delay)

    async def _dial(self) -> Link | None:
        gw = self.gateway
        host, port = gw.config_mesh.clusters[self.peer].gateway
        link = gw.new_link(dialer=True, expected=self.peer)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT + CONNECT_TIMEOUT):
                await loop.create_connection(lambda: link, host, port, ssl=gw.client_ctx,
                                             server_hostname=f"{self.peer}.{gw.plan.trust_domain}",
                                             ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            reason = _failure_reason(exc)
            gw.stats.handshake_failures[reason] += 1
            if self.last_error != reason or self.failures % 20 == 0:
                log.warning("link to %s (%s:%d): %s", self.peer, host, port, exc)
            self.last_error = reason
            return None
        if link.closed:
            return None
        self.last_error = ""
        log.info("link to %s up (%s:%d)", self.peer, host, port)
        return link


class ExportEndpoints:
    """The local endpoints of one exported service, with TCP health and round-robin choice."""

    def __init__(self, service: str, export: ExportConfig, tracker: HealthTracker) -> None:
        self.service = service
        self.export = export
        self.tracker = tracker
        self.monitors = []
        for host, port in export.endpoints:
            cfg = TcpConfig(type="tcp", port=port, interval=export.monitor.interval,
                            timeout=export.monitor.timeout, rise=export.monitor.rise, fall=export.monitor.fall)
            tracker.add((service, host, port), f"{service} {host}:{port}", cfg)
            self.monitors.append(((host, port), TcpMonitor(cfg)))
        self._rr = itertools.count()

    def healthy(self) -> list[tuple[str, int]]:
        return [addr for addr, _ in self.monitors if self.tracker.targets[(self.service, *addr)].state == "up"]

    def pick(self) -> tuple[str, int] | None:
        up = self.healthy()
        return up[next(self._rr) % len(up)] if up else None

    def mark_failed(self, address: tuple[str, int], detail: str) -> bool:
        """A connect that failed counts as a failed check (passive health)."""
        event = self.tracker.record((self.service, *address), ProbeResult(False, detail, 0.0))
        return event is not None


class ImportStream(Stream):
    __slots__ = ("gateway", "import_plan", "stats")

    def __init__(self, gateway: Gateway, plan: ImportPlan) -> None:
        super().__init__()
        self.gateway = gateway
        self.import_plan = plan
        self.stats = gateway.service_stats(plan.service)
        self.on_finished = gateway.stream_finished

    def connection_made(self, transport: Any) -> None:
        link = self.gateway.route(self.import_plan)
        if link is None:
            self.stats.no_route += 1
            transport.abort()
            return
        peer = transport.get_extra_info("peername")
        self.stats.active += 1
        link.open_stream(self, self.import_plan.service, f"{peer[0]}:{peer[1]}" if peer else "")
        super().connection_made(transport)


class ExportStream(Stream):
    __slots__ = ("preamble", "service", "stats")

    def __init__(self, gateway: Gateway, service: str, preamble: bytes | None) -> None:
        super().__init__()
        self.service = service
        self.stats = gateway.service_stats(service)
        self.preamble = preamble
        self.on_finished = gateway.stream_finished

    def connection_made(self, transport: Any) -> None:
        if self.preamble:
            transport.write(self.preamble)
        super().connection_made(transport)


class Gateway:
    def __init__(self, config: GslbConfig, cluster: str, base_dir: Path) -> None:
        if config.mesh is None:
            raise ValueError("the config has no 'mesh' section")
        if cluster not in config.mesh.clusters:
            raise ValueError(f"cluster {cluster!r} is not in mesh.clusters ({', '.join(config.mesh.clusters)})")
        self.config_mesh = config.mesh
        self.base_dir = base_dir
        self.plan: ClusterPlan = cluster_plan(config.mesh, cluster, base_dir)
        self.name = cluster
        self.files = TlsFiles(cert=self.plan.tls.cert, key=self.plan.tls.key, ca=self.plan.tls.ca)
        self.server_ctx: ssl.SSLContext = server_context(self.files)
        self.client_ctx: ssl.SSLContext = client_context(self.files)
        self.stats = GatewayStats()
        self.services: dict[str, ServiceStats] = {}
        self.tracker = HealthTracker()
        self.exports = {name: ExportEndpoints(name, exp, self.tracker)
                        for name, exp in self.plan.cluster.exports.items()}
        self.dialers = {peer: Dialer(self, peer) for peer in self.plan.peers}
        self.incoming: set[Link] = set()
        self.deny_identities: frozenset[str] = frozenset()
        self.deny_serials: frozenset[int] = frozenset()
        self._load_deny_config()
        self._routes: dict[str, Link | None] = {}
        self._route_cluster: dict[str, str] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._link_listener: LinkListener | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watched_tls = Watched([self.files.cert, self.files.key, self.files.ca])
        deny_file = config.mesh.deny_file
        self._watched_deny = Watched([base_dir / deny_file]) if deny_file is not None else None
        self.listen_addresses: dict[str, tuple[str, int]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.plan.cluster.listen or self.plan.cluster.gateway
        self._link_listener = LinkListener(self, host, port)
        self.listen_addresses["link"] = self._link_listener.address
        log.info("cluster %s: links on %s:%d", self.name, *self.listen_addresses["link"])
        for imp in self.plan.imports:
            srv = await loop.create_server(lambda imp=imp: ImportStream(self, imp),  # type: ignore[misc]
                                           imp.listen[0], imp.listen[1], reuse_address=True, backlog=4096)
            self._servers.append(srv)
            self.listen_addresses[imp.service] = srv.sockets[0].getsockname()[:2]
            log.info("cluster %s: import %s on %s:%d from %s", self.name, imp.service,
                     *self.listen_addresses[imp.service], ", ".join(imp.sources) or "nobody")
        self._watched_tls.changed()
        if self._watched_deny is not None:
            self._watched_deny.changed()
            self._reload_deny_file()
        for dialer in self.dialers.values():
            self._tasks.append(asyncio.create_task(dialer.run(), name=f"dial-{dialer.peer}"))
        for export in self.exports.values():
            for address, monitor in export.monitors:
                self._tasks.append(asyncio.create_task(self._monitor(export, address, monitor)))
        self._tasks.append(asyncio.create_task(self._watch()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._link_listener is not None:
            self._link_listener.close()
        for server in self._servers:
            server.close()
        for link in self.all_links():
            link.abort()
        for server in self._servers:
            await server.wait_closed()

    def all_links(self) -> list[Link]:
        links = list(self.incoming)
        for dialer in self.dialers.values():
            if dialer.current is not None:
                links.append(dialer.current)
            links.extend(dialer.draining)
        return links

    # ------------------------------------------------------------------ links

    def new_link(self, *, dialer: bool, expected: str | None) -> Link:
        return Link(local_cluster=self.name, dialer=dialer, ping_interval=self.config_mesh.ping_interval,
                    on_open=None if dialer else self._on_open,
                    on_status=self._on_status,
                    on_ready=lambda link: self._admit(link, expected),
                    on_closed=self._on_closed,
                    on_goaway=self._on_goaway)

    def _admit(self, link: Link, expected: str | None) -> bool:
        """The handshake verified the chain; now check who the peer is."""
        try:
            identity = peer_identity(link.transport.get_extra_info("ssl_object"),  # type: ignore[union-attr]
                                     self.plan.trust_domain)
            if self._denied(identity):
                raise IdentityError(f"{identity.spiffe} (serial {identity.serial:x}) is on the deny list",
                                    reason="denied")
            check_expected(identity, expected)
            if identity.cluster not in self.config_mesh.clusters or identity.cluster == self.name:
                raise IdentityError(f"{identity.spiffe} is not a peer cluster of this mesh", reason="unknown-cluster")
        except IdentityError as exc:
            self.stats.identity_failures[exc.reason] += 1
            log.warning("cluster %s: refusing link from %s: %s", self.name,
                        _peer_address(link), exc)
            return False
        link.peer = identity
        if not link.dialer:
            self.incoming.add(link)
            link.send_status(self._status_for(identity.cluster))
            log.info("cluster %s: link from %s accepted", self.name, identity.cluster)
        return True

    def _on_closed(self, link: Link, exc: Exception | None) -> None:
        self.incoming.discard(link)
        if link.dialer and link.peer is not None:
            dialer = self.dialers.get(link.peer.cluster)
            if dialer is not None:
                dialer.lost(link)
        if link.peer is not None:
            log.info("cluster %s: link %s %s closed%s", self.name, "to" if link.dialer else "from",
                     link.peer.cluster, f": {exc}" if exc else "")
        self.routes_changed()

    def _on_goaway(self, link: Link) -> None:
        if link.dialer and link.peer is not None:
            dialer = self.dialers.get(link.peer.cluster)
            if dialer is not None and dialer.current is link:
                dialer.replace()
        self.routes_changed()

    def _on_status(self, link: Link, status: dict[str, int]) -> None:
        self.routes_changed()

    def _denied(self, identity: PeerIdentity) -> bool:
        return identity.spiffe in self.deny_identities or identity.serial in self.deny_serials

    # ------------------------------------------------------------------ imports

    def routes_changed(self) -> None:
        self._routes.clear()

    def route(self, plan: ImportPlan) -> Link | None:
        link = self._routes.get(plan.service)
        if link is not None and link.usable:
            return link
        candidates = []
        for peer in plan.sources:
            dialer = self.dialers.get(peer)
            current = dialer.current if dialer is not None else None
            if current is None or not current.usable:
                continue
            rtt = current.rtt_median
            candidates.append(Candidate(peer, current, rtt * 1000 if rtt is not None else None,
                                        self.plan.cluster.costs.get(peer, 0.0), current.status.get(plan.service, 0)))
        chosen = choose(candidates, self._route_cluster.get(plan.service), self.config_mesh.switch_margin_ms)
        if chosen is None:
            self._routes[plan.service] = None
            return None
        if self._route_cluster.get(plan.service) != chosen.cluster:
            log.info("cluster %s: %s now served by %s", self.name, plan.service, chosen.cluster)
            self._route_cluster[plan.service] = chosen.cluster
        self._routes[plan.service] = chosen.target
        return chosen.target

    def route_table(self) -> dict[str, str | None]:
        return {imp.service: (link.peer.cluster if (link := self.route(imp)) is not None and link.peer else None)
                for imp in self.plan.imports}

    # ------------------------------------------------------------------ exports

    def _status_for(self, peer: str) -> dict[str, int]:
        return {name: len(exp.healthy()) for name, exp in self.exports.items()
                if exported_to(exp.export.to, peer)}

    def _broadcast_status(self) -> None:
        for link in list(self.incoming):
            if link.peer is not None and not link.closed:
                link.send_status(self._status_for(link.peer.cluster))

    def _on_open(self, link: Link, sid: int, service: str, client: str) -> None:
        caller = link.peer.cluster if link.peer is not None else "?"
        export = self.exports.get(service)
        if export is None or not exported_to(export.export.to, caller):
            self.service_stats(service).denied[caller] += 1
            log.warning("cluster %s: denied %s calling %s: not exported to it", self.name, caller, service)
            link.reset(sid, "denied", f"{service} is not exported to {caller}")
            return
        address = export.pick()
        if address is None:
            self.service_stats(service).connect_failed += 1
            link.reset(sid, "unavailable", f"{service} has no healthy endpoint in {self.name}")
            return
        preamble = None
        if export.export.proxy_protocol:
            preamble = proxy_header(client, address, link.peer.spiffe if link.peer is not None else "")
        stream = ExportStream(self, service, preamble)
        stream.stats.active += 1
        link.accept_stream(sid, stream)
        # A bare task on create_connection plus a timer costs far less per connection than a
        # coroutine wrapped in asyncio.timeout; this runs once per carried connection.
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: stream, address[0], address[1]))
        timer = loop.call_later(CONNECT_TIMEOUT, task.cancel)
        task.add_done_callback(functools.partial(self._connected, link, stream, export, address, timer))

    def _connected(self, link: Link, stream: ExportStream, export: ExportEndpoints, address: tuple[str, int],
                   timer: asyncio.TimerHandle, task: asyncio.Task[Any]) -> None:
        timer.cancel()
        if task.cancelled():
            exc: BaseException = TimeoutError(f"connect to {address[0]}:{address[1]} timed out")
        else:
            failure = task.exception()
            if failure is None:
                return
            exc = failure
        stream.stats.connect_failed += 1
        if export.mark_failed(address, str(exc)):
            self._broadcast_status()
        if link.streams.get(stream.sid) is stream:
            link.reset(stream.sid, "connect-failed", f"{export.service}: {exc}")
            stream.link_lost()

    async def _monitor(self, export: ExportEndpoints, address: tuple[str, int], monitor: TcpMonitor) -> None:
        interval = monitor.config.interval
        while True:
            result = await monitor.probe(address[0])
            event = self.tracker.record((export.service, *address), result)
            if event is not None:
                log.info("cluster %s: export %s %s:%d %s (%s)", self.name, export.service, *address,
                         event.new, result.detail)
                self._broadcast_status()
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))

    # ------------------------------------------------------------------ stats

    def service_stats(self, service: str) -> ServiceStats:
        stats = self.services.get(service)
        if stats is None:
            stats = self.services[service] = ServiceStats()
        return stats

    def stream_finished(self, stream: Stream, how: str) -> None:
        stats: ServiceStats = stream.stats  # type: ignore[attr-defined]
        stats.active -= 1
        stats.streams[how] += 1
        stats.bytes_up += stream.bytes_up
        stats.bytes_down += stream.bytes_down

    # ------------------------------------------------------------------ rotation and revocation

    async def _watch(self) -> None:
        period = min(1.0, self.config_mesh.ping_interval)
        while True:
            await asyncio.sleep(period)
            # Routes are cached per service and dropped on link and status events; measured
            # RTTs move with every pong, so re-rank (with hysteresis) once a period as well.
            self.routes_changed()
            try:
                self.check_files()
            except Exception:  # the watcher must outlive any one bad file
                log.exception("cluster %s: watching files failed", self.name)

    def check_files(self) -> None:
        if self._watched_tls.changed():
            self.rotate()
        if self._watched_deny is not None and self._watched_deny.changed():
            self._reload_deny_file()
        now = datetime.now(UTC)
        for link in self.all_links():
            if link.peer is not None and link.peer.not_after <= now and not link.draining:
                log.info("cluster %s: %s's certificate expired; draining the link", self.name, link.peer.cluster)
                self._drain(link)

    def rotate(self) -> None:
        """New certificate or trust bundle: new links use it, established links drain."""
        try:
            server_ctx, client_ctx = server_context(self.files), client_context(self.files)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("cluster %s: new TLS files rejected, keeping the old ones: %s", self.name, exc)
            return
        self.server_ctx, self.client_ctx = server_ctx, client_ctx
        self.stats.rotations += 1
        log.info("cluster %s: TLS files changed; redialing %d peer(s), old links drain", self.name,
                 len(self.dialers))
        for link in list(self.incoming):
            link.go_away()
        for dialer in self.dialers.values():
            dialer.replace()
        self.routes_changed()

    def _drain(self, link: Link) -> None:
        if link.dialer and link.peer is not None and link.peer.cluster in self.dialers:
            dialer = self.dialers[link.peer.cluster]
            if dialer.current is link:
                dialer.replace()
                return
        link.go_away()

    def _load_deny_config(self, extra_ids: list[str] | None = None, extra_serials: list[str] | None = None) -> None:
        deny = self.config_mesh.deny
        self.deny_identities = frozenset(deny.identities + (extra_ids or []))
        self.deny_serials = frozenset(_serial(s) for s in deny.serials + (extra_serials or []))

    def _reload_deny_file(self) -> None:
        import yaml

        assert self._watched_deny is not None
        path = self._watched_deny.paths[0]
        try:
            data = yaml.safe_load(path.read_text()) if path.exists() else {}
            data = data or {}
            ids = [str(x) for x in data.get("identities", [])]
            serials = [str(x) for x in data.get("serials", [])]
            self._load_deny_config(ids, serials)
        except (OSError, yaml.YAMLError, AttributeError, ValueError) as exc:
            log.error("cluster %s: deny file %s unreadable, keeping the old list: %s", self.name, path, exc)
            return
        self.enforce_deny()

    def enforce_deny(self) -> None:
        for link in self.all_links():
            if link.peer is not None and self._denied(link.peer):
                self.stats.links_cut[link.peer.cluster] += 1
                log.warning("cluster %s: cutting link with %s: on the deny list", self.name, link.peer.spiffe)
                link.abort()


class LinkListener:
    """Accepts peers' TCP connections and runs each TLS handshake with the context current
    at that moment, so certificate rotation applies to the next handshake without rebinding.

    Sockets are accepted by hand and handed to ``connect_accepted_socket``: nothing reads
    from a socket before TLS owns it, and a failed handshake surfaces here with its reason.
    """

    def __init__(self, gateway: Gateway, host: str, port: int) -> None:
        self.gateway = gateway
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._accept)
        self._pending: set[asyncio.Task[None]] = set()

    def _accept(self) -> None:
        for _ in range(64):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep listening
                log.warning("cluster %s: accept failed: %s", self.gateway.name, exc)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._handshake(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _handshake(self, conn: socket.socket) -> None:
        gw = self.gateway
        link = gw.new_link(dialer=False, expected=None)
        peer = _address_of(conn)
        try:
            await self._loop.connect_accepted_socket(lambda: link, sock=conn, ssl=gw.server_ctx,
                                                     ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError, ssl.SSLError, ConnectionError) as exc:
            gw.stats.handshake_failures[_failure_reason(exc)] += 1
            log.warning("cluster %s: handshake from %s failed: %s", gw.name, peer,
                        exc or type(exc).__name__)
            conn.close()

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for task in self._pending:
            task.cancel()


def _address_of(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


def _serial(text: str) -> int:
    return int(text.lower().removeprefix("0x").replace(":", ""), 16)


def _peer_of(transport: Any) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "?"


def _peer_address(link: Link) -> str:
    return _peer_of(link.transport) if link.transport is not None else "?"


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "certificate"
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or "tls").lower()
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return type(exc).__name__


