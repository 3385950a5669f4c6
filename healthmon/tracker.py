"""Anti-flap: raw probe results in, up/down verdicts and events out.

``rise`` consecutive successes bring a target up; ``fall`` consecutive failures (or, with
``window``, ``fall`` failures among the last ``window`` checks, as gdnsd counts) take it
down. The clock is injected so the logic is tested without sleeping.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from healthmon.base import MonitorConfig, ProbeResult

UP, DOWN = "up", "down"


@dataclass(frozen=True, slots=True)
class Event:
    """One state change: who, from what, to what, and why."""

    at: float
    target: str
    old: str
    new: str
    reason: str
    key: Hashable = field(default=None, compare=False)
    """The tracker key of the target, for whoever must publish the verdict."""


@dataclass
class TargetHealth:
    """What the tracker knows about one probed target."""

    name: str
    config: MonitorConfig
    state: str
    since: float
    verdict: bool = False
    """False until the first rise/fall decision: the state is still the configured initial one."""
    successes: int = 0
    failures: int = 0
    recent: deque[bool] = field(default_factory=deque)
    last_result: ProbeResult | None = None
    last_checked: float | None = None
    flaps: int = 0

    def seconds_to_change(self) -> float | None:
        """The soonest the state could flip from what is known now, if a flip is under way
        (a failure while up, a success while down); None when the target is stable."""
        interval = self.config.interval
        if self.state == UP:
            pending = self.failures if self.config.window is None else sum(1 for ok in self.recent if not ok)
            if pending == 0:
                return None
            return (self.config.fall - pending) * interval
        if self.successes == 0:
            return None
        return (self.config.rise - self.successes) * interval


class HealthTracker:
    def __init__(self, *, clock: Callable[[], float] = time.time, history: int = 1000) -> None:
        self.clock = clock
        self.targets: dict[Hashable, TargetHealth] = {}
        self.events: deque[Event] = deque(maxlen=history)

    def add(self, key: Hashable, name: str, config: MonitorConfig) -> TargetHealth:
        health = self.targets.get(key)
        if health is None:
            health = TargetHealth(name, config, config.initial, self.clock())
            self.targets[key] = health
        return health

    def record(self, key: Hashable, result: ProbeResult) -> Event | None:
        """Apply one probe result; return the event if the state changed."""
        health = self.targets[key]
        cfg = health.config
        now = self.clock()
        health.last_result = result
        health.last_checked = now
        if cfg.window is not None:
            health.recent.append(result.ok)
            while len(health.recent) > cfg.window:
                health.recent.popleft()
        if result.ok:
            health.successes += 1
            health.failures = 0
        else:
            health.failures += 1
            health.successes = 0
        new = health.state
        if health.state == UP:
            failed = (health.failures if cfg.window is None
                      else sum(1 for ok in health.recent if not ok))
            if failed >= cfg.fall:
                new = DOWN
        elif health.successes >= cfg.rise:
            new = UP
        if new == health.state:
            if not health.verdict and (health.failures == 0 or new == DOWN) and (
                    health.successes >= cfg.rise or health.failures >= cfg.fall):
                health.verdict = True
            return None
        old = health.state
        health.state = new
        health.since = now
        health.verdict = True
        health.flaps += 1
        if new == UP:
            health.recent.clear()
        event = Event(now, health.name, old, new, result.detail, key)
        self.events.append(event)
        return event
