"""``all``: every usable endpoint, in config order.

```yaml
policy: {type: all}
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from gslb.endpoint import Endpoint
from gslb.policies.base import Policy, PolicyConfig, Selection, register


class AllConfig(PolicyConfig):
    type: Literal["all"] = "all"


@register
class AllPolicy(Policy):
    name = "all"
    config_model = AllConfig

    def select(self, candidates: Sequence[Endpoint], sel: Selection) -> Sequence[Endpoint]:
        return candidates
