"""State shared by GSLB nodes: drains, registrations, events (and, with Redis, health votes).

``MemoryStore`` is the embedded default for one node; other backends implement the same
``StateStore`` protocol. Nodes keep a local copy of what they read, so DNS keeps answering
from the last known state whatever happens to the store.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gslb.store.base import Drain, Overrides, Registration, StateStore, StoreEvent
from gslb.store.memory import MemoryStore

if TYPE_CHECKING:
    from gslb.config import StoreConfig


def make_store(config: StoreConfig, *, sites: Mapping[str, tuple[float, float]] | None = None,
               default_node_id: str | None = None, persist: bool = True) -> StateStore:
    """The store the config asks for (Redis is imported only when used). A node's id names
    its vantage point: the config's ``node_id``, else ``default_node_id``, else the host name.
    ``persist=False``: read the memory store's state file but leave writing it to another process."""
    if config.type == "memory":
        return MemoryStore(state_file=config.state_file, persist=persist)
    from gslb.store.redis import RedisStore

    sentinel = config.sentinel
    return RedisStore(config.url, node_id=config.node_id or default_node_id or socket.gethostname(),
                      prefix=config.prefix, stale_after=config.stale_after,
                      sentinels=list(sentinel.addresses) if sentinel else None,
                      sentinel_master=sentinel.master if sentinel else None, sites=sites)


__all__ = ["Drain", "MemoryStore", "Overrides", "Registration", "StateStore", "StoreEvent", "make_store"]
