"""Route choice for imported services: lowest RTT plus cost among healthy clusters, with hysteresis."""

from __future__ import annotations

import pytest

from clusterlink.routing import UNMEASURED_MS, Candidate, choose


def cand(cluster: str, rtt: float | None, cost: float = 0.0, healthy: int = 1) -> Candidate[str]:
    return Candidate(cluster, f"link-{cluster}", rtt, cost, healthy)


@pytest.mark.parametrize(("candidates", "current", "margin", "expected"), [
    ([], None, 5.0, None),
    ([cand("a", 1.0, healthy=0)], None, 5.0, None),
    ([cand("a", 3.0), cand("b", 1.0)], None, 5.0, "b"),
    ([cand("a", 1.0, cost=50), cand("b", 20.0)], None, 5.0, "b"),                # cost counts
    ([cand("a", 1.0, healthy=0), cand("b", 90.0)], "a", 5.0, "b"),               # current unhealthy: leave
    ([cand("a", 4.0), cand("b", 1.0)], "a", 5.0, "a"),                            # within margin: stay
    ([cand("a", 10.0), cand("b", 1.0)], "a", 5.0, "b"),                           # beyond margin: switch
    ([cand("a", 4.0), cand("b", 1.0)], "gone", 5.0, "b"),                         # current not a candidate
    ([cand("a", None), cand("b", 900.0)], None, 5.0, "b"),                        # measured beats unmeasured
    ([cand("a", 2.0), cand("b", 2.0)], None, 0.0, "a"),                           # tie: config order
    ([cand("a", 2.0), cand("b", 1.0)], "a", 0.0, "b"),                            # no margin: pure best
])
def test_choose(candidates: list[Candidate[str]], current: str | None, margin: float, expected: str | None) -> None:
    chosen = choose(candidates, current, margin)
    assert (chosen.cluster if chosen else None) == expected


def test_unmeasured_score() -> None:
    assert cand("a", None, cost=3).score == UNMEASURED_MS + 3
