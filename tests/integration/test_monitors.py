"""Every monitor type against real backends on 127.0.0.1 (and ::1) ephemeral ports.

The backends are small asyncio servers written here: an HTTP server that can answer
200/500, be slow, hang, send garbage or hold the connection; a TCP server with a
request/reply; TLS servers with certificates made by ``cryptography`` (valid, expired,
expiring soon, requiring a client certificate); a UDP DNS server, and the project's own
node. Each test asserts the ``ProbeResult`` (ok and detail) a probe returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from healthmon import MONITORS, make_monitor
from healthmon.base import Monitor, ProbeResult
from healthmon.dns import DnsConfig
from healthmon.http import HttpConfig
from healthmon.tcp import TcpConfig
from healthmon.tls import TlsConfig
from tests.support.servers import threaded_node

LOCAL = "127.0.0.1"
SLACK = 1.0  # generous bound on how far past its timeout a probe may return


async def probe(monitor: Monitor, address: str = LOCAL) -> ProbeResult:
    """One probe, bounded even if the monitor ignored its own timeout."""
    return await asyncio.wait_for(monitor.probe(address), monitor.config.timeout + 5)


def http(port: int, **kw: object) -> Monitor:
    return make_monitor(HttpConfig(type="http", port=port, timeout=kw.pop("timeout", 2.0), **kw))  # type: ignore[arg-type]


def https(port: int, **kw: object) -> Monitor:
    return make_monitor(HttpConfig(type="https", port=port, timeout=kw.pop("timeout", 2.0), **kw))  # type: ignore[arg-type]


def tcp(port: int, **kw: object) -> Monitor:
    return make_monitor(TcpConfig(type="tcp", port=port, timeout=kw.pop("timeout", 2.0), **kw))  # type: ignore[arg-type]


def tls(port: int, **kw: object) -> Monitor:
    return make_monitor(TlsConfig(type="tls", port=port, timeout=kw.pop("timeout", 2.0), **kw))  # type: ignore[arg-type]


def dnsmon(port: int, **kw: object) -> Monitor:
    return make_monitor(DnsConfig(type="dns", port=port, timeout=kw.pop("timeout", 2.0), **kw))  # type: ignore[arg-type]


def closed_port(host: str = LOCAL, kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- backends


class StreamBackend:
    """An asyncio stream server whose connections are tracked and closed on ``stop``."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.server: asyncio.Server | None = None
        self.host = LOCAL
        self.port = 0
        self.connections = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = LOCAL, port: int = 0) -> StreamBackend:
        self.server = await asyncio.start_server(self._client, host, port, ssl=self.ssl_context)
        self.host = host
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.add(writer)
        self.connections += 1
        try:
            await self.handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class HttpBackend(StreamBackend):
    """Modes: ok (status + body), slow (answer after ``delay``), hang (accept, read the
    request, never answer), close (close without answering), garbage (not HTTP), hold
    (answer, then keep the connection open)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(ssl_context)
        self.mode = "ok"
        self.status = 200
        self.body = b"service is up\n"
        self.delay = 0.0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        if self.mode == "hang":
            await asyncio.Event().wait()
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        if self.mode == "close":
            return
        if self.mode == "garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            await writer.drain()
            return
        reason = {200: "OK", 204: "No Content", 301: "Moved Permanently", 404: "Not Found",
                  500: "Internal Server Error", 503: "Service Unavailable"}.get(self.status, "Whatever")
        writer.write(f"HTTP/1.1 {self.status} {reason}\r\nContent-Type: text/plain\r\n"
                     f"Content-Length: {len(self.body)}\r\n".encode()
                     + (b"" if self.mode == "hold" else b"Connection: close\r\n") + b"\r\n" + self.body)
        await writer.drain()
        if self.mode == "hold":
            await asyncio.Event().wait()


class LineBackend(StreamBackend):
    """A TCP service: an optional banner, then one reply per line received."""

    def __init__(self, replies: dict[bytes, bytes], banner: bytes = b"", silent: bool = False) -> None:
        super().__init__()
        self.replies = replies
        self.banner = banner
        self.silent = silent
        self.received: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.banner:
            writer.write(self.banner)
            await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                return
            self.received.append(line)
            if self.silent:
                continue
            writer.write(self.replies.get(line.strip(), b"-ERR unknown command\r\n"))
            await writer.drain()


@contextlib.asynccontextmanager
async def running(backend: StreamBackend, host: str = LOCAL) -> AsyncIterator[StreamBackend]:
    await backend.start(host)
    try:
        yield backend
    finally:
        await backend.stop()


@pytest.fixture
async def web() -> AsyncIterator[HttpBackend]:
    backend = HttpBackend()
    async with running(backend):
        yield backend


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    not_after: dt.datetime


@dataclass
class Pki:
    directory: Path
    made: dict[str, CertFiles] = field(default_factory=dict)

    def self_signed(self, name: str, *, days_left: float, client: bool = False,
                    sans: tuple[str, ...] = ("127.0.0.1", "::1", "localhost", "app.example.com")) -> CertFiles:
        """A self-signed certificate (its own trust anchor) expiring ``days_left`` from now."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        not_after = now + dt.timedelta(days=days_left)
        not_before = min(now - dt.timedelta(days=1), not_after - dt.timedelta(days=30))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"gslb test {name}")])
        alt_names: list[x509.GeneralName] = []
        for san in sans:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                alt_names.append(x509.DNSName(san))
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client
                                                  else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        files = CertFiles(self.directory / f"{name}.crt", self.directory / f"{name}.key", not_after)
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
        self.made[name] = files
        return files


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    p = Pki(tmp_path_factory.mktemp("pki"))
    p.self_signed("valid", days_left=90)
    p.self_signed("expired", days_left=-2)
    p.self_signed("expiring", days_left=3)
    p.self_signed("client", days_left=90, client=True, sans=("monitor.example.com",))
    p.self_signed("stranger", days_left=90, client=True, sans=("stranger.example.com",))
    return p


