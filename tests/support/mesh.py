"""Cluster-link test rigs: mesh configs on separate loopback addresses, backends that say
which cluster answered, and gateways running in the test's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from clusterlink.gateway import Gateway
from clusterlink.identity import TlsFiles
from gslb.config import load_config
from tests.support.mesh_pki import MeshPki
from tests.support.servers import free_port

ZONE = {"gslb.test": {"nameservers": [{"name": "ns1.gslb.test", "addresses": ["127.0.0.1"]}]}}


def tls_block(files: TlsFiles) -> dict[str, str]:
    return {"cert": str(files.cert), "key": str(files.key), "ca": str(files.ca)}


def write_mesh_config(path: Path, pki: MeshPki, clusters: dict[str, dict[str, Any]],
                      tls: dict[str, TlsFiles] | None = None, **mesh: Any) -> Path:
    """``clusters`` maps name -> the cluster's config; ``gateway`` defaults to a free port on
    127.0.0.<n>, ``tls`` to the PKI's good certificate for that cluster."""
    tls = tls or {}
    out: dict[str, Any] = {}
    for n, (name, cluster) in enumerate(clusters.items()):
        host = f"127.0.0.{11 + n}"
        cluster = dict(cluster)
        cluster.setdefault("gateway", f"{host}:{free_port(host)}")
        cluster.setdefault("tls", tls_block(tls.get(name) or pki.gateway(name)))
        out[name] = cluster
    mesh_doc = {"trust_domain": pki.trust_domain, "ping_interval": 0.2, **mesh, "clusters": out}
    path.write_text(yaml.safe_dump({"zones": ZONE, "mesh": mesh_doc}, sort_keys=False))
    return path


async def start_gateway(config: Path, cluster: str) -> Gateway:
    gateway = Gateway(load_config(config).config, cluster, config.parent)
    await gateway.start()
    return gateway


@contextlib.asynccontextmanager
async def gateways(config: Path, *clusters: str) -> AsyncIterator[dict[str, Gateway]]:
    started: dict[str, Gateway] = {}
    try:
        for name in clusters:
            started[name] = await start_gateway(config, name)
        yield started
    finally:
        for gw in started.values():
            await gw.stop()


async def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_routed(gateway: Gateway, service: str, cluster: str | None = None, timeout: float = 10.0) -> None:
    def ok() -> bool:
        routed = gateway.route_table().get(service)
        return routed is not None and (cluster is None or routed == cluster)
    await wait_for(ok, timeout, f"{gateway.name} to route {service} to {cluster or 'any cluster'}")


class Backend:
    """A TCP service on loopback: ``echo`` returns every byte until EOF; ``whoami`` writes
    its label and closes."""

    def __init__(self, label: str, mode: str = "echo") -> None:
        self.label = label
        self.mode = mode
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0

    @property
    def address(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Backend:
        self.server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.mode == "whoami":
                writer.write(self.label.encode() + b"\n")
            else:
                while chunk := await reader.read(1 << 18):
                    writer.write(chunk)
                    await writer.drain()
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


async def call(address: tuple[str, int], payload: bytes = b"", timeout: float = 10.0) -> bytes:
    """Connect, send ``payload``, half-close, read everything until EOF."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(*address)
        try:
            if payload:
                writer.write(payload)
                await writer.drain()
            writer.write_eof()
            return await reader.read()
        finally:
            writer.close()
