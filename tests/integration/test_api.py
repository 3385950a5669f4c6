"""The HTTP API of a node, end to end: a real node (``threaded_node(..., http=True)``, or
``gslb serve`` as a process for the environment-variable token) with its HTTP listener on an
ephemeral 127.0.0.1 port, driven over real HTTP (``http.client``), its DNS answers checked
with dnspython over UDP.

The config is config/example.yaml with ``server: {http: {listen: 127.0.0.1:0, token: ...}}``
and the GeoIP test database by absolute path. Its GSLB name app.gslb.example.com (geo policy,
one site per answer, fallback 'all') has three endpoints: us-east/192.0.2.10,
eu-west/192.0.2.20, ap-northeast/192.0.2.30. A client behind ECS 81.2.69.160/32 (London, GB,
network 81.2.69.160/27 in the test database) is answered eu-west 192.0.2.20; with eu-west
out, the next closest site is us-east (192.0.2.10). A query with no ECS comes from 127.0.0.1,
which the database does not know: it gets every endpoint.

Every test gets its own node, so drains and registrations never leak between tests. Waits
for things that happen later (expiry) are bounded polls; nothing asserts on elapsed time.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from tests.support.servers import EXAMPLE, node_process, threaded_node

TOKEN = "api-test-token-0123456789abcdef0"
ENV_TOKEN = "env-test-token-fedcba9876543210f"
APP = "app.gslb.example.com"
GB_ECS = "81.2.69.160/32"
US, EU, AP = "192.0.2.10", "192.0.2.20", "192.0.2.30"
US6, EU6 = "2001:db8:10::10", "2001:db8:20::20"
US_ID, EU_ID, AP_ID = f"us-east/{US}", f"eu-west/{EU}", f"ap-northeast/{AP}"
ALL_THREE = sorted([US, EU, AP])
REG_PATH = f"/api/v1/services/{APP}/endpoints"
DNS_TIMEOUT = 3.0
POLL_LIMIT = 5.0
MAX_BODY = 64 * 1024
T = TypeVar("T")


# --------------------------------------------------------------------------- config


def example_data() -> dict[str, Any]:
    """config/example.yaml as data, with the GeoIP database by absolute path."""
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    data["geoip"]["database"] = str((EXAMPLE.parent / data["geoip"]["database"]).resolve())
    return data


def write_config(path: Path, *, token: str | None = TOKEN, read_token: bool = False,
                 token_env: str | None = None, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    data = example_data()
    http_cfg: dict[str, Any] = {"listen": "127.0.0.1:0"}
    if token is not None:
        http_cfg["token"] = token
    if read_token:
        http_cfg["read_token"] = True
    if token_env is not None:
        http_cfg["token_env"] = token_env
    data["server"] = {"http": http_cfg}
    if edit is not None:
        edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def app_service(data: dict[str, Any]) -> dict[str, Any]:
    service: dict[str, Any] = data["services"][APP]
    return service


# --------------------------------------------------------------------------- clients


@dataclass
class Reply:
    status: int
    body: Any
    """Parsed JSON when the reply is JSON, else the text."""
    content_type: str

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body!r})"


DEFAULT = object()


@dataclass
class Api:
    http: tuple[str, int]
    dns_address: tuple[str, int]
    token: str
    config: Path

    # -- HTTP

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                token: Any = DEFAULT, auth: str | None = None) -> Reply:
        """``token``: DEFAULT sends this node's token, None sends no Authorization header;
        ``auth`` sends that header value verbatim."""
        headers = {}
        if auth is not None:
            headers["Authorization"] = auth
        elif token is not None:
            headers["Authorization"] = f"Bearer {self.token if token is DEFAULT else token}"
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(*self.http, timeout=10)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            ctype = resp.getheader("Content-Type", "")
        finally:
            conn.close()
        text = payload.decode("utf-8", "replace")
        return Reply(resp.status, json.loads(text) if "json" in ctype else text, ctype)

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200, **kw: Any) -> Any:
        reply = self.request(method, path, body, **kw)
        assert reply.status == status, reply
        assert reply.content_type.startswith("application/json"), reply
        return reply.body

    def drain(self, pattern: str, kind: str = "endpoint", **extra: Any) -> Any:
        return self.ok("PUT", "/api/v1/drains", {"kind": kind, "pattern": pattern, **extra})

    def undrain(self, pattern: str, kind: str = "endpoint") -> Any:
        return self.ok("DELETE", "/api/v1/drains?" + urlencode({"kind": kind, "pattern": pattern}))

    def register(self, endpoint: str, body: dict[str, Any], status: int = 201) -> Any:
        return self.ok("PUT", f"{REG_PATH}/{endpoint}", body, status=status)

    def services(self) -> list[dict[str, Any]]:
        services: list[dict[str, Any]] = self.ok("GET", "/api/v1/services")["services"]
        return services

    def endpoints(self) -> dict[str, dict[str, Any]]:
        (app,) = [s for s in self.services() if s["name"] == APP]
        return {ep["id"]: ep for ep in app["endpoints"]}

    def events(self, **query: Any) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.ok("GET", "/api/v1/events" + ("?" + urlencode(query) if query else ""))[
            "events"]
        return events

    def drains(self) -> list[dict[str, Any]]:
        drains: list[dict[str, Any]] = self.ok("GET", "/api/v1/drains")["drains"]
        return drains

    # -- DNS

    def query(self, rdtype: str = "A", ecs: str | None = GB_ECS, name: str = APP) -> dns.message.Message:
        options: list[dns.edns.Option] = []
        if ecs is not None:
            address, _, prefix = ecs.partition("/")
            options.append(dns.edns.ECSOption(address, int(prefix)))
        message = dns.message.make_query(name, rdtype, use_edns=0, options=options)
        reply = dns.query.udp(message, self.dns_address[0], port=self.dns_address[1], timeout=DNS_TIMEOUT)
        assert reply.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(reply.rcode())
        return reply

    def answer(self, rdtype: str = "A", ecs: str | None = GB_ECS) -> list[str]:
        reply = self.query(rdtype, ecs)
        code = dns.rdatatype.from_text(rdtype)
        return sorted(rd.address for rrset in reply.answer if rrset.rdtype == code for rd in rrset)


def wait_until(fetch: Callable[[], T], done: Callable[[T], bool], what: str, timeout: float = POLL_LIMIT) -> T:
    """Poll ``fetch`` until ``done`` says yes; a bounded wait, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not the case after {timeout}s; last value {value!r}")
        time.sleep(0.05)


