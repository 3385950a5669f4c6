"""The answer path: ``resolve(snapshot, query, client) -> Answer``. Pure and synchronous.

Semantics follow what BIND, NSD and Knot do for an authoritative zone: AA on in-zone
answers, referrals without AA below delegation points, NXDOMAIN versus NODATA (empty
non-terminals exist), SOA in the authority section of negative answers, CNAME chains
followed inside the zone, minimal ANY (RFC 8482), REFUSED outside our zones.
"""

from __future__ import annotations

from dataclasses import dataclass

from dnslib import CNAME, QTYPE, RR, DNSLabel

from gslb.compile import RRset, ZoneData, zone_of
from gslb.endpoint import Client
from gslb.names import is_subdomain, parent_names
from gslb.snapshot import ServiceTable, Snapshot

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
    client_dependent: bool = False
    """True when a policy looked at the client: the answer must not be cached per name."""


REFUSED_ANSWER = Answer(REFUSED, authoritative=False)


def resolve(snapshot: Snapshot, query: Query, client: Client) -> Answer:
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
    name, dependent = query.qname, False
    for _ in range(MAX_CHAIN):
        table = snapshot.services.get(name)
        if table is not None:
            found, target, dep = _service_records(table, query.qtype, client)
            dependent = dependent or dep
            if found is None:
                found = _node_records(zone, name, query.qtype)
        else:
            found, target = _static_records(zone, name, query.qtype)
        if found is None and target is None:
            rcode = NOERROR if name in zone.names else NXDOMAIN
            return Answer(rcode, answer=tuple(records), authority=(zone.negative_soa,), client_dependent=dependent)
        if found is not None and target is None:
            records.extend(found)
            if not found:
                return Answer(NOERROR, answer=tuple(records), authority=(zone.negative_soa,),
                              client_dependent=dependent)
            return Answer(NOERROR, answer=tuple(records), additional=_additional(zone, found),
                          client_dependent=dependent)
        assert found is not None and target is not None
        records.extend(found)
        if query.qtype == T_CNAME or zone_of(target, snapshot.zones) != apex or _below_cut(zone, target):
            break
        if any(str(rr.rname).rstrip(".").lower() == target for rr in records):
            break  # a loop: stop where BIND and Knot stop, with the chain so far
        name = target
    return Answer(NOERROR, answer=tuple(records), client_dependent=dependent)


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
    return Answer(NOERROR, authoritative=False, authority=ns.rrs, additional=_glue(zone, ns), glue_required=True)


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


def _additional(zone: ZoneData, found: list[RR]) -> tuple[RR, ...]:
    if not found or found[0].rtype not in (T_NS, T_MX, T_SRV):
        return ()
    return _glue(zone, RRset(found[0].rtype, 0, tuple(found)))


def _static_records(zone: ZoneData, name: str, qtype: int) -> tuple[list[RR] | None, str | None]:
    """(records, None) for data or NODATA ([]), (chain, target) for a CNAME, (None, None) if absent."""
    node = zone.nodes.get(name)
    if node is None:
        return ([] if name in zone.names else None), None
    cname = node.get(T_CNAME)
    if cname is not None and qtype != T_CNAME:
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


def _service_records(
    table: ServiceTable, qtype: int, client: Client
) -> tuple[list[RR] | None, str | None, bool]:
    """Records a GSLB name answers for ``qtype``; (None, None, _) means: look at static data."""
    spec = table.spec
    if qtype not in (T_A, T_AAAA, T_CNAME, T_ANY):
        return None, None, False
    chosen = list(spec.policy.select(table.candidates, client))
    if spec.answers is not None:
        chosen = chosen[: spec.answers]
    dependent = spec.policy.depends_on_client
    owner = DNSLabel(spec.name + ".")
    if chosen and chosen[0].cname is not None:
        target = chosen[0].cname
        rr = RR(owner, T_CNAME, ttl=spec.ttl, rdata=CNAME(DNSLabel(target + ".")))
        return ([rr], None, dependent) if qtype == T_CNAME else ([rr], target, dependent)
    if qtype == T_CNAME:
        return [], None, dependent
    records = []
    for family in ((T_A,) if qtype == T_A else (T_AAAA,) if qtype == T_AAAA else (T_A, T_AAAA)):
        for ep in chosen:
            addr = ep.ipv4 if family == T_A else ep.ipv6
            if addr is not None:
                records.append(RR(owner, family, ttl=spec.ttl, rdata=_addr_rdata(family, str(addr))))
        if records and qtype == T_ANY:
            break
    return records, None, dependent


def _addr_rdata(family: int, text: str) -> object:
    from dnslib import AAAA, A

    return A(text) if family == T_A else AAAA(text)
