"""State shared by GSLB nodes: drains, registrations, events (and, with Redis, health votes).

``MemoryStore`` is the embedded default for one node; other backends implement the same
``StateStore`` protocol. Nodes keep a local copy of what they read, so DNS keeps answering
from the last known state whatever happens to the store.
"""

from gslb.store.base import Drain, Overrides, Registration, StateStore, StoreEvent
from gslb.store.memory import MemoryStore

__all__ = ["Drain", "MemoryStore", "Overrides", "Registration", "StateStore", "StoreEvent"]
