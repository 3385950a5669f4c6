"""What policies choose among: one endpoint of a GSLB name, as of one snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An endpoint answers with its addresses (A/AAAA) or, for cloud load balancers, a CNAME."""

    id: str
    site: str
    ipv4: IPv4Address | None
    ipv6: IPv6Address | None
    cname: str | None
    weight: int


@dataclass(frozen=True, slots=True)
class Client:
    """Who asks: the resolver's address and, when sent, its EDNS Client Subnet."""

    address: IPv4Address | IPv6Address
