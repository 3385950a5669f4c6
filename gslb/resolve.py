"""The answer path: ``resolve(snapshot, query, client) -> Answer``. Pure and synchronous.

Semantics follow what BIND, NSD and Knot do for an authoritative zone: AA on in-zone
answers, referrals without AA below delegation points, NXDOMAIN versus NODATA (empty
non-terminals exist), SOA in the authority section of negative answers, CNAME chains
followed inside the zone, minimal ANY (RFC 8482), REFUSED outside our zones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dnslib import QTYPE, RR

from gslb.compile import RRset, ZoneData, zone_of
from gslb.endpoint import Client, Endpoint
from gslb.names import is_subdomain, parent_names
from gslb.policies import VARY_LOCATION, VARY_NONE, Selection
from gslb.snapshot import LocatedAnswer, ServiceTable, Snapshot

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
CLASS_IN, CLASS_ANY = 1, 255
T_A, T_NS, T_CNAME, T_SOA, T_MX, T_AAAA, T_SRV, T_DS, T_ANY = (
    QTYPE.A, QTYPE.NS, QTYPE.CNAME, QTYPE.SOA, QTYPE.MX, QTYPE.AAAA, QTYPE.SRV, QTYPE.DS, QTYPE.ANY,
)
MAX_CHAIN = 8
_ANY_PREFERENCE = (T_A, T_AAAA, T_CNAME, T_MX, T_NS, T_SOA)


@dataclass(frozen=True, slots=True)
class Query:
    qname: str
    qtype: int
    qclass: int = CLASS_IN


@dataclass(frozen=True, slots=True)
class Answer:
    rcode: int
    authoritative: bool = True
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()
    glue_required: bool = False
    """A referral whose glue must fit, else the reply is truncated (RFC 9471)."""
    vary: int = VARY_NONE
    """What the answer depended on: nothing (cache per name), the client, or the query itself."""
    scope: int = 0
    """How many leading bits of the client's address the answer depended on (ECS scope)."""
    record: int | None = None
    """With ``vary == VARY_LOCATION``: the GeoIP record it depended on. Every client whose
    address falls in a network holding that record gets this same answer."""
    zone: str = ""
    service: str = ""
    """The GSLB name whose endpoints were chosen, if any (after following CNAMEs)."""
    sites: tuple[str, ...] = ()
    """Sites of the chosen endpoints, for traffic accounting."""


REFUSED_ANSWER = Answer(REFUSED, authoritative=False)


def resolve(snapshot: Snapshot, query: Query, client: Client, *, trace: list[str] | None = None) -> Answer:
    """The answer to ``query`` from ``client``; ``trace`` collects the decision steps (explain)."""
    if query.qclass not in (CLASS_IN, CLASS_ANY):
        return REFUSED_ANSWER
    apex = zone_of(query.qname, snapshot.zones)
    if apex is None:
        return REFUSED_ANSWER
    zone = snapshot.zones[apex]
    if zone.cuts:
        cut = _delegation(zone, query)
        if cut is not None:
            return _referral(zone, cut)

    records: list[RR] = []
    name = query.qname
    vary, scope, record = VARY_NONE, 0, None
    service = ""
    sites: tuple[str, ...] = ()

    def done(rcode: int, **sections: Any) -> Answer:
        return Answer(rcode, answer=tuple(records), vary=vary, scope=scope, zone=apex, service=service,
                      sites=sites, record=record if vary == VARY_LOCATION else None, **sections)

    for _ in range(MAX_CHAIN):
        table = snapshot.services.get(name)
        if table is not None:
            found, target, sel, chosen_sites = _service_records(snapshot, table, query.qtype, client, trace)
            if sel is not None:
                vary, scope = max(vary, sel.vary), max(scope, sel.scope)
                record = sel.record if sel.record is not None else record
                service, sites = name, chosen_sites
                if found is None:
                    return Answer(SERVFAIL, authoritative=False, vary=vary, scope=scope, zone=apex, service=name)
            if found is None:
                found = _node_records(zone, name, query.qtype)
        else:
            found, target = _static_records(zone, name, query.qtype)
        if found is None and target is None:
            return done(NOERROR if name in zone.names else NXDOMAIN, authority=(zone.negative_soa,))
        if found is not None and target is None:
            records.extend(found)
            if not found:
                return done(NOERROR, authority=(zone.negative_soa,))
            if table is not None and sel is not None:
                return done(NOERROR)  # endpoint records (A, AAAA, CNAME) need no additional data
            return done(NOERROR, additional=_additional(zone, found))
        assert found is not None and target is not None
        records.extend(found)
        if query.qtype == T_CNAME or zone_of(target, snapshot.zones) != apex or _below_cut(zone, target):
            break
        if any(str(rr.rname).rstrip(".").lower() == target for rr in records):
            break  # a loop: stop where BIND and Knot stop, with the chain so far
        name = target
    return done(NOERROR)


