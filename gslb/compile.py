"""Turn a validated config into lookup tables, finding the errors that need the whole tree.

The output (``CompiledConfig``) is immutable and independent of runtime state: snapshots
combine it with health and overrides. Every error carries the config path it came from.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from pathlib import Path as PathLike

from dnslib import AAAA, CAA, CNAME, MX, NS, QTYPE, RR, SOA, SRV, TXT, A, DNSLabel

from gslb.config import (
    AAAARecord,
    ARecord,
    CaaRecord,
    CnameRecord,
    EndpointConfig,
    GslbConfig,
    MxRecord,
    NsRecord,
    SiteConfig,
    SrvRecord,
    TxtRecord,
    ZoneConfig,
)
from gslb.endpoint import Endpoint, stable_seed
from gslb.errors import FieldError, GslbError, format_path
from gslb.geo import GeoDatabase
from gslb.mesh import mesh_errors
from gslb.names import is_subdomain, parent_names, qualify
from gslb.policies import Policy, PolicyConfig, make_policy
from gslb.policies.mesh import GatewayCheck, MeshPolicy, plan_mesh
from healthmon import Monitor, make_monitor
from healthmon.scheduler import CheckTarget

Path = tuple[str | int, ...]
TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_AAAA = QTYPE.A, QTYPE.NS, QTYPE.CNAME, QTYPE.SOA, QTYPE.AAAA


@dataclass(frozen=True, slots=True)
class RRset:
    """Records of one owner and type; they share one TTL."""

    rtype: int
    ttl: int
    rrs: tuple[RR, ...]


@dataclass(frozen=True, slots=True)
class EndpointRecords:
    """An endpoint's answer records, built once per config."""

    a: RR | None
    aaaa: RR | None
    cname: RR | None


@dataclass(frozen=True)
class ServiceSpec:
    """A GSLB name as configured: its endpoints in config order and the policies choosing among them."""

    name: str
    ttl: int
    answers: int | None
    policies: tuple[Policy, ...]
    endpoints: tuple[Endpoint, ...]
    enabled: frozenset[str]
    fallback_mode: str
    fallback: tuple[Endpoint, ...]
    records: Mapping[str, EndpointRecords]
    min_ttl: int = 5
    checks: Mapping[str, CheckTarget] = field(default_factory=dict)
    """endpoint id -> the health check deciding whether it is usable (none: always usable)"""
    mesh: MeshPolicy | None = None
    """The chain's first policy when the name is mesh-aware (``gslb.policies.mesh``)."""
    gateways: tuple[Endpoint, ...] = ()
    """Hidden gateway endpoints of a mesh-aware name: answered only by its mesh step."""


@dataclass(frozen=True)
class ZoneData:
    apex: str
    nodes: Mapping[str, Mapping[int, RRset]]
    names: frozenset[str]
    cuts: frozenset[str]
    soa: RRset
    negative_soa: RR
    allow_transfer: tuple[IPv4Network | IPv6Network, ...]
    services: Mapping[str, ServiceSpec] = field(default_factory=dict)
    ttl: int = 300


@dataclass(frozen=True)
class CompiledConfig:
    zones: Mapping[str, ZoneData]
    sites: Mapping[str, SiteConfig]
    geo: GeoDatabase | None = None


def zone_of(name: str, apexes: Mapping[str, object]) -> str | None:
    """The most specific served zone holding ``name``."""
    candidate = name
    while True:
        if candidate in apexes:
            return candidate
        if not candidate:
            return None
        _, _, candidate = candidate.partition(".")


def _label(name: str) -> DNSLabel:
    return DNSLabel(name + ".") if name else DNSLabel(".")


def _txt_strings(texts: list[str]) -> list[bytes]:
    out: list[bytes] = []
    for text in texts:
        raw = text.encode()
        out.extend([raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""])
    return out


def _rdata(record: object) -> object:
    if isinstance(record, ARecord):
        return A(str(record.address))
    if isinstance(record, AAAARecord):
        return AAAA(str(record.address))
    if isinstance(record, CnameRecord):
        return CNAME(_label(record.target))
    if isinstance(record, NsRecord):
        return NS(_label(record.target))
    if isinstance(record, MxRecord):
        return MX(_label(record.exchange), record.preference)
    if isinstance(record, TxtRecord):
        return TXT(_txt_strings(record.text))
    if isinstance(record, SrvRecord):
        return SRV(record.priority, record.weight, record.port, _label(record.target))
    if isinstance(record, CaaRecord):
        return CAA(record.flags, record.tag, record.value)
    raise TypeError(f"no rdata for {type(record).__name__}")


