"""An immutable view of config + health + overrides: what the answer path reads.

A new snapshot is built whenever anything changes and swapped in whole; the DNS server
reads the current one once per query and never sees a half-applied change.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from dnslib import RR

from gslb.compile import CompiledConfig, EndpointRecords, ServiceSpec, ZoneData, endpoint_records
from gslb.config import SiteConfig
from gslb.endpoint import Endpoint, stable_seed
from gslb.geo import GeoDatabase
from gslb.policies.geo import Decision, GeoPolicy, intern_sites
from gslb.store.base import Drain, Overrides, Registration

_generations = itertools.count(1)


@dataclass(frozen=True, slots=True)
class ServiceTable:
    """One GSLB name as the answer path sees it: the endpoints usable right now. Slotted:
    with thousands of names, each object the answer path touches per name is a likely cache
    miss, and a slotted table is one object instead of two."""

    spec: ServiceSpec
    candidates: tuple[Endpoint, ...]
    """Enabled (or registered), not drained, not down: what policies choose among."""
    admitted: tuple[Endpoint, ...]
    """Enabled (or registered) and not drained, whatever their health: the fail-open set."""
    records: Mapping[str, EndpointRecords]
    """Answer records per endpoint, with the TTL in force (shortened while health may flip)."""
    ttl: int
    drained: Mapping[str, Drain] = field(default_factory=dict)
    gateways: tuple[Endpoint, ...] = ()
    """Healthy gateway endpoints of a mesh-aware name (never candidates: see gslb.policies.mesh)."""
    by_type: Mapping[int, tuple[Endpoint, ...]] = field(init=False, compare=False)
    """Candidates able to answer A (1) or AAAA (28): built once, so their identity is stable
    (policies memoise decisions per candidate tuple)."""
    geo: GeoPolicy | None = field(init=False, compare=False, repr=False)
    """The chain's only policy when it is ``geo`` (no mesh): the answer path then maps the geo
    decision, shared by every name with the same rules, straight to memoised records."""
    sites_a: frozenset[str] = field(init=False, compare=False, repr=False)
    """Sites of ``by_type[1]`` (interned: shared by every name with the same ones), for the geo
    decision; a field rather than a mapping, one object fewer to reach per query."""
    sites_aaaa: frozenset[str] = field(init=False, compare=False, repr=False)
    """Sites of ``by_type[28]``, likewise."""
    located: Mapping[int, dict[Decision, LocatedAnswer]] = field(init=False, compare=False, repr=False)
    """Answer per query type (A, AAAA) and geo decision, filled by ``gslb.resolve``; dies with
    the table. Keyed by the decision alone, a shared object: a hit compares by identity."""

    def __post_init__(self) -> None:
        usable = self.candidates
        by_type = {
            1: tuple(ep for ep in usable if ep.cname is not None or ep.ipv4 is not None),
            28: tuple(ep for ep in usable if ep.cname is not None or ep.ipv6 is not None),
        }
        object.__setattr__(self, "by_type", by_type)
        policies = self.spec.policies
        geo = policies[0] if len(policies) == 1 and self.spec.mesh is None else None
        if isinstance(geo, GeoPolicy):
            object.__setattr__(self, "geo", geo)
            object.__setattr__(self, "sites_a", intern_sites(frozenset(ep.site for ep in by_type[1])))
            object.__setattr__(self, "sites_aaaa", intern_sites(frozenset(ep.site for ep in by_type[28])))
            object.__setattr__(self, "located", {1: {}, 28: {}})
        else:
            object.__setattr__(self, "geo", None)
            object.__setattr__(self, "sites_a", _NO_SITES)
            object.__setattr__(self, "sites_aaaa", _NO_SITES)
            object.__setattr__(self, "located", _NO_MEMO)


_NO_SITES: frozenset[str] = frozenset()
_NO_MEMO: Mapping[int, dict[Decision, LocatedAnswer]] = {}
"""``sites_*`` and ``located`` of a name without a lone geo policy: never read."""


@dataclass(frozen=True, slots=True)
class LocatedAnswer:
    """What a GSLB name answers for one geo decision: the records, the CNAME target to chase
    (if any), the endpoints chosen and their sites."""

    records: tuple[RR, ...]
    target: str | None
    chosen: tuple[Endpoint, ...]
    sites: tuple[str, ...]


@dataclass(frozen=True)
class Snapshot:
    generation: int
    zones: Mapping[str, ZoneData]
    services: Mapping[str, ServiceTable]
    sites: Mapping[str, SiteConfig]
    geo: GeoDatabase | None = None
    overrides: Overrides = field(default_factory=Overrides)


class HealthView(Protocol):
    """What the snapshot needs to know about a health check target."""

    @property
    def state(self) -> str: ...

    def seconds_to_change(self) -> float | None: ...


def registered_endpoint(reg: Registration) -> Endpoint:
    return Endpoint(reg.id, sys.intern(reg.site), reg.ipv4, reg.ipv6, None, reg.weight, stable_seed(reg.id))


def _health(view: HealthView | None, soonest: float | None) -> tuple[bool, float | None]:
    """Whether a checked endpoint is up (unchecked ones are), and the earliest moment any
    verdict seen so far may change (health-aware TTLs)."""
    if view is None:
        return True, soonest
    change = view.seconds_to_change()
    if change is not None:
        soonest = change if soonest is None else min(soonest, change)
    return view.state != "down", soonest


def build_snapshot(compiled: CompiledConfig, health: Mapping[Hashable, HealthView] | None = None,
                   overrides: Overrides | None = None) -> Snapshot:
    """Combine config, health and overrides. An endpoint is a candidate when enabled (or
    registered and heartbeating), not drained and not down; a check with no verdict yet
    counts as its monitor's ``initial`` state (tracked by the caller)."""
    health = health or {}
    overrides = overrides or Overrides()
    registered: dict[str, list[Registration]] = {}
    for reg in overrides.registrations:
        registered.setdefault(reg.service, []).append(reg)
    services = {}
    for zone in compiled.zones.values():
        for name, spec in zone.services.items():
            joined = [registered_endpoint(r) for r in sorted(registered.get(name, ()), key=lambda r: r.id)]
            joined_ids = {ep.id for ep in joined}
            records = spec.records
            if joined:
                records = {**records, **{ep.id: endpoint_records(ep, name, spec.ttl) for ep in joined}}
            usable: list[Endpoint] = []
            admitted: list[Endpoint] = []
            drained: dict[str, Drain] = {}
            soonest: float | None = None
            for ep in (*spec.endpoints, *joined):
                if ep.id not in spec.enabled and ep.id not in joined_ids:
                    continue
                drain = overrides.drained(name, ep.id, ep.site) if overrides.drains else None
                if drain is not None:
                    drained[ep.id] = drain
                    continue
                admitted.append(ep)
                check = spec.checks.get(ep.id)
                up, soonest = _health(health.get(check.key) if check is not None else None, soonest)
                if up:
                    usable.append(ep)
            gateways: list[Endpoint] = []
            for ep in spec.gateways:
                # only an endpoint drain naming a gateway takes it out: a site drain is what
                # sends the cluster's clients to it
                if any(d.kind == "endpoint" and d.matches(name, ep.id, ep.site) for d in overrides.drains):
                    continue
                up, soonest = _health(health.get(spec.checks[ep.id].key), soonest)
                if up:
                    gateways.append(ep)
            ttl = spec.ttl
            if soonest is not None and soonest < ttl:
                ttl = max(spec.min_ttl, int(soonest))
                records = {eid: _with_ttl(recs, ttl) for eid, recs in records.items()}
            services[name] = ServiceTable(spec, tuple(usable), tuple(admitted), records, ttl, drained,
                                          tuple(gateways))
    return Snapshot(next(_generations), compiled.zones, services, compiled.sites, compiled.geo, overrides)


def _with_ttl(records: EndpointRecords, ttl: int) -> EndpointRecords:
    def one(rr: RR | None) -> RR | None:
        return None if rr is None else RR(rr.rname, rr.rtype, ttl=ttl, rdata=rr.rdata)

    return EndpointRecords(one(records.a), one(records.aaaa), one(records.cname))


def same_answers(old: Snapshot, new: Snapshot) -> bool:
    """True when ``new`` answers every query exactly as ``old`` does, so answers cached for
    ``old`` stay right (a drain that matches nothing, a heartbeat, a steady health report)."""
    if old.zones is not new.zones or old.geo is not new.geo or old.services.keys() != new.services.keys():
        return False
    for name, a in old.services.items():
        b = new.services[name]
        if (a.spec is not b.spec or a.records is not b.records or a.ttl != b.ttl
                or a.candidates != b.candidates or a.admitted != b.admitted or a.gateways != b.gateways):
            return False
    return True