def server_context(cert: CertFiles, *, client_ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert.cert), str(cert.key))
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca))
    return ctx


@contextlib.asynccontextmanager
async def tls_web(cert: CertFiles, *, client_ca: Path | None = None) -> AsyncIterator[HttpBackend]:
    backend = HttpBackend(server_context(cert, client_ca=client_ca))
    async with running(backend):
        yield backend  # type: ignore[misc]


# --------------------------------------------------------------------------- registry


def test_every_monitor_type_is_registered() -> None:
    assert sorted(MONITORS) == ["dns", "http", "https", "tcp", "tls"]
    assert make_monitor(HttpConfig(type="https")).port == 443
    assert make_monitor(HttpConfig(type="http")).port == 80
    assert make_monitor(TlsConfig(type="tls")).port == 443
    assert make_monitor(DnsConfig(type="dns", query="x.example")).port == 53


# --------------------------------------------------------------------------- http


async def test_http_200_passes(web: HttpBackend) -> None:
    result = await probe(http(web.port))
    assert result == ProbeResult(True, "HTTP 200", result.latency)
    assert 0 <= result.latency < 2.0


async def test_http_500_fails(web: HttpBackend) -> None:
    web.status = 500
    result = await probe(http(web.port))
    assert not result.ok
    assert result.detail == "HTTP 500, expected 200-399"


async def test_http_503_fails_and_404_fails_with_the_default_expectation(web: HttpBackend) -> None:
    mon = http(web.port)
    for status in (503, 404):
        web.status = status
        result = await probe(mon)
        assert (result.ok, result.detail) == (False, f"HTTP {status}, expected 200-399")


async def test_http_redirect_passes_with_the_default_expectation(web: HttpBackend) -> None:
    web.status = 301
    assert (await probe(http(web.port))).ok


async def test_http_expect_status_list_and_ranges(web: HttpBackend) -> None:
    mon = http(web.port, expect_status=["200-204", 301, "404"])
    seen = {}
    for status in (200, 204, 301, 404, 302, 500):
        web.status = status
        seen[status] = (await probe(mon)).ok
    assert seen == {200: True, 204: True, 301: True, 404: True, 302: False, 500: False}
    web.status = 302
    assert (await probe(mon)).detail == "HTTP 302, expected 200-204, 301, 404"


async def test_http_expecting_500_passes_on_500(web: HttpBackend) -> None:
    web.status = 500
    assert (await probe(http(web.port, expect_status=[500]))).ok


async def test_http_body_keyword(web: HttpBackend) -> None:
    web.body = b'{"status": "up", "checks": 3}'
    result = await probe(http(web.port, body='"status": "up"'))
    assert (result.ok, result.detail) == (True, "HTTP 200")
    result = await probe(http(web.port, body="down"))
    assert (result.ok, result.detail) == (False, "HTTP 200 but body lacks 'down'")


