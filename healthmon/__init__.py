"""Health monitors: probes per endpoint, rise/fall anti-flap, verdicts to the state store.

Adding a monitor type: write ``healthmon/<type>.py`` with a ``MonitorConfig`` subclass and a
``@register``-ed ``Monitor``, import it below, add its test.
"""

# Each import registers a monitor type.
from healthmon import dns, http, tcp, tls  # noqa: F401
from healthmon.base import MONITORS, Monitor, MonitorConfig, ProbeResult, make_monitor, register

__all__ = ["MONITORS", "Monitor", "MonitorConfig", "ProbeResult", "make_monitor", "register"]
