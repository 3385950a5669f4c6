from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.mesh_pki import mesh_pki  # noqa: F401  (a fixture for the link tests)
from tests.support.servers import ThreadedNode, threaded_node


@pytest.fixture(scope="module")
def example_node() -> Iterator[ThreadedNode]:
    """The example config served on 127.0.0.1 and ::1, ephemeral ports."""
    with threaded_node(hosts=("127.0.0.1", "::1")) as node:
        yield node
