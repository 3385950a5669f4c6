"""The embedded store: one node, no Redis. State lives in this process, and with a state
file also on disk, so drains and registrations survive a restart."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gslb.store.base import Drain, DrainKind, Overrides, Registration, StoreEvent, StoreStatus
from gslb.store.state_file import State, StateFile, StateFileError, from_json, to_json

log = logging.getLogger("gslb.store")


class MemoryStore:
    node_id = "local"

    def __init__(self, *, history: int = 1000, clock: Callable[[], float] = time.time,
                 sweep_interval: float = 0.5, state_file: Path | None = None, persist: bool = True,
                 save_interval: float = 0.2) -> None:
        """``state_file``: load from it at start and save to it after changes (only read it
        with ``persist=False``: another process of the same node writes it)."""
        self.clock = clock
        self.sweep_interval = sweep_interval
        self._drains: dict[tuple[str, str], Drain] = {}
        self._registrations: dict[tuple[str, str], Registration] = {}
        self._events: deque[StoreEvent] = deque(maxlen=history)
        self._callbacks: list[Callable[[str], None]] = []
        self._health: dict[str, str] = {}
        self._version = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._persist = persist
        self.state_file = None if state_file is None else StateFile(
            state_file, self._state, writable=persist, interval=save_interval, clock=clock)

    async def start(self) -> None:
        if self.state_file is not None:
            self._restore(self.state_file.load())
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.state_file is not None:
            await self.state_file.close()

    def status(self) -> StoreStatus:
        where = f"state in {self.state_file.path}" if self.state_file is not None else "state lost at restart"
        return StoreStatus("memory", True, f"embedded, this node only, {where}")

    def on_change(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    def _state(self) -> State:
        return State(tuple(self._drains.values()), tuple(self._registrations.values()), tuple(self._events))

    def _restore(self, state: State) -> None:
        self._drains = {(d.kind, d.pattern): d for d in state.drains}
        self._registrations = {(r.service, r.id): r for r in state.registrations}
        self._events.clear()
        self._events.extend(state.events)

    # Hand-over between two processes of one node (``gslb serve --takeover``): the state
    # moves with the sockets, and only one of them writes the state file at a time.

    def hold_writes(self) -> None:
        """A successor that is starting: the state file is still its predecessor's to write."""
        if self.state_file is not None:
            self.state_file.writable = False

    def export_state(self) -> dict[str, Any]:
        """Everything, for the successor, as this process lets go (``hold_writes`` follows)."""
        return to_json(self._state(), now=self.clock())

    def adopt_state(self, data: Any) -> None:
        """Replace what the state file held at start with the predecessor's state as it let go
        (``None``: keep it), and write the file from now on."""
        if self.state_file is not None:
            self.state_file.writable = self._persist
        if data is None:
            self._save()
            return
        try:
            state = from_json(data).unexpired(self.clock())
        except StateFileError as exc:
            log.error("handover: the predecessor's state is unusable (%s); keeping what the state file held", exc)
            self._save()
            return
        self._restore(state)
        self._changed()

    def _save(self) -> None:
        if self.state_file is not None:
            self.state_file.changed()

    def _changed(self, kind: str = "overrides") -> None:
        self._version += 1
        self._save()
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
        else:
            self._save()  # a heartbeat: the answers stay, the expiry moved
        return previous is None

    async def deregister(self, service: str, endpoint_id: str) -> bool:
        removed = self._registrations.pop((service, endpoint_id), None) is not None
        if removed:
            self._changed()
        return removed

    async def add_event(self, event: StoreEvent) -> None:
        self._events.append(event)
        self._save()

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
