"""Which cluster serves an imported service: lowest measured RTT plus configured cost,
among clusters reporting healthy endpoints, with hysteresis so routes don't flap on noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

UNMEASURED_MS = 1000.0
"""RTT assumed for a link not yet measured: usable, but any measured link is preferred."""


@dataclass(frozen=True)
class Candidate(Generic[T]):
    cluster: str
    target: T
    rtt_ms: float | None
    cost_ms: float
    healthy: int

    @property
    def score(self) -> float:
        return (UNMEASURED_MS if self.rtt_ms is None else self.rtt_ms) + self.cost_ms


def choose(candidates: Sequence[Candidate[T]], current: str | None, margin_ms: float) -> Candidate[T] | None:
    """The best usable candidate; the current cluster keeps the route unless it is gone or
    another is better by more than ``margin_ms``. Ties go to config order."""
    usable = [c for c in candidates if c.healthy > 0]
    if not usable:
        return None
    best = min(usable, key=lambda c: c.score)
    if current is not None and current != best.cluster:
        incumbent = next((c for c in usable if c.cluster == current), None)
        if incumbent is not None and incumbent.score - best.score <= margin_ms:
            return incumbent
    return best