def _rname(text: str, apex: str) -> str:
    if "@" in text:
        local, _, domain = text.partition("@")
        return f"{local}.{domain}".lower().rstrip(".")
    text = text.lower().rstrip(".")
    return text if "." in text else f"{text}.{apex}"


@dataclass
class _Pending:
    """One record on its way into an RRset, with the config path it came from."""

    path: Path
    owner: str
    rtype: int
    ttl: int
    rdata: object
    explicit_ttl: bool


def _compile_zone(
    apex: str, zone: ZoneConfig, apexes: Mapping[str, object], serial: int, errors: list[FieldError]
) -> tuple[dict[str, dict[int, list[_Pending]]], RRset, RR]:
    base: Path = ("zones", apex)
    pending: list[_Pending] = []

    ns_rdatas = []
    for i, ns in enumerate(zone.nameservers):
        ns_rdatas.append(NS(_label(ns.name)))
        inside = is_subdomain(ns.name, apex)
        if inside and not ns.addresses:
            errors.append(
                FieldError(base + ("nameservers", i, "addresses"),
                           f"nameserver {ns.name} is inside the zone and needs glue addresses")
            )
        if not inside and ns.addresses:
            errors.append(
                FieldError(base + ("nameservers", i, "addresses"),
                           f"glue addresses are only for nameservers inside {apex}; {ns.name} is not")
            )
        for j, addr in enumerate(ns.addresses):
            rtype = TYPE_A if isinstance(addr, IPv4Address) else TYPE_AAAA
            rdata = A(str(addr)) if rtype == TYPE_A else AAAA(str(addr))
            pending.append(_Pending(base + ("nameservers", i, "addresses", j), ns.name, rtype, zone.ttl, rdata, True))
    for ns_rdata in ns_rdatas:
        pending.append(_Pending(base + ("nameservers",), apex, TYPE_NS, zone.ttl, ns_rdata, True))

    for i, record in enumerate(zone.records):
        path = base + ("records", i)
        try:
            owner = qualify(record.name, apex)
        except ValueError as exc:
            errors.append(FieldError(path + ("name",), str(exc)))
            continue
        home = zone_of(owner, apexes)
        if home != apex:
            where = f"it belongs to zone {home}" if home else "no zone served here holds it"
            errors.append(FieldError(path + ("name",), f"{owner} is outside zone {apex}: {where}"))
            continue
        rtype = getattr(QTYPE, record.type)
        if rtype == TYPE_NS and owner == apex:
            errors.append(FieldError(path + ("type",), "apex NS records come from the zone's 'nameservers' list"))
            continue
        if rtype == TYPE_CNAME and owner == apex:
            errors.append(FieldError(path + ("type",), "a CNAME cannot be at the zone apex (it holds SOA and NS)"))
            continue
        ttl = record.ttl if record.ttl is not None else zone.ttl
        pending.append(_Pending(path, owner, rtype, ttl, _rdata(record), record.ttl is not None))

    tree: dict[str, dict[int, list[_Pending]]] = defaultdict(lambda: defaultdict(list))
    for item in pending:
        same = tree[item.owner][item.rtype]
        for other in same:
            if other.rdata == item.rdata:
                errors.append(FieldError(item.path, f"duplicate {QTYPE[item.rtype]} record at {item.owner} "
                                                    f"(also at {format_path(other.path)})"))
                break
            if other.ttl != item.ttl:
                errors.append(FieldError(item.path + ("ttl",),
                                         f"TTL {item.ttl} differs from {other.ttl} of the other "
                                         f"{QTYPE[item.rtype]} records at {item.owner}; an RRset has one TTL"))
                break
        else:
            same.append(item)

    for owner, types in tree.items():
        if TYPE_CNAME in types:
            cnames = types[TYPE_CNAME]
            if len(cnames) > 1:
                errors.append(FieldError(cnames[1].path, f"{owner} has more than one CNAME"))
            others = [t for t in types if t != TYPE_CNAME]
            if others:
                errors.append(FieldError(cnames[0].path,
                                         f"CNAME at {owner} cannot coexist with other data "
                                         f"({', '.join(QTYPE[t] for t in others)})"))

    cuts = {owner for owner, types in tree.items() if owner != apex and TYPE_NS in types}
    for owner, types in tree.items():
        for cut in cuts:
            if owner == cut:
                for rtype, items in types.items():
                    if rtype != TYPE_NS:
                        errors.append(FieldError(items[0].path,
                                                 f"only NS records may sit at the delegation point {cut}"))
            elif is_subdomain(owner, cut):
                for rtype, items in types.items():
                    if rtype not in (TYPE_A, TYPE_AAAA):
                        errors.append(FieldError(items[0].path,
                                                 f"{owner} is below the delegation point {cut}; only glue "
                                                 "addresses (A/AAAA) may be there"))

    mname = zone.soa.mname or zone.nameservers[0].name
    minimum = zone.negative_ttl
    soa_ttl = zone.soa.ttl if zone.soa.ttl is not None else zone.ttl
    soa_rdata = SOA(_label(mname), _label(_rname(zone.soa.rname, apex)),
                    (zone.soa.serial or serial, zone.soa.refresh, zone.soa.retry, zone.soa.expire, minimum))
    soa = RRset(TYPE_SOA, soa_ttl, (RR(_label(apex), TYPE_SOA, ttl=soa_ttl, rdata=soa_rdata),))
    negative_soa = RR(_label(apex), TYPE_SOA, ttl=min(soa_ttl, minimum), rdata=soa_rdata)
    return tree, soa, negative_soa