def find_event(events: list[dict[str, Any]], **want: str) -> dict[str, Any] | None:
    return next((e for e in reversed(events) if all(e[k] == v for k, v in want.items())), None)


@contextmanager
def serving(config: Path, token: str = TOKEN) -> Iterator[Api]:
    with threaded_node(config, http=True) as handle:
        assert handle.node.http_address is not None
        host, port = handle.node.http_address
        assert host == "127.0.0.1"
        yield Api((host, port), (handle.host, handle.port), token, config)


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.delenv("GSLB_API_TOKEN", raising=False)
    with serving(write_config(tmp_path / "gslb.yaml")) as node:
        yield node


# --------------------------------------------------------------------------- health


def test_healthz(api: Api) -> None:
    assert api.ok("GET", "/healthz", token=None) == {"status": "ok"}


def test_readyz_reports_generation_serials_and_health(api: Api) -> None:
    body = api.ok("GET", "/readyz", token=None)
    assert body["ready"] is True
    assert isinstance(body["generation"], int) and body["generation"] >= 1
    assert list(body["serials"]) == ["gslb.example.com"]
    assert isinstance(body["serials"]["gslb.example.com"], int) and body["serials"]["gslb.example.com"] > 0
    assert body["reloads"] == 0
    assert body["config"] == str(api.config)
    assert f"{api.dns_address[0]}:{api.dns_address[1]}" in body["dns"]
    health = body["health"]
    assert set(health) >= {"targets", "down", "checks", "failed_checks", "lag_p50_ms", "lag_p99_ms"}
    assert health["targets"] == 0 and health["down"] == 0  # the example has no monitors


# --------------------------------------------------------------------------- reads


def test_services_lists_the_example_name(api: Api) -> None:
    services = api.services()
    assert [s["name"] for s in services] == [APP]
    (app,) = services
    assert app["ttl"] == 30 and app["ttl_now"] == 30
    assert app["answers"] is None
    assert app["fallback"] == "all"
    assert len(app["policy"]) == 1 and app["policy"][0]["type"] == "geo"
    expected = [(US_ID, "us-east", US, US6), (EU_ID, "eu-west", EU, EU6),
                (AP_ID, "ap-northeast", AP, "2001:db8:30::30")]
    assert [(e["id"], e["site"], e["ipv4"], e["ipv6"]) for e in app["endpoints"]] == expected
    for ep in app["endpoints"]:
        assert ep["usable"] is True, ep
        assert ep["enabled"] is True, ep
        assert ep["registered"] is False, ep
        assert ep["drained"] is None, ep
        assert ep["health"] is None, ep  # no monitor configured
        assert ep["cname"] is None and ep["weight"] == 1, ep


def test_events_and_drains_start_empty(api: Api) -> None:
    assert api.drains() == []
    assert api.events() == []


def test_events_limit(api: Api) -> None:
    for pattern in ("a", "b", "c"):
        api.drain(pattern)
    assert [e["target"] for e in api.events()] == ["endpoint:a", "endpoint:b", "endpoint:c"]
    assert [e["target"] for e in api.events(limit=2)] == ["endpoint:b", "endpoint:c"]
    reply = api.get("/api/v1/events?limit=many")
    assert reply.status == 400 and "limit" in reply.body["error"], reply


def test_explain(api: Api) -> None:
    body = api.ok("GET", "/api/v1/explain?" + urlencode({"name": APP, "client": "1.2.3.4", "ecs": GB_ECS}))
    assert body["query"] == {"name": APP, "type": "A"}
    assert body["client"] == "1.2.3.4"
    assert body["ecs"] == GB_ECS
    assert body["rcode"] == "NOERROR" and body["authoritative"] is True
    assert isinstance(body["steps"], list) and body["steps"]
    assert any("eu-west" in step and "chose" in step for step in body["steps"]), body["steps"]
    assert len(body["answer"]) == 1
    assert body["answer"][0].split()[0] == f"{APP}." and body["answer"][0].split()[-2:] == ["A", EU]
    assert body["ttl"] == 30
    assert body["ecs_scope"] == 27


