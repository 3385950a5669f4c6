"""One GSLB node in one process: config, snapshot, DNS listeners, HTTP API, reloads.

Lifecycles are async context managers composed in ``run``; every listener logs the
address it really bound, so port 0 works in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable, Coroutine, Hashable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from dnsserver.handler import QueryHandler
from dnsserver.rrl import RateLimiter
from dnsserver.server import DnsServer, ListenerSockets, format_address
from gslb.compile import CompiledConfig
from gslb.config import LoadedConfig, load_config
from gslb.endpoint import Endpoint
from gslb.errors import ConfigError, GslbError, StoreError
from gslb.handover import Handover, Offer
from gslb.meshstatus import MeshPoller
from gslb.snapshot import HealthView, Snapshot, build_snapshot, registered_endpoint, same_answers
from gslb.store import Drain, MemoryStore, Overrides, StateStore, StoreEvent, make_store
from healthmon.base import ProbeResult
from healthmon.scheduler import CheckTarget, Scheduler
from healthmon.tracker import Event, HealthTracker, TargetHealth

log = logging.getLogger("gslb")
RELOAD_SETTLE = 0.05
"""Seconds a reloaded config file must stay unchanged before it is read (see read_settled)."""
FIRST_CHECKS_WAIT = 10.0
"""A successor starts answering once its health checks have run (the old node answers meanwhile)."""


class Node:
    def __init__(self, path: Path, loaded: LoadedConfig, *, label: str = "",
                 store: StateStore | None = None) -> None:
        self.path = path
        self.loaded = loaded
        self.label = label
        sites = {name: (site.lat, site.lon) for name, site in loaded.config.sites.items()}
        self.store: StateStore = store or make_store(loaded.config.store, sites=sites)
        self.votes: dict[str, dict[str, str]] = {}
        self._check_ids: dict[Hashable, str] = {}
        self.overrides = Overrides()
        self.tracker = HealthTracker()
        self.scheduler: Scheduler | None = None
        self._rebuild_scheduled = False
        self._pending: dict[Hashable, bool] = {}
        self._override_reads = 0
        self._override_applied = 0
        """Reads of the store's overrides started and the latest one applied: a read that started
        earlier but finished later (an older copy) must not replace a newer one."""
        self.snapshot: Snapshot = build_snapshot(loaded.compiled, self.tracker.targets)
        self.handler = QueryHandler(self.snapshot, udp_size=loaded.config.server.dns.edns_udp_size)
        self.dns: DnsServer | None = None
        self.http_address: tuple[str, int] | None = None
        self.http_socket: socket.socket | None = None
        self._site: web.BaseSite | None = None
        self._stop: asyncio.Event | None = None
        self.reloads = 0
        self.started = time.time()
        self._tasks: set[asyncio.Task[None]] = set()
        self.listeners: set[asyncio.Queue[StoreEvent | None]] = set()
        self._refreshing: set[str] = set()
        self._synced_at = time.monotonic()
        self._dirty: set[str] = set()
        self.mesh: MeshPoller | None = None

    def status(self) -> dict[str, Any]:
        serials = {apex: zone.soa.rrs[0].rdata.times[0] for apex, zone in self.snapshot.zones.items()}
        return {
            "ready": self.dns is not None and self.first_verdicts_in(),
            "config": str(self.path),
            "generation": self.snapshot.generation,
            "serials": serials,
            "reloads": self.reloads,
            "dns": [format_address(h, p) for h, p in (self.dns.addresses if self.dns else [])],
            "health": self.health_status(),
            "store": self.store_status(),
        }

    def first_verdicts_in(self) -> bool:
        """Every health check has run at least once (answers no longer rest on initial states)."""
        return all(t.last_checked is not None for t in self.tracker.targets.values())

    def store_status(self) -> dict[str, Any]:
        status = self.store.status()
        return {"backend": status.backend, "state": "ok" if status.healthy else "degraded",
                "detail": status.detail, "node": self.store.node_id, **status.extra}

    def describe_services(self) -> list[dict[str, Any]]:
        """Every GSLB name with its endpoints as the current snapshot sees them."""
        out = []
        for name, table in sorted(self.snapshot.services.items()):
            spec = table.spec
            usable = {ep.id for ep in table.candidates}
            registered = {r.id: r for r in self.overrides.registrations if r.service == name}
            endpoints = []
            for ep in (*spec.endpoints, *(registered_endpoint(r) for r in registered.values())):
                check = spec.checks.get(ep.id)
                health = self.tracker.targets.get(check.key) if check is not None else None
                drain = table.drained.get(ep.id)
                endpoints.append({
                    "id": ep.id, "site": ep.site,
                    "ipv4": str(ep.ipv4) if ep.ipv4 else None, "ipv6": str(ep.ipv6) if ep.ipv6 else None,
                    "cname": ep.cname, "weight": ep.weight,
                    "enabled": ep.id in spec.enabled or ep.id in registered,
                    "registered": ep.id in registered,
                    "usable": ep.id in usable,
                    "drained": drain.to_json() if drain else None,
                    "health": None if health is None else {
                        "state": health.state, "since": health.since, "flaps": health.flaps,
                        "check": check.name if check else None,
                        "last_checked": health.last_checked,
                        "last_result": None if health.last_result is None else {
                            "ok": health.last_result.ok, "detail": health.last_result.detail,
                            "latency_ms": round(health.last_result.latency * 1000, 2)},
                    },
                })
            out.append({"name": name, "ttl": spec.ttl, "ttl_now": table.ttl, "answers": spec.answers,
                        "policy": [p.config.model_dump(mode="json") for p in spec.policies],
                        "fallback": spec.fallback_mode, "endpoints": endpoints})
        return out

    def drain_matches(self, drain: Drain) -> list[str]:
        joined: dict[str, list[Endpoint]] = {}
        for reg in self.overrides.registrations:
            joined.setdefault(reg.service, []).append(registered_endpoint(reg))
        return [f"{name}/{ep.id}" for name, table in self.snapshot.services.items()
                for ep in (*table.spec.endpoints, *joined.get(name, ())) if drain.matches(name, ep.id, ep.site)]

    def health_status(self) -> dict[str, Any]:
        targets = self.tracker.targets.values()
        stats = self.scheduler.stats if self.scheduler is not None else None
        return {
            "targets": len(self.tracker.targets),
            "down": sum(1 for t in targets if t.state == "down"),
            "checks": stats.checks if stats else 0,
            "failed_checks": stats.failures if stats else 0,
            "lag_p50_ms": round(stats.lag_quantile(0.5) * 1000, 2) if stats else 0.0,
            "lag_p99_ms": round(stats.lag_quantile(0.99) * 1000, 2) if stats else 0.0,
        }

    def _serial(self) -> int:
        previous = max((z.soa.rrs[0].rdata.times[0] for z in self.snapshot.zones.values()), default=0)
        return max(int(time.time()), previous + 1)

    async def reload(self) -> list[str]:
        """Load the config file again; a bad one is logged and the old one keeps serving."""
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(
                None, lambda: load_config(self.path, serial=self._serial(), settle=RELOAD_SETTLE))
        except ConfigError as exc:
            log.error("config reload rejected; still serving the previous config%s\n%s", self.label, exc)
            return [str(e) for e in exc.errors]
        if loaded.config.server != self.loaded.config.server:
            log.warning("config reload: changes under 'server' take effect at the next restart")
        self.loaded = loaded
        if self.scheduler is not None:
            self._sync_checks()
        self.rebuild()
        self.reloads += 1
        log.info("config reloaded%s: %d zone(s), %d GSLB name(s), generation %d", self.label,
                 len(self.snapshot.zones), len(self.snapshot.services), self.snapshot.generation)
        return []

    def _sync_checks(self) -> None:
        assert self.scheduler is not None
        targets = check_targets(self.loaded.compiled)
        self._check_ids = {t.key: check_id(t.key) for t in targets}
        self.scheduler.sync(targets)

    def _http_tls(self) -> ssl.SSLContext | None:
        cfg = self.loaded.config.server.http
        return _tls_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert and cfg.tls_key else None

    def rebuild(self) -> None:
        """A new snapshot from the config and the current health, swapped in whole."""
        self._rebuild_scheduled = False
        old, self.snapshot = self.snapshot, build_snapshot(self.loaded.compiled, self.health_view(), self.overrides)
        self.handler.set_snapshot(self.snapshot, keep_caches=same_answers(old, self.snapshot))

    def health_view(self) -> Mapping[Hashable, HealthView]:
        """Each check's state as the snapshot should see it: this node's own verdict, or,
        when other nodes report on the same check, the quorum of the fresh reports (with
        this node's latest verdict in place of its stored one). A node cut off from the
        store keeps the last votes it read, so it does not fail over on its own."""
        if not self.votes:
            return self.tracker.targets
        quorum = self.loaded.config.store.quorum
        view: dict[Hashable, HealthView] = {}
        for key, local in self.tracker.targets.items():
            votes = self.votes.get(self._check_ids.get(key, ""))
            if not votes:
                view[key] = local
                continue
            merged = {**votes, self.store.node_id: local.state}
            down = sum(1 for state in merged.values() if state == "down")
            needed = quorum or len(merged) // 2 + 1
            view[key] = VotedHealth("down" if down >= needed else "up", local)
        return view

    async def refresh_votes(self) -> None:
        try:
            self.votes = await self.store.health_votes()
        except StoreError as exc:
            log.warning("state store unreadable, keeping the last health votes: %s", exc)
            return
        self.rebuild()

    async def report_health(self, keys: list[Hashable] | None = None) -> None:
        """Publish this node's verdicts (all, or those of ``keys``) as its vantage point."""
        targets = self.tracker.targets
        states = {self._check_ids[k]: targets[k].state for k in (keys or list(targets)) if k in self._check_ids}
        if states:
            try:
                await self.store.report_health(states)
            except StoreError as exc:
                log.warning("could not publish health to the state store: %s", exc)

    def _request_rebuild(self) -> None:
        """Coalesce the changes of one loop iteration into one rebuild."""
        if not self._rebuild_scheduled:
            self._rebuild_scheduled = True
            asyncio.get_running_loop().call_soon(self.rebuild)

    def check_name(self, key: Hashable) -> str:
        return self._check_ids.get(key, "")

    def sync_age(self) -> float:
        return time.monotonic() - self._synced_at

    async def refresh_overrides(self) -> None:
        """Take a fresh copy of drains and registrations from the store, then rebuild."""
        self._override_reads += 1
        read = self._override_reads
        try:
            overrides = await self.store.overrides()
        except StoreError as exc:
            log.warning("state store unreadable, answering from the last known state: %s", exc)
            return
        if read < self._override_applied:
            return  # a read started after this one has already been applied
        self._override_applied = read
        self.overrides = overrides
        self._synced_at = time.monotonic()
        self.rebuild()

    def _on_store_change(self, kind: str) -> None:
        if self.listeners:
            self.push(StoreEvent(time.time(), "store", kind, "", "changed", f"state store reports a change of {kind}"))
        if kind == "overrides":
            self._coalesce("overrides", self.refresh_overrides)
        elif kind == "health":
            self._coalesce("health", self.refresh_votes)

    def _coalesce(self, name: str, refresh: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``refresh`` now, or once more after the run in progress: a burst of change
        messages costs at most two reads of the store, not one per message."""
        if name in self._refreshing:
            self._dirty.add(name)
            return
        self._refreshing.add(name)

        async def loop() -> None:
            try:
                while True:
                    self._dirty.discard(name)
                    await refresh()
                    if name not in self._dirty:
                        return
            finally:
                self._refreshing.discard(name)

        self._spawn(loop())

    def _on_health_event(self, event: Event) -> None:
        self._request_rebuild()
        self._spawn(self._record_health_event(event))

    async def _record_health_event(self, event: Event) -> None:
        await self.report_health([event.key])
        with contextlib.suppress(StoreError):  # history is best effort; the verdict went out above
            await self.emit(StoreEvent(event.at, "health", event.target, event.old, event.new, event.reason))

    async def emit(self, event: StoreEvent) -> None:
        """Record an event in the store's history and push it to live listeners (SSE)."""
        self.push(event)
        await self.store.add_event(event)

    def _end_streams(self) -> None:
        """Tell live event streams to finish, so shutdown does not wait on them."""
        for queue in list(self.listeners):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def push(self, event: StoreEvent) -> None:
        for queue in list(self.listeners):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()  # a slow listener loses its oldest event, never blocks us
            queue.put_nowait(event)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_result(self, target: CheckTarget, result: ProbeResult) -> None:
        # A TTL shortened while a flip is under way changes with every check, and so does
        # the end of such a period: both need a new snapshot; steady checks do not.
        pending = self.tracker.targets[target.key].seconds_to_change() is not None
        if pending or self._pending.get(target.key, False):
            self._request_rebuild()
        self._pending[target.key] = pending

    async def run(self, listeners: list[ListenerSockets], http: tuple[str, int] | socket.socket | None,
                  stop: asyncio.Event, *, monitors: bool = True, handover: Handover | None = None) -> None:
        """Serve until ``stop``. ``http`` is an address to bind or a listening socket already
        bound (handed over); with ``handover``, take over from the node it connected to and
        then offer this node's sockets to the next one."""
        dns = self.loaded.config.server.dns
        self._stop = stop
        async with AsyncExitStack() as stack:
            if handover is not None and handover.taking_over and isinstance(self.store, MemoryStore):
                self.store.hold_writes()  # the predecessor writes the state file until it goes
            await self.store.start()
            stack.push_async_callback(self.store.close)
            self.store.on_change(self._on_store_change)
            await self.refresh_overrides()
            if monitors:
                source = self.loaded.config.server.probe_source
                self.scheduler = Scheduler(self.tracker, on_event=self._on_health_event,
                                           on_result=self._on_result, source=str(source) if source else None)
                stack.push_async_callback(self.scheduler.close)
                self._sync_checks()
                self.rebuild()  # the targets' initial states (initial: down) apply from the start
                await self.report_health()
                if handover is not None and handover.taking_over:
                    await self._first_checks(FIRST_CHECKS_WAIT)
            server = DnsServer(self.handler, listeners, tcp_idle_timeout=dns.tcp_idle_timeout,
                               tcp_max_connections=dns.tcp_max_connections,
                               tcp_max_per_client=dns.tcp_max_per_client, tcp_read_timeout=dns.tcp_read_timeout,
                               tcp_write_timeout=dns.tcp_write_timeout, label=self.label,
                               rrl=RateLimiter(**dns.rrl.model_dump()) if dns.rrl is not None else None)
            await server.start()
            stack.push_async_callback(server.stop)
            self.dns = server
            if self.loaded.config.mesh is not None:  # cluster-link state for the API and the map
                self.mesh = await stack.enter_async_context(MeshPoller(lambda: self.loaded.config.mesh))
            if http is not None:
                from gslb.api.app import make_app

                self.http_socket = http if isinstance(http, socket.socket) else bind_http(*http)
                runner = web.AppRunner(make_app(self), access_log=None, shutdown_timeout=1.0)
                await runner.setup()
                stack.push_async_callback(runner.cleanup)
                stack.callback(self._end_streams)
                self._site = web.SockSite(runner, self.http_socket, ssl_context=self._http_tls())
            if handover is not None:
                # Everything that can fail is done: tell the predecessor to go (its HTTP API
                # stops there, ours starts below) and take its drains and registrations over.
                state = await handover.confirm()
                if isinstance(self.store, MemoryStore):
                    self.store.adopt_state(state)
            if self._site is not None and self.http_socket is not None:
                await self._site.start()
                self.http_address = self.http_socket.getsockname()[:2]
                log.info("listening http on %s%s", format_address(*self.http_address), self.label)
            if handover is not None:
                handover.listen(self._offer, self._release, self._export)
                stack.push_async_callback(handover.close)  # first thing at shutdown
            # Everything built so far (config, compiled zones, monitors) lives as long as the
            # process: keep it out of the collector's reach, so full collections stay short.
            gc.freeze()
            log.info("gslb node ready%s: %d zone(s), %d GSLB name(s)", self.label,
                     len(self.snapshot.zones), len(self.snapshot.services))
            await stop.wait()
            log.info("shutting down%s%s", self.label, " (handed over)" if handover and handover.handed_over else "")

    async def _first_checks(self, limit: float) -> None:
        if not self.tracker.targets:
            return
        deadline = time.monotonic() + limit
        while not self.first_verdicts_in() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        log.info("handover: %d health check(s) run%s; starting to answer", len(self.tracker.targets),
                 "" if self.first_verdicts_in() else f" (not all within {limit:g} s)")

    def _offer(self) -> Offer:
        return Offer(self.dns.listeners if self.dns else [], self.http_socket)

    def _export(self) -> Any:
        """What a successor takes over with the sockets: the embedded store's state."""
        return self.store.export_state() if isinstance(self.store, MemoryStore) else None

    async def _release(self) -> None:
        """A successor serves on this node's sockets: stop reading them, let the TCP
        connections finish what they are answering, then stop."""
        if isinstance(self.store, MemoryStore):
            self.store.hold_writes()  # the state file is the successor's now
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self.dns is not None:
            finished, cut = await self.dns.release(self.loaded.config.server.dns.tcp_idle_timeout)
            log.info("handover: stopped reading dns/udp and accepting dns/tcp and http; %d TCP connection(s) "
                     "closed after their answers, %d cut at the deadline", finished, cut)
        if self._stop is not None:
            self._stop.set()


@dataclass(frozen=True, slots=True)
class VotedHealth:
    """A check's state decided by the vantage points' quorum; flip timing stays local."""

    state: str
    local: TargetHealth

    def seconds_to_change(self) -> float | None:
        return self.local.seconds_to_change()


def bind_http(host: str, port: int) -> socket.socket:
    """The HTTP API's listening socket, bound here so that it can be handed over."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=128)
    except OSError as exc:
        raise GslbError(f"cannot listen for HTTP on {format_address(host, port)}: {exc}") from None


def _tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def check_id(key: Hashable) -> str:
    """A short name for a check that every node derives alike from the same config."""
    return hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()


def check_targets(compiled: CompiledConfig) -> list[CheckTarget]:
    """Every distinct health check the config asks for (shared between names)."""
    unique: dict[Hashable, CheckTarget] = {}
    for zone in compiled.zones.values():
        for spec in zone.services.values():
            for target in spec.checks.values():
                unique.setdefault(target.key, target)
    return list(unique.values())


def install_signals(node: Node, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(node.reload()))
