"""Cluster-link gateways end to end: real TLS links on separate loopback addresses, real
backends, bytes checked on arrival."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from clusterlink.frames import FrameType
from clusterlink.identity import TlsFiles, client_context
from clusterlink.link import Link, Stream
from tests.support.mesh import (
    Backend,
    call,
    gateways,
    tls_block,
    wait_for,
    wait_routed,
    write_mesh_config,
)
from tests.support.mesh_pki import MeshPki

pytestmark = pytest.mark.both_loops
"""Gateways run on uvloop in production (``gslb link``) and must also work on asyncio's own
loop: every async test here runs on both (see tests/conftest.py)."""


@pytest.fixture
async def echo() -> Backend:
    backend = await Backend("east").start()
    yield backend  # type: ignore[misc]
    await backend.stop()


async def echo_through(address: tuple[str, int], chunks: Iterable[bytes], timeout: float) -> tuple[int, bool]:
    """Send ``chunks`` to an echo service while reading the echo back; (bytes echoed, whether
    they match what was sent, by SHA-256)."""
    reader, writer = await asyncio.open_connection(*address)
    sent, received = hashlib.sha256(), hashlib.sha256()

    async def send() -> None:
        for chunk in chunks:
            sent.update(chunk)
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()

    async def receive() -> int:
        total = 0
        while chunk := await reader.read(1 << 20):
            received.update(chunk)
            total += len(chunk)
        return total

    async with asyncio.timeout(timeout):
        _, total = await asyncio.gather(send(), receive())
    writer.close()
    return total, received.hexdigest() == sent.hexdigest()


def two_clusters(tmp_path: Path, pki: MeshPki, backend: str, **mesh: object) -> Path:
    return write_mesh_config(tmp_path / "mesh.yaml", pki, {
        "west": {"imports": {"echo": {"listen": "127.0.0.1:0"}}},
        "east": {"exports": {"echo": {"endpoints": [backend], "to": ["west"]}}},
    }, **mesh)


async def test_bytes_round_trip(tmp_path: Path, mesh_pki: MeshPki, echo: Backend) -> None:
    config = two_clusters(tmp_path, mesh_pki, echo.address)
    async with gateways(config, "east", "west") as gw:
        await wait_routed(gw["west"], "echo", "east")
        listener = gw["west"].listen_addresses["echo"]
        assert await call(listener, b"hello across the mesh") == b"hello across the mesh"
        assert await call(listener, b"") == b""
        payload = os.urandom(300_000)
        assert await call(listener, payload) == payload
        link = gw["west"].dialers["east"].current
        assert link is not None and link.peer is not None and link.peer.cluster == "east"
        # one link carries every connection: no handshake per connection
        assert link.stats.streams_opened == 3
        await wait_for(lambda: gw["east"].services["echo"].streams["done"] == 3, what="3 finished streams")


async def test_hundred_megabytes_intact(tmp_path: Path, mesh_pki: MeshPki, echo: Backend) -> None:
    config = two_clusters(tmp_path, mesh_pki, echo.address)
    size = 100 * 1024 * 1024
    async with gateways(config, "east", "west") as gw:
        await wait_routed(gw["west"], "echo", "east")
        block = os.urandom(1 << 20)
        chunks = (block[i % 7:] + block[:i % 7] for i in range(size // len(block)))
        total, intact = await echo_through(gw["west"].listen_addresses["echo"], chunks, timeout=120)
        assert total == size and intact


async def test_many_concurrent_small_streams(tmp_path: Path, mesh_pki: MeshPki, echo: Backend) -> None:
    config = two_clusters(tmp_path, mesh_pki, echo.address)
    async with gateways(config, "east", "west") as gw:
        await wait_routed(gw["west"], "echo", "east")
        listener = gw["west"].listen_addresses["echo"]
        payloads = [os.urandom(1 + i * 37 % 5000) for i in range(300)]
        replies = await asyncio.gather(*(call(listener, p) for p in payloads))
        assert replies == payloads
        link = gw["west"].dialers["east"].current
        assert link is not None and link.stats.streams_opened == 300
        await wait_for(lambda: not link.streams, what="every stream closed")


async def test_service_not_exported_to_caller_is_refused(tmp_path: Path, mesh_pki: MeshPki, echo: Backend) -> None:
    """A peer asking for a service not exported to it gets a reset, and the refusal is counted."""
    config = write_mesh_config(tmp_path / "mesh.yaml", mesh_pki, {
        "west": {"imports": {"echo": {"listen": "127.0.0.1:0"}}},
        "east": {"exports": {"echo": {"endpoints": [echo.address], "to": ["west"]},
                             "secret": {"endpoints": [echo.address], "to": ["north"]}}},
        "north": {},
    })
    async with gateways(config, "east") as gw:
        east = gw["east"]
        host, port = east.listen_addresses["link"]
        resets: list[str] = []

        class Probe(Stream):
            def remote_reset(self, code: str, reason: str) -> None:
                resets.append(code)
                super().remote_reset(code, reason)

        link = Link(local_cluster="west", dialer=True)
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: link, host, port, ssl=client_context(mesh_pki.gateway("west")))
        await wait_for(lambda: "echo" in link.status, what="east's service status")
        assert "secret" not in link.status  # not even advertised to west
        link.open_stream(Probe(), "secret", "127.0.0.1:1")
        link.open_stream(Probe(), "nonexistent", "127.0.0.1:2")
        await wait_for(lambda: len(resets) == 2, what="two resets")
        assert resets == ["denied", "denied"]
        assert east.services["secret"].denied["west"] == 1
        assert all(not incoming.streams for incoming in east.incoming)
        assert "nonexistent" not in east.exports
        link.abort()


async def _handshake_refused(gateway_addr: tuple[str, int], files: TlsFiles) -> bool:
    """True when the gateway refuses the peer: the handshake fails or the link is closed
    before it tells us anything (a status frame)."""
    link = Link(local_cluster="x", dialer=True)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(5):
            await loop.create_connection(lambda: link, *gateway_addr, ssl=client_context(files))
            await wait_for(lambda: link.closed or link.status != {}, timeout=5)
    except (OSError, TimeoutError, ConnectionError):
        return True
    refused = link.closed and link.status == {}
    link.abort()
    return refused


async def test_bad_certificates_refused(tmp_path: Path, mesh_pki: MeshPki, echo: Backend) -> None:
    config = write_mesh_config(tmp_path / "mesh.yaml", mesh_pki, {
        "west": {"imports": {"echo": {"listen": "127.0.0.1:0"}}},
        "east": {"exports": {"echo": {"endpoints": [echo.address], "to": ["*"]}}},
    }, deny={"identities": ["spiffe://mesh.test/cluster/banned"]})
    async with gateways(config, "east") as gw:
        east = gw["east"]
        addr = east.listen_addresses["link"]
        assert not await _handshake_refused(addr, mesh_pki.gateway("west")), "a good peer must get in"
        for label, files in [("other CA", mesh_pki.from_other_ca()), ("expired", mesh_pki.expired()),
                             ("foreign trust domain", mesh_pki.foreign_domain()), ("no URI SAN", mesh_pki.no_uri()),
                             ("not a gateway", mesh_pki.not_a_gateway()),
                             ("unknown cluster", mesh_pki.gateway("stranger")),
                             ("deny-listed", mesh_pki.gateway("banned"))]:
            assert await _handshake_refused(addr, files), label
        # no client certificate at all
        loop = asyncio.get_running_loop()
        link = Link(local_cluster="x", dialer=True)
        with pytest.raises((OSError, ConnectionError, TimeoutError)):
            async with asyncio.timeout(5):
                await loop.create_connection(lambda: link, *addr, ssl=mesh_pki.context_without_cert())
                await wait_for(lambda: link.closed, timeout=5)
                raise ConnectionError("closed")
        # plain TCP: garbage instead of a ClientHello, and a client that says nothing
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        failures = east.stats.handshake_failures
        ids = east.stats.identity_failures
        assert sum(failures.values()) >= 3, failures  # other CA, expired, no client cert, plain TCP
        assert ids["denied"] == 1, ids
        assert sum(ids.values()) == 5, ids  # foreign domain, no URI, not a gateway, stranger, banned


async def test_dialer_refuses_impostor(tmp_path: Path, mesh_pki: MeshPki, echo: Backend) -> None:
    """west dials east's address, but the gateway there presents north's certificate."""
    config = write_mesh_config(tmp_path / "mesh.yaml", mesh_pki, {
        "west": {"imports": {"echo": {"listen": "127.0.0.1:0"}}},
        "east": {"exports": {"echo": {"endpoints": [echo.address], "to": ["west"]}},
                 "tls": tls_block(mesh_pki.gateway("north"))},
        "north": {},
    })
    async with gateways(config, "east", "west") as gw:
        west = gw["west"]
        await wait_for(lambda: west.stats.identity_failures["wrong-cluster"] >= 1, what="impostor refused")
        assert west.route_table()["echo"] is None
        with pytest.raises((ConnectionError, OSError, asyncio.IncompleteReadError)):
            reply = await call(west.listen_addresses["echo"], b"x")
            if not reply:
                raise ConnectionError("no route: closed")


async def test_dead_link_detected_within_two_intervals(tmp_path: Path, mesh_pki: MeshPki, echo: Backend) -> None:
    config = two_clusters(tmp_path, mesh_pki, echo.address)
    async with gateways(config, "east", "west") as gw:
        west, east = gw["west"], gw["east"]
        await wait_routed(west, "echo", "east")
        link = west.dialers["east"].current
        assert link is not None
        # east goes silent without closing: it stops reading, so pings go unanswered
        (incoming,) = east.incoming
        assert incoming.transport is not None
        incoming.transport.pause_reading()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await wait_for(lambda: link.closed, timeout=5, what="silent link closed")
        assert loop.time() - start <= 2 * 0.2 + 0.3  # two ping intervals, plus one timer tick
        await wait_for(lambda: west.dialers["east"].current not in (None, link), what="redialed link")
        await wait_routed(west, "echo", "east")
        assert await call(west.listen_addresses["echo"], b"back") == b"back"


async def test_frames_reject_oversized(tmp_path: Path, mesh_pki: MeshPki, echo: Backend) -> None:
    """A peer sending a frame above the limit loses its link, not the gateway."""
    config = two_clusters(tmp_path, mesh_pki, echo.address)
    async with gateways(config, "east") as gw:
        east = gw["east"]
        link = Link(local_cluster="west", dialer=True)
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: link, *east.listen_addresses["link"],
                                     ssl=client_context(mesh_pki.gateway("west")))
        await wait_for(lambda: bool(link.status), what="status")
        link.write(bytes([FrameType.DATA]) + (1).to_bytes(4, "big") + (50 << 20).to_bytes(4, "big"))
        link._flush()
        await wait_for(lambda: link.closed, what="link closed by east")
        assert not east.incoming


async def test_rotation_mid_transfer(tmp_path: Path, mesh_pki: MeshPki, echo: Backend) -> None:
    """New certificates appear while a transfer runs: it finishes intact on the old link,
    and new connections use a new link with the new certificate."""
    from clusterlink.ca import issue

    files = {name: issue(mesh_pki.root / "ca", name, out=tmp_path / "certs" / name) for name in ("west", "east")}
    config = write_mesh_config(tmp_path / "mesh.yaml", mesh_pki, {
        "west": {"imports": {"echo": {"listen": "127.0.0.1:0"}}},
        "east": {"exports": {"echo": {"endpoints": [echo.address], "to": ["west"]}}},
    }, tls=files)
    async with gateways(config, "east", "west") as gw:
        west, east = gw["west"], gw["east"]
        await wait_routed(west, "echo", "east")
        old_link = west.dialers["east"].current
        assert old_link is not None and old_link.peer is not None
        old_serial = old_link.peer.serial
        block = os.urandom(1 << 18)
        rounds = 160  # 40 MiB

        def blocks() -> Iterator[bytes]:
            for i in range(rounds):
                if i == rounds // 4:
                    for name in ("west", "east"):
                        issue(mesh_pki.root / "ca", name, out=tmp_path / "certs" / name)
                    west.check_files()
                    east.check_files()
                yield block

        total, intact = await echo_through(west.listen_addresses["echo"], blocks(), timeout=60)
        assert total == rounds * len(block) and intact
        assert west.stats.rotations == 1 and east.stats.rotations == 1
        await wait_for(lambda: (link := west.dialers["east"].current) is not None and link is not old_link
                       and link.peer is not None, what="a new link")
        new_link = west.dialers["east"].current
        assert new_link is not None and new_link.peer is not None
        assert new_link.peer.serial != old_serial
        assert await call(west.listen_addresses["echo"], b"after rotation") == b"after rotation"
        await wait_for(lambda: old_link.closed, what="the old link to drain and close")


async def test_failover_to_another_cluster(tmp_path: Path, mesh_pki: MeshPki) -> None:
    """Three clusters: west prefers east (lower cost); east's endpoint dies; new connections
    are served by north; when east's endpoint returns, so does the route (hysteresis aside)."""
    east_svc = await Backend("east", "whoami").start()
    north_svc = await Backend("north", "whoami").start()
    monitor = {"interval": 0.2, "timeout": 0.5, "rise": 1, "fall": 1}
    config = write_mesh_config(tmp_path / "mesh.yaml", mesh_pki, {
        "west": {"imports": {"who": {"listen": "127.0.0.1:0"}}, "costs": {"north": 50}},
        "east": {"exports": {"who": {"endpoints": [east_svc.address], "to": ["west"], "monitor": monitor}}},
        "north": {"exports": {"who": {"endpoints": [north_svc.address], "to": ["*"], "monitor": monitor}}},
    })
    east_addr = east_svc.address
    try:
        async with gateways(config, "east", "north", "west") as gw:
            west = gw["west"]
            listener = west.listen_addresses["who"]
            await wait_routed(west, "who", "east")
            assert await call(listener) == b"east\n"
            await east_svc.stop()
            # the first connection after the kill may fail fast (reset); the client retries
            answers = []
            for _ in range(50):
                try:
                    answers.append(await call(listener, timeout=5))
                except (ConnectionError, OSError):
                    answers.append(b"reset")
                if answers[-1] == b"north\n":
                    break
                await asyncio.sleep(0.05)
            assert answers[-1] == b"north\n", answers
            assert west.route_table()["who"] == "north"
            for _ in range(5):
                assert await call(listener) == b"north\n"
            host, port = east_addr.rsplit(":", 1)
            await east_svc.start(host, int(port))
            await wait_routed(west, "who", "east")
            assert await call(listener) == b"east\n"
    finally:
        await east_svc.stop()
        await north_svc.stop()


