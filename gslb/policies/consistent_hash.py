"""``consistent_hash``: each client subnet sticks to an endpoint (rendezvous hashing), so a
site that drops moves only its own clients; weights are honoured.

```yaml
policy: {type: consistent_hash, prefix_v4: 24, prefix_v6: 56}
answers: 1
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from gslb.endpoint import Endpoint
from gslb.policies.base import Policy, Selection, SubnetHashConfig, register, rendezvous_order


class ConsistentHashConfig(SubnetHashConfig):
    type: Literal["consistent_hash"] = "consistent_hash"


@register
class ConsistentHashPolicy(Policy):
    name = "consistent_hash"
    config_model = ConsistentHashConfig
    config: ConsistentHashConfig

    def select(self, candidates: Sequence[Endpoint], sel: Selection) -> Sequence[Endpoint]:
        if len(candidates) < 2:
            return candidates
        key = sel.subnet_key(self.config.prefix_v4, self.config.prefix_v6)
        ordered = rendezvous_order(candidates, key, weighted=any(ep.weight > 0 for ep in candidates))
        if sel.trace is not None:
            sel.note(f"consistent_hash: client subnet order {', '.join(ep.id for ep in ordered)}")
        return ordered
