"""Why a client gets the answer it gets: the decision trace of one ``resolve`` call.

``gslb explain`` prints it; the HTTP API serves the same dictionary.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Any

from dnslib import QTYPE, RCODE, DNSError

from gslb.endpoint import Client
from gslb.names import normalize_name
from gslb.policies import VARY_CLIENT, VARY_LOCATION, VARY_NONE, VARY_QUERY
from gslb.resolve import Query, resolve
from gslb.snapshot import Snapshot

VARY_TEXT = {VARY_NONE: "nothing (cacheable per name)", VARY_LOCATION: "the client's GeoIP record",
             VARY_CLIENT: "the client's address or subnet", VARY_QUERY: "each query"}


def explain(snapshot: Snapshot, name: str, qtype: str, client: str, ecs: str | None = None,
            query_id: int = 0) -> dict[str, Any]:
    """Resolve ``name``/``qtype`` for ``client`` (optionally behind ECS subnet ``ecs``)."""
    qname = normalize_name(name)
    try:
        code = getattr(QTYPE, qtype.upper())
    except (AttributeError, DNSError):
        raise ValueError(f"unknown query type {qtype!r}") from None
    subnet = ip_network(ecs, strict=False) if ecs else None
    trace: list[str] = []
    answer = resolve(snapshot, Query(qname, code), Client(ip_address(client), subnet, query_id), trace=trace)
    return {
        "query": {"name": qname, "type": qtype.upper()},
        "client": client,
        "ecs": str(subnet) if subnet else None,
        "steps": trace,
        "rcode": RCODE[answer.rcode],
        "authoritative": answer.authoritative,
        "answer": [rr.toZone() for rr in answer.answer],
        "authority": [rr.toZone() for rr in answer.authority],
        "ttl": min((rr.ttl for rr in answer.answer), default=None),
        "depends_on": VARY_TEXT[answer.vary],
        "ecs_scope": answer.scope if subnet is not None and subnet.prefixlen else 0,
    }


def format_explanation(result: dict[str, Any]) -> str:
    lines = [f"query   {result['query']['name']} {result['query']['type']} from {result['client']}"
             + (f" (ECS {result['ecs']})" if result["ecs"] else "")]
    lines += [f"  - {step}" for step in result["steps"]] or ["  - static data, no policy involved"]
    lines.append(f"rcode   {result['rcode']}{'' if result['authoritative'] else ' (not authoritative)'}")
    lines += [f"answer  {rr}" for rr in result["answer"]] or ["answer  (none)"]
    lines += [f"auth    {rr}" for rr in result["authority"]]
    lines.append(f"ttl     {result['ttl']}")
    lines.append(f"varies  with {result['depends_on']}")
    if result["ecs"]:
        lines.append(f"scope   /{result['ecs_scope']}")
    return "\n".join(lines)
