"""A reload never takes in a config that is still being written or invalid: the old one keeps serving."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from gslb.config import read_settled
from tests.support.dnswire import query_a
from tests.support.servers import EXAMPLE, threaded_node

APP = "app.gslb.example.com"


def example_text() -> str:
    """The example config, its GeoIP path made absolute so it loads from a temporary folder."""
    return EXAMPLE.read_text().replace("database: geoip/", f"database: {EXAMPLE.parent / 'geoip'}/")


def answers(port: int, name: str = APP) -> list[str]:
    return list(query_a("127.0.0.1", port, name)[1])


def test_file_still_being_written_is_not_loaded(tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    original = example_text()
    config.write_text(original)
    with threaded_node(config) as node:
        before = answers(node.port)
        assert before
        # a slow writer: the new file (which drops app's endpoints but one) goes out in pieces
        new_text = original.replace("192.0.2.20", "192.0.2.99")
        assert new_text != original
        done = threading.Event()

        def slow_writer() -> None:
            with config.open("w") as fh:
                for i in range(0, len(new_text), 64):
                    fh.write(new_text[i:i + 64])
                    fh.flush()
                    time.sleep(0.01)
            done.set()

        writer = threading.Thread(target=slow_writer)
        writer.start()
        time.sleep(0.05)
        errors = node.call(node.node.reload)
        served = answers(node.port)
        writer.join(30)
        assert done.is_set()
        if not errors:  # it waited for the writer: what it took in is the whole new file
            assert "192.0.2.99" in served, served
        # either the reload waited until the file was complete, or it refused: never a partial file
        if errors:
            assert any("kept changing" in e for e in errors), errors
            assert answers(node.port) == before
        assert node.call(node.node.reload) == []
        assert "192.0.2.99" in answers(node.port)


def test_truncated_or_invalid_file_keeps_the_old_config(tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    original = example_text()
    config.write_text(original)
    with threaded_node(config) as node:
        before = answers(node.port)
        # cut inside a key, so the piece is broken wherever the checkout lives (a cut at a fixed
        # fraction moves with the GeoIP path's length and can land on a valid prefix)
        cut = original[: original.index("negative_ttl:") + len("negative")]
        for broken in (cut, "zones: [\n  - {unclosed\n", "", "\xff\xfe"):
            config.write_bytes(broken.encode("utf-8", "surrogateescape") if broken != "\xff\xfe" else b"\xff\xfe")
            errors = node.call(node.node.reload)
            assert errors, f"a broken file was accepted: {broken[:40]!r}"
            assert answers(node.port) == before


def test_read_settled_returns_a_quiet_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("complete\n")
    assert read_settled(path, 0.01) == "complete\n"
