"""The one small interface every policy implements, the per-query selection context, and
the registry that finds policies by name."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from gslb.endpoint import Client, Endpoint
from gslb.geo import GeoDatabase, Location

MASK64 = (1 << 64) - 1
VARY_NONE, VARY_LOCATION, VARY_CLIENT, VARY_QUERY = 0, 1, 2, 3
"""What an answer depended on, least to most: nothing; only the GeoIP record of the client's
address (every address of every network holding that record gets the same answer); the
client's address or subnet itself; each query."""
Coordinates = dict[str, tuple[float, float]]
"""site name -> (lat, lon)"""


class PolicyConfig(BaseModel):
    """Options of one policy; subclasses add theirs and narrow ``type`` to a Literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str


class SubnetHashConfig(PolicyConfig):
    """Options of policies that hash the client's subnet (sticky picks, tie-breaks)."""

    prefix_v4: int = Field(24, ge=0, le=32, description="IPv4 client subnet length hashed")
    prefix_v6: int = Field(56, ge=0, le=128, description="IPv6 client subnet length hashed")


def mix64(value: int) -> int:
    """splitmix64's finaliser: a fast, well-spread, deterministic 64-bit hash of an int."""
    value &= MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def rendezvous_order(candidates: Sequence[Endpoint], key: int, *, weighted: bool = True) -> list[Endpoint]:
    """Highest-random-weight order for ``key``: removing an endpoint moves only the keys it
    held, and with weights each endpoint wins a share of keys proportional to its weight."""

    def score(ep: Endpoint) -> float:
        u = (mix64(key ^ ep.seed) + 1) / (MASK64 + 2)  # in (0, 1)
        weight = ep.weight if weighted else 1
        return weight / -math.log(u) if weight > 0 else 0.0

    return sorted(candidates, key=score, reverse=True)


class Selection:
    """What one answer knows about its client, and what the decision ended up depending on.

    Policies ask for the client's location or subnet through it; each such question widens
    ``scope`` (the ECS scope prefix to report) and marks the answer as client-dependent.
    """

    __slots__ = ("_located", "_location", "chosen", "client", "geo", "record", "scope", "trace", "vary")

    def __init__(self, client: Client, geo: GeoDatabase | None, *, trace: list[str] | None = None) -> None:
        self.client = client
        self.geo = geo
        self.scope = 0
        self.vary = VARY_NONE
        self.trace = trace
        self.chosen: Sequence[Endpoint] = ()
        """What the answer was built from (set by resolve after the policies ran)."""
        self.record: int | None = None
        """The GeoIP record looked up (see ``GeoDatabase.locate``), when one was."""
        self._location: Location | None = None
        self._located = False

    def note(self, text: str) -> None:
        if self.trace is not None:
            self.trace.append(text)

    def depends_on(self, prefix: int) -> None:
        """The decision used the first ``prefix`` bits of the client's address."""
        self.vary = max(self.vary, VARY_CLIENT)
        self.scope = max(self.scope, prefix)

    def per_query(self) -> None:
        """The decision varies from one query to the next (rotation, random pick)."""
        self.vary = VARY_QUERY

    def address(self) -> IPv4Address | IPv6Address:
        return self.client.subject[0]

    def location(self) -> Location | None:
        """The client's location from GeoIP, or None (no database, or address not found)."""
        if not self._located:
            self._located = True
            address, known = self.client.subject
            if self.geo is None:
                self.note("no GeoIP database configured")
                return None
            self._location, prefix, self.record = self.geo.locate(address)
            self.vary = max(self.vary, VARY_LOCATION)
            self.scope = max(self.scope, prefix)
            if self.trace is not None:
                net = ip_network(f"{address}/{min(prefix, address.max_prefixlen)}", strict=False)
                loc = self._location
                self.note(f"GeoIP {address} (/{known} known): network {net}, "
                          + (f"country {loc.country}, continent {loc.continent}, "
                             f"lat/lon {loc.lat}, {loc.lon} ({loc.precision})" if loc else "not found"))
        return self._location

    def subnet_key(self, prefix_v4: int, prefix_v6: int) -> int:
        """The client's subnet as a number, for sticky hashing."""
        address, _known = self.client.subject
        prefix = prefix_v4 if isinstance(address, IPv4Address) else prefix_v6
        bits = address.max_prefixlen
        self.depends_on(prefix)
        value = int(address) >> (bits - prefix) << (bits - prefix)
        if bits == 32:
            return value
        # fold an IPv6 prefix into 64 bits: the low half of a /56 key is all zero
        return mix64(value >> 64) ^ (value & MASK64) ^ 0x6


class Policy(ABC):
    """Orders, for one client, a name's usable endpoints: the best first.

    ``select`` is pure (no I/O, no clock) and never returns an empty list for a non-empty
    input, so a chain of policies always has something to answer with.
    """

    name: ClassVar[str]
    config_model: ClassVar[type[PolicyConfig]]

    def __init__(self, config: PolicyConfig, coordinates: Coordinates | None = None) -> None:
        self.config = config
        self.coordinates: Coordinates = coordinates or {}

    @abstractmethod
    def select(self, candidates: Sequence[Endpoint], sel: Selection) -> Sequence[Endpoint]:
        """Return the endpoints to answer with, best first (the caller trims to ``answers``)."""

    def check(self, sites: set[str], endpoint_ids: set[str]) -> list[tuple[tuple[str | int, ...], str]]:
        """Config errors that need the service's sites and endpoints: (path inside the policy, message)."""
        return []


def unknown_sites(names: Sequence[str], sites: set[str], path: tuple[str | int, ...]
                  ) -> list[tuple[tuple[str | int, ...], str]]:
    return [(path + (i,), f"unknown site {name!r} (sites: {', '.join(sorted(sites))})")
            for i, name in enumerate(names) if name not in sites]


POLICIES: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a policy available to configs under ``cls.name``."""
    if cls.name in POLICIES:
        raise RuntimeError(f"policy {cls.name!r} registered twice")
    POLICIES[cls.name] = cls
    return cls


def make_policy(config: PolicyConfig, coordinates: Coordinates | None = None) -> Policy:
    return POLICIES[config.type](config, coordinates)
