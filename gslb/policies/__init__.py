"""Answer policies, one module each, registered by name (like CoreDNS plugins).

Adding a policy: write ``gslb/policies/<name>.py`` with a ``PolicyConfig`` subclass and a
``@register``-ed ``Policy``, import it below, add its test.
"""

from gslb.policies import all as _all  # noqa: F401  (registers itself)
from gslb.policies.base import POLICIES, Policy, PolicyConfig, make_policy, register

__all__ = ["POLICIES", "Policy", "PolicyConfig", "make_policy", "register"]