async def test_http_body_regex(web: HttpBackend) -> None:
    web.body = b"db=ok cache=ok queue=ok"
    assert (await probe(http(web.port, body_regex=r"db=ok.*queue=ok"))).ok
    result = await probe(http(web.port, body_regex=r"queue=(degraded|down)"))
    assert not result.ok
    assert result.detail == "HTTP 200 but body does not match 'queue=(degraded|down)'"


async def test_http_body_keyword_with_a_bad_status_fails_on_the_status(web: HttpBackend) -> None:
    web.status, web.body = 500, b"ok"
    result = await probe(http(web.port, body="ok"))
    assert (result.ok, result.detail) == (False, "HTTP 500, expected 200-399")


async def test_http_body_keyword_found_without_waiting_for_the_connection_to_close(web: HttpBackend) -> None:
    web.mode, web.body = "hold", b"ready"
    start = time.monotonic()
    result = await probe(http(web.port, body="ready", timeout=3.0))
    assert result.ok, result.detail
    assert time.monotonic() - start < 2.0, "the probe waited for the server to close the connection"


async def test_http_body_keyword_beyond_read_limit_is_not_seen(web: HttpBackend) -> None:
    web.body = b"x" * 200 + b"MARKER"
    result = await probe(http(web.port, body="MARKER", read_limit=64))
    assert (result.ok, result.detail) == (False, "HTTP 200 but body lacks 'MARKER'")
    assert (await probe(http(web.port, body="MARKER", read_limit=4096))).ok


async def test_http_slow_answer_beyond_timeout_fails(web: HttpBackend) -> None:
    web.mode, web.delay = "slow", 3.0
    mon = http(web.port, timeout=0.4)
    start = time.monotonic()
    result = await probe(mon)
    elapsed = time.monotonic() - start
    assert (result.ok, result.detail) == (False, "timed out after 0.4s")
    assert elapsed < 0.4 + SLACK
    assert result.latency < 0.4 + SLACK


async def test_http_slow_answer_within_timeout_passes(web: HttpBackend) -> None:
    web.mode, web.delay = "slow", 0.1
    result = await probe(http(web.port, timeout=3.0))
    assert result.ok, result.detail
    assert result.latency >= 0.1


async def test_http_hang_times_out(web: HttpBackend) -> None:
    web.mode = "hang"
    start = time.monotonic()
    result = await probe(http(web.port, timeout=0.3))
    assert (result.ok, result.detail) == (False, "timed out after 0.3s")
    assert time.monotonic() - start < 0.3 + SLACK
    assert len(web.requests) == 1, "the request was sent before the server hung"


async def test_http_connection_refused_on_a_stopped_backend() -> None:
    backend = HttpBackend()
    await backend.start()
    mon = http(backend.port)
    assert (await probe(mon)).ok
    await backend.stop()
    start = time.monotonic()
    result = await probe(mon)
    assert not result.ok
    assert result.detail.startswith("ConnectionRefusedError"), result.detail
    assert time.monotonic() - start < 2.0


async def test_http_closed_without_answer_fails(web: HttpBackend) -> None:
    web.mode = "close"
    result = await probe(http(web.port))
    assert not result.ok
    assert "IncompleteRead" in result.detail, result.detail


async def test_http_not_http_fails(web: HttpBackend) -> None:
    web.mode = "garbage"
    result = await probe(http(web.port))
    assert (result.ok, result.detail) == (False, "not an HTTP response: 'SSH-2.0-OpenSSH_9.6'")


async def test_http_request_line_and_headers(web: HttpBackend) -> None:
    assert (await probe(http(web.port, method="HEAD", path="/healthz?deep=1", host="app.example.com"))).ok
    lines = web.requests[-1].decode().split("\r\n")
    assert lines[0] == "HEAD /healthz?deep=1 HTTP/1.1"
    assert "Host: app.example.com" in lines
    assert "Connection: close" in lines
    assert (await probe(http(web.port))).ok
    lines = web.requests[-1].decode().split("\r\n")
    assert lines[0] == "GET / HTTP/1.1"
    assert f"Host: {LOCAL}" in lines


async def test_http_over_ipv6_loopback() -> None:
    backend = HttpBackend()
    async with running(backend, "::1"):
        result = await probe(http(backend.port), "::1")
        assert result.ok, result.detail
        assert "Host: [::1]" in backend.requests[-1].decode().split("\r\n")


