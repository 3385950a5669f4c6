"""``topology``: ordered rules mapping client networks, countries or continents to
preferred sites. CIDR rules match longest prefix first, then countries, then continents,
then ``default``. The answer holds the rule's sites' endpoints in the rule's order; a rule
whose sites have no usable endpoint falls through to ``default``, then to all candidates.

```yaml
policy:
  type: topology
  rules:
    - {cidrs: [10.0.0.0/8], sites: [us-east]}
    - {countries: [JP, KR], sites: [ap-northeast, us-east]}
    - {continents: [EU, AF], sites: [eu-west]}
  default: [us-east]
```
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gslb.endpoint import Endpoint
from gslb.policies.base import Coordinates, Policy, PolicyConfig, Selection, register, unknown_sites


class TopologyRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    cidrs: list[IPv4Network | IPv6Network] = Field(default_factory=list)
    countries: list[str] = Field(default_factory=list)
    continents: list[str] = Field(default_factory=list)
    sites: list[str] = Field(min_length=1)


class TopologyConfig(PolicyConfig):
    type: Literal["topology"] = "topology"
    rules: list[TopologyRule] = Field(default_factory=list)
    default: list[str] = Field(default_factory=list)


def _common_prefix(a: int, b: int, bits: int) -> int:
    return bits - (a ^ b).bit_length()


@register
class TopologyPolicy(Policy):
    name = "topology"
    config_model = TopologyConfig
    config: TopologyConfig

    def __init__(self, config: TopologyConfig, coordinates: Coordinates | None = None) -> None:
        super().__init__(config, coordinates)
        self._nets = sorted(((net, rule) for rule in config.rules for net in rule.cidrs),
                            key=lambda item: item[0].prefixlen, reverse=True)
        self._by_country = {c: r for r in reversed(config.rules) for c in r.countries}
        self._by_continent = {c: r for r in reversed(config.rules) for c in r.continents}

    def check(self, sites: set[str], endpoint_ids: set[str]) -> list[tuple[tuple[str | int, ...], str]]:
        errors = unknown_sites(self.config.default, sites, ("default",))
        for i, rule in enumerate(self.config.rules):
            errors += unknown_sites(rule.sites, sites, ("rules", i, "sites"))
            if not (rule.cidrs or rule.countries or rule.continents):
                errors.append((("rules", i), "a rule needs cidrs, countries or continents to match"))
        return errors

    def _match_cidr(self, sel: Selection) -> TopologyRule | None:
        if not self._nets:
            return None
        address = sel.address()
        value, bits = int(address), address.max_prefixlen
        matched: TopologyRule | None = None
        scope = 0
        for net, rule in self._nets:
            if net.version != address.version:
                continue
            if matched is None and address in net:
                matched = rule
                scope = max(scope, net.prefixlen)
            elif address not in net:
                # the scope must be narrow enough to exclude every rule that did not match
                scope = max(scope, min(net.prefixlen, _common_prefix(value, int(net.network_address), bits) + 1))
        sel.depends_on(scope)
        return matched

    def select(self, candidates: Sequence[Endpoint], sel: Selection) -> Sequence[Endpoint]:
        rule = self._match_cidr(sel)
        how = "client network"
        if rule is None and (self._by_country or self._by_continent):
            location = sel.location()
            if location is not None:
                rule = self._by_country.get(location.country or "")
                how = f"country {location.country}"
                if rule is None:
                    rule = self._by_continent.get(location.continent or "")
                    how = f"continent {location.continent}"
        for sites, why in ((rule.sites if rule else [], f"rule for {how}"), (self.config.default, "default")):
            order = {site: i for i, site in enumerate(sites)}
            chosen = sorted((ep for ep in candidates if ep.site in order), key=lambda ep: order[ep.site])
            if chosen:
                if sel.trace is not None:
                    sel.note(f"topology: {why} -> {', '.join(sites)}")
                return chosen
        sel.note("topology: no rule's sites have usable endpoints; keeping all")
        return candidates
