"""An immutable view of config + health + overrides: what the answer path reads.

A new snapshot is built whenever anything changes and swapped in whole; the DNS server
reads the current one once per query and never sees a half-applied change.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

from gslb.compile import CompiledConfig, ServiceSpec, ZoneData
from gslb.config import SiteConfig
from gslb.endpoint import Endpoint
from gslb.geo import GeoDatabase

_generations = itertools.count(1)


@dataclass(frozen=True)
class ServiceTable:
    """One GSLB name as the answer path sees it: the endpoints usable right now."""

    spec: ServiceSpec
    candidates: tuple[Endpoint, ...]


@dataclass(frozen=True)
class Snapshot:
    generation: int
    zones: Mapping[str, ZoneData]
    services: Mapping[str, ServiceTable]
    sites: Mapping[str, SiteConfig]
    geo: GeoDatabase | None = None


def build_snapshot(compiled: CompiledConfig) -> Snapshot:
    services = {}
    for zone in compiled.zones.values():
        for name, spec in zone.services.items():
            usable = tuple(ep for ep in spec.endpoints if ep.id in spec.enabled)
            services[name] = ServiceTable(spec, usable)
    return Snapshot(next(_generations), compiled.zones, services, compiled.sites, compiled.geo)
