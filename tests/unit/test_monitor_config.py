"""Monitor settings in the site config: every mistake is a ``ConfigError`` naming the field.

Each case adds a ``monitor:`` line (or edits an endpoint) in ``config/example.yaml`` and
loads it through ``gslb.config.load_config_text``, as ``gslb check`` and ``gslb serve`` do.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gslb.config import LoadedConfig, load_config_text
from gslb.errors import ConfigError, FieldError
from healthmon.dns import DnsConfig
from healthmon.http import HttpConfig
from tests.support.servers import EXAMPLE

BASE = EXAMPLE.read_text()
SVC = "app.gslb.example.com"
S = f"services[{SVC}]"
M = f"{S}.monitor"
POLICY = "    policy: {type: geo}\n"
EP1 = '{site: eu-west, ipv4: 192.0.2.20, ipv6: "2001:db8:20::20"}'


def with_monitor(monitor: str, text: str = BASE) -> str:
    assert text.count(POLICY) == 1, "edit anchor must occur exactly once in the example"
    return text.replace(POLICY, f"{POLICY}    monitor: {monitor}\n")


def line_of(text: str, needle: str) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"test bug: {needle!r} on {len(hits)} lines"
    return hits[0]


def load(text: str) -> LoadedConfig:
    return load_config_text(text, "test.yaml", base_dir=EXAMPLE.parent)


def errors_of(text: str) -> list[FieldError]:
    try:
        load(text)
    except ConfigError as exc:
        assert exc.errors, "ConfigError without errors"
        return exc.errors
    raise AssertionError("the config was accepted")


def show(errors: list[FieldError]) -> str:
    return "\n".join(str(e) for e in errors)


@dataclass(frozen=True)
class Case:
    id: str
    monitor: str
    path: str | tuple[str, ...]
    message: str


CASES = [
    Case("unknown-type", "{type: icmp}", (f"{M}.type", M), "icmp"),
    Case("type-missing", "{port: 80}", (f"{M}.type", M), "type"),
    Case("not-a-mapping", "http", M, ""),
    Case("status-600", "{type: http, expect_status: ['600']}", f"{M}.expect_status", "'600'"),
    Case("status-600-int", "{type: http, expect_status: [200, 600]}", f"{M}.expect_status", "600"),
    Case("status-99", "{type: http, expect_status: ['99']}", f"{M}.expect_status", "'99'"),
    Case("status-abc", "{type: http, expect_status: [abc]}", f"{M}.expect_status", "'abc'"),
    Case("status-range-reversed", "{type: http, expect_status: ['300-200']}", f"{M}.expect_status", "'300-200'"),
    Case("status-range-open-low", "{type: http, expect_status: ['-200']}", f"{M}.expect_status", "'-200'"),
    Case("status-range-open-high", "{type: http, expect_status: ['200-']}", f"{M}.expect_status", "'200-'"),
    Case("status-empty", "{type: http, expect_status: []}", f"{M}.expect_status", "at least 1"),
    Case("status-https", "{type: https, expect_status: ['2xx']}", f"{M}.expect_status", "'2xx'"),
    Case("body-regex-bad", "{type: http, body_regex: '(unclosed'}", f"{M}.body_regex", "invalid regex"),
    Case("window-below-fall", "{type: http, fall: 3, window: 2}", (M, f"{M}.window"),
         "window (2) must be at least fall (3)"),
    Case("window-below-default-fall", "{type: tcp, port: 5432, window: 1}", (M, f"{M}.window"),
         "must be at least fall (3)"),
    Case("unknown-key-http", "{type: http, colour: red}", f"{M}.colour", "unknown key"),
    Case("unknown-key-tcp", "{type: tcp, port: 6379, send: PING, bogus: 1}", f"{M}.bogus", "unknown key"),
    Case("unknown-key-tls", "{type: tls, expect_status: [200]}", f"{M}.expect_status", "unknown key"),
    Case("unknown-key-dns", "{type: dns, query: www.example.com, body: ok}", f"{M}.body", "unknown key"),
    Case("path-not-absolute", "{type: http, path: healthz}", f"{M}.path", "pattern"),
    Case("method-unknown", "{type: http, method: DELETE}", f"{M}.method", "GET"),
    Case("interval-zero", "{type: http, interval: 0}", f"{M}.interval", "greater than or equal to 0.05"),
    Case("timeout-zero", "{type: tcp, timeout: 0}", f"{M}.timeout", "greater than 0"),
    Case("rise-zero", "{type: tcp, rise: 0}", f"{M}.rise", "greater than or equal to 1"),
    Case("fall-zero", "{type: tcp, fall: 0}", f"{M}.fall", "greater than or equal to 1"),
    Case("jitter-above-one", "{type: tcp, jitter: 2}", f"{M}.jitter", "less than or equal to 1"),
    Case("initial-unknown", "{type: http, initial: maybe}", f"{M}.initial", "'up' or 'down'"),
    Case("port-zero", "{type: http, port: 0}", f"{M}.port", "greater than or equal to 1"),
    Case("port-high", "{type: tcp, port: 70000}", f"{M}.port", "less than or equal to 65535"),
    Case("tls-warn-negative", "{type: tls, warn_days: -1}", f"{M}.warn_days", "greater than or equal to 0"),
    Case("dns-query-missing", "{type: dns}", f"{M}.query", "required"),
    Case("dns-qtype-unknown", "{type: dns, query: www.example.com, qtype: BOGUS}", f"{M}.qtype", "BOGUS"),
    Case("dns-rcode-unknown", "{type: dns, query: www.example.com, expect_rcode: NOPE}", f"{M}.expect_rcode",
         "NOPE"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_monitor(case: Case) -> None:
    text = with_monitor(case.monitor)
    errors = errors_of(text)
    paths = (case.path,) if isinstance(case.path, str) else case.path
    matching = [e for e in errors if e.dotted in paths and case.message in e.message]
    assert matching, f"no error at {paths} with {case.message!r}; got:\n{show(errors)}"
    assert matching[0].line == line_of(text, "    monitor: "), show(errors)
    assert len(errors) == 1, f"expected one error, got:\n{show(errors)}"


def test_status_of_wrong_type_names_the_list_item_without_pydantic_internals() -> None:
    errors = errors_of(with_monitor("{type: http, expect_status: [200.5]}"))
    for err in errors:
        assert err.dotted in (f"{M}.expect_status", f"{M}.expect_status[0]"), show(errors)


def test_block_style_monitor_error_points_at_the_bad_line() -> None:
    block = ("\n      type: http\n      port: 8080\n      expect_status: [200, '700']\n"
             "      body_regex: '[unclosed'\n      rise: 2")
    text = with_monitor(block)
    errors = errors_of(text)
    got = sorted((e.dotted, e.line) for e in errors)
    assert got == sorted([
        (f"{M}.expect_status", line_of(text, "expect_status: [200, '700']")),
        (f"{M}.body_regex", line_of(text, "body_regex:")),
    ]), show(errors)


def test_monitored_cname_endpoint_needs_probe_address() -> None:
    text = with_monitor("{type: tcp, port: 443}", BASE.replace(EP1, "{site: eu-west, cname: lb.example.net}"))
    errors = errors_of(text)
    assert [(e.dotted, e.line) for e in errors] == [
        (f"{S}.endpoints[1].probe_address", line_of(text, "cname: lb.example.net")),
    ], show(errors)
    assert "probe_address" in errors[0].message


def test_monitored_cname_endpoint_with_probe_address_is_checked_there() -> None:
    text = with_monitor("{type: tcp, port: 443}",
                        BASE.replace(EP1, "{site: eu-west, cname: lb.example.net, probe_address: 192.0.2.99}"))
    spec = load(text).compiled.zones["gslb.example.com"].services[SVC]
    check = spec.checks["eu-west/lb.example.net"]
    assert check.address == "192.0.2.99"
    assert check.name == "tcp://192.0.2.99:443"


def test_unmonitored_cname_endpoint_needs_no_probe_address() -> None:
    load(BASE.replace(EP1, "{site: eu-west, cname: lb.example.net}"))


def test_probe_address_replaces_the_answered_address() -> None:
    text = with_monitor("{type: http, port: 8080}",
                        BASE.replace(EP1, '{site: eu-west, ipv4: 192.0.2.20, probe_address: "2001:db8::99"}'))
    spec = load(text).compiled.zones["gslb.example.com"].services[SVC]
    assert spec.checks["eu-west/192.0.2.20"].address == "2001:db8::99"
    assert spec.checks["us-east/192.0.2.10"].address == "192.0.2.10"


def test_probe_address_must_be_an_ip() -> None:
    text = with_monitor("{type: tcp, port: 443}",
                        BASE.replace(EP1, "{site: eu-west, cname: lb.example.net, probe_address: lb.example.net}"))
    errors = errors_of(text)
    assert [e.dotted for e in errors] == [f"{S}.endpoints[1].probe_address"], show(errors)


# --------------------------------------------------------------------------- valid settings


def test_valid_http_monitor_with_every_option() -> None:
    text = with_monitor("{type: https, port: 8443, method: HEAD, path: '/healthz?full=1', host: app.example.com, "
                        "expect_status: ['200-299', 301, '404'], body_regex: 'status.+up', verify: false, "
                        "interval: 0.5, timeout: 0.25, jitter: 0, rise: 1, fall: 2, window: 4, initial: down}")
    svc = load(text).config.services[SVC]
    mon = svc.monitor
    assert isinstance(mon, HttpConfig)
    assert (mon.type, mon.port, mon.method, mon.path, mon.host) == (
        "https", 8443, "HEAD", "/healthz?full=1", "app.example.com")
    assert mon.status_ranges == [(200, 299), (301, 301), (404, 404)]
    assert (mon.interval, mon.timeout, mon.jitter, mon.rise, mon.fall, mon.window, mon.initial) == (
        0.5, 0.25, 0, 1, 2, 4, "down")


def test_window_equal_to_fall_is_accepted() -> None:
    load(with_monitor("{type: tcp, port: 22, fall: 3, window: 3}"))


def test_monitor_defaults() -> None:
    mon = load(with_monitor("{type: http}")).config.services[SVC].monitor
    assert (mon.port, mon.interval, mon.timeout, mon.rise, mon.fall, mon.window, mon.initial) == (
        None, 5.0, 2.0, 2, 3, None, "up")
    assert mon.default_port() == 80
    assert load(with_monitor("{type: https}")).config.services[SVC].monitor.default_port() == 443
    assert load(with_monitor("{type: tls}")).config.services[SVC].monitor.default_port() == 443
    assert load(with_monitor("{type: dns, query: x.example}")).config.services[SVC].monitor.default_port() == 53


def test_dns_qtype_and_rcode_are_case_insensitive() -> None:
    mon = load(with_monitor("{type: dns, query: www.example.com, qtype: aaaa, expect_rcode: nxdomain}")
               ).config.services[SVC].monitor
    assert isinstance(mon, DnsConfig)
    assert (mon.qtype, mon.expect_rcode) == ("AAAA", "NXDOMAIN")


def test_every_endpoint_gets_a_check_and_names_sharing_a_monitor_share_it() -> None:
    text = with_monitor("{type: tcp, port: 443}")
    text = text.rstrip("\n") + (
        "\n  other.gslb.example.com:\n    monitor: {type: tcp, port: 443}\n"
        "    endpoints:\n      - {site: us-east, ipv4: 192.0.2.10}\n")
    services = load(text).compiled.zones["gslb.example.com"].services
    app, other = services[SVC], services["other.gslb.example.com"]
    assert sorted(app.checks) == ["ap-northeast/192.0.2.30", "eu-west/192.0.2.20", "us-east/192.0.2.10"]
    assert app.checks["us-east/192.0.2.10"].key == other.checks["us-east/192.0.2.10"].key
    assert app.checks["us-east/192.0.2.10"].monitor is other.checks["us-east/192.0.2.10"].monitor
