"""``geo``: the closest site by great-circle distance from the client's GeoIP location.

- ``bias`` shrinks (-) or grows (+) a site's pull like Route 53 geoproximity: effective
  distance = distance x (1 - bias/100).
- ``countries`` / ``continents`` map a client's country or continent to preferred sites,
  consulted before distance (only sites with usable endpoints count).
- ``sites``: how many of the closest sites to answer from (default 1).
- Ties (within ``tie_km``) are broken by rendezvous hashing of the client subnet, so a
  client keeps its site and ties split evenly.
- No location (no database, private address): ``default_sites`` if set, else every
  candidate, unchanged.

```yaml
policy:
  type: geo
  bias: {eu-west: 10}
  countries: {GB: [eu-west]}
  continents: {OC: [ap-northeast]}
  default_sites: [us-east]
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from gslb.endpoint import Endpoint, stable_seed
from gslb.geo import Location, distance_km
from gslb.policies.base import (
    Coordinates,
    Policy,
    Selection,
    SubnetHashConfig,
    mix64,
    register,
    unknown_sites,
)

Profile = tuple[tuple[tuple[str, tuple[float, float]], ...], tuple[tuple[str, int], ...]]
_PROFILES: dict[Profile, Profile] = {}
"""Interned (coordinates, biases) pairs: their ids stay valid, as entries are never dropped."""
_RANKED: dict[tuple[Location, frozenset[str], int], list[tuple[float, str]]] = {}

Decision = tuple[str, ...] | frozenset[str]
"""Where a located client goes, whatever the name: the chosen sites, nearest first (their
endpoints grouped by site), or, for a client without coordinates, a set of sites (their
endpoints in candidate order)."""
_RULES: dict[tuple[object, ...], int] = {}
"""Interned decision rules (everything but the tie-break prefixes) -> a number, never dropped."""
_SITE_SETS: dict[frozenset[str], frozenset[str]] = {}
"""Interned site sets (``intern_sites``)."""
_DECISIONS: dict[tuple[int, frozenset[str], Location], Decision] = {}
"""Decisions without a tie per (rules, usable sites, location), shared by every name with the
same rules: with thousands of names a per-name memo would rarely hit, and every miss would
rank the sites again (issue 3: resolve() flat across the number of names)."""


class GeoConfig(SubnetHashConfig):
    type: Literal["geo"] = "geo"
    bias: dict[str, int] = Field(default_factory=dict, description="site -> -99..99")
    countries: dict[str, list[str]] = Field(default_factory=dict)
    continents: dict[str, list[str]] = Field(default_factory=dict)
    sites: int = Field(1, ge=1, le=64)
    default_sites: list[str] = Field(default_factory=list)
    tie_km: float = Field(1.0, ge=0)


def intern_sites(sites: frozenset[str]) -> frozenset[str]:
    """The shared object equal to ``sites``: names with the same sites then share one, so
    ``_DECISIONS`` keys compare by identity instead of element by element (in memory of each
    name, likely out of the CPU caches with thousands of names)."""
    if len(_SITE_SETS) > 10_000:
        _SITE_SETS.clear()
    return _SITE_SETS.setdefault(sites, sites)


@register
class GeoPolicy(Policy):
    name = "geo"
    config_model = GeoConfig
    config: GeoConfig

    def __init__(self, config: GeoConfig, coordinates: Coordinates | None = None) -> None:
        super().__init__(config, coordinates)
        # Names with the same sites and biases share one distance ranking per location, and
        # names with the same rules one decision per location and site set.
        profile = (tuple(sorted(self.coordinates.items())), tuple(sorted(config.bias.items())))
        self._profile = _PROFILES.setdefault(profile, profile)
        rules = (profile, tuple(sorted((k, tuple(v)) for k, v in config.countries.items())),
                 tuple(sorted((k, tuple(v)) for k, v in config.continents.items())), config.sites, config.tie_km)
        self._rules = _RULES.setdefault(rules, len(_RULES))
        # Per candidate tuple (snapshots keep them alive and stable): its site set, and its
        # endpoints per decision (a handful: one per reachable site for ``sites: 1``). Entries
        # hold the tuple itself, so a reused id() of a dead tuple is never mistaken for it.
        self._sites_of: dict[int, tuple[Sequence[Endpoint], frozenset[str],
                                        dict[Decision, tuple[Endpoint, ...]]]] = {}

    def check(self, sites: set[str], endpoint_ids: set[str]) -> list[tuple[tuple[str | int, ...], str]]:
        known = ", ".join(sorted(sites))
        errors: list[tuple[tuple[str | int, ...], str]] = [
            (("bias", site), f"unknown site {site!r} (sites: {known})")
            for site in self.config.bias
            if site not in sites
        ]
        for key, mapping in (("countries", self.config.countries), ("continents", self.config.continents)):
            for code, names in mapping.items():
                errors += unknown_sites(names, sites, (key, code))
        errors += unknown_sites(self.config.default_sites, sites, ("default_sites",))
        errors += [(("bias", s), "bias must be between -99 and 99") for s, b in self.config.bias.items()
                   if not -99 <= b <= 99]
        return errors

    def _ranked(self, location: Location, sites: frozenset[str]) -> list[tuple[float, str]]:
        """Sites by effective distance from ``location``; memoised per location, site set and
        profile (coordinates and biases), across every name that shares them."""
        key = (location, sites, id(self._profile))
        ranked = _RANKED.get(key)
        if ranked is None:
            assert location.lat is not None and location.lon is not None
            ranked = []
            for site in sites:
                lat, lon = self.coordinates[site]
                factor = 1 - self.config.bias.get(site, 0) / 100
                ranked.append((distance_km(location.lat, location.lon, lat, lon) * factor, site))
            ranked.sort()
            if len(_RANKED) > 100_000:
                _RANKED.clear()
            _RANKED[key] = ranked
        return ranked

    def select(self, candidates: Sequence[Endpoint], sel: Selection) -> Sequence[Endpoint]:
        known = self._sites_of.get(id(candidates))
        if known is None or known[0] is not candidates:
            known = (candidates, intern_sites(frozenset(ep.site for ep in candidates)), {})
            if len(self._sites_of) > 100_000:
                self._sites_of.clear()
            self._sites_of[id(candidates)] = known
        sites = known[1]
        if len(sites) < 2:
            return candidates
        location = sel.location()
        if location is None:
            preferred = [ep for ep in candidates if ep.site in self.config.default_sites]
            sel.note("geo: client location unknown; "
                     + ("default_sites " + ", ".join(self.config.default_sites) if preferred else "keeping all"))
            return preferred or candidates
        if sel.trace is not None:
            return self.endpoints(candidates, self._decide(sites, location, sel)[0])
        decision = self.decision(sites, location, sel)
        chosen = known[2].get(decision)
        if chosen is None:
            chosen = self.endpoints(candidates, decision)
            if len(known[2]) > 1024:
                known[2].clear()
            known[2][decision] = chosen
        return chosen

    def decision(self, sites: frozenset[str], location: Location, sel: Selection) -> Decision:
        """Where a located client goes among the usable ``sites`` (at least two; interned with
        ``intern_sites`` for speed). Memoised across every name with the same rules, unless a
        client-subnet tie-break was involved (that holds for this subnet only)."""
        key = (self._rules, sites, location)
        decision = _DECISIONS.get(key)
        if decision is None:
            decision, tie = self._decide(sites, location, sel)
            if not tie:
                if len(_DECISIONS) > 100_000:
                    _DECISIONS.clear()
                _DECISIONS[key] = decision
        return decision

    @staticmethod
    def endpoints(candidates: Sequence[Endpoint], decision: Decision) -> tuple[Endpoint, ...]:
        """The candidates a decision picks, in its order (never empty: its sites are the
        candidates' own)."""
        if isinstance(decision, frozenset):
            return tuple(ep for ep in candidates if ep.site in decision)
        order = {site: i for i, site in enumerate(decision)}
        return tuple(sorted((ep for ep in candidates if ep.site in order), key=lambda ep: order[ep.site]))

    def _decide(self, sites: frozenset[str], location: Location, sel: Selection) -> tuple[Decision, bool]:
        """The decision for a located client among ``sites`` (the usable ones), and whether a
        client-subnet tie-break was involved (then it holds for this subnet only)."""
        for code, mapping, what in ((location.country, self.config.countries, "country"),
                                    (location.continent, self.config.continents, "continent")):
            if code is not None and code in mapping:
                wanted = [s for s in mapping[code] if s in sites]
                if wanted:
                    sel.note(f"geo: {what} {code} prefers {', '.join(wanted)}")
                    sites = frozenset(wanted)
                    break
        if location.lat is None or location.lon is None:
            sel.note("geo: no coordinates for the client; keeping all preferred sites")
            return sites, False
        ranked = self._ranked(location, sites)
        chosen, tie = self._closest(ranked, sel)
        if sel.trace is not None:
            sel.note("geo: distances " + ", ".join(f"{s} {d:.0f} km" for d, s in ranked)
                     + f"; chose {', '.join(chosen)}")
        return tuple(chosen), tie

    def _closest(self, ranked: list[tuple[float, str]], sel: Selection) -> tuple[list[str], bool]:
        want = self.config.sites
        cutoff = ranked[min(want, len(ranked)) - 1][0]
        tied = [s for d, s in ranked if abs(d - cutoff) <= self.config.tie_km]
        sure = [s for d, s in ranked if d < cutoff - self.config.tie_km]
        if len(sure) + len(tied) <= want:
            return sure + tied, False
        key = sel.subnet_key(self.config.prefix_v4, self.config.prefix_v6)
        tied.sort(key=lambda s: mix64(key ^ stable_seed(s)), reverse=True)
        sel.note(f"geo: tie between {', '.join(tied)} broken by client subnet hash")
        return sure + tied[: want - len(sure)], True