def _delegation(zone: ZoneData, query: Query) -> str | None:
    for name in [*parent_names(query.qname, zone.apex), query.qname]:
        if name in zone.cuts:
            if name == query.qname and query.qtype == T_DS:
                return None  # DS lives on the parent side of the cut
            return name
    return None


def _below_cut(zone: ZoneData, name: str) -> bool:
    return any(is_subdomain(name, cut) for cut in zone.cuts)


def _referral(zone: ZoneData, cut: str) -> Answer:
    ns = zone.nodes[cut][T_NS]
    return Answer(NOERROR, authoritative=False, authority=ns.rrs, additional=_glue(zone, ns), glue_required=True,
                  zone=zone.apex)


def _glue(zone: ZoneData, rrset: RRset) -> tuple[RR, ...]:
    out: list[RR] = []
    for rr in rrset.rrs:
        target = _target_of(rr)
        if target is None:
            continue
        node = zone.nodes.get(target)
        if node:
            for rtype in (T_A, T_AAAA):
                if rtype in node:
                    out.extend(node[rtype].rrs)
    return tuple(out)


def _target_of(rr: RR) -> str | None:
    rdata = rr.rdata
    if rr.rtype in (T_NS, T_CNAME) or rr.rtype == T_MX:
        label = rdata.label
    elif rr.rtype == T_SRV:
        label = rdata.target
    else:
        return None
    return str(label).rstrip(".").lower()


def _additional(zone: ZoneData, found: Sequence[RR]) -> tuple[RR, ...]:
    if not found or found[0].rtype not in (T_NS, T_MX, T_SRV):
        return ()
    return _glue(zone, RRset(found[0].rtype, 0, tuple(found)))


def _static_records(zone: ZoneData, name: str, qtype: int) -> tuple[list[RR] | None, str | None]:
    """(records, None) for data or NODATA ([]), (chain, target) for a CNAME, (None, None) if absent."""
    node = zone.nodes.get(name)
    if node is None:
        return ([] if name in zone.names else None), None
    cname = node.get(T_CNAME)
    if cname is not None and qtype not in (T_CNAME, T_ANY):
        return list(cname.rrs), _target_of(cname.rrs[0])
    return _node_records(zone, name, qtype), None


def _node_records(zone: ZoneData, name: str, qtype: int) -> list[RR]:
    node = zone.nodes.get(name, {})
    if qtype == T_ANY:
        for rtype in (*_ANY_PREFERENCE, *sorted(node)):
            if rtype in node:
                return list(node[rtype].rrs)
        return []
    rrset = node.get(qtype)
    return list(rrset.rrs) if rrset is not None else []


def choose_endpoints(table: ServiceTable, qtype: int, sel: Selection) -> list[Endpoint] | None:
    """The endpoints a GSLB name answers with for this client, best first; None: SERVFAIL."""
    spec = table.spec
    policies = spec.policies
    candidates: Sequence[Endpoint] | None = None
    if spec.mesh is not None:
        # A mesh-aware name: the mesh step decides among the usable endpoints and gateways
        # before any fallback, and the rest of the chain goes on from its decision.
        policies = policies[1:]
        family = qtype in (T_A, T_AAAA)
        route = spec.mesh.route(table.by_type[qtype] if family else table.candidates, table.gateways, sel,
                                v6=(qtype == T_AAAA) if family else None)
        if route is not None:
            if route.gateway:
                return list(route.endpoints)
            candidates = route.endpoints
    if candidates is None:
        candidates = _usable(table, qtype, sel)
        if candidates is None:
            return None
    if sel.trace is not None:
        sel.note("candidates: " + (", ".join(f"{ep.id}@{ep.site}" for ep in candidates) or "none"))
    for policy in policies:
        if not candidates:
            break
        chosen = policy.select(candidates, sel)
        candidates = chosen or candidates
    if spec.answers is not None:
        candidates = candidates[: spec.answers]
    return list(candidates)


