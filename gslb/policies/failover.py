"""``failover``: ordered priority groups of sites or endpoint ids; answer from the first
group with at least ``min_healthy`` usable endpoints. Endpoints in no group form a last one.

```yaml
policy:
  type: failover
  groups: [[us-east], [eu-west, ap-northeast]]
  min_healthy: 1
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from gslb.endpoint import Endpoint
from gslb.policies.base import Policy, PolicyConfig, Selection, register


class FailoverConfig(PolicyConfig):
    type: Literal["failover"] = "failover"
    groups: list[list[str]] = Field(min_length=1, description="each a list of site names or endpoint ids")
    min_healthy: int = Field(1, ge=1)


@register
class FailoverPolicy(Policy):
    name = "failover"
    config_model = FailoverConfig
    config: FailoverConfig

    def check(self, sites: set[str], endpoint_ids: set[str]) -> list[tuple[tuple[str | int, ...], str]]:
        return [(("groups", g, i), f"{member!r} is neither a site nor an endpoint id of this name")
                for g, group in enumerate(self.config.groups) for i, member in enumerate(group)
                if member not in sites and member not in endpoint_ids]

    def select(self, candidates: Sequence[Endpoint], sel: Selection) -> Sequence[Endpoint]:
        placed: set[str] = set()
        best: list[Endpoint] = []
        for number, group in enumerate(self.config.groups):
            members = set(group)
            usable = [ep for ep in candidates if (ep.site in members or ep.id in members) and ep.id not in placed]
            placed.update(ep.id for ep in usable)
            if len(usable) >= self.config.min_healthy:
                sel.note(f"failover: group {number} has {len(usable)} usable (>= {self.config.min_healthy})")
                return usable
            sel.note(f"failover: group {number} has {len(usable)} usable (< {self.config.min_healthy}); spilling")
            best = best or usable
        rest = [ep for ep in candidates if ep.id not in placed]
        if rest:
            sel.note("failover: answering from endpoints in no group")
            return rest
        return best or list(candidates)