def _endpoint(ep: EndpointConfig) -> Endpoint:
    # One string object per site name across every GSLB name: the answer path compares and
    # hashes sites per query, and shared strings stay in the CPU caches with 10,000 names.
    return Endpoint(ep.id, sys.intern(ep.site), ep.ipv4, ep.ipv6, ep.cname, ep.weight, stable_seed(ep.id))


def endpoint_records(ep: Endpoint, owner: str, ttl: int) -> EndpointRecords:
    label = _label(owner)
    return EndpointRecords(
        RR(label, TYPE_A, ttl=ttl, rdata=A(str(ep.ipv4))) if ep.ipv4 else None,
        RR(label, TYPE_AAAA, ttl=ttl, rdata=AAAA(str(ep.ipv6))) if ep.ipv6 else None,
        RR(label, TYPE_CNAME, ttl=ttl, rdata=CNAME(_label(ep.cname))) if ep.cname else None,
    )


def _compile_service(name: str, config: GslbConfig, errors: list[FieldError],
                     monitors: dict[str, Monitor], shared: dict[str, Policy]) -> ServiceSpec | None:
    svc = config.services[name]
    path: Path = ("services", name)
    if svc.monitor is not None:
        for i, ep in enumerate(svc.endpoints):
            if ep.cname and not ep.probe_address:
                errors.append(FieldError(path + ("endpoints", i, "probe_address"),
                                         "a monitored CNAME endpoint needs probe_address (the address to check)"))
    known = ", ".join(sorted(config.sites)) or "none defined"
    seen: dict[str, int] = {}
    count = len(errors)
    for i, ep in enumerate(svc.endpoints):
        if ep.site not in config.sites:
            errors.append(FieldError(path + ("endpoints", i, "site"), f"unknown site {ep.site!r} (sites: {known})"))
        if ep.id in seen:
            errors.append(FieldError(path + ("endpoints", i),
                                     f"endpoint id {ep.id!r} repeats endpoints[{seen[ep.id]}]"))
        seen[ep.id] = i
    for i, ep in enumerate(svc.fallback.endpoints):
        if ep.site not in config.sites:
            errors.append(FieldError(path + ("fallback", "endpoints", i, "site"),
                                     f"unknown site {ep.site!r} (sites: {known})"))
    coordinates = {site: (cfg.lat, cfg.lon) for site, cfg in config.sites.items()}
    policies = []
    mesh: MeshPolicy | None = None
    gateways: list[GatewayCheck] = []
    for i, policy_config in enumerate(svc.policy):
        # Names with the same policy options share one (pure) policy object: with thousands
        # of names the answer path then finds it, and its memos, in the CPU caches.
        options: PolicyConfig = policy_config
        key = options.model_dump_json()
        policy = shared.get(key)
        if policy is None:
            policy = shared[key] = make_policy(options, coordinates)
        where = path + ("policy",) + ((i,) if len(svc.policy) > 1 else ())
        for sub, message in policy.check(set(config.sites), set(seen)):
            errors.append(FieldError(where + sub, message))
        if isinstance(policy, MeshPolicy):
            if i > 0:
                errors.append(FieldError(where + ("type",), "mesh must be the first policy: it decides which "
                                                            "endpoints the others see"))
            else:
                clusters, gateways, problems = plan_mesh(config, where + ("service",), policy.config)
                errors += problems
                errors += [FieldError(where + ("service",), f"endpoint id {gw.endpoint.id!r} is taken by "
                                                             f"endpoints[{seen[gw.endpoint.id]}]")
                           for gw in gateways if gw.endpoint.id in seen]
                policy = mesh = MeshPolicy(policy.config, coordinates, clusters)
        policies.append(policy)
    if len(errors) > count:
        return None
    endpoints = tuple(_endpoint(ep) for ep in svc.endpoints)
    mode = svc.fallback.mode
    if mode == "pool":
        fallback = tuple(_endpoint(ep) for ep in svc.fallback.endpoints)
    elif mode == "static":
        fallback = tuple(
            Endpoint(f"static/{addr}", "", addr if isinstance(addr, IPv4Address) else None,
                     addr if not isinstance(addr, IPv4Address) else None, None, 1, stable_seed(str(addr)))
            for addr in svc.fallback.addresses
        )
    else:
        fallback = ()
    hidden = tuple(gw.endpoint for gw in gateways)
    records = {ep.id: endpoint_records(ep, name, svc.ttl) for ep in (*endpoints, *fallback, *hidden)}
    enabled = frozenset(ep.id for ep in svc.endpoints if ep.enabled)
    checks: dict[str, CheckTarget] = {}
    if svc.monitor is not None:
        monitor = monitors.setdefault(svc.monitor.model_dump_json(), make_monitor(svc.monitor))
        for ep in svc.endpoints:
            address = str(ep.probe_address or ep.ipv4 or ep.ipv6 or "")
            if not address:
                continue  # a CNAME endpoint without probe_address: checked at load, see below
            key = (svc.monitor.model_dump_json(), address)
            checks[ep.id] = CheckTarget(key, f"{svc.monitor.type}://{address}:{monitor.port}", monitor, address)
    for gw in gateways:
        monitor = monitors.setdefault(gw.monitor.model_dump_json(), make_monitor(gw.monitor))
        checks[gw.endpoint.id] = CheckTarget((gw.monitor.model_dump_json(), gw.address),
                                             f"http://{gw.address}:{monitor.port}{gw.monitor.path}", monitor,
                                             gw.address)
    return ServiceSpec(name, svc.ttl, svc.answers, tuple(policies), endpoints, enabled, mode, fallback, records,
                       svc.min_ttl, checks, mesh, hidden)


