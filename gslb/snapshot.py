"""An immutable view of config + health + overrides: what the answer path reads.

A new snapshot is built whenever anything changes and swapped in whole; the DNS server
reads the current one once per query and never sees a half-applied change.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Protocol

from dnslib import RR

from gslb.compile import CompiledConfig, EndpointRecords, ServiceSpec, ZoneData
from gslb.config import SiteConfig
from gslb.endpoint import Endpoint
from gslb.geo import GeoDatabase

_generations = itertools.count(1)


@dataclass(frozen=True)
class ServiceTable:
    """One GSLB name as the answer path sees it: the endpoints usable right now."""

    spec: ServiceSpec
    candidates: tuple[Endpoint, ...]
    records: Mapping[str, EndpointRecords]
    """Answer records per endpoint, with the TTL in force (shortened while health may flip)."""
    ttl: int


@dataclass(frozen=True)
class Snapshot:
    generation: int
    zones: Mapping[str, ZoneData]
    services: Mapping[str, ServiceTable]
    sites: Mapping[str, SiteConfig]
    geo: GeoDatabase | None = None


class HealthView(Protocol):
    """What the snapshot needs to know about a health check target."""

    @property
    def state(self) -> str: ...

    def seconds_to_change(self) -> float | None: ...


def build_snapshot(compiled: CompiledConfig, health: Mapping[Hashable, HealthView] | None = None) -> Snapshot:
    """Combine config and health. An endpoint is usable when enabled and not down; a check
    with no verdict yet counts as its monitor's ``initial`` state (tracked by the caller)."""
    health = health or {}
    services = {}
    for zone in compiled.zones.values():
        for name, spec in zone.services.items():
            usable = []
            soonest: float | None = None
            for ep in spec.endpoints:
                check = spec.checks.get(ep.id)
                view = health.get(check.key) if check is not None else None
                if view is not None:
                    change = view.seconds_to_change()
                    if change is not None:
                        soonest = change if soonest is None else min(soonest, change)
                    if view.state == "down":
                        continue
                if ep.id in spec.enabled:
                    usable.append(ep)
            ttl = spec.ttl
            records = spec.records
            if soonest is not None and soonest < ttl:
                ttl = max(spec.min_ttl, int(soonest))
                records = {eid: _with_ttl(recs, ttl) for eid, recs in spec.records.items()}
            services[name] = ServiceTable(spec, tuple(usable), records, ttl)
    return Snapshot(next(_generations), compiled.zones, services, compiled.sites, compiled.geo)


def _with_ttl(records: EndpointRecords, ttl: int) -> EndpointRecords:
    def one(rr: RR | None) -> RR | None:
        return None if rr is None else RR(rr.rname, rr.rtype, ttl=ttl, rdata=rr.rdata)

    return EndpointRecords(one(records.a), one(records.aaaa), one(records.cname))
