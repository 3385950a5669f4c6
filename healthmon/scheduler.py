"""Running checks on schedule: one task per target, bounded concurrency, measured lag.

A target is (monitor config, address): names that share an endpoint and a monitor share
its checks. Each verdict change is handed to ``on_event``; every result to ``on_result``.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from healthmon.base import Monitor, ProbeResult
from healthmon.tracker import Event, HealthTracker

log = logging.getLogger("gslb.health")


@dataclass(frozen=True)
class CheckTarget:
    key: Hashable
    name: str
    monitor: Monitor
    address: str


CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class SchedulerStats:
    checks: int = 0
    failures: int = 0
    lag_samples: list[float] = field(default_factory=list)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(CHECK_BUCKETS) + 1))
    latency_sum: float = 0.0

    def latency(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(CHECK_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def lag(self, value: float) -> None:
        self.lag_samples.append(value)
        if len(self.lag_samples) > 10_000:
            del self.lag_samples[:5_000]

    def lag_quantile(self, q: float) -> float:
        if not self.lag_samples:
            return 0.0
        ordered = sorted(self.lag_samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Scheduler:
    def __init__(self, tracker: HealthTracker, *, concurrency: int = 512,
                 on_event: Callable[[Event], None] | None = None,
                 on_result: Callable[[CheckTarget, ProbeResult], None] | None = None,
                 rng: random.Random | None = None, source: str | None = None) -> None:
        self.source = source
        self.tracker = tracker
        self.semaphore = asyncio.Semaphore(concurrency)
        self.on_event = on_event
        self.on_result = on_result
        self.rng = rng or random.Random()
        self.tasks: dict[Hashable, asyncio.Task[None]] = {}
        self.stats = SchedulerStats()

    def sync(self, targets: list[CheckTarget]) -> None:
        """Run exactly these targets: start new ones, stop ones that went away."""
        wanted = {t.key: t for t in targets}
        for key in list(self.tasks):
            if key not in wanted:
                self.tasks.pop(key).cancel()
                self.tracker.targets.pop(key, None)
        for key, target in wanted.items():
            if key not in self.tasks:
                self.tracker.add(key, target.name, target.monitor.config)
                self.tasks[key] = asyncio.get_running_loop().create_task(self._run(target), name=f"check {target.name}")

    async def _run(self, target: CheckTarget) -> None:
        cfg = target.monitor.config
        # The first check comes soon (a verdict for every target within about a second), then
        # each target takes a random phase within the interval: thousands of targets started
        # together would otherwise stay bunched and queue up at every round.
        due = time.monotonic() + self.rng.uniform(0, min(cfg.interval, 1.0) * max(cfg.jitter, 0.1))
        first = True
        while True:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            async with self.semaphore:
                self.stats.lag(max(0.0, time.monotonic() - due))
                result = await target.monitor.probe(target.address, self.source)
            self.stats.checks += 1
            self.stats.latency(result.latency)
            if not result.ok:
                self.stats.failures += 1
            event = self.tracker.record(target.key, result)
            if self.on_result is not None:
                self.on_result(target, result)
            if event is not None:
                log.info("health %s: %s -> %s (%s)", event.target, event.old, event.new, event.reason)
                if self.on_event is not None:
                    self.on_event(event)
            spread = cfg.interval * cfg.jitter
            if first:
                first = False
                due += self.rng.uniform(0, cfg.interval) if spread else cfg.interval
            else:
                due += cfg.interval + (self.rng.uniform(-spread, spread) / 2 if spread else 0)
            now = time.monotonic()
            if due < now - cfg.interval:  # fell far behind (overload, suspend): do not burst to catch up
                due = now

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