def test_explain_aaaa_without_ecs(api: Api) -> None:
    body = api.ok("GET", "/api/v1/explain?" + urlencode({"name": APP, "client": "127.0.0.1", "type": "aaaa"}))
    assert body["query"]["type"] == "AAAA"
    assert body["ecs"] is None and body["ecs_scope"] == 0
    assert sorted(rr.split()[-1] for rr in body["answer"]) == sorted([US6, EU6, "2001:db8:30::30"])


@pytest.mark.parametrize("query", [
    {},
    {"name": APP},
    {"client": "1.2.3.4"},
], ids=["nothing", "no-client", "no-name"])
def test_explain_missing_parameters(api: Api, query: dict[str, str]) -> None:
    reply = api.get("/api/v1/explain?" + urlencode(query))
    assert reply.status == 400, reply
    assert "name=" in reply.body["error"] and "client=" in reply.body["error"], reply


@pytest.mark.parametrize("query", [
    {"name": APP, "client": "1.2.3.4", "type": "BOGUS"},
    {"name": APP, "client": "1.2.3.4", "type": "1"},
    {"name": APP, "client": "not-an-address"},
    {"name": APP, "client": "1.2.3.4", "ecs": "not-a-subnet"},
    {"name": "a..b.gslb.example.com", "client": "1.2.3.4"},
], ids=["unknown-type", "numeric-type", "bad-client", "bad-ecs", "bad-name"])
def test_explain_bad_parameters(api: Api, query: dict[str, str]) -> None:
    reply = api.get("/api/v1/explain?" + urlencode(query))
    assert reply.status == 400, reply
    assert isinstance(reply.body, dict) and reply.body["error"], reply


def test_unknown_route_and_wrong_method(api: Api) -> None:
    assert api.get("/api/v1/nothing-here").status == 404
    assert api.get("/api/v1/reload").status == 405
    assert api.request("POST", "/api/v1/drains", {"pattern": "x"}).status == 405


# --------------------------------------------------------------------------- auth

WRITES = [
    ("PUT", "/api/v1/drains", {"kind": "site", "pattern": "eu-*"}),
    ("DELETE", "/api/v1/drains?kind=site&pattern=eu-%2A", None),
    ("PUT", f"{REG_PATH}/pod-7", {"site": "eu-west", "ipv4": "192.0.2.77"}),
    ("DELETE", f"{REG_PATH}/pod-7", None),
    ("POST", "/api/v1/reload", None),
]
WRITE_IDS = ["put-drain", "delete-drain", "put-registration", "delete-registration", "reload"]
READS = ["/api/v1/services", "/api/v1/events", "/api/v1/drains",
         "/api/v1/explain?" + urlencode({"name": APP, "client": "1.2.3.4"})]
BAD_AUTH = {
    "no-header": None,
    "wrong-token": "Bearer " + "x" * 32,
    "token-prefix": "Bearer " + TOKEN[:-1],
    "token-extended": "Bearer " + TOKEN + "x",
    "empty-bearer": "Bearer ",
    "bare-token": TOKEN,
    "basic-scheme": "Basic " + base64.b64encode(f"admin:{TOKEN}".encode()).decode(),
    "token-scheme": "Token " + TOKEN,
}


def assert_untouched(api: Api) -> None:
    assert api.drains() == []
    assert list(api.endpoints()) == [US_ID, EU_ID, AP_ID]
    assert api.answer() == [EU]
    assert api.ok("GET", "/readyz")["reloads"] == 0


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=WRITE_IDS)
@pytest.mark.parametrize("auth", list(BAD_AUTH.values()), ids=list(BAD_AUTH))
def test_writes_refuse_a_missing_or_wrong_token(api: Api, method: str, path: str, body: Any,
                                                auth: str | None) -> None:
    reply = api.request(method, path, body, token=None, auth=auth)
    assert reply.status == 401, reply
    assert reply.body["error"], reply
    assert_untouched(api)


def test_writes_accept_the_right_token(api: Api) -> None:
    statuses = [api.request(m, p, b).status for m, p, b in WRITES]
    assert statuses == [200, 200, 201, 200, 200]


def test_bearer_scheme_is_case_insensitive(api: Api) -> None:
    reply = api.request("PUT", "/api/v1/drains", {"pattern": "nothing"}, auth=f"bearer {TOKEN}")
    assert reply.status == 200, reply


@pytest.mark.parametrize("path", READS)
def test_reads_need_no_token_by_default(api: Api, path: str) -> None:
    assert api.get(path, token=None).status == 200
    assert api.get(path, auth="Bearer " + "x" * 32).status == 200


