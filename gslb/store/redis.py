"""Shared state in Redis, so several GSLB nodes answer alike.

Data model (every key under a configurable prefix, ``gslb:`` by default; see docs/redis.md):

- ``drains``            hash  ``kind:pattern`` -> JSON drain
- ``reg:<name>/<id>``   string JSON registration, expiring with a Redis TTL (no heartbeat: gone)
- ``regs``              set   ``<name>/<id>`` of registrations, an index (members whose key expired are dropped)
- ``health:<node>``     hash  check id -> ``up``/``down``: one vantage point's verdicts
- ``nodes``             hash  node -> time of its last heartbeat (reports of silent nodes go stale)
- ``events``            stream of state changes, capped
- ``sites``             geo set of site coordinates (GEOADD), for other tools
- ``version``           counter bumped by every write of drains or registrations; a node that
                        reconnects and finds it missing knows Redis restarted empty and writes
                        back what it knows
- ``health_version``    counter bumped by every health report
- channel ``changes``   pub/sub: ``overrides`` or ``health:<node>`` after each write, for other
                        tools; nodes poll the two counters (one MGET every 10 ms), which costs
                        less per change than decoding messages and cannot miss one

Reads never block answering: the node keeps the last copy it read. Every call raises
``StoreError`` while Redis is unreachable; a supervisor reconnects with backoff and jitter
and resynchronises in full.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from ipaddress import ip_address
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from gslb.errors import StoreError
from gslb.store.base import Drain, DrainKind, Overrides, Registration, StoreEvent, StoreStatus

log = logging.getLogger("gslb.store")


def _drain_from(raw: str) -> Drain:
    d = json.loads(raw)
    return Drain(d["kind"], d["pattern"], d.get("reason", ""), d["created"], d.get("expires"))


def _registration_from(raw: str) -> Registration:
    d = json.loads(raw)
    return Registration(d["service"], d["id"], d["site"],
                        ip_address(d["ipv4"]) if d.get("ipv4") else None,  # type: ignore[arg-type]
                        ip_address(d["ipv6"]) if d.get("ipv6") else None,  # type: ignore[arg-type]
                        int(d["weight"]), float(d["expires"]), float(d["registered"]))


class RedisStore:
    def __init__(self, url: str | None, *, node_id: str, prefix: str = "gslb:", stale_after: float = 10.0,
                 history: int = 1000, sentinels: list[tuple[str, int]] | None = None,
                 sentinel_master: str | None = None, clock: Callable[[], float] = time.time,
                 resync_interval: float = 1.0, sites: Mapping[str, tuple[float, float]] | None = None,
                 poll_interval: float = 0.01) -> None:
        self.poll_interval = poll_interval
        self.node_id = node_id
        self.prefix = prefix
        self.stale_after = stale_after
        self.history = history
        self.clock = clock
        self.resync_interval = resync_interval
        self.sites = dict(sites or {})
        options: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, "decode_responses": True}
        if sentinels:
            self._sentinel: Sentinel | None = Sentinel(sentinels, **options)  # type: ignore[no-untyped-call]
            # redis-py's stubs type every reply as bytes | str; with decode_responses they are str
            self.redis: Any = self._sentinel.master_for(sentinel_master or "mymaster", **options)
            self.describe = f"sentinel {sentinel_master} via {', '.join(f'{h}:{p}' for h, p in sentinels)}"
        else:
            if not url:
                raise StoreError("a Redis store needs a URL or sentinel settings")
            self._sentinel = None
            self.redis = aioredis.from_url(url, **options)
            self.describe = url.split("@")[-1]  # never log a password
        self.connected = False
        self.last_error = ""
        self._callbacks: list[Callable[[str], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._local_health: dict[str, str] = {}
        self._last: Overrides = Overrides()
        self.resyncs = 0

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._supervise()))
        deadline = time.monotonic() + 3
        while not self.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if not self.connected:
            log.warning("Redis %s not reachable yet (%s); answering from config and local checks until it is",
                        self.describe, self.last_error)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()

    def status(self) -> StoreStatus:
        return StoreStatus("redis", self.connected, self.describe if self.connected else
                           f"unreachable: {self.last_error}; answering from the last known state",
                           {"node": self.node_id, "resyncs": self.resyncs})

    def on_change(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    def _notify(self, kind: str) -> None:
        for callback in self._callbacks:
            callback(kind)

    async def _supervise(self) -> None:
        """Connect, resync, follow changes; on any failure back off (with jitter) and retry."""
        delay = 0.1
        while True:
            try:
                await self.redis.ping()
                await self._resync()
                self.connected = True
                delay = 0.1
                log.info("state store: connected to Redis %s as node %s", self.describe, self.node_id)
                self._notify("overrides")
                self._notify("health")
                await self._watch()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, StoreError) as exc:
                if self.connected or exc.__class__.__name__ not in self.last_error:
                    log.warning("state store: Redis %s unreachable (%s); retrying", self.describe, exc)
                self.connected = False
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                self._notify("status")
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)

    async def _watch(self) -> None:
        """Poll the two version counters (one MGET per ``poll_interval``): cheaper per change
        than decoding pub/sub messages, immune to missed messages, and a burst of changes
        costs one re-read per poll at most. Every ``resync_interval``: heartbeat, expire
        drains, and notice registrations that expired (their keys vanish without a write)."""
        seen: list[Any] = [None, None]
        next_beat = 0.0
        while True:
            versions = await self.redis.mget(self.key("version"), self.key("health_version"))
            if versions[0] != seen[0]:
                self._notify("overrides")
            if versions[1] != seen[1]:
                self._notify("health")
            seen = versions
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.resync_interval
                await self._heartbeat()
                self.connected = True
                await self._expire()
                registrations = await self._live_registrations()
                if registrations != self._last.registrations:
                    self._notify("overrides")
            await asyncio.sleep(self.poll_interval)

    async def _resync(self) -> None:
        """After (re)connecting: if Redis lost everything, write back what this node knows."""
        self.resyncs += 1
        if not await self.redis.exists(self.key("version")):
            last = self._last
            pipe = self.redis.pipeline()
            for drain in last.drains:
                pipe.hset(self.key("drains"), f"{drain.kind}:{drain.pattern}", json.dumps(drain.to_json()))
            now = self.clock()
            for reg in last.registrations:
                if reg.expires > now:
                    pipe.set(self.key("reg", f"{reg.service}/{reg.id}"), json.dumps(reg.to_json()),
                             px=max(1, int((reg.expires - now) * 1000)))
                    pipe.sadd(self.key("regs"), f"{reg.service}/{reg.id}")
            pipe.incr(self.key("version"))
            await pipe.execute()
            if last.drains or last.registrations:
                log.warning("state store: Redis came back empty; restored %d drain(s) and %d registration(s)",
                            len(last.drains), len(last.registrations))
        for site, (lat, lon) in self.sites.items():
            await self.redis.geoadd(self.key("sites"), (lon, lat, site))
        await self._heartbeat(full=True)

    async def _heartbeat(self, full: bool = True) -> None:
        pipe = self.redis.pipeline()
        pipe.hset(self.key("nodes"), self.node_id, repr(self.clock()))
        if full and self._local_health:
            pipe.hset(self.key("health", self.node_id), mapping=self._local_health)
        await pipe.execute()

    async def _expire(self) -> None:
        now = self.clock()
        for field, raw in (await self.redis.hgetall(self.key("drains"))).items():
            drain = _drain_from(raw)
            if drain.expires is not None and drain.expires <= now and await self.redis.hdel(
                    self.key("drains"), field):
                await self.add_event(StoreEvent(now, "drain", f"{drain.kind}:{drain.pattern}", "drained",
                                                "undrained", "drain expired"))
                await self._bump("overrides")

    async def _live_registrations(self) -> tuple[Registration, ...]:
        """Registrations whose keys still exist; index entries of expired ones are dropped."""
        members = sorted(await self.redis.smembers(self.key("regs")))
        if not members:
            return ()
        values = await self.redis.mget([self.key("reg", m) for m in members])
        gone = [m for m, v in zip(members, values, strict=True) if v is None]
        if gone:
            await self.redis.srem(self.key("regs"), *gone)
        return tuple(sorted((_registration_from(v) for v in values if v is not None),
                            key=lambda r: (r.service, r.id)))

    async def _bump(self, message: str) -> None:
        pipe = self.redis.pipeline()
        pipe.incr(self.key("version"))
        pipe.publish(self.key("changes"), message)
        await pipe.execute()

    async def _call(self, coro: Any) -> Any:
        try:
            result = await coro
        except (RedisError, OSError) as exc:
            self.connected = False
            self.last_error = f"{exc.__class__.__name__}: {exc}"
            raise StoreError(f"Redis {self.describe} unavailable: {exc}") from exc
        # a pooled connection that died with an old Redis fails once; any success means reachable
        self.connected = True
        return result

    # ------------------------------------------------------------------ overrides

    async def overrides(self) -> Overrides:
        async def read() -> Overrides:
            now = self.clock()
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(self.key("drains"))
            pipe.get(self.key("version"))
            raw_drains, version = await pipe.execute()
            drains = [_drain_from(raw) for raw in raw_drains.values()]
            return Overrides(tuple(sorted((d for d in drains if d.expires is None or d.expires > now),
                                          key=lambda d: (d.kind, d.pattern))),
                             await self._live_registrations(), int(version or 0))

        self._last = await self._call(read())
        return self._last

    async def set_drain(self, drain: Drain) -> None:
        await self._call(self.redis.hset(self.key("drains"), f"{drain.kind}:{drain.pattern}",
                                         json.dumps(drain.to_json())))
        await self._call(self._bump("overrides"))

    async def clear_drain(self, kind: DrainKind, pattern: str) -> bool:
        removed = bool(await self._call(self.redis.hdel(self.key("drains"), f"{kind}:{pattern}")))
        if removed:
            await self._call(self._bump("overrides"))
        return removed

    async def register(self, registration: Registration) -> bool:
        ttl_ms = max(1, int((registration.expires - self.clock()) * 1000))
        member = f"{registration.service}/{registration.id}"
        key = self.key("reg", member)
        pipe = self.redis.pipeline()
        pipe.set(key, json.dumps(registration.to_json()), px=ttl_ms, get=True)
        pipe.sadd(self.key("regs"), member)
        previous, _ = await self._call(pipe.execute())
        new = previous is None
        changed = new or _registration_from(previous).to_json() | {"expires": 0, "registered": 0} != \
            registration.to_json() | {"expires": 0, "registered": 0}
        if changed:
            await self._call(self._bump("overrides"))
        return new

    async def deregister(self, service: str, endpoint_id: str) -> bool:
        pipe = self.redis.pipeline()
        pipe.delete(self.key("reg", f"{service}/{endpoint_id}"))
        pipe.srem(self.key("regs"), f"{service}/{endpoint_id}")
        removed = bool((await self._call(pipe.execute()))[0])
        if removed:
            await self._call(self._bump("overrides"))
        return removed

    # ------------------------------------------------------------------ events

    async def add_event(self, event: StoreEvent) -> None:
        fields = {k: ("" if v is None else str(v)) for k, v in event.to_json().items()}
        await self._call(self.redis.xadd(self.key("events"), fields, maxlen=self.history, approximate=True))

    async def events(self, limit: int = 100) -> list[StoreEvent]:
        rows = await self._call(self.redis.xrevrange(self.key("events"), count=limit))
        return [StoreEvent(float(f["at"]), f["kind"], f["target"], f["old"], f["new"], f["reason"])
                for _, f in reversed(rows)]

    # ------------------------------------------------------------------ health votes

    async def report_health(self, states: Mapping[str, str]) -> None:
        """This node's verdicts (check id -> up/down); kept locally too, to re-publish after
        an outage."""
        self._local_health.update(states)
        pipe = self.redis.pipeline()
        pipe.hset(self.key("health", self.node_id), mapping=dict(states))
        pipe.hset(self.key("nodes"), self.node_id, repr(self.clock()))
        pipe.incr(self.key("health_version"))
        pipe.publish(self.key("changes"), f"health:{self.node_id}")
        await self._call(pipe.execute())

    async def health_votes(self) -> dict[str, dict[str, str]]:
        """check id -> {node: state} from every node that heartbeat within ``stale_after``."""
        async def read() -> dict[str, dict[str, str]]:
            now = self.clock()
            nodes = await self.redis.hgetall(self.key("nodes"))
            fresh = [node for node, at in nodes.items() if now - float(at) <= self.stale_after]
            votes: dict[str, dict[str, str]] = {}
            for node in fresh:
                for check, state in (await self.redis.hgetall(self.key("health", node))).items():
                    votes.setdefault(check, {})[node] = state
            return votes

        return await self._call(read())  # type: ignore[no-any-return]
