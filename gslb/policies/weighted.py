"""``weighted``: endpoints win in proportion to their weights; weight 0 only when no
endpoint with a positive weight is usable.

``sticky: false`` (default) draws per query from the query ID, like Route 53 weighted
records. ``sticky: true`` hashes the client subnet instead (weighted rendezvous hashing),
so one client keeps its endpoint and the ratios hold across many caching resolvers.

```yaml
policy: {type: weighted, sticky: true, prefix_v4: 24, prefix_v6: 56}
answers: 1
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from gslb.endpoint import Endpoint
from gslb.policies.base import Policy, Selection, SubnetHashConfig, mix64, register, rendezvous_order


class WeightedConfig(SubnetHashConfig):
    type: Literal["weighted"] = "weighted"
    sticky: bool = False


@register
class WeightedPolicy(Policy):
    name = "weighted"
    config_model = WeightedConfig
    config: WeightedConfig

    def select(self, candidates: Sequence[Endpoint], sel: Selection) -> Sequence[Endpoint]:
        positive = [ep for ep in candidates if ep.weight > 0]
        pool = positive or list(candidates)
        if not positive:
            sel.note("weighted: no endpoint with a positive weight is usable; using the weight-0 ones")
        if len(pool) < 2:
            return pool
        if self.config.sticky:
            key = sel.subnet_key(self.config.prefix_v4, self.config.prefix_v6)
        else:
            sel.per_query()
            key = mix64(sel.client.query_id + 0x9E3779B97F4A7C15)
        ordered = rendezvous_order(pool, key, weighted=bool(positive))
        if sel.trace is not None:
            sel.note(f"weighted ({'sticky' if self.config.sticky else 'per query'}): "
                     + ", ".join(f"{ep.id} (w={ep.weight})" for ep in ordered))
        return ordered
