"""Real TLS 1.3 handshakes between cluster-link contexts over loopback sockets.

``LinkServer`` accepts TCP on 127.0.0.1 (or ::1), upgrades with ``server_context``, checks
the client's identity and answers ``ok <cluster>``; every accepted connection leaves one
``Outcome`` (identity or error) to assert on. Each test asserts both ends: who refused, and why.

In TLS 1.3 the client finishes its handshake before the server has checked the client's
certificate, so a refused *client* sees its connection open and then closed with no reply:
a link must not count itself up until the peer has said something.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clusterlink.identity import (
    ALPN,
    IdentityError,
    PeerIdentity,
    check_expected,
    client_context,
    load_cert_info,
    peer_identity,
    server_context,
)
from tests.support.mesh_pki import MeshPki

HANDSHAKE_TIMEOUT = 1.0  # how long a server waits for a silent peer's ClientHello
GUARD = 15.0  # upper bound on any one step: a hang fails the test instead of stalling the run


@dataclass(frozen=True)
class Outcome:
    """What the server made of one connection."""

    identity: PeerIdentity | None = None
    error: BaseException | None = None
    alpn: str | None = None
    version: str | None = None


class LinkServer:
    def __init__(self, ctx: ssl.SSLContext, trust_domain: str, *, expected: str | None = None) -> None:
        self.ctx = ctx
        self.trust_domain = trust_domain
        self.expected = expected
        self.outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(self.ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
            obj = writer.get_extra_info("ssl_object")
            ident = peer_identity(obj, self.trust_domain)
            check_expected(ident, self.expected)
        except (OSError, IdentityError) as exc:  # ssl.SSLError, resets and handshake timeouts are OSErrors
            self.outcomes.put_nowait(Outcome(error=exc))
            writer.close()
            return
        self.outcomes.put_nowait(Outcome(identity=ident, alpn=obj.selected_alpn_protocol(), version=obj.version()))
        try:
            writer.write(f"ok {ident.cluster}\n".encode())
            await writer.drain()
            await reader.read()  # hold the link until the client closes it
        finally:
            writer.close()

    async def outcome(self) -> Outcome:
        async with asyncio.timeout(GUARD):
            return await self.outcomes.get()


@contextlib.asynccontextmanager
async def link_server(ctx: ssl.SSLContext, trust_domain: str, *, host: str = "127.0.0.1",
                      expected: str | None = None) -> AsyncIterator[LinkServer]:
    server = LinkServer(ctx, trust_domain, expected=expected)
    listener = await asyncio.start_server(server.handle, host, 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        await listener.wait_closed()
    assert server.outcomes.empty(), "a connection's outcome was not asserted"


@dataclass(frozen=True)
class Dialled:
    identity: PeerIdentity
    reply: bytes
    alpn: str | None


async def dial(port: int, ctx: ssl.SSLContext, trust_domain: str, *, host: str = "127.0.0.1",
               expected: str | None = None) -> Dialled:
    """Connect, check the server's identity like a link does, read the server's one-line verdict."""
    async with asyncio.timeout(GUARD):
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx, ssl_handshake_timeout=GUARD)
        try:
            obj = writer.get_extra_info("ssl_object")
            ident = peer_identity(obj, trust_domain)
            check_expected(ident, expected)
            return Dialled(ident, await reader.readline(), obj.selected_alpn_protocol())
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def refused_reply(port: int, ctx: ssl.SSLContext, trust_domain: str) -> bytes:
    """Dial a server that will refuse us after our handshake: the reply is EOF or an error."""
    try:
        return (await dial(port, ctx, trust_domain)).reply
    except (ssl.SSLError, ConnectionResetError) as exc:
        return repr(exc).encode()


def verify_failure(exc: BaseException | None, message: str) -> None:
    assert isinstance(exc, ssl.SSLCertVerificationError), repr(exc)
    assert exc.verify_message == message


# --------------------------------------------------------------------------- good links


@pytest.mark.parametrize("intermediate", [False, True], ids=["root-signed", "intermediate"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_good_pair_handshakes_and_both_ends_know_each_other(mesh_pki: MeshPki,
                                                                  intermediate: bool, host: str) -> None:
    server_files = mesh_pki.gateway("eu-west", intermediate=intermediate)
    client_files = mesh_pki.gateway("us-east", intermediate=intermediate)
    td = mesh_pki.trust_domain
    async with link_server(server_context(server_files), td, host=host, expected="us-east") as server:
        got = await dial(server.port, client_context(client_files), td, host=host, expected="eu-west")
        seen = await server.outcome()
    assert got.reply == b"ok us-east\n"
    assert got.alpn == ALPN
    server_info = load_cert_info(server_files.cert)
    assert got.identity == PeerIdentity("eu-west", f"spiffe://{td}/cluster/eu-west", server_info.serial,
                                        server_info.not_after)
    assert seen.error is None
    client_info = load_cert_info(client_files.cert)
    assert seen.identity == PeerIdentity("us-east", f"spiffe://{td}/cluster/us-east", client_info.serial,
                                         client_info.not_after)
    assert (seen.alpn, seen.version) == (ALPN, "TLSv1.3")


async def test_one_server_context_serves_many_links(mesh_pki: MeshPki) -> None:
    td = mesh_pki.trust_domain
    clusters = [f"c{i}" for i in range(8)]
    async with link_server(server_context(mesh_pki.gateway("hub")), td) as server:
        replies = await asyncio.gather(*(dial(server.port, client_context(mesh_pki.gateway(c)), td)
                                         for c in clusters))
        seen = sorted([(await server.outcome()).identity.cluster for _ in clusters])  # type: ignore[union-attr]
    assert sorted(r.reply for r in replies) == sorted(f"ok {c}\n".encode() for c in clusters)
    assert {r.identity.cluster for r in replies} == {"hub"}
    assert seen == sorted(clusters)


async def test_rotated_certificate_takes_effect_for_new_links(mesh_pki: MeshPki, tmp_path: Path) -> None:
    """A gateway rebuilds its context from reissued files; links made afterwards see the new serial."""
    from clusterlink.ca import issue

    td = mesh_pki.trust_domain
    files = issue(mesh_pki.root / "ca", "rotor", out=tmp_path / "rotor")
    first = load_cert_info(files.cert).serial
    async with link_server(server_context(files), td) as server:
        before = await dial(server.port, client_context(mesh_pki.gateway("us-east")), td)
        await server.outcome()
        issue(mesh_pki.root / "ca", "rotor", out=tmp_path / "rotor")
        server.ctx = server_context(files)
        after = await dial(server.port, client_context(mesh_pki.gateway("us-east")), td)
        await server.outcome()
    assert before.identity.serial == first
    assert after.identity.serial == load_cert_info(files.cert).serial != first


# --------------------------------------------------------------------------- the client refuses the server


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (MeshPki.from_other_ca, "unable to get local issuer certificate"),
        (MeshPki.expired, "certificate has expired"),
        (MeshPki.not_yet_valid, "certificate is not yet valid"),
    ],
)
async def test_client_refuses_a_server_certificate(mesh_pki: MeshPki, bad: object, message: str) -> None:
    td = mesh_pki.trust_domain
    async with link_server(server_context(bad(mesh_pki)), td) as server:  # type: ignore[operator]
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await dial(server.port, client_context(mesh_pki.gateway("us-east")), td)
        seen = await server.outcome()
    assert info.value.verify_message == message
    assert seen.identity is None
    assert isinstance(seen.error, OSError)  # the client's alert or reset ended the server's handshake


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (MeshPki.foreign_domain, r"^peer is spiffe://other.test/cluster/alien, outside trust domain mesh.test$"),
        (MeshPki.no_uri, r"^peer certificate \(CN=gslb gateway nameless\) has no spiffe:// URI SAN$"),
        (MeshPki.not_a_gateway, r"not a cluster gateway"),
    ],
)
async def test_client_refuses_a_server_identity(mesh_pki: MeshPki, bad: object, message: str) -> None:
    """The chain is good (our root signed it) but the SAN names no gateway of this mesh."""
    td = mesh_pki.trust_domain
    async with link_server(server_context(bad(mesh_pki)), td) as server:  # type: ignore[operator]
        with pytest.raises(IdentityError, match=message):
            await dial(server.port, client_context(mesh_pki.gateway("us-east")), td)
        seen = await server.outcome()
    assert seen.identity is not None and seen.identity.cluster == "us-east"  # TLS itself succeeded


async def test_client_refuses_the_wrong_cluster(mesh_pki: MeshPki) -> None:
    td = mesh_pki.trust_domain
    files, expected = mesh_pki.impostor(presented="eu-west", expected="ap-south")
    async with link_server(server_context(files), td) as server:
        with pytest.raises(IdentityError, match=r"^peer is spiffe://mesh.test/cluster/eu-west, expected cluster "
                                                r"ap-south$"):
            await dial(server.port, client_context(mesh_pki.gateway("us-east")), td, expected=expected)
        await server.outcome()


# --------------------------------------------------------------------------- the server refuses the client


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (MeshPki.from_other_ca, "unable to get local issuer certificate"),
        (MeshPki.expired, "certificate has expired"),
        (MeshPki.not_yet_valid, "certificate is not yet valid"),
    ],
)
async def test_server_refuses_a_client_certificate(mesh_pki: MeshPki, bad: object, message: str) -> None:
    td = mesh_pki.trust_domain
    async with link_server(server_context(mesh_pki.gateway("eu-west")), td) as server:
        reply = await refused_reply(server.port, client_context(bad(mesh_pki)), td)  # type: ignore[operator]
        seen = await server.outcome()
    verify_failure(seen.error, message)
    assert not reply.startswith(b"ok")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (MeshPki.foreign_domain, r"^peer is spiffe://other.test/cluster/alien, outside trust domain mesh.test$"),
        (MeshPki.no_uri, r"^peer certificate \(CN=gslb gateway nameless\) has no spiffe:// URI SAN$"),
        (MeshPki.two_uris, r"^peer certificate has 2 spiffe:// URI SANs"),
    ],
)
async def test_server_refuses_a_client_identity(mesh_pki: MeshPki, bad: object, message: str) -> None:
    td = mesh_pki.trust_domain
    async with link_server(server_context(mesh_pki.gateway("eu-west")), td) as server:
        reply = await refused_reply(server.port, client_context(bad(mesh_pki)), td)  # type: ignore[operator]
        seen = await server.outcome()
    assert isinstance(seen.error, IdentityError)
    assert re.search(message, str(seen.error)), str(seen.error)
    assert not reply.startswith(b"ok")


async def test_server_refuses_the_wrong_cluster(mesh_pki: MeshPki) -> None:
    td = mesh_pki.trust_domain
    files, expected = mesh_pki.impostor(presented="us-east", expected="ap-south")
    async with link_server(server_context(mesh_pki.gateway("eu-west")), td, expected=expected) as server:
        reply = await refused_reply(server.port, client_context(files), td)
        seen = await server.outcome()
    assert isinstance(seen.error, IdentityError)
    assert str(seen.error) == "peer is spiffe://mesh.test/cluster/us-east, expected cluster ap-south"
    assert reply == b""


async def test_server_refuses_a_client_without_certificate(mesh_pki: MeshPki) -> None:
    td = mesh_pki.trust_domain
    async with link_server(server_context(mesh_pki.gateway("eu-west")), td) as server:
        reply = await refused_reply(server.port, mesh_pki.context_without_cert(), td)
        seen = await server.outcome()
    assert isinstance(seen.error, ssl.SSLError)
    assert seen.error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert not reply.startswith(b"ok")


async def test_server_refuses_a_tls12_client(mesh_pki: MeshPki) -> None:
    td = mesh_pki.trust_domain
    async with link_server(server_context(mesh_pki.gateway("eu-west")), td) as server:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await dial(server.port, mesh_pki.context_tls12(), td)
        seen = await server.outcome()
    assert isinstance(seen.error, ssl.SSLError)
    assert seen.error.reason == "UNSUPPORTED_PROTOCOL"


async def test_tls12_server_is_refused_by_our_client(mesh_pki: MeshPki) -> None:
    td = mesh_pki.trust_domain
    old = server_context(mesh_pki.gateway("eu-west"))
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_2
    async with link_server(old, td) as server:
        # asyncio closes the socket on a failed handshake before the alert is read: often a reset
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await dial(server.port, client_context(mesh_pki.gateway("us-east")), td)
        seen = await server.outcome()
    assert isinstance(seen.error, ssl.SSLError)
    assert seen.error.reason == "UNSUPPORTED_PROTOCOL"


# --------------------------------------------------------------------------- not TLS at all


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    data = b""
    async with asyncio.timeout(GUARD):
        while chunk := await reader.read(4096):
            data += chunk
            assert len(data) < 65536
    return data


async def test_silent_plain_tcp_client_is_dropped_after_the_handshake_timeout(mesh_pki: MeshPki) -> None:
    td = mesh_pki.trust_domain
    async with link_server(server_context(mesh_pki.gateway("eu-west")), td) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            seen = await server.outcome()
            assert await read_to_eof(reader) == b""
        finally:
            writer.close()
    assert isinstance(seen.error, ConnectionAbortedError | TimeoutError), repr(seen.error)


async def test_plain_text_client_is_refused(mesh_pki: MeshPki) -> None:
    td = mesh_pki.trust_domain
    async with link_server(server_context(mesh_pki.gateway("eu-west")), td) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            seen = await server.outcome()
            with contextlib.suppress(ConnectionResetError):
                assert b"HTTP" not in await read_to_eof(reader)
        finally:
            writer.close()
    assert isinstance(seen.error, ssl.SSLError), repr(seen.error)


async def test_ssl_listener_drops_a_silent_client(mesh_pki: MeshPki) -> None:
    """The same bound with TLS on the listener itself (``start_server(ssl=...)``), as a gateway may do."""
    accepted: list[object] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer.get_extra_info("peercert"))
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(mesh_pki.gateway("eu-west")),
                                          ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # plain TCP, says nothing
        try:
            assert await read_to_eof(reader) == b""  # the server gave up on us: EOF, not a hang
        finally:
            writer.close()
        # the listener still serves real peers afterwards
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       ssl=client_context(mesh_pki.gateway("us-east")))
        await read_to_eof(reader)
        writer.close()
    finally:
        listener.close()
        await listener.wait_closed()
    assert len(accepted) == 1 and accepted[0]