async def test_http_monitor_is_reusable_across_many_probes(web: HttpBackend) -> None:
    mon = http(web.port)
    results = [await probe(mon) for _ in range(20)]
    assert all(r.ok for r in results)
    assert web.connections == 20


# --------------------------------------------------------------------------- https


async def test_https_verify_on_against_self_signed_fails(pki: Pki) -> None:
    async with tls_web(pki.made["valid"]) as web:
        result = await probe(https(web.port))
        assert not result.ok
        assert "CERTIFICATE_VERIFY_FAILED" in result.detail or "certificate verify failed" in result.detail, (
            result.detail)
        assert web.requests == []


async def test_https_verify_off_against_self_signed_passes(pki: Pki) -> None:
    async with tls_web(pki.made["valid"]) as web:
        result = await probe(https(web.port, verify=False))
        assert (result.ok, result.detail) == (True, "HTTP 200")


async def test_https_with_ca_file_passes(pki: Pki) -> None:
    async with tls_web(pki.made["valid"]) as web:
        result = await probe(https(web.port, ca_file=pki.made["valid"].cert))
        assert (result.ok, result.detail) == (True, "HTTP 200")


async def test_https_with_ca_file_and_host_checks_the_name(pki: Pki) -> None:
    async with tls_web(pki.made["valid"]) as web:
        ok = await probe(https(web.port, ca_file=pki.made["valid"].cert, host="app.example.com"))
        assert ok.ok, ok.detail
        assert "Host: app.example.com" in web.requests[-1].decode().split("\r\n")
        wrong = await probe(https(web.port, ca_file=pki.made["valid"].cert, host="other.example.com"))
        assert not wrong.ok
        assert "mismatch" in wrong.detail.lower() or "CERTIFICATE_VERIFY_FAILED" in wrong.detail, wrong.detail


async def test_https_with_a_different_ca_file_fails(pki: Pki) -> None:
    async with tls_web(pki.made["valid"]) as web:
        result = await probe(https(web.port, ca_file=pki.made["expiring"].cert))
        assert not result.ok


async def test_https_status_and_body_through_tls(pki: Pki) -> None:
    async with tls_web(pki.made["valid"]) as web:
        web.status = 503
        result = await probe(https(web.port, verify=False))
        assert (result.ok, result.detail) == (False, "HTTP 503, expected 200-399")
        web.status, web.body = 200, b"all systems go"
        assert (await probe(https(web.port, verify=False, body="systems go"))).ok


async def test_https_expired_cert(pki: Pki) -> None:
    async with tls_web(pki.made["expired"]) as web:
        verified = await probe(https(web.port, ca_file=pki.made["expired"].cert))
        assert not verified.ok
        assert "expired" in verified.detail.lower(), verified.detail
        # verify: false turns certificate checks off for https: only the HTTP answer counts
        unverified = await probe(https(web.port, verify=False))
        assert (unverified.ok, unverified.detail) == (True, "HTTP 200")


async def test_https_against_plain_http_fails(web: HttpBackend) -> None:
    result = await probe(https(web.port, verify=False, timeout=1.0))
    assert not result.ok


async def test_https_hang_times_out(pki: Pki) -> None:
    async with tls_web(pki.made["valid"]) as web:
        web.mode = "hang"
        start = time.monotonic()
        result = await probe(https(web.port, verify=False, timeout=0.3))
        assert (result.ok, result.detail) == (False, "timed out after 0.3s")
        assert time.monotonic() - start < 0.3 + SLACK


async def test_https_client_certificate(pki: Pki) -> None:
    client = pki.made["client"]
    async with tls_web(pki.made["valid"], client_ca=client.cert) as web:
        without = await probe(https(web.port, verify=False))
        assert not without.ok, without.detail
        stranger = await probe(https(web.port, verify=False, cert_file=pki.made["stranger"].cert,
                                     key_file=pki.made["stranger"].key))
        assert not stranger.ok, stranger.detail
        with_cert = await probe(https(web.port, ca_file=pki.made["valid"].cert, cert_file=client.cert,
                                      key_file=client.key))
        assert (with_cert.ok, with_cert.detail) == (True, "HTTP 200")
        assert len(web.requests) == 1


# --------------------------------------------------------------------------- tls


