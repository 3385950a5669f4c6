"""What policies choose among (endpoints) and who asks (the client)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network


def stable_seed(text: str) -> int:
    """A 64-bit number from a string, the same on every node and every run (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An endpoint answers with its addresses (A/AAAA) or, for cloud load balancers, a CNAME."""

    id: str
    site: str
    ipv4: IPv4Address | None
    ipv6: IPv6Address | None
    cname: str | None
    weight: int
    seed: int = field(default=0, compare=False)
    """stable_seed(id): the endpoint's identity in rendezvous hashing."""


@dataclass(frozen=True, slots=True)
class Client:
    """Who asks: the resolver's address, its EDNS Client Subnet when sent, the query ID."""

    address: IPv4Address | IPv6Address
    ecs: IPv4Network | IPv6Network | None = None
    query_id: int = 0

    @property
    def subject(self) -> tuple[IPv4Address | IPv6Address, int]:
        """The address that stands for the end user and how many of its bits are known:
        the ECS subnet when the resolver sent one, else the resolver itself."""
        if self.ecs is not None:
            return self.ecs.network_address, self.ecs.prefixlen
        address = self.address
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address, address.max_prefixlen