async def test_gateway_killed_and_back(tmp_path: Path, mesh_pki: MeshPki, echo: Backend) -> None:
    """east's gateway dies: west sees the link go, connections fail fast instead of hanging;
    east comes back on the same address and west redials on its own."""
    config = two_clusters(tmp_path, mesh_pki, echo.address)
    async with gateways(config, "west") as gw:
        west = gw["west"]
        async with gateways(config, "east"):
            await wait_routed(west, "echo", "east")
            assert await call(west.listen_addresses["echo"], b"one") == b"one"
        await wait_for(lambda: west.route_table()["echo"] is None, timeout=2, what="route withdrawn")
        try:  # closed at once (reset or empty), never a hang
            reply = await call(west.listen_addresses["echo"], b"nobody home", timeout=2)
        except (ConnectionError, OSError):
            reply = b""
        assert reply == b""
        assert west.services["echo"].no_route >= 1
        async with gateways(config, "east"):
            await wait_routed(west, "echo", "east", timeout=10)
            assert await call(west.listen_addresses["echo"], b"two") == b"two"


async def test_proxy_protocol_carries_the_caller(tmp_path: Path, mesh_pki: MeshPki) -> None:
    """With proxy_protocol on, the exported service first reads a PROXY v2 header naming the
    original client address and the calling cluster's SPIFFE identity."""
    from clusterlink.proxyproto import SIGNATURE, TLV_SPIFFE

    headers: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readexactly(16)
        body = await reader.readexactly(int.from_bytes(head[14:16], "big"))
        headers.append(head + body)
        writer.write(await reader.read())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = write_mesh_config(tmp_path / "mesh.yaml", mesh_pki, {
        "west": {"imports": {"pp": {"listen": "127.0.0.1:0"}}},
        "east": {"exports": {"pp": {"endpoints": [f"127.0.0.1:{port}"], "to": ["west"], "proxy_protocol": True}}},
    })
    try:
        async with gateways(config, "east", "west") as gw:
            await wait_routed(gw["west"], "pp", "east")
            reader, writer = await asyncio.open_connection(*gw["west"].listen_addresses["pp"])
            client_port = writer.get_extra_info("sockname")[1]
            writer.write(b"payload")
            writer.write_eof()
            assert await reader.read() == b"payload"
            writer.close()
    finally:
        server.close()
    (header,) = headers
    assert header.startswith(SIGNATURE) and header[12] == 0x21 and header[13] == 0x11
    assert header[16:20] == bytes([127, 0, 0, 1])
    assert int.from_bytes(header[24:26], "big") == client_port
    assert int.from_bytes(header[26:28], "big") == port
    tlv = header[28:]
    assert tlv[0] == TLV_SPIFFE and tlv[3:] == b"spiffe://mesh.test/cluster/west"