async def test_tls_valid_cert_with_ca_file(pki: Pki) -> None:
    async with tls_web(pki.made["valid"]) as server:
        result = await probe(tls(server.port, ca_file=pki.made["valid"].cert))
        assert result.ok, result.detail
        assert result.detail.startswith("handshake ok; certificate valid"), result.detail
        assert "WARNING" not in result.detail


async def test_tls_verify_on_against_self_signed_fails(pki: Pki) -> None:
    async with tls_web(pki.made["valid"]) as server:
        result = await probe(tls(server.port))
        assert not result.ok
        assert result.detail.startswith("TLS handshake failed"), result.detail
        assert "CERTIFICATE_VERIFY_FAILED" in result.detail, result.detail


async def test_tls_verify_off_against_self_signed_passes(pki: Pki) -> None:
    async with tls_web(pki.made["valid"]) as server:
        result = await probe(tls(server.port, verify=False))
        assert result.ok, result.detail
        assert "89 more days" in result.detail or "90 more days" in result.detail, result.detail


async def test_tls_server_name_is_verified(pki: Pki) -> None:
    async with tls_web(pki.made["valid"]) as server:
        assert (await probe(tls(server.port, ca_file=pki.made["valid"].cert, server_name="app.example.com"))).ok
        wrong = await probe(tls(server.port, ca_file=pki.made["valid"].cert, server_name="nope.example.com"))
        assert not wrong.ok
        assert wrong.detail.startswith("TLS handshake failed"), wrong.detail


async def test_tls_expired_cert_fails_with_verify_on(pki: Pki) -> None:
    async with tls_web(pki.made["expired"]) as server:
        result = await probe(tls(server.port, ca_file=pki.made["expired"].cert))
        assert not result.ok
        assert result.detail.startswith("TLS handshake failed"), result.detail


async def test_tls_expired_cert_fails_even_with_verify_off(pki: Pki) -> None:
    async with tls_web(pki.made["expired"]) as server:
        result = await probe(tls(server.port, verify=False))
        assert not result.ok
        expiry = pki.made["expired"].not_after
        assert result.detail == f"certificate expired 2.0 days ago ({expiry:%Y-%m-%d})"


async def test_tls_expiring_cert_warns(pki: Pki) -> None:
    async with tls_web(pki.made["expiring"]) as server:
        result = await probe(tls(server.port, ca_file=pki.made["expiring"].cert, warn_days=14))
        assert result.ok, result.detail
        assert result.detail == "handshake ok; WARNING certificate expires in 3.0 days"


async def test_tls_expiring_cert_below_warn_days_does_not_warn(pki: Pki) -> None:
    async with tls_web(pki.made["expiring"]) as server:
        result = await probe(tls(server.port, verify=False, warn_days=1))
        assert (result.ok, result.detail) == (True, "handshake ok; certificate valid 3 more days")


async def test_tls_expiring_cert_fails_with_fail_days(pki: Pki) -> None:
    async with tls_web(pki.made["expiring"]) as server:
        result = await probe(tls(server.port, verify=False, warn_days=14, fail_days=7))
        assert (result.ok, result.detail) == (False, "certificate expires in 3.0 days (fail_days 7)")


async def test_tls_client_certificate_required(pki: Pki) -> None:
    client = pki.made["client"]
    async with tls_web(pki.made["valid"], client_ca=client.cert) as server:
        with_cert = await probe(tls(server.port, ca_file=pki.made["valid"].cert, cert_file=client.cert,
                                    key_file=client.key))
        assert with_cert.ok, with_cert.detail
        # without a certificate, or with one the server does not trust, the server refuses
        # the client: a check that passes here would call a server healthy that rejects us
        without = await probe(tls(server.port, ca_file=pki.made["valid"].cert))
        assert not without.ok, f"no client certificate, yet: {without.detail}"
        stranger = await probe(tls(server.port, ca_file=pki.made["valid"].cert,
                                   cert_file=pki.made["stranger"].cert, key_file=pki.made["stranger"].key))
        assert not stranger.ok, f"untrusted client certificate, yet: {stranger.detail}"


async def test_tls_against_plain_tcp_fails(web: HttpBackend) -> None:
    result = await probe(tls(web.port, verify=False, timeout=1.0))
    assert not result.ok


async def test_tls_connection_refused() -> None:
    result = await probe(tls(closed_port(), verify=False))
    assert not result.ok
    assert result.detail.startswith("ConnectionRefusedError"), result.detail