def _usable(table: ServiceTable, qtype: int, sel: Selection) -> Sequence[Endpoint] | None:
    """What the chain chooses among: the usable endpoints, or the fallback's when none is,
    that can answer ``qtype``; None: SERVFAIL."""
    spec = table.spec
    candidates: Sequence[Endpoint] = table.candidates
    if not candidates:
        mode = spec.fallback_mode
        if mode == "all":
            candidates = table.admitted
        elif mode in ("pool", "static"):
            candidates = spec.fallback
        if sel.trace is not None:
            sel.note(f"no usable endpoint: fallback '{mode}' with {len(candidates)} endpoint(s)")
        if mode == "servfail":
            return None
    if qtype in (T_A, T_AAAA):
        v6 = qtype == T_AAAA
        usable: Sequence[Endpoint] = (
            table.by_type[qtype] if candidates is table.candidates else
            [ep for ep in candidates if ep.cname is not None or (ep.ipv6 if v6 else ep.ipv4) is not None])
        if sel.trace is not None and len(usable) < len(candidates):
            sel.note(f"{len(candidates) - len(usable)} endpoint(s) have no {'IPv6' if v6 else 'IPv4'} address")
        candidates = usable
    return candidates


def _service_records(
    snapshot: Snapshot, table: ServiceTable, qtype: int, client: Client, trace: list[str] | None
) -> tuple[Sequence[RR] | None, str | None, Selection | None, tuple[str, ...]]:
    """Records a GSLB name answers for ``qtype``, the CNAME target to chase, the selection
    and the sites of the chosen endpoints; (None, None, None, ()) means: look at static data."""
    if qtype not in (T_A, T_AAAA, T_CNAME, T_ANY):
        return None, None, None, ()
    sel = Selection(client, snapshot.geo, trace=trace)
    if table.geo is not None and trace is None and qtype in (T_A, T_AAAA):
        located = _located_records(table, qtype, sel)
        if located is not None:
            sel.chosen = located.chosen
            return located.records, located.target, sel, located.sites
    chosen = choose_endpoints(table, qtype, sel)
    if chosen is None:
        return None, None, sel, ()
    sel.chosen = chosen
    out, target = _records_of(table, qtype, chosen)
    if trace is not None:
        if chosen and chosen[0].cname is not None:
            sel.note(f"answer: CNAME {chosen[0].cname} ({chosen[0].id})")
        else:
            sel.note("answer: " + (", ".join(str(rr.rdata) for rr in out) or "NODATA"))
    return out, target, sel, _sites_of(chosen)


def _located_records(table: ServiceTable, qtype: int, sel: Selection) -> LocatedAnswer | None:
    """The answer of a name whose chain is one geo policy, for a located client: the geo
    decision (shared by every name with the same rules) mapped to this name's records, both
    memoised. It touches only a few objects of the name, so the cost stays flat with the
    number of names. None: the chain decides (fallback, one site, client not located)."""
    sites = table.sites_a if qtype == T_A else table.sites_aaaa
    if len(sites) < 2:
        return None  # fallback (no candidate), or one site: geo keeps all without locating
    location = sel.location()
    if location is None:
        return None
    geo = table.geo
    assert geo is not None
    decision = geo.decision(sites, location, sel)
    memo = table.located[qtype]
    located = memo.get(decision)
    if located is None:
        # what choose_endpoints gives: the usable endpoints of this type are the candidates,
        # the one policy orders them by this decision, then the answer count applies
        chosen = geo.endpoints(table.by_type[qtype], decision)
        if table.spec.answers is not None:
            chosen = chosen[: table.spec.answers]
        records, target = _records_of(table, qtype, chosen)
        located = LocatedAnswer(tuple(records), target, chosen, _sites_of(chosen))
        if len(memo) > 1024:
            memo.clear()
        memo[decision] = located
    return located


def _sites_of(chosen: Sequence[Endpoint]) -> tuple[str, ...]:
    """Sites of the chosen endpoints, in order, once each (traffic accounting)."""
    return tuple(dict.fromkeys(ep.site for ep in chosen))


def _records_of(table: ServiceTable, qtype: int, chosen: Sequence[Endpoint]) -> tuple[list[RR], str | None]:
    """The records answering ``qtype`` from the chosen endpoints, and the CNAME target to
    chase when the first one is a CNAME endpoint."""
    records = table.records
    if chosen and chosen[0].cname is not None:
        rr = records[chosen[0].id].cname
        assert rr is not None
        return [rr], (None if qtype == T_CNAME else chosen[0].cname)
    if qtype == T_CNAME:
        return [], None
    out: list[RR] = []
    for family in ((T_A,) if qtype == T_A else (T_AAAA,) if qtype == T_AAAA else (T_A, T_AAAA)):
        for ep in chosen:
            rr = records[ep.id].a if family == T_A else records[ep.id].aaaa
            if rr is not None:
                out.append(rr)
        if out:
            break
    return out, None