def test_gslb_ca_and_link_processes(tmp_path: Path) -> None:
    """The commands an operator runs: `gslb ca init/issue`, then `gslb link` per cluster, with
    the certificates at their default place; status and metrics over HTTP; SIGTERM exits 0."""
    import json
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.support.servers import free_port

    def gslb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gslb.cli", *args], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)

    assert gslb("ca", "init", "--dir", "mesh-ca", "--trust-domain", "mesh.test").returncode == 0
    for name in ("east", "west"):
        done = gslb("ca", "issue", "--dir", "mesh-ca", "--cluster", name)
        assert done.returncode == 0, done.stderr
    backend_sock = __import__("socket").create_server(("127.0.0.1", 0))
    backend_port = backend_sock.getsockname()[1]
    ports = {k: free_port("127.0.0.1") for k in ("east", "west", "east_api", "west_api", "svc")}
    (tmp_path / "mesh.yaml").write_text(f"""
zones:
  gslb.test: {{nameservers: [{{name: ns1.gslb.test, addresses: [127.0.0.1]}}]}}
mesh:
  trust_domain: mesh.test
  ping_interval: 0.2
  clusters:
    east:
      gateway: 127.0.0.1:{ports['east']}
      api: 127.0.0.1:{ports['east_api']}
      exports: {{svc: {{endpoints: ["127.0.0.1:{backend_port}"], to: [west]}}}}
    west:
      gateway: 127.0.0.1:{ports['west']}
      api: 127.0.0.1:{ports['west_api']}
      imports: {{svc: {{listen: "127.0.0.1:{ports['svc']}"}}}}
""")
    assert gslb("check", "-c", "mesh.yaml").returncode == 0
    procs = [subprocess.Popen([sys.executable, "-m", "gslb.cli", "link", "-c", "mesh.yaml", "--cluster", name],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in ("east", "west")]
    try:
        deadline = time.monotonic() + 20
        status: dict[str, object] = {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports['west_api']}/api/v1/status", timeout=1) as r:
                    status = json.load(r)
                if status.get("routes") == {"svc": "east"}:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert status.get("routes") == {"svc": "east"}, status
        links = status["links"]
        assert isinstance(links, list) and links[0]["peer"] == "east" and links[0]["state"] == "up"
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['east_api']}/metrics", timeout=2) as r:
            metrics = r.read().decode()
        assert 'gslb_link_up{direction="in",peer="west"} 1.0' in metrics
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=15)[0] for proc in procs]
        backend_sock.close()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "gateway ready" in outputs[1] and "import svc on 127.0.0.1" in outputs[1]