def test_no_token_configured_refuses_writes_with_403(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GSLB_API_TOKEN", raising=False)
    with serving(write_config(tmp_path / "gslb.yaml", token=None)) as api:
        for (method, path, body), name in zip(WRITES, WRITE_IDS, strict=True):
            for auth in (None, f"Bearer {TOKEN}", "Bearer "):
                reply = api.request(method, path, body, token=None, auth=auth)
                assert reply.status == 403, (name, auth, reply)
                assert "token" in reply.body["error"], reply
        for path in READS:
            assert api.get(path, token=None).status == 200, path
        assert api.ok("GET", "/healthz", token=None) == {"status": "ok"}
        assert_untouched(api)


def test_token_from_a_custom_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GSLB_API_TOKEN", raising=False)
    monkeypatch.setenv("GSLB_TEST_API_TOKEN_CUSTOM", ENV_TOKEN)
    config = write_config(tmp_path / "gslb.yaml", token=None, token_env="GSLB_TEST_API_TOKEN_CUSTOM")
    with serving(config, token=ENV_TOKEN) as api:
        assert api.request("PUT", "/api/v1/drains", {"pattern": "x"}, token=None).status == 401
        assert api.request("PUT", "/api/v1/drains", {"pattern": "x"}, token=TOKEN).status == 401
        assert api.drain("x")["drain"]["pattern"] == "x"


def test_read_token_protects_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GSLB_API_TOKEN", raising=False)
    with serving(write_config(tmp_path / "gslb.yaml", read_token=True)) as api:
        for path in READS:
            for name, auth in BAD_AUTH.items():
                reply = api.get(path, token=None, auth=auth)
                assert reply.status == 401, (path, name, reply)
            assert api.get(path).status == 200, path
        assert api.ok("GET", "/healthz", token=None) == {"status": "ok"}
        # writes still work with the token, and the read shows them
        api.drain("eu-*", kind="site")
        assert [d["pattern"] for d in api.drains()] == ["eu-*"]


def test_token_from_environment_of_gslb_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GSLB_API_TOKEN in the environment of ``gslb serve``, no token in the file."""
    monkeypatch.setenv("GSLB_API_TOKEN", ENV_TOKEN)
    config = write_config(tmp_path / "gslb.yaml", token=None)
    assert "token" not in yaml.safe_load(config.read_text())["server"]["http"]
    with node_process(config, tmp_path=tmp_path, expect=3) as proc:
        assert set(proc.listeners) >= {"dns/udp", "http"}, proc.log()
        assert proc.listeners["http"][0] == "127.0.0.1"
        api = Api(proc.listeners["http"], proc.listeners["dns/udp"], ENV_TOKEN, config)
        assert api.ok("GET", "/healthz", token=None) == {"status": "ok"}
        assert api.ok("GET", "/readyz", token=None)["ready"] is True
        assert api.get("/api/v1/services", token=None).status == 200
        assert api.answer() == [EU]
        for auth in (None, f"Bearer {TOKEN}", "Bearer " + ENV_TOKEN[:-1], f"Basic {ENV_TOKEN}"):
            assert api.request("PUT", "/api/v1/drains", {"kind": "site", "pattern": "eu-*"},
                               token=None, auth=auth).status == 401, auth
        assert api.answer() == [EU]
        body = api.drain("eu-*", kind="site")
        assert body["matched"] == [f"{APP}/{EU_ID}"]
        assert api.answer() == [US]
        api.undrain("eu-*", kind="site")
        assert api.answer() == [EU]


# --------------------------------------------------------------------------- bad requests

DRAIN_BAD_BODIES = [
    (b"{not json", None),
    (b"", None),
    (b"\xff\xfe\x00", None),
    (json.dumps({"pattern": "eu-*", "bogus": 1}).encode(), "bogus"),
    (json.dumps({"pattern": 5}).encode(), "pattern"),
    (json.dumps({"pattern": ["eu-*"]}).encode(), "pattern"),
    (json.dumps({"pattern": ""}).encode(), "pattern"),
    (json.dumps({}).encode(), "pattern"),
    (json.dumps({"kind": "pool", "pattern": "eu-*"}).encode(), "kind"),
    (json.dumps({"pattern": "eu-*", "expires_in": "soon"}).encode(), "expires_in"),
    (json.dumps({"pattern": "eu-*", "expires_in": 0}).encode(), "expires_in"),
    (json.dumps({"pattern": "eu-*", "expires_in": -1}).encode(), "expires_in"),
    (json.dumps({"pattern": "eu-*", "reason": "r" * 501}).encode(), "reason"),
    (json.dumps({"pattern": "x" * 301}).encode(), "pattern"),
    (json.dumps(["eu-*"]).encode(), "<body>"),
    (json.dumps("eu-*").encode(), "<body>"),
]
DRAIN_BAD_IDS = ["not-json", "empty", "not-utf8", "unknown-field", "pattern-int", "pattern-list",
                 "pattern-empty", "pattern-missing", "kind-unknown", "expires-str", "expires-zero",
                 "expires-negative", "reason-too-long", "pattern-too-long", "array", "string"]


@pytest.mark.parametrize(("raw", "field"), DRAIN_BAD_BODIES, ids=DRAIN_BAD_IDS)
def test_drain_bad_body(api: Api, raw: bytes, field: str | None) -> None:
    reply = api.request("PUT", "/api/v1/drains", raw=raw)
    assert reply.status == 400, reply
    if field is None:
        assert "JSON" in reply.body["error"], reply
    else:
        assert field in reply.body["error"], reply
        assert field in [f["field"] for f in reply.body["fields"]], reply
    assert_untouched(api)


REG_BAD_BODIES = [
    ({"site": "eu-west"}, "ipv4"),
    ({"site": "eu-west", "ipv4": None, "ipv6": None}, "ipv4"),
    ({"ipv4": "192.0.2.21"}, "site"),
    ({"site": "", "ipv4": "192.0.2.21"}, "site"),
    ({"site": 7, "ipv4": "192.0.2.21"}, "site"),
    ({"site": "eu-west", "ipv4": "192.0.2.300"}, "ipv4"),
    ({"site": "eu-west", "ipv4": "2001:db8::1"}, "ipv4"),
    ({"site": "eu-west", "ipv6": "192.0.2.21"}, "ipv6"),
    ({"site": "eu-west", "ipv4": "192.0.2.21", "ttl": 0}, "ttl"),
    ({"site": "eu-west", "ipv4": "192.0.2.21", "ttl": "long"}, "ttl"),
    ({"site": "eu-west", "ipv4": "192.0.2.21", "weight": -1}, "weight"),
    ({"site": "eu-west", "ipv4": "192.0.2.21", "cname": "x.example.net"}, "cname"),
    ({"site": "mars", "ipv4": "192.0.2.21"}, "site"),
]
REG_BAD_IDS = ["no-address", "null-addresses", "no-site", "empty-site", "site-int", "bad-ipv4",
               "ipv6-as-ipv4", "ipv4-as-ipv6", "ttl-zero", "ttl-str", "weight-negative", "unknown-field",
               "unknown-site"]


@pytest.mark.parametrize(("body", "field"), REG_BAD_BODIES, ids=REG_BAD_IDS)
def test_registration_bad_body(api: Api, body: dict[str, Any], field: str) -> None:
    reply = api.request("PUT", f"{REG_PATH}/pod-7", body)
    assert reply.status == 400, reply
    assert field in reply.body["error"], reply
    assert "fields" in reply.body, reply
    assert_untouched(api)
    assert api.events() == []


def test_registration_not_json(api: Api) -> None:
    reply = api.request("PUT", f"{REG_PATH}/pod-7", raw=b"site=eu-west")
    assert reply.status == 400 and "JSON" in reply.body["error"], reply
    assert_untouched(api)


def padded(body: dict[str, Any], size: int) -> bytes:
    """Valid JSON of exactly ``size`` bytes (trailing whitespace is allowed in JSON)."""
    raw = json.dumps(body).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


@pytest.mark.parametrize("path", ["/api/v1/drains", f"{REG_PATH}/pod-7"])
def test_body_over_64_kib_is_413(api: Api, path: str) -> None:
    body = {"pattern": "eu-*", "kind": "site"} if path.endswith("drains") else {
        "site": "eu-west", "ipv4": "192.0.2.21"}
    reply = api.request("PUT", path, raw=padded(body, MAX_BODY + 1))
    assert reply.status == 413, reply
    reply = api.request("PUT", path, raw=padded(body, 256 * 1024))
    assert reply.status == 413, reply
    assert_untouched(api)
    # exactly 64 KiB is not over the limit
    reply = api.request("PUT", path, raw=padded(body, MAX_BODY))
    assert reply.status in (200, 201), reply


def test_registration_for_unknown_service_is_404(api: Api) -> None:
    body = {"site": "eu-west", "ipv4": "192.0.2.21"}
    for name in ("nope.gslb.example.com", "mail.gslb.example.com", "example.org"):
        reply = api.request("PUT", f"/api/v1/services/{name}/endpoints/pod-7", body)
        assert reply.status == 404, (name, reply)
        assert name in reply.body["error"], reply
    assert api.request("DELETE", "/api/v1/services/nope.gslb.example.com/endpoints/pod-7").status == 404
    assert_untouched(api)


def test_registering_a_configured_endpoint_id_is_409(api: Api) -> None:
    reply = api.request("PUT", f"{REG_PATH}/{quote(EU_ID, safe='')}", {"site": "eu-west", "ipv4": "192.0.2.99"})
    assert reply.status == 409, reply
    assert EU_ID in reply.body["error"], reply
    assert_untouched(api)
    assert api.events() == []


def test_delete_of_missing_drain_or_registration_is_404(api: Api) -> None:
    reply = api.request("DELETE", "/api/v1/drains?" + urlencode({"kind": "site", "pattern": "eu-*"}))
    assert reply.status == 404 and "eu-*" in reply.body["error"], reply
    # a drain of the other kind with the same pattern is a different drain
    api.drain("eu-*", kind="site")
    reply = api.request("DELETE", "/api/v1/drains?" + urlencode({"kind": "endpoint", "pattern": "eu-*"}))
    assert reply.status == 404, reply
    assert [d["pattern"] for d in api.drains()] == ["eu-*"]
    reply = api.request("DELETE", f"{REG_PATH}/pod-7")
    assert reply.status == 404 and "pod-7" in reply.body["error"], reply
    reply = api.request("DELETE", f"{REG_PATH}/{quote(EU_ID, safe='')}")
    assert reply.status == 404, reply
    assert list(api.endpoints()) == [US_ID, EU_ID, AP_ID]


@pytest.mark.parametrize("query", ["", "?kind=site", "?pattern=", "?kind=pool&pattern=eu-*"],
                         ids=["nothing", "no-pattern", "empty-pattern", "bad-kind"])
def test_delete_drain_bad_query(api: Api, query: str) -> None:
    reply = api.request("DELETE", "/api/v1/drains" + query)
    assert reply.status == 400, reply
    assert "pattern" in reply.body["error"], reply


# --------------------------------------------------------------------------- drains in DNS


def test_site_drain_moves_the_answer_at_once_and_undrain_restores(api: Api) -> None:
    assert api.answer() == [EU]
    assert api.answer("AAAA") == [EU6]
    body = api.drain("eu-*", kind="site", reason="maintenance")
    assert body["drain"]["kind"] == "site" and body["drain"]["pattern"] == "eu-*"
    assert body["drain"]["reason"] == "maintenance" and body["drain"]["expires"] is None
    assert isinstance(body["drain"]["created"], float)
    assert body["matched"] == [f"{APP}/{EU_ID}"]
    # visible right after the call returns: no waiting
    assert api.answer() == [US]
    assert api.answer("AAAA") == [US6]
    assert api.answer(ecs=None) == sorted([US, AP])

    assert api.drains() == [body["drain"]]
    eps = api.endpoints()
    assert eps[EU_ID]["usable"] is False and eps[EU_ID]["drained"] == body["drain"]
    assert eps[US_ID]["usable"] is True and eps[US_ID]["drained"] is None
    event = find_event(api.events(), kind="drain", target="site:eu-*")
    assert event is not None and (event["old"], event["new"]) == ("serving", "drained"), api.events()
    assert event["reason"] == "maintenance"

    assert api.undrain("eu-*", kind="site") == {"removed": {"kind": "site", "pattern": "eu-*"}}
    assert api.answer() == [EU]
    assert api.answer("AAAA") == [EU6]
    assert api.drains() == []
    assert api.endpoints()[EU_ID]["usable"] is True and api.endpoints()[EU_ID]["drained"] is None
    events = [e for e in api.events() if e["target"] == "site:eu-*"]
    assert [(e["old"], e["new"]) for e in events] == [("serving", "drained"), ("drained", "serving")]


@pytest.mark.parametrize("pattern", ["eu-west/*", f"{APP}/eu-*", EU_ID, "*/192.0.2.20"])
def test_endpoint_glob_drain(api: Api, pattern: str) -> None:
    body = api.drain(pattern)
    assert body["matched"] == [f"{APP}/{EU_ID}"]
    assert api.answer() == [US]
    assert api.answer(ecs=None) == sorted([US, AP])
    assert api.endpoints()[EU_ID]["drained"]["pattern"] == pattern
    event = find_event(api.events(), kind="drain", target=f"endpoint:{pattern}")
    assert event is not None and event["new"] == "drained", api.events()
    api.undrain(pattern)
    assert api.answer() == [EU]
    assert api.answer(ecs=None) == ALL_THREE
    event = find_event(api.events(), kind="drain", target=f"endpoint:{pattern}")
    assert event is not None and event["new"] == "serving", api.events()


def test_site_pattern_is_not_an_endpoint_pattern(api: Api) -> None:
    # kind endpoint does not look at site names; a pattern matching nothing changes nothing
    assert api.drain("eu-west")["matched"] == []
    assert api.answer() == [EU]
    assert api.drain("192.0.2.20", kind="site")["matched"] == []
    assert api.answer() == [EU]


def test_drain_with_expiry_lifts_by_itself(api: Api) -> None:
    body = api.drain("eu-*", kind="site", expires_in=1)
    drain = body["drain"]
    assert drain["expires"] == pytest.approx(drain["created"] + 1)
    assert api.answer() == [US]
    wait_until(api.answer, lambda a: a == [EU], "the drain lifted by itself")
    assert api.drains() == []
    assert api.endpoints()[EU_ID]["drained"] is None
    event = wait_until(lambda: find_event(api.events(), kind="drain", target="site:eu-*", old="drained"),
                       lambda e: e is not None, "an event for the expired drain")
    assert event is not None
    assert event["reason"] == "drain expired", event
    # it is gone, so deleting it now is a 404
    assert api.request("DELETE", "/api/v1/drains?kind=site&pattern=eu-%2A").status == 404


def assert_nodata(reply: dns.message.Message) -> None:
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert reply.answer == [], reply.answer
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA], reply.authority


@pytest.mark.parametrize(("pattern", "kind"), [("*", "endpoint"), ("*", "site")])
def test_drain_everything_answers_nodata_not_the_fallback(api: Api, pattern: str, kind: str) -> None:
    """Fallback 'all' is for endpoints that are down, not for endpoints an operator drained."""
    body = api.drain(pattern, kind=kind)
    assert sorted(body["matched"]) == sorted(f"{APP}/{i}" for i in (US_ID, EU_ID, AP_ID))
    for ecs in (GB_ECS, None):
        assert_nodata(api.query("A", ecs))
        assert_nodata(api.query("AAAA", ecs))
    assert all(ep["usable"] is False and ep["drained"] is not None for ep in api.endpoints().values())
    explained = api.ok("GET", "/api/v1/explain?" + urlencode({"name": APP, "client": "1.2.3.4", "ecs": GB_ECS}))
    assert explained["rcode"] == "NOERROR" and explained["answer"] == []
    assert any("fallback 'all' with 0 endpoint(s)" in step for step in explained["steps"]), explained["steps"]
    # static data of the zone is not affected
    static = api.query("A", None, name="static.gslb.example.com")
    assert [rd.address for rrset in static.answer for rd in rrset] == ["192.0.2.80"]
    api.undrain(pattern, kind=kind)
    assert api.answer(ecs=None) == ALL_THREE
    assert api.answer() == [EU]


def test_explain_follows_drains(api: Api) -> None:
    api.drain("eu-*", kind="site")
    body = api.ok("GET", "/api/v1/explain?" + urlencode({"name": APP, "client": "1.2.3.4", "ecs": GB_ECS}))
    assert [rr.split()[-1] for rr in body["answer"]] == [US]


# --------------------------------------------------------------------------- registrations


def test_registration_joins_answers_heartbeats_and_deregisters(api: Api) -> None:
    body = api.register("pod-7", {"site": "eu-west", "ipv4": "192.0.2.21", "ttl": 30})
    assert body["new"] is True
    reg = body["registration"]
    assert (reg["service"], reg["id"], reg["site"], reg["ipv4"], reg["ipv6"], reg["weight"]) == (
        APP, "pod-7", "eu-west", "192.0.2.21", None, 1)
    assert reg["expires"] == pytest.approx(reg["registered"] + 30)
    # in the answer for a client near its site, right away; not for a client near another site
    assert api.answer() == [EU, "192.0.2.21"]
    assert "192.0.2.21" in api.answer(ecs=None)
    assert api.answer(ecs="216.160.83.56/32") == [US]  # Milton, WA: us-east
    assert api.answer("AAAA") == [EU6]  # it has no IPv6 address

    eps = api.endpoints()
    assert list(eps) == [US_ID, EU_ID, AP_ID, "pod-7"]
    assert eps["pod-7"]["registered"] is True and eps["pod-7"]["usable"] is True
    assert eps["pod-7"]["enabled"] is True and eps["pod-7"]["site"] == "eu-west"
    assert eps["pod-7"]["ipv4"] == "192.0.2.21" and eps["pod-7"]["drained"] is None
    event = find_event(api.events(), kind="registration", target=f"{APP}/pod-7")
    assert event is not None and (event["old"], event["new"]) == ("absent", "registered"), api.events()

    # heartbeat: same endpoint again
    again = api.register("pod-7", {"site": "eu-west", "ipv4": "192.0.2.21", "ttl": 60}, status=200)
    assert again["new"] is False
    assert again["registration"]["expires"] > reg["expires"]
    assert api.answer() == [EU, "192.0.2.21"]
    assert len([e for e in api.events() if e["target"] == f"{APP}/pod-7"]) == 1

    assert api.ok("DELETE", f"{REG_PATH}/pod-7") == {"removed": f"{APP}/pod-7"}
    assert api.answer() == [EU]
    assert "pod-7" not in api.endpoints()
    event = find_event(api.events(), kind="registration", target=f"{APP}/pod-7")
    assert event is not None and (event["old"], event["new"]) == ("registered", "absent"), api.events()
    assert api.request("DELETE", f"{REG_PATH}/pod-7").status == 404


def test_heartbeat_with_a_new_address_updates_answers(api: Api) -> None:
    api.register("pod-7", {"site": "eu-west", "ipv4": "192.0.2.21"})
    assert api.answer() == [EU, "192.0.2.21"]
    assert api.register("pod-7", {"site": "eu-west", "ipv4": "192.0.2.22"}, status=200)["new"] is False
    assert api.answer() == [EU, "192.0.2.22"]
    assert api.register("pod-7", {"site": "us-east", "ipv4": "192.0.2.22"}, status=200)["new"] is False
    assert api.answer() == [EU]
    assert api.answer(ecs="216.160.83.56/32") == [US, "192.0.2.22"]
    assert api.endpoints()["pod-7"]["site"] == "us-east"


def test_ipv6_only_registration(api: Api) -> None:
    api.register("pod-6", {"site": "eu-west", "ipv6": "2001:db8:20::21"})
    assert api.answer("AAAA") == [EU6, "2001:db8:20::21"]
    assert api.answer("A") == [EU]


def test_registration_name_is_case_and_dot_insensitive(api: Api) -> None:
    reply = api.request("PUT", "/api/v1/services/APP.Gslb.Example.COM./endpoints/pod-7",
                        {"site": "eu-west", "ipv4": "192.0.2.21"})
    assert reply.status == 201, reply
    assert reply.body["registration"]["service"] == APP
    assert api.answer() == [EU, "192.0.2.21"]
    assert api.ok("DELETE", "/api/v1/services/app.gslb.example.com./endpoints/pod-7") == {
        "removed": f"{APP}/pod-7"}
    assert api.answer() == [EU]


def test_registration_expires_without_heartbeat(api: Api) -> None:
    body = api.register("pod-7", {"site": "eu-west", "ipv4": "192.0.2.21", "ttl": 1})
    assert body["registration"]["expires"] == pytest.approx(body["registration"]["registered"] + 1)
    wait_until(api.answer, lambda a: a == [EU], "the registration expired from DNS answers")
    assert "pod-7" not in api.endpoints()
    event = wait_until(lambda: find_event(api.events(), kind="registration", target=f"{APP}/pod-7",
                                          new="expired"),
                       lambda e: e is not None, "an 'expired' event")
    assert event is not None
    assert event["old"] == "registered"
    assert api.request("DELETE", f"{REG_PATH}/pod-7").status == 404
    # it can register again afterwards, as new
    assert api.register("pod-7", {"site": "eu-west", "ipv4": "192.0.2.21"})["new"] is True
    assert api.answer() == [EU, "192.0.2.21"]


def test_drain_of_a_registered_endpoint_in_dns(api: Api) -> None:
    api.register("pod-7", {"site": "eu-west", "ipv4": "192.0.2.21"})
    api.drain(f"{APP}/pod-7")
    assert api.answer() == [EU]
    assert api.answer(ecs=None) == ALL_THREE
    api.undrain(f"{APP}/pod-7")
    assert api.answer() == [EU, "192.0.2.21"]
    # the bare id works as a pattern too
    api.drain("pod-*")
    assert api.answer() == [EU]


def test_drained_registered_endpoint_stays_listed(api: Api) -> None:
    """/api/v1/services shows drained endpoints with their drain; registered ones too."""
    api.register("pod-7", {"site": "eu-west", "ipv4": "192.0.2.21"})
    drain = api.drain(f"{APP}/pod-7")["drain"]
    eps = api.endpoints()
    assert list(eps) == [US_ID, EU_ID, AP_ID, "pod-7"], "a drained registered endpoint must still be listed"
    assert eps["pod-7"]["registered"] is True
    assert eps["pod-7"]["usable"] is False
    assert eps["pod-7"]["drained"] == drain
    api.undrain(f"{APP}/pod-7")
    assert api.endpoints()["pod-7"]["usable"] is True
    assert api.endpoints()["pod-7"]["drained"] is None


@pytest.mark.parametrize(("pattern", "kind", "expected"), [
    (f"{APP}/pod-7", "endpoint", [f"{APP}/pod-7"]),
    ("pod-*", "endpoint", [f"{APP}/pod-7"]),
    ("eu-west", "site", [f"{APP}/{EU_ID}", f"{APP}/pod-7"]),
], ids=["endpoint-full", "endpoint-bare", "site"])
def test_drain_response_lists_matched_registered_endpoints(api: Api, pattern: str, kind: str,
                                                            expected: list[str]) -> None:
    api.register("pod-7", {"site": "eu-west", "ipv4": "192.0.2.21"})
    body = api.drain(pattern, kind=kind)
    assert sorted(body["matched"]) == sorted(expected)
    assert api.answer() == ([US] if kind == "site" else [EU])


# --------------------------------------------------------------------------- reload


def test_reload_with_an_edited_config(api: Api) -> None:
    before = api.ok("GET", "/readyz")
    assert api.answer() == [EU]

    def edit(data: dict[str, Any]) -> None:
        app_service(data)["endpoints"][1]["ipv4"] = "192.0.2.120"
        app_service(data)["ttl"] = 45

    write_config(api.config, edit=edit)
    body = api.ok("POST", "/api/v1/reload")
    assert body["reloaded"] is True
    assert body["generation"] > before["generation"]
    assert api.answer() == ["192.0.2.120"]
    assert api.query().answer[0].ttl == 45
    after = api.ok("GET", "/readyz")
    assert after["reloads"] == 1
    assert after["generation"] == body["generation"]
    assert after["serials"]["gslb.example.com"] > before["serials"]["gslb.example.com"]
    eps = api.endpoints()
    assert list(eps) == [US_ID, "eu-west/192.0.2.120", AP_ID]
    assert api.services()[0]["ttl"] == 45


def test_drains_and_registrations_survive_a_reload(api: Api) -> None:
    api.drain("us-*", kind="site")
    api.register("pod-7", {"site": "eu-west", "ipv4": "192.0.2.21"})
    assert api.answer(ecs=None) == sorted([EU, AP, "192.0.2.21"])
    api.ok("POST", "/api/v1/reload")
    assert api.answer(ecs=None) == sorted([EU, AP, "192.0.2.21"])
    assert [d["pattern"] for d in api.drains()] == ["us-*"]
    assert api.endpoints()["pod-7"]["registered"] is True


BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "negative-ttl": (lambda d: app_service(d).__setitem__("ttl", -5),
                     "services[app.gslb.example.com].ttl"),
    "unknown-site": (lambda d: app_service(d)["endpoints"][1].__setitem__("site", "mars"),
                     "services[app.gslb.example.com].endpoints[1].site"),
    "bad-address": (lambda d: app_service(d)["endpoints"][1].__setitem__("ipv4", "192.0.2.300"),
                    "services[app.gslb.example.com].endpoints[1].ipv4"),
    "unknown-key": (lambda d: app_service(d).__setitem__("colour", "blue"),
                    "services[app.gslb.example.com].colour"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_reload_with_a_broken_config_keeps_serving(api: Api, case: str) -> None:
    edit, field = BROKEN[case]

    def break_it(data: dict[str, Any]) -> None:
        edit(data)
        app_service(data)["endpoints"][0]["ipv4"] = "192.0.2.110"  # a valid change that must not apply

    before = api.ok("GET", "/readyz")
    write_config(api.config, edit=break_it)
    reply = api.request("POST", "/api/v1/reload")
    assert reply.status == 422, reply
    assert "previous config" in reply.body["error"], reply
    errors = reply.body["errors"]
    assert isinstance(errors, list) and errors, reply
    assert any(e.startswith(field + ":") for e in errors), errors
    assert api.answer() == [EU]
    assert api.answer(ecs=None) == ALL_THREE
    after = api.ok("GET", "/readyz")
    assert after["reloads"] == 0 and after["generation"] == before["generation"]
    assert after["serials"] == before["serials"]


def test_reload_with_invalid_yaml_or_missing_file(api: Api) -> None:
    api.config.write_text("zones: [\n  - {unclosed\n")
    reply = api.request("POST", "/api/v1/reload")
    assert reply.status == 422, reply
    assert any("YAML" in e for e in reply.body["errors"]), reply
    api.config.unlink()
    reply = api.request("POST", "/api/v1/reload")
    assert reply.status == 422, reply
    assert any("cannot read" in e for e in reply.body["errors"]), reply
    assert api.answer() == [EU]
    # a good file again reloads fine
    write_config(api.config)
    assert api.ok("POST", "/api/v1/reload")["reloaded"] is True
    assert api.answer() == [EU]
