"""The one small interface every policy implements, and the registry that finds it by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from gslb.endpoint import Client, Endpoint


class PolicyConfig(BaseModel):
    """Options of one policy; subclasses add theirs and narrow ``type`` to a Literal."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str


class Policy(ABC):
    """Picks, for one client, which of a name's usable endpoints to answer with.

    ``select`` is pure: no I/O, no clock, same inputs give the same output.
    """

    name: ClassVar[str]
    config_model: ClassVar[type[PolicyConfig]]

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config

    @abstractmethod
    def select(self, candidates: Sequence[Endpoint], client: Client) -> Sequence[Endpoint]:
        """Return the endpoints to answer with, best first (the caller trims to ``answers``)."""

    @property
    def depends_on_client(self) -> bool:
        """False when ``select`` ignores the client, so an answer may be cached per name."""
        return True


POLICIES: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a policy available to configs under ``cls.name``."""
    if cls.name in POLICIES:
        raise RuntimeError(f"policy {cls.name!r} registered twice")
    POLICIES[cls.name] = cls
    return cls


def make_policy(config: PolicyConfig) -> Policy:
    return POLICIES[config.type](config)
