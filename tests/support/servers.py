"""Real servers for tests: the project's own DNS node in a thread or as a process,
and helpers to find external binaries (a missing one fails in CI, skips locally)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dnsserver.server import bind_listener
from gslb.config import load_config
from gslb.node import Node

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example.yaml"
LISTEN_RE = re.compile(r"listening (dns/udp|dns/tcp|http) on (?:\[([0-9a-fA-F:]+)\]|([0-9.]+)):(\d+)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def require_binary(name: str) -> str:
    """Path of an external program; in CI a missing one is a failure, never a silent skip."""
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin", "/usr/local/sbin") if os.path.exists(p := f"{d}/{name}")), None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} not installed")
    return path


@dataclass
class ThreadedNode:
    """A gslb node running its own event loop in a background thread."""

    node: Node
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event
    thread: threading.Thread
    addresses: list[tuple[str, int]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def host(self) -> str:
        return self.addresses[0][0]

    def call(self, coro_fn, timeout: float = 10.0):  # type: ignore[no-untyped-def]
        """Run a coroutine function on the node's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro_fn(), self.loop).result(timeout)


@contextmanager
def threaded_node(config: Path | str = EXAMPLE, *, hosts: tuple[str, ...] = ("127.0.0.1",),
                  http: bool = False) -> Iterator[ThreadedNode]:
    """Start a node on ephemeral ports of ``hosts``; ``config`` is a path or YAML text."""
    if isinstance(config, str) and "\n" in config:
        import tempfile

        tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        tmp.write(config)
        tmp.close()
        path = Path(tmp.name)
    else:
        path = Path(config)
    loaded = load_config(path)
    listeners = [bind_listener(h, 0) for h in hosts]
    node = Node(path, loaded)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, object] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()
        box["stop"] = stop

        async def main() -> None:
            task = asyncio.ensure_future(node.run(listeners, ("127.0.0.1", 0) if http else None, stop))
            # ready means answering: DNS bound, and the HTTP API too when asked for
            while (node.dns is None or (http and node.http_address is None)) and not task.done():
                await asyncio.sleep(0.01)
            ready.set()
            await task

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # surfaced to the test below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(10) or "error" in box:
        raise RuntimeError(f"node did not start: {box.get('error')}")
    handle = ThreadedNode(node, loop, box["stop"], thread, [(lst.host, lst.port) for lst in listeners])  # type: ignore[arg-type]
    try:
        yield handle
    finally:
        loop.call_soon_threadsafe(handle.stop.set)
        thread.join(10)
        loop.close()


@dataclass
class NodeProcess:
    """``gslb serve`` as a child process, with the addresses it logged."""

    proc: subprocess.Popen[str]
    log_path: Path
    listeners: dict[str, tuple[str, int]]

    def log(self) -> str:
        return self.log_path.read_text()

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_for_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log()[start:])
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"log never matched {pattern!r}:\n{self.log()}")


@contextmanager
def node_process(config: Path, *args: str, tmp_path: Path, expect: int = 2) -> Iterator[NodeProcess]:
    """Start ``gslb serve -c config --dns 127.0.0.1:0 --http 127.0.0.1:0 *args`` and wait
    until ``expect`` listeners are logged."""
    log_path = tmp_path / f"gslb-{time.monotonic_ns()}.log"
    out = open(log_path, "w")
    cmd = [sys.executable, "-m", "gslb.cli", "serve", "-c", str(config)]
    if "--dns" not in args:
        cmd += ["--dns", "127.0.0.1:0"]
    if "--http" not in args and "--no-http" not in args:
        cmd += ["--http", "127.0.0.1:0"]
    proc = subprocess.Popen([*cmd, *args], stdout=out, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    handle = NodeProcess(proc, log_path, {})
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            found = LISTEN_RE.findall(handle.log())
            if len(found) >= expect:
                break
            if proc.poll() is not None:
                raise AssertionError(f"gslb serve exited with {proc.returncode}:\n{handle.log()}")
            time.sleep(0.05)
        else:
            raise AssertionError(f"gslb serve did not log its listeners:\n{handle.log()}")
        for kind, host6, host4, port in LISTEN_RE.findall(handle.log()):
            handle.listeners.setdefault(kind, (host6 or host4, int(port)))
        yield handle
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()
