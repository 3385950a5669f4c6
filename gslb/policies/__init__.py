"""Answer policies, one module each, registered by name (like CoreDNS plugins).

Adding a policy: write ``gslb/policies/<name>.py`` with a ``PolicyConfig`` subclass and a
``@register``-ed ``Policy``, import it below, add its test.
"""

# Each import registers a policy.
from gslb.policies import all as _all  # noqa: F401
from gslb.policies import consistent_hash, failover, geo, mesh, round_robin, topology, weighted  # noqa: F401
from gslb.policies.base import (
    POLICIES,
    VARY_CLIENT,
    VARY_LOCATION,
    VARY_NONE,
    VARY_QUERY,
    Policy,
    PolicyConfig,
    Selection,
    make_policy,
    register,
)

__all__ = ["POLICIES", "VARY_CLIENT", "VARY_LOCATION", "VARY_NONE", "VARY_QUERY", "Policy", "PolicyConfig", "Selection",
           "make_policy", "register"]
