"""What the state store holds and the protocol every backend implements."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal, Protocol

DrainKind = Literal["endpoint", "site"]


@dataclass(frozen=True, slots=True)
class Drain:
    """An operator's decision to take matching endpoints out of answers (gdnsd admin_state)."""

    kind: DrainKind
    pattern: str
    """A glob: for ``site`` against site names; for ``endpoint`` against ``name/endpoint-id``
    and against the bare endpoint id."""
    reason: str
    created: float
    expires: float | None = None

    def matches(self, service: str, endpoint_id: str, site: str) -> bool:
        if self.kind == "site":
            return fnmatch.fnmatchcase(site, self.pattern)
        return fnmatch.fnmatchcase(f"{service}/{endpoint_id}", self.pattern) or fnmatch.fnmatchcase(
            endpoint_id, self.pattern)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "pattern": self.pattern, "reason": self.reason,
                "created": self.created, "expires": self.expires}


@dataclass(frozen=True, slots=True)
class Registration:
    """An endpoint that announced itself through the API and stays while it heartbeats."""

    service: str
    id: str
    site: str
    ipv4: IPv4Address | None
    ipv6: IPv6Address | None
    weight: int
    expires: float
    registered: float

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "id": self.id, "site": self.site,
                "ipv4": str(self.ipv4) if self.ipv4 else None, "ipv6": str(self.ipv6) if self.ipv6 else None,
                "weight": self.weight, "expires": self.expires, "registered": self.registered}


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """A change worth a line in the history: health flips, drains, registrations."""

    at: float
    kind: str
    target: str
    old: str
    new: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, "target": self.target, "old": self.old, "new": self.new,
                "reason": self.reason}


@dataclass(frozen=True)
class Overrides:
    """What the snapshot builder takes from the store: a consistent copy, read at once."""

    drains: tuple[Drain, ...] = ()
    registrations: tuple[Registration, ...] = ()
    version: int = 0

    def drained(self, service: str, endpoint_id: str, site: str) -> Drain | None:
        return next((d for d in self.drains if d.matches(service, endpoint_id, site)), None)


@dataclass
class StoreStatus:
    backend: str
    healthy: bool
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class StateStore(Protocol):
    """Every method may raise ``StoreError`` when the backend is unreachable; writes are
    then refused, never dropped silently."""

    node_id: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def status(self) -> StoreStatus: ...

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(kind)`` whenever something changes, locally or on another node:
        ``overrides`` (drains, registrations), ``health`` (votes), ``status`` (connection)."""

    async def overrides(self) -> Overrides: ...

    async def set_drain(self, drain: Drain) -> None: ...

    async def clear_drain(self, kind: DrainKind, pattern: str) -> bool: ...

    async def register(self, registration: Registration) -> bool:
        """Add or refresh; True when it is new."""

    async def deregister(self, service: str, endpoint_id: str) -> bool: ...

    async def add_event(self, event: StoreEvent) -> None: ...

    async def events(self, limit: int = 100) -> list[StoreEvent]: ...

    async def report_health(self, states: Mapping[str, str]) -> None:
        """This node's verdicts: check id -> ``up``/``down``."""

    async def health_votes(self) -> dict[str, dict[str, str]]:
        """check id -> {node: state} over every node whose reports are fresh."""
