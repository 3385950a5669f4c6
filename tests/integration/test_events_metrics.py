"""Live events (SSE) and Prometheus metrics against a running node."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.servers import EXAMPLE, threaded_node

TOKEN = "sse-and-metrics-test-token-0123456789"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    geoip = "geoip/GeoIP2-City-Test.mmdb"
    text = EXAMPLE.read_text().replace(geoip, str(EXAMPLE.parent / geoip))
    text = text.replace('    listen: "127.0.0.1:8053"', f'    listen: "127.0.0.1:0"\n    token: "{TOKEN}"')
    path = Path(tmp_path_factory.mktemp("cfg")) / "site.yaml"
    path.write_text(text)
    with threaded_node(path, http=True) as handle:
        yield handle


def request(node, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*node.node.http_address, timeout=5)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_event_stream_pushes_drains_as_they_happen(node):
    sock = socket.create_connection(node.node.http_address, timeout=5)
    sock.sendall(b"GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    while b": connected" not in buf:
        chunk = sock.recv(4096)
        assert chunk, "stream closed before it started"
        buf += chunk
    assert b"text/event-stream" in buf
    status, _ = request(node, "PUT", "/api/v1/drains", {"kind": "site", "pattern": "ap-*", "reason": "sse test"})
    assert status == 200
    deadline = time.monotonic() + 5
    while b"event: drain" not in buf and time.monotonic() < deadline:
        chunk = sock.recv(4096)
        assert chunk
        buf += chunk
    match = re.search(rb"event: drain\ndata: (.+)\n\n", buf)
    assert match, buf
    event = json.loads(match.group(1))
    assert event["target"] == "site:ap-*" and event["new"] == "drained" and event["reason"] == "sse test"
    sock.close()
    assert request(node, "DELETE", "/api/v1/drains?kind=site&pattern=ap-*")[0] == 200


def scrape(node) -> dict[str, float]:
    status, body = request(node, "GET", "/metrics")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def replies(metrics: dict[str, float], rcode: str) -> float:
    return sum(v for k, v in metrics.items()
               if k.startswith("gslb_dns_replies_total{") and f'rcode="{rcode}"' in k and 'transport="udp"' in k)


def test_metrics_count_every_reply_by_rcode(node):
    before = scrape(node)
    host, port = node.addresses[0]
    sent = {"NOERROR": 0, "NXDOMAIN": 0, "REFUSED": 0}
    for i in range(300):  # repeats hit the exact-reply cache: those must be counted too
        name, rcode = [("static.gslb.example.com", "NOERROR"), ("nope.gslb.example.com", "NXDOMAIN"),
                       ("example.org", "REFUSED")][i % 3]
        reply = dns.query.udp(dns.message.make_query(name, "A"), host, port=port, timeout=2)
        assert dns.rcode.to_text(reply.rcode()) == rcode
        sent[rcode] += 1
    after = scrape(node)
    for rcode, n in sent.items():
        assert replies(after, rcode) - replies(before, rcode) == n, rcode


def test_metrics_count_answers_per_site_and_ecs(node):
    import dns.edns

    before = scrape(node)
    host, port = node.addresses[0]
    for _ in range(5):
        q = dns.message.make_query("app.gslb.example.com", "A", use_edns=0,
                                   options=[dns.edns.ECSOption("81.2.69.160", 32)])
        dns.query.udp(q, host, port=port, timeout=2)
    after = scrape(node)
    key = 'gslb_dns_answers_total{name="app.gslb.example.com",site="eu-west"}'
    assert after.get(key, 0) - before.get(key, 0) == 5
    assert after["gslb_dns_ecs_queries_total"] - before.get("gslb_dns_ecs_queries_total", 0) == 5
    assert after['gslb_endpoint_up{endpoint="eu-west/192.0.2.20",name="app.gslb.example.com",site="eu-west"}'] == 1
