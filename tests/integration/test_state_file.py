"""``gslb serve --state-file PATH``: drains and registrations made through the HTTP API outlive
the node process (a clean stop and a kill), expired registrations stay gone, and a corrupt file
is reported and set aside instead of stopping the node."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import dns.message
import dns.query
import dns.rdatatype

from tests.support.servers import ROOT, NodeProcess, node_process

T = TypeVar("T")
TOKEN = "state-file-test-token-0123456789"
APP = "app.st.example"
CONFIG = f"""\
server:
  dns: {{listen: ["127.0.0.1:0"]}}
  http: {{token: "{TOKEN}"}}
zones:
  st.example:
    nameservers:
      - {{name: ns1.st.example, addresses: [192.0.2.53]}}
sites:
  us-east: {{lat: 38.9, lon: -77.0, country: US, continent: NA}}
  eu-west: {{lat: 50.1, lon: 8.7, country: DE, continent: EU}}
services:
  {APP}:
    ttl: 30
    endpoints:
      - {{site: us-east, ipv4: 192.0.2.10}}
      - {{site: eu-west, ipv4: 192.0.2.20}}
"""


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "gslb.yaml"
    path.write_text(CONFIG)
    return path


def api(node: NodeProcess, method: str, path: str, body: Any = None) -> Any:
    host, port = node.listeners["http"]
    request = urllib.request.Request(f"http://{host}:{port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def answer(node: NodeProcess) -> list[str]:
    host, port = node.listeners["dns/udp"]
    reply = dns.query.udp(dns.message.make_query(APP, "A"), host, port=port, timeout=2)
    return sorted(rd.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)


def wait_until(fetch: Callable[[], T], done: Callable[[T], bool], what: str, attempts: int = 200) -> T:
    value = fetch()
    for _ in range(attempts):
        if done(value):
            return value
        time.sleep(0.05)
        value = fetch()
    raise AssertionError(f"{what}: still {value!r}")


def saved(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_bytes())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data


def stop(node: NodeProcess) -> None:
    node.signal(signal.SIGTERM)
    assert node.proc.wait(10) == 0, node.log()


def test_drain_survives_a_kill(tmp_path: Path) -> None:
    """Changes reach the file without a clean shutdown: a killed node's successor still drains."""
    config, state = write_config(tmp_path), tmp_path / "state.json"
    with node_process(config, "--state-file", str(state), tmp_path=tmp_path, expect=3) as node:
        assert "does not exist yet; starting empty" in node.log()
        assert answer(node) == ["192.0.2.10", "192.0.2.20"]
        api(node, "PUT", "/api/v1/drains", {"kind": "site", "pattern": "eu-*", "reason": "maintenance"})
        assert answer(node) == ["192.0.2.10"]
        wait_until(lambda: saved(state).get("drains"), bool, "the drain in the state file")
        node.proc.kill()
        node.proc.wait(10)
    with node_process(config, "--state-file", str(state), tmp_path=tmp_path, expect=3) as node:
        assert "restored 1 drain(s), 0 registration(s)" in node.log()
        drains = api(node, "GET", "/api/v1/drains")["drains"]
        assert [(d["kind"], d["pattern"], d["reason"]) for d in drains] == [("site", "eu-*", "maintenance")]
        assert answer(node) == ["192.0.2.10"]
        events = api(node, "GET", "/api/v1/events")["events"]
        assert any(e["target"] == "site:eu-*" and e["new"] == "drained" for e in events), events
        api(node, "DELETE", "/api/v1/drains?kind=site&pattern=eu-*")
        stop(node)
    assert saved(state)["drains"] == []


def test_registrations_come_back_only_unexpired(tmp_path: Path) -> None:
    config, state = write_config(tmp_path), tmp_path / "state.json"
    with node_process(config, "--state-file", str(state), tmp_path=tmp_path, expect=3) as node:
        api(node, "PUT", f"/api/v1/services/{APP}/endpoints/long", {"site": "us-east", "ipv4": "192.0.2.77",
                                                                    "ttl": 3600})
        short = api(node, "PUT", f"/api/v1/services/{APP}/endpoints/short", {"site": "eu-west",
                                                                             "ipv4": "192.0.2.88", "ttl": 5})
        assert answer(node) == ["192.0.2.10", "192.0.2.20", "192.0.2.77", "192.0.2.88"]
        stop(node)
    ids = sorted(r["id"] for r in saved(state)["registrations"])
    assert ids == ["long", "short"], "both were saved at the clean shutdown"
    expires = short["registration"]["expires"]
    while time.time() <= expires:  # bounded: the TTL was 5 s
        time.sleep(min(0.2, max(0.0, expires - time.time()) + 0.05))
    with node_process(config, "--state-file", str(state), tmp_path=tmp_path, expect=3) as node:
        assert "restored 0 drain(s), 1 registration(s)" in node.log() and "1 expired meanwhile" in node.log()
        endpoints = {ep["id"]: ep for s in api(node, "GET", "/api/v1/services")["services"] for ep in s["endpoints"]}
        assert endpoints["long"]["registered"] and "short" not in endpoints
        assert answer(node) == ["192.0.2.10", "192.0.2.20", "192.0.2.77"]


def test_corrupt_state_file_is_reported_and_kept(tmp_path: Path) -> None:
    config, state = write_config(tmp_path), tmp_path / "state.json"
    state.write_text('{"format": "gslb-state", "version": 1, "saved": 0, "drains": [{"kind": "planet"')
    with node_process(config, "--state-file", str(state), tmp_path=tmp_path, expect=3) as node:
        node.wait_for_log("gslb node ready")
        assert f"state file {state}: not JSON: Expecting ',' delimiter" in node.log()
        assert f"starting with no drains or registrations (a copy is at {state}.corrupt)" in node.log()
        assert answer(node) == ["192.0.2.10", "192.0.2.20"]
        assert state.read_text().endswith('"planet"'), "not overwritten before the first change"
        api(node, "PUT", "/api/v1/drains", {"kind": "endpoint", "pattern": f"{APP}/*", "reason": "x"})
        wait_until(lambda: saved(state).get("drains"), bool, "the first change written over the corrupt file")
        stop(node)
    assert (tmp_path / "state.json.corrupt").read_text().endswith('"planet"')


def test_state_file_refused_with_redis(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = subprocess.run([sys.executable, "-m", "gslb.cli", "serve", "-c", str(config), "--no-http",
                             "--redis", "redis://127.0.0.1:1/0", "--state-file", str(tmp_path / "s.json")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert "--state-file keeps the embedded store's state; the redis store keeps its own" in result.stderr
    config.write_text(CONFIG + "store: {type: redis, url: 'redis://127.0.0.1:1/0', state_file: s.json}\n")
    result = subprocess.run([sys.executable, "-m", "gslb.cli", "check", "-c", str(config)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1
    assert "store: state_file is for the memory store; redis keeps its state across restarts" in result.stderr
