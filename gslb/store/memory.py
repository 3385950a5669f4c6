"""The embedded store: one node, no Redis. State lives in this process only."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping

from gslb.store.base import Drain, DrainKind, Overrides, Registration, StoreEvent, StoreStatus


class MemoryStore:
    node_id = "local"

    def __init__(self, *, history: int = 1000, clock: Callable[[], float] = time.time,
                 sweep_interval: float = 0.5) -> None:
        self.clock = clock
        self.sweep_interval = sweep_interval
        self._drains: dict[tuple[str, str], Drain] = {}
        self._registrations: dict[tuple[str, str], Registration] = {}
        self._events: deque[StoreEvent] = deque(maxlen=history)
        self._callbacks: list[Callable[[str], None]] = []
        self._health: dict[str, str] = {}
        self._version = 0
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    def status(self) -> StoreStatus:
        return StoreStatus("memory", True, "embedded, this node only")

    def on_change(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    def _changed(self, kind: str = "overrides") -> None:
        self._version += 1
        for callback in self._callbacks:
            callback(kind)

    async def overrides(self) -> Overrides:
        return Overrides(tuple(self._drains.values()), tuple(self._registrations.values()), self._version)

    async def set_drain(self, drain: Drain) -> None:
        self._drains[(drain.kind, drain.pattern)] = drain
        self._changed()

    async def clear_drain(self, kind: DrainKind, pattern: str) -> bool:
        removed = self._drains.pop((kind, pattern), None) is not None
        if removed:
            self._changed()
        return removed

    async def register(self, registration: Registration) -> bool:
        key = (registration.service, registration.id)
        previous = self._registrations.get(key)
        self._registrations[key] = registration
        if previous is None or (previous.ipv4, previous.ipv6, previous.site, previous.weight) != (
                registration.ipv4, registration.ipv6, registration.site, registration.weight):
            self._changed()
        return previous is None

    async def deregister(self, service: str, endpoint_id: str) -> bool:
        removed = self._registrations.pop((service, endpoint_id), None) is not None
        if removed:
            self._changed()
        return removed

    async def add_event(self, event: StoreEvent) -> None:
        self._events.append(event)

    async def events(self, limit: int = 100) -> list[StoreEvent]:
        return list(self._events)[-limit:]

    async def report_health(self, states: Mapping[str, str]) -> None:
        self._health.update(states)

    async def health_votes(self) -> dict[str, dict[str, str]]:
        return {check: {"local": state} for check, state in self._health.items()}

    def sweep(self) -> list[str]:
        """Drop expired registrations and drains; returns what went, for the event history."""
        now = self.clock()
        gone = []
        for key, reg in list(self._registrations.items()):
            if reg.expires <= now:
                del self._registrations[key]
                gone.append(f"registration {reg.service}/{reg.id}")
                self._events.append(StoreEvent(now, "registration", f"{reg.service}/{reg.id}", "registered",
                                               "expired", "no heartbeat before its TTL ran out"))
        for key, drain in list(self._drains.items()):
            if drain.expires is not None and drain.expires <= now:
                del self._drains[key]
                gone.append(f"drain {drain.kind}:{drain.pattern}")
                self._events.append(StoreEvent(now, "drain", f"{drain.kind}:{drain.pattern}", "drained",
                                               "undrained", "drain expired"))
        if gone:
            self._changed()
        return gone

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            self.sweep()
