"""``round_robin``: every usable endpoint, the order rotated from one query to the next.

The rotation is taken from the query ID, so ``select`` stays a pure function of its input
and several nodes need no shared counter.

```yaml
policy: {type: round_robin}
answers: 1
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from gslb.endpoint import Endpoint
from gslb.policies.base import Policy, PolicyConfig, Selection, register


class RoundRobinConfig(PolicyConfig):
    type: Literal["round_robin"] = "round_robin"


@register
class RoundRobinPolicy(Policy):
    name = "round_robin"
    config_model = RoundRobinConfig

    def select(self, candidates: Sequence[Endpoint], sel: Selection) -> Sequence[Endpoint]:
        if len(candidates) < 2:
            return candidates
        sel.per_query()
        start = sel.client.query_id % len(candidates)
        if sel.trace is not None:
            sel.note(f"round_robin: rotation {start} of {len(candidates)} (from the query ID)")
        return [*candidates[start:], *candidates[:start]]