async def test_tls_hang_before_handshake_times_out() -> None:
    backend = LineBackend({}, silent=True)  # accepts TCP, never speaks TLS
    async with running(backend):
        start = time.monotonic()
        result = await probe(tls(backend.port, verify=False, timeout=0.3))
        assert (result.ok, result.detail) == (False, "timed out after 0.3s")
        assert time.monotonic() - start < 0.3 + SLACK


# --------------------------------------------------------------------------- tcp


@pytest.fixture
async def redisish() -> AsyncIterator[LineBackend]:
    backend = LineBackend({b"PING": b"+PONG\r\n", b"QUIT": b"+OK\r\n"})
    async with running(backend):
        yield backend


async def test_tcp_connect_only(redisish: LineBackend) -> None:
    result = await probe(tcp(redisish.port))
    assert (result.ok, result.detail) == (True, "connected")


async def test_tcp_send_expect(redisish: LineBackend) -> None:
    result = await probe(tcp(redisish.port, send="PING\r\n", expect="+PONG"))
    assert (result.ok, result.detail) == (True, "got '+PONG'")
    assert redisish.received == [b"PING\r\n"]


async def test_tcp_send_expect_wrong_reply(redisish: LineBackend) -> None:
    result = await probe(tcp(redisish.port, send="HELLO\r\n", expect="+PONG", timeout=1.0))
    # the server keeps the connection open after a wrong reply: the probe must not hang
    assert not result.ok
    assert result.detail in ("expected '+PONG', got b'-ERR unknown command\\r\\n'", "timed out after 1s"), (
        result.detail)


