"""The HTTP API over TLS, readiness waiting for first verdicts, and /metrics against dnsperf."""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.servers import EXAMPLE, require_binary, threaded_node

GEOIP = "geoip/GeoIP2-City-Test.mmdb"


def example_with(tmp_path: Path, http_block: str, extra: str = "") -> Path:
    text = EXAMPLE.read_text().replace(GEOIP, str(EXAMPLE.parent / GEOIP))
    text = text.replace('  http:\n    listen: "127.0.0.1:8053"\n', http_block) + extra
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def wait_http(handle) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    assert handle.node.http_address is not None, "threaded_node(http=True) waits for the listener"
    return handle.node.http_address


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gslb-api.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("gslb-api.test"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "api.pem", tmp_path / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_api_over_tls(tmp_path):
    cert, key = self_signed(tmp_path)
    config = example_with(tmp_path, f'  http:\n    listen: "127.0.0.1:0"\n    tls_cert: "{cert}"\n'
                                    f'    tls_key: "{key}"\n')
    with threaded_node(config, http=True) as handle:
        host, port = wait_http(handle)
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection(host, port, context=context, timeout=5)
        conn.request("GET", "/healthz", headers={"Host": "gslb-api.test"})
        assert conn.getresponse().status == 200
        # plain HTTP to the TLS port gets no HTTP answer
        plain = http.client.HTTPConnection(host, port, timeout=5)
        try:
            plain.request("GET", "/healthz")
            status = plain.getresponse().status
        except (http.client.HTTPException, ConnectionError):
            status = None
        assert status != 200


def test_tls_needs_both_files(tmp_path):
    from gslb.config import load_config
    from gslb.errors import ConfigError

    config = example_with(tmp_path, '  http:\n    listen: "127.0.0.1:0"\n    tls_cert: "/nonexistent.pem"\n')
    try:
        load_config(config)
    except ConfigError as exc:
        assert any("tls_cert and tls_key" in str(e) for e in exc.errors)
    else:
        raise AssertionError("a lone tls_cert was accepted")


def test_readyz_waits_for_the_first_health_verdicts(tmp_path):
    # A loopback listener that accepts but never answers: each first HTTP check takes its full
    # timeout, and until every check has a verdict the node must say it is not ready.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    config = example_with(tmp_path, '  http:\n    listen: "127.0.0.1:0"\n')
    text = config.read_text().replace(
        "    policy: {type: geo}\n",
        f"    policy: {{type: geo}}\n    monitor: {{type: http, port: {port}, interval: 600, timeout: 0.5, "
        "jitter: 0}\n")
    for site in ("us-east", "eu-west", "ap-northeast"):  # probe loopback, never the answered addresses
        text = re.sub(rf"(- {{site: {site}, [^}}]*)}}", r"\1, probe_address: 127.0.0.1}", text, count=1)
    config.write_text(text)
    try:
        with threaded_node(config, http=True) as handle:
            assert {t.name for t in handle.node.tracker.targets.values()} == {f"http://127.0.0.1:{port}"}
            host, http_port = wait_http(handle)
            statuses = []
            deadline = time.monotonic() + 10
            while True:
                conn = http.client.HTTPConnection(host, http_port, timeout=5)
                conn.request("GET", "/readyz")
                resp = conn.getresponse()
                body = json.loads(resp.read())
                statuses.append(resp.status)
                if resp.status == 200:
                    break
                assert resp.status == 503 and body["ready"] is False
                assert time.monotonic() < deadline, "never became ready"
                time.sleep(0.05)
            assert statuses[0] == 503
            assert all(t.last_checked is not None for t in handle.node.tracker.targets.values())
    finally:
        silent.close()


def test_metrics_match_dnsperf_by_rcode(tmp_path):
    dnsperf = require_binary("dnsperf")
    config = example_with(tmp_path, '  http:\n    listen: "127.0.0.1:0"\n')
    queries = tmp_path / "queries.txt"
    queries.write_text("static.gslb.example.com A\nnope.gslb.example.com A\nexample.org A\n"
                       "app.gslb.example.com AAAA\ngslb.example.com SOA\n")
    with threaded_node(config, http=True) as handle:
        host, port = wait_http(handle)
        out = subprocess.run([dnsperf, "-s", "127.0.0.1", "-p", str(handle.port), "-d", str(queries),
                              "-n", "400", "-l", "20", "-c", "2", "-q", "20"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        completed = int(re.search(r"Queries completed:\s+(\d+)", out.stdout).group(1))  # type: ignore[union-attr]
        codes = dict((name, int(n)) for name, n in re.findall(r"(\w+) (\d+) \(", out.stdout.split("Response codes:")[1]
                                                                 .splitlines()[0]))
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
    assert completed == 2000 and sum(codes.values()) == completed
    seen: dict[str, int] = {}
    for rcode, value in re.findall(r'gslb_dns_replies_total\{[^}]*rcode="(\w+)"[^}]*transport="udp"[^}]*\} (\S+)',
                                   metrics):
        seen[rcode] = seen.get(rcode, 0) + int(float(value))
    assert seen == codes, (seen, codes)
