from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping

import pytest

from tests.support.mesh_pki import mesh_pki  # noqa: F401  (a fixture for the link tests)
from tests.support.servers import ThreadedNode, threaded_node


@pytest.fixture(scope="module")
def example_node() -> Iterator[ThreadedNode]:
    """The example config served on 127.0.0.1 and ::1, ephemeral ports."""
    with threaded_node(hosts=("127.0.0.1", "::1")) as node:
        yield node


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests marked ``both_loops`` run once on uvloop (what the CLI uses) and once on asyncio's
    loop; every other async test on asyncio's loop (the hook must always name one)."""
    if item.get_closest_marker("both_loops") is None:
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