class BusyBackend(StreamBackend):
    """Says it is busy and hangs up."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"-ERR busy\r\n")
        await writer.drain()


async def test_tcp_expect_wrong_reply_then_close() -> None:
    backend = BusyBackend()
    async with running(backend):
        result = await probe(tcp(backend.port, expect="+OK"))
        assert (result.ok, result.detail) == (False, "expected '+OK', got b'-ERR busy\\r\\n'")


async def test_tcp_banner_expect_without_send() -> None:
    backend = LineBackend({}, banner=b"SSH-2.0-OpenSSH_9.6\r\n")
    async with running(backend):
        result = await probe(tcp(backend.port, expect="SSH-2.0"))
        assert (result.ok, result.detail) == (True, "got 'SSH-2.0'")


async def test_tcp_silent_server_times_out(redisish: LineBackend) -> None:
    redisish.silent = True
    start = time.monotonic()
    result = await probe(tcp(redisish.port, send="PING\r\n", expect="+PONG", timeout=0.3))
    assert (result.ok, result.detail) == (False, "timed out after 0.3s")
    assert time.monotonic() - start < 0.3 + SLACK
    assert redisish.received == [b"PING\r\n"]


async def test_tcp_connection_refused_on_a_stopped_backend() -> None:
    backend = LineBackend({b"PING": b"+PONG\r\n"})
    await backend.start()
    mon = tcp(backend.port, send="PING\r\n", expect="+PONG")
    assert (await probe(mon)).ok
    await backend.stop()
    result = await probe(mon)
    assert not result.ok
    assert result.detail.startswith("ConnectionRefusedError"), result.detail


async def test_tcp_over_ipv6_loopback() -> None:
    backend = LineBackend({b"PING": b"+PONG\r\n"})
    async with running(backend, "::1"):
        assert (await probe(tcp(backend.port, send="PING\r\n", expect="+PONG"), "::1")).ok


# --------------------------------------------------------------------------- dns


class DnsBackend(asyncio.DatagramProtocol):
    """A tiny authoritative UDP server: www.example.com A 192.0.2.1, NXDOMAIN otherwise.
    Modes: answer, silent (drop every query), servfail, wrong-id-first (a reply with the
    wrong ID, then the right one)."""

    def __init__(self) -> None:
        self.mode = "answer"
        self.queries: list[DNSRecord] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = DNSRecord.parse(data)
        self.queries.append(query)
        if self.mode == "silent":
            return
        reply = query.reply()
        qname = str(query.q.qname).rstrip(".").lower()
        if self.mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif qname != "www.example.com":
            reply.header.rcode = RCODE.NXDOMAIN
        elif query.q.qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, ttl=60, rdata=A("192.0.2.1")))
        assert self.transport is not None
        if self.mode == "wrong-id-first":
            wrong = DNSRecord.parse(reply.pack())
            wrong.header.id = (query.header.id + 1) % 65536
            wrong.header.rcode = RCODE.SERVFAIL
            self.transport.sendto(wrong.pack(), addr)
        self.transport.sendto(reply.pack(), addr)


@pytest.fixture
async def dns_backend() -> AsyncIterator[tuple[DnsBackend, int]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(DnsBackend, local_addr=(LOCAL, 0))
    try:
        yield proto, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def test_dns_answer_passes(dns_backend: tuple[DnsBackend, int]) -> None:
    server, port = dns_backend
    result = await probe(dnsmon(port, query="www.example.com", expect_answer="192.0.2.1"))
    assert (result.ok, result.detail) == (True, "NOERROR 192.0.2.1")
    assert str(server.queries[-1].q.qname) == "www.example.com."
    assert server.queries[-1].q.qtype == QTYPE.A


async def test_dns_missing_expected_answer_fails(dns_backend: tuple[DnsBackend, int]) -> None:
    _, port = dns_backend
    result = await probe(dnsmon(port, query="www.example.com", expect_answer="192.0.2.99"))
    assert (result.ok, result.detail) == (False, "answer ['192.0.2.1'] lacks '192.0.2.99'")


async def test_dns_nodata_with_expected_answer_fails(dns_backend: tuple[DnsBackend, int]) -> None:
    server, port = dns_backend
    result = await probe(dnsmon(port, query="www.example.com", qtype="AAAA", expect_answer="2001:db8::1"))
    assert not result.ok
    assert server.queries[-1].q.qtype == QTYPE.AAAA


async def test_dns_rcode(dns_backend: tuple[DnsBackend, int]) -> None:
    _, port = dns_backend
    result = await probe(dnsmon(port, query="missing.example.com"))
    assert (result.ok, result.detail) == (False, "rcode NXDOMAIN, expected NOERROR")
    assert (await probe(dnsmon(port, query="missing.example.com", expect_rcode="NXDOMAIN"))).ok


async def test_dns_servfail_fails(dns_backend: tuple[DnsBackend, int]) -> None:
    server, port = dns_backend
    server.mode = "servfail"
    result = await probe(dnsmon(port, query="www.example.com"))
    assert (result.ok, result.detail) == (False, "rcode SERVFAIL, expected NOERROR")


async def test_dns_reply_with_wrong_id_is_ignored(dns_backend: tuple[DnsBackend, int]) -> None:
    server, port = dns_backend
    server.mode = "wrong-id-first"
    result = await probe(dnsmon(port, query="www.example.com", expect_answer="192.0.2.1"))
    assert (result.ok, result.detail) == (True, "NOERROR 192.0.2.1")


async def test_dns_silent_server_times_out(dns_backend: tuple[DnsBackend, int]) -> None:
    server, port = dns_backend
    server.mode = "silent"
    start = time.monotonic()
    result = await probe(dnsmon(port, query="www.example.com", timeout=0.3))
    assert (result.ok, result.detail) == (False, "timed out after 0.3s")
    assert time.monotonic() - start < 0.3 + SLACK
    assert len(server.queries) == 1


async def test_dns_closed_port_fails_fast() -> None:
    port = closed_port(kind=socket.SOCK_DGRAM)
    start = time.monotonic()
    result = await probe(dnsmon(port, query="www.example.com", timeout=3.0))
    assert not result.ok
    assert result.detail.startswith("ConnectionRefusedError"), result.detail
    assert time.monotonic() - start < 3.0 + SLACK


async def test_dns_against_the_gslb_node() -> None:
    with threaded_node() as node:
        mon: Callable[..., Monitor] = lambda **kw: dnsmon(node.port, **kw)  # noqa: E731
        a = await probe(mon(query="app.gslb.example.com", expect_answer="192.0.2.20"))
        assert a.ok, a.detail
        assert a.detail.startswith("NOERROR 192.0.2."), a.detail
        aaaa = await probe(mon(query="app.gslb.example.com", qtype="AAAA", expect_answer="2001:db8:30::30"))
        assert aaaa.ok, aaaa.detail
        nx = await probe(mon(query="nope.gslb.example.com", expect_rcode="NXDOMAIN"))
        assert nx.ok, nx.detail
        refused = await probe(mon(query="www.example.org"))
        assert (refused.ok, refused.detail) == (False, "rcode REFUSED, expected NOERROR")
        mx = await probe(mon(query="gslb.example.com", qtype="MX", expect_answer="mail.gslb.example.com"))
        assert mx.ok, mx.detail
