"""The embedded store on disk: drains, registrations and recent events in one JSON file.

The file is replaced whole (temp file, fsync, rename), so a crash leaves the old version or
the new one, never half of either. Reading it back validates every field; a file that does
not pass is reported with the field at fault and not used.

    {"format": "gslb-state", "version": 1, "saved": 1767225600.0,
     "drains": [{"kind": "site", "pattern": "eu-*", "reason": "maintenance", "created": ..., "expires": null}],
     "registrations": [{"service": "app.gslb.example.com", "id": "pod-7", "site": "us-east",
                        "ipv4": "192.0.2.77", "ipv6": null, "weight": 1, "expires": ..., "registered": ...}],
     "events": [{"at": ..., "kind": "drain", "target": "site:eu-*", "old": "serving", "new": "drained",
                 "reason": "maintenance"}]}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from gslb.errors import GslbError, format_path
from gslb.store.base import Drain, Registration, StoreEvent

log = logging.getLogger("gslb.store")
FORMAT = "gslb-state"
VERSION = 1
RETRY_AFTER = 5.0
"""Seconds before a failed write is tried again (unless the node stops first)."""


class StateFileError(GslbError):
    """The state file cannot be used."""


@dataclass(frozen=True)
class State:
    drains: tuple[Drain, ...] = ()
    registrations: tuple[Registration, ...] = ()
    events: tuple[StoreEvent, ...] = ()

    def unexpired(self, now: float) -> State:
        """Without the registrations and drains whose time ran out while nobody was serving."""
        return State(tuple(d for d in self.drains if d.expires is None or d.expires > now),
                     tuple(r for r in self.registrations if r.expires > now), self.events)


class _StateModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["gslb-state"]
    version: Literal[1]
    saved: float
    drains: list[Drain]
    registrations: list[Registration]
    events: list[StoreEvent]


def to_json(state: State, *, now: float) -> dict[str, Any]:
    return {
        "format": FORMAT, "version": VERSION, "saved": now,
        "drains": [d.to_json() for d in state.drains],
        "registrations": [r.to_json() for r in state.registrations],
        "events": [e.to_json() for e in state.events],
    }


def encode(state: State, *, now: float) -> bytes:
    return json.dumps(to_json(state, now=now), separators=(",", ":")).encode()


def decode(data: bytes) -> State:
    """The state in ``data``; ``StateFileError`` names what is wrong (the first few problems)."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateFileError(f"not JSON: {exc}") from None
    return from_json(raw)


def from_json(raw: Any) -> State:
    try:
        model = _StateModel.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{format_path(tuple(e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors(include_url=False)]
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise StateFileError("; ".join(problems[:3]) + more) from None
    return State(tuple(model.drains), tuple(model.registrations), tuple(model.events))


def read(path: Path) -> State | None:
    """The state saved at ``path``; None when there is no file (yet)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"unreadable: {exc.strerror or exc}") from None
    return decode(data)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename, after the data is on disk."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable; not every filesystem allows it
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class StateFile:
    """A store's state kept at ``path``: read once at start, written in a worker thread at most
    every ``interval`` seconds after changes, and once more at a clean shutdown."""

    def __init__(self, path: Path, snapshot: Callable[[], State], *, writable: bool = True,
                 interval: float = 0.2, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.snapshot = snapshot
        self.writable = writable
        self.interval = interval
        self.clock = clock
        self._dirty = False
        self._next = 0.0  # monotonic time before which no write starts
        self._saver: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._sequence = 0  # of the last snapshot taken for writing
        self._written = 0  # of the last snapshot on disk: an older one never overwrites a newer

    def load(self) -> State:
        """What the file holds, without what expired meanwhile. Missing: empty. Unusable:
        logged with the reason, copied aside as ``.corrupt``, and empty (the file itself is
        left alone until the first change is written)."""
        try:
            state = read(self.path)
        except StateFileError as exc:
            copy = self.path.with_name(self.path.name + ".corrupt")
            try:
                shutil.copyfile(self.path, copy)
                kept = f"a copy is at {copy}"
            except OSError as copy_exc:
                kept = f"could not copy it to {copy}: {copy_exc.strerror or copy_exc}"
            log.error("state file %s: %s; starting with no drains or registrations (%s)", self.path, exc, kept)
            return State()
        if state is None:
            log.info("state file %s does not exist yet; starting empty", self.path)
            return State()
        kept_state = state.unexpired(self.clock())
        log.info("state file %s: restored %d drain(s), %d registration(s), %d event(s); %d expired meanwhile",
                 self.path, len(kept_state.drains), len(kept_state.registrations), len(kept_state.events),
                 len(state.drains) + len(state.registrations) - len(kept_state.drains)
                 - len(kept_state.registrations))
        return kept_state

    def changed(self) -> None:
        """Something to save: write soon (coalescing what else changes meanwhile)."""
        if not self.writable:
            return
        self._dirty = True
        if self._saver is None:
            with contextlib.suppress(RuntimeError):  # no loop running: saved at close
                self._saver = asyncio.get_running_loop().create_task(self._save_soon())

    async def _save_soon(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._dirty:
                await asyncio.sleep(max(0.0, self._next - time.monotonic()))
                self._dirty = False
                sequence, data = self._take()
                try:
                    await loop.run_in_executor(None, self._write, sequence, data)
                    self._next = time.monotonic() + self.interval
                except OSError as exc:
                    log.error("state file %s: cannot write (%s); trying again in %g s", self.path,
                              exc.strerror or exc, RETRY_AFTER)
                    self._dirty = True
                    self._next = time.monotonic() + RETRY_AFTER
        finally:
            self._saver = None

    def _take(self) -> tuple[int, bytes]:
        self._sequence += 1
        return self._sequence, encode(self.snapshot(), now=self.clock())

    def _write(self, sequence: int, data: bytes) -> None:
        with self._lock:
            if sequence > self._written:
                write_atomic(self.path, data)
                self._written = sequence

    async def close(self) -> None:
        """Stop the pending write, and write the latest state if it is not on disk yet."""
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
        if self.writable and (self._dirty or self._written < self._sequence):
            self._dirty = False
            try:
                self._write(*self._take())
            except OSError as exc:
                log.error("state file %s: cannot write at shutdown (%s); the last changes are lost", self.path,
                          exc.strerror or exc)
