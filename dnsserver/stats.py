"""Query counters that cost next to nothing on the hot path.

A reply served from the exact cache bumps a counter in its own cache entry; the entry
knows its labels (transport, zone, type, rcode, and for GSLB answers the name and sites).
Entries are folded into the totals when a cache is dropped, and read live at scrape time.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE

KNOWN_TYPES = frozenset({"A", "AAAA", "CNAME", "NS", "SOA", "MX", "TXT", "SRV", "CAA", "PTR", "ANY", "DS",
                         "DNSKEY", "HTTPS", "SVCB", "AXFR", "IXFR", "NAPTR"})
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1)


def type_label(qtype: int) -> str:
    name = QTYPE.get(qtype, "")
    return name if name in KNOWN_TYPES else "other"


def rcode_label(rcode: int) -> str:
    return RCODE.get(rcode, str(rcode)) if rcode < 16 else {16: "BADVERS"}.get(rcode, str(rcode))


@dataclass(frozen=True, slots=True)
class Labels:
    """What one reply counts as."""

    transport: str
    zone: str
    qtype: str
    rcode: str
    name: str = ""
    sites: tuple[str, ...] = ()
    ecs: bool = False
    truncated: bool = False


class Entry:
    """An exact-cache value: the reply bytes after the ID, and how often they were sent.
    ``rrl`` is the reply's rate-limiting account (kind, key), filled in on first use."""

    __slots__ = ("hits", "labels", "rrl", "tail")

    def __init__(self, tail: bytes, labels: Labels) -> None:
        self.tail = tail
        self.hits = 0
        self.labels = labels
        self.rrl: tuple[int, bytes] | None = None


@dataclass
class QueryStats:
    replies: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)
    ecs: int = 0
    truncated: int = 0
    malformed: int = 0
    dropped: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def count(self, labels: Labels, n: int = 1) -> None:
        self.replies[(labels.transport, labels.zone, labels.qtype, labels.rcode)] += n
        for site in labels.sites:
            self.answers[(labels.name, site)] += n
        if labels.ecs:
            self.ecs += n
        if labels.truncated:
            self.truncated += n

    def fold(self, entries: Iterable[Entry]) -> None:
        """Move the hits of cache entries about to be dropped into the totals."""
        for entry in entries:
            if entry.hits:
                self.count(entry.labels, entry.hits)
                entry.hits = 0

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def current(self, live: Iterable[Entry]) -> QueryStats:
        """A copy of the totals including the hits still sitting in live cache entries."""
        out = QueryStats(Counter(self.replies), Counter(self.answers), self.ecs, self.truncated, self.malformed,
                         self.dropped, list(self.latency_counts), self.latency_sum)
        for entry in live:
            if entry.hits:
                out.count(entry.labels, entry.hits)
        return out
