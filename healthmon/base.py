"""The one small interface every monitor type implements, and its registry.

Monitors only probe and report ok/fail with a detail; deciding up or down (rise, fall,
anti-flap) is the tracker's job, and DNS never sees a monitor.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MonitorConfig(BaseModel):
    """Options every monitor has; each type adds its own and narrows ``type``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str
    port: int | None = Field(None, ge=1, le=65535, description="default: the type's usual port")
    interval: float = Field(5.0, ge=0.05, le=3600, description="seconds between checks")
    timeout: float = Field(2.0, gt=0, le=600, description="seconds a check may take")
    jitter: float = Field(0.1, ge=0, le=1, description="random spread of the interval, as a fraction")
    rise: int = Field(2, ge=1, le=100, description="consecutive successes to go up")
    fall: int = Field(3, ge=1, le=100, description="failures to go down")
    window: int | None = Field(None, ge=1, le=1000,
                               description="count 'fall' failures within the last 'window' checks (gdnsd-style)")
    initial: Literal["up", "down"] = Field("up", description="state before the first verdict")

    @model_validator(mode="after")
    def _window_holds_fall(self) -> MonitorConfig:
        if self.window is not None and self.window < self.fall:
            raise ValueError(f"window ({self.window}) must be at least fall ({self.fall})")
        return self

    def default_port(self) -> int:
        return 80


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str
    latency: float


class Monitor(ABC):
    """Probes one address; must honour ``config.timeout`` itself or be cancelled by the caller."""

    name: ClassVar[str]
    config_model: ClassVar[type[MonitorConfig]]

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.port = config.port or config.default_port()

    @abstractmethod
    async def check(self, address: str, source: str | None) -> tuple[bool, str]:
        """One probe from ``source`` (a local address to bind, or None): (ok, what was seen)."""

    async def probe(self, address: str, source: str | None = None) -> ProbeResult:
        start = time.monotonic()
        try:
            ok, detail = await self.check(address, source)
        except TimeoutError:
            ok, detail = False, f"timed out after {self.config.timeout:g}s"
        except OSError as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc.strerror or exc}"
        except Exception as exc:  # a probe must never take the scheduler down
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        return ProbeResult(ok, detail, time.monotonic() - start)


def local(source: str | None) -> tuple[str, int] | None:
    """``local_addr`` for a probe's socket: bind to the node's probe source, any port."""
    return (source, 0) if source else None


MONITORS: dict[str, type[Monitor]] = {}


def register(cls: type[Monitor]) -> type[Monitor]:
    if cls.name in MONITORS:
        raise RuntimeError(f"monitor {cls.name!r} registered twice")
    MONITORS[cls.name] = cls
    return cls


def make_monitor(config: MonitorConfig) -> Monitor:
    return MONITORS[config.type](config)