def compile_config(
    config: GslbConfig, *, serial: int | None = None, base_dir: PathLike = PathLike(".")
) -> tuple[CompiledConfig, list[FieldError]]:
    errors: list[FieldError] = []
    geo = None
    if config.geoip.database is not None:
        try:
            geo = GeoDatabase(base_dir / config.geoip.database)
        except GslbError as exc:
            errors.append(FieldError(("geoip", "database"), str(exc)))
    serial = serial or int(time.time())
    apexes = dict.fromkeys(config.zones)
    trees = {}
    for apex, zone in config.zones.items():
        trees[apex] = _compile_zone(apex, zone, apexes, serial, errors)

    services: dict[str, dict[str, ServiceSpec]] = defaultdict(dict)
    monitors: dict[str, Monitor] = {}
    shared: dict[str, Policy] = {}
    for name in config.services:
        path: Path = ("services", name)
        home = zone_of(name, apexes)
        if home is None:
            errors.append(FieldError(path, f"{name} is not inside any zone served here ({', '.join(config.zones)})"))
            continue
        tree = trees[home][0]
        clash = [QTYPE[t] for t in (TYPE_A, TYPE_AAAA, TYPE_CNAME) if t in tree.get(name, {})]
        if clash:
            errors.append(FieldError(path, f"{name} is a GSLB name and also has static {', '.join(clash)} records"))
        cut = next((c for owner, types in tree.items() if owner != home and TYPE_NS in types
                    for c in [owner] if is_subdomain(name, c)), None)
        if cut:
            errors.append(FieldError(path, f"{name} is at or below the delegation point {cut}"))
        if name == home and any(ep.cname for ep in config.services[name].endpoints):
            errors.append(FieldError(path + ("endpoints",), "a GSLB name at the zone apex cannot answer CNAME"))
        spec = _compile_service(name, config, errors, monitors, shared)
        if spec is not None:
            services[home][name] = spec

    errors += mesh_errors(config)
    zones = {}
    for apex, zone in config.zones.items():
        tree, soa, negative_soa = trees[apex]
        nodes: dict[str, dict[int, RRset]] = {}
        for owner, types in tree.items():
            nodes[owner] = {
                rtype: RRset(rtype, items[0].ttl,
                             tuple(RR(_label(owner), rtype, ttl=items[0].ttl, rdata=it.rdata) for it in items))
                for rtype, items in types.items()
            }
        nodes.setdefault(apex, {})[TYPE_SOA] = soa
        names = set(nodes) | set(services[apex])
        for name in list(names):
            names.update(parent_names(name, apex))
        cuts = frozenset(o for o, types in nodes.items() if o != apex and TYPE_NS in types)
        zones[apex] = ZoneData(apex, nodes, frozenset(names), cuts, soa, negative_soa,
                               tuple(zone.allow_transfer), services[apex], zone.ttl)
    return CompiledConfig(zones, dict(config.sites), geo), errors
