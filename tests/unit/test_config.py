"""Config validation, table-driven in the style of CoreDNS ``setup_test.go``.

Every case starts from ``config/example.yaml`` and applies one small edit. An error case
names the exact field path that must be reported, a fragment of the message, and the YAML
line: the line holding the marker comment ``#@`` in the edited text (or an explicit line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import yaml
from dnslib import QTYPE

from gslb.config import LoadedConfig, load_config, load_config_text
from gslb.errors import ConfigError, FieldError, format_path
from tests.support.servers import EXAMPLE

BASE = EXAMPLE.read_text()
APEX = "gslb.example.com"
SVC = "app.gslb.example.com"
Z = f"zones[{APEX}]"
S = f"services[{SVC}]"
MARK = "#@"
# Records the example already has: records we append get indexes N, N+1, ...
N = len(yaml.safe_load(BASE)["zones"][APEX]["records"])

# the policy line of app.gslb.example.com, whatever policy the example uses
POLICY_LINE = re.search(r"(?m)^    policy: .*\n", BASE).group(0)  # type: ignore[union-attr]

# pydantic internals that must never leak into a path shown to a user
INTERNAL = re.compile(r"lax-or-strict|function-|json-or-python|is-instance|\[key\]|tagged-union")


# --------------------------------------------------------------------------- edits


def replace(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, f"edit anchor {old!r} must occur exactly once in the example"
    return text.replace(old, new)


def _last_record_line(text: str) -> str:
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip() == "    records:")
    end = start + 1
    while end < len(lines) and lines[end].startswith("      - "):
        end += 1
    return lines[end - 1]


def add_records(*items: str, text: str = BASE) -> str:
    """Append flow-style records (``{name: x, type: A, ...}``) to the zone's list."""
    last = _last_record_line(text)
    return replace(last, last + "".join(f"      - {item}\n" for item in items), text)


def add_service(block: str, text: str = BASE) -> str:
    """Append a service block (indented two spaces, under ``services:``) at the end."""
    assert text.rstrip("\n").splitlines()[-1].startswith("      - "), "services must be last in the example"
    return text.rstrip("\n") + "\n" + block


def marked_line(text: str) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if MARK in line]
    assert len(hits) == 1, f"test bug: {len(hits)} {MARK} markers"
    return hits[0]


def load_text(text: str) -> LoadedConfig:
    """Load edited example text; relative paths in it (the GeoIP database) resolve as for the example."""
    return load_config_text(text, "test.yaml", base_dir=EXAMPLE.parent)


def load_errors(text: str) -> list[FieldError]:
    with pytest.raises(ConfigError) as info:
        load_text(text)
    assert info.value.errors, "ConfigError without errors"
    return info.value.errors


def show(errors: list[FieldError]) -> str:
    return "\n".join(str(e) for e in errors)


# endpoint edits on the second endpoint of app.gslb.example.com (eu-west)
EP1 = '{site: eu-west, ipv4: 192.0.2.20, ipv6: "2001:db8:20::20"}'
EP1_PATH = f"{S}.endpoints[1]"
SVC_KEY = f"  {SVC}:\n"
SVC_KEY_MARKED = f"  {SVC}:  {MARK}\n"
EU_SITE = "  eu-west:      {lat: 50.1, lon: 8.7, country: DE, continent: EU"


def ep1(new: str) -> str:
    return replace(EP1, new + f"  {MARK}")


def site(old: str, new: str) -> str:
    line = next(line for line in BASE.splitlines(keepends=True) if line.startswith(EU_SITE))
    assert old in line
    return replace(line, line.replace(old, new).rstrip("\n") + f"  {MARK}\n")


def zone_key(old: str, new: str) -> str:
    return replace(f"    {old}\n", f"    {new}  {MARK}\n")


# --------------------------------------------------------------------------- error table


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    path: str | tuple[str, ...]  # the exact dotted path (or accepted alternatives)
    message: str  # fragment of the message
    line: int | None = -1  # -1: the line of the #@ marker; None: no line applies
    count: int = 1  # how many errors the config must produce


ERROR_CASES = [
    # ---- bad IP addresses
    Case("endpoint-ipv4-bad", ep1('{site: eu-west, ipv4: 192.0.2.999, ipv6: "2001:db8:20::20"}'),
         f"{EP1_PATH}.ipv4", "IPv4"),
    Case("endpoint-ipv6-bad", ep1('{site: eu-west, ipv4: 192.0.2.20, ipv6: "2001:db8::zz"}'),
         f"{EP1_PATH}.ipv6", "IPv6"),
    Case("record-a-bad", add_records(f"{{name: bad, type: A, address: 192.0.2.999}}  {MARK}"),
         f"{Z}.records[{N}].address", "IPv4"),
    Case("record-aaaa-with-ipv4", add_records(f"{{name: bad, type: AAAA, address: 192.0.2.1}}  {MARK}"),
         f"{Z}.records[{N}].address", "IPv6"),
    Case("nameserver-glue-bad",
         replace("        addresses: [192.0.2.53]\n", f"        addresses: [192.0.2.999]  {MARK}\n"),
         f"{Z}.nameservers[0].addresses[0]", "address"),
    Case("allow-transfer-bad",
         replace('    allow_transfer: [127.0.0.0/8, "::1/128"]\n',
                 f'    allow_transfer: [127.0.0.0/99, "::1/128"]  {MARK}\n'),
         f"{Z}.allow_transfer[0]", "network"),
    # ---- unknown keys
    Case("unknown-key-top", BASE.rstrip("\n") + f"\nbogus: 1  {MARK}\n", "bogus", "unknown key"),
    Case("unknown-key-zone", zone_key("negative_ttl: 60", "negative_ttl: 60\n    bogus: 1"),
         f"{Z}.bogus", "unknown key"),
    Case("unknown-key-endpoint", ep1('{site: eu-west, colour: red, ipv4: 192.0.2.20}'),
         f"{EP1_PATH}.colour", "unknown key"),
    Case("unknown-key-record", add_records(f"{{name: x, type: A, address: 192.0.2.1, colour: red}}  {MARK}"),
         f"{Z}.records[{N}].colour", "unknown key"),
    Case("unknown-key-site", site("continent: EU", "continent: EU, colour: red"),
         "sites.eu-west.colour", "unknown key"),
    Case("unknown-key-policy", replace(POLICY_LINE, f"    policy: {{type: all, colour: red}}  {MARK}\n"),
         f"{S}.policy.colour", "unknown key"),
    Case("unknown-key-server-dns",
         replace('    listen: ["127.0.0.1:5353"]', f'    listen: ["127.0.0.1:5353"]\n    colour: red  {MARK}'),
         "server.dns.colour", "unknown key"),
    Case("unknown-key-soa",
         zone_key("  rname: hostmaster@example.com", "  rname: hostmaster@example.com\n      colour: red"),
         f"{Z}.soa.colour", "unknown key"),
    # ---- references and names
    Case("endpoint-unknown-site", ep1('{site: mars, ipv4: 192.0.2.20}'),
         f"{EP1_PATH}.site", "unknown site 'mars'"),
    Case("record-type-unknown", add_records(f"{{name: x, type: PTR, target: y.example.net}}  {MARK}"),
         f"{Z}.records[{N}]", "PTR"),
    Case("record-name-empty-label", add_records(f"{{name: 'bad..name', type: A, address: 192.0.2.1}}  {MARK}"),
         f"{Z}.records[{N}].name", "empty label"),
    Case("record-name-empty", add_records(f"{{name: '', type: A, address: 192.0.2.1}}  {MARK}"),
         f"{Z}.records[{N}].name", ""),
    Case("record-name-too-long-once-qualified",
         add_records("{name: " + ".".join(["a" * 60] * 4) + f", type: A, address: 192.0.2.1}}  {MARK}"),
         f"{Z}.records[{N}].name", "253"),
    Case("service-name-invalid", replace(SVC_KEY, f"  'app!.gslb.example.com':  {MARK}\n"),
         "services[app!.gslb.example.com]", "invalid label"),
    Case("cname-at-apex", add_records(f"{{name: '@', type: CNAME, target: lb.example.net}}  {MARK}"),
         f"{Z}.records[{N}].type", "CNAME cannot be at the zone apex"),
    Case("ns-record-at-apex", add_records(f"{{name: '@', type: NS, target: ns3.example.net}}  {MARK}"),
         f"{Z}.records[{N}].type", "nameservers"),
    # ---- duplicates
    Case("duplicate-record",
         add_records("{name: dup, type: A, address: 192.0.2.1}", f"{{name: dup, type: A, address: 192.0.2.1}}  {MARK}"),
         f"{Z}.records[{N + 1}]", f"duplicate A record at dup.{APEX} (also at {Z}.records[{N}])"),
    Case("duplicate-record-case-and-dot",
         add_records("{name: dup, type: A, address: 192.0.2.1}",
                     f"{{name: DUP.gslb.example.com., type: A, address: 192.0.2.1}}  {MARK}"),
         f"{Z}.records[{N + 1}]", f"duplicate A record at dup.{APEX}"),
    Case("service-also-static-a",
         add_records("{name: app, type: A, address: 192.0.2.99}", text=replace(SVC_KEY, SVC_KEY_MARKED)),
         S, "also has static A records"),
    Case("service-also-static-cname",
         add_records("{name: app, type: CNAME, target: lb.example.net}", text=replace(SVC_KEY, SVC_KEY_MARKED)),
         S, "also has static CNAME records"),
    Case("endpoint-id-repeats", ep1('{site: us-east, ipv4: 192.0.2.10, ipv6: "2001:db8:10::10"}'),
         EP1_PATH, "repeats endpoints[0]"),
    # ---- zone membership
    Case("record-out-of-zone", add_records(f"{{name: foo.example.org., type: A, address: 192.0.2.1}}  {MARK}"),
         f"{Z}.records[{N}].name", f"foo.example.org is outside zone {APEX}"),
    Case("record-parent-of-zone", add_records(f"{{name: example.com., type: A, address: 192.0.2.1}}  {MARK}"),
         f"{Z}.records[{N}].name", "outside zone"),
    Case("service-out-of-zone",
         add_service(f"  app.example.org:  {MARK}\n    endpoints:\n      - {{site: us-east, ipv4: 192.0.2.11}}\n"),
         "services[app.example.org]", "not inside any zone"),
    # ---- CNAME rules
    Case("cname-and-other-data",
         add_records(f"{{name: alias, type: CNAME, target: lb.example.net}}  {MARK}",
                     "{name: alias, type: TXT, text: hello}"),
         f"{Z}.records[{N}]", f"CNAME at alias.{APEX} cannot coexist with other data (TXT)"),
    Case("two-cnames",
         add_records("{name: alias, type: CNAME, target: a.example.net}",
                     f"{{name: alias, type: CNAME, target: b.example.net}}  {MARK}"),
         f"{Z}.records[{N + 1}]", f"alias.{APEX} has more than one CNAME"),
    Case("apex-service-with-cname-endpoint",
         add_service(f"  {APEX}:\n    endpoints:  {MARK}\n      - {{site: us-east, cname: lb.example.net}}\n"),
         f"services[{APEX}].endpoints", "cannot answer CNAME"),
    # ---- RRsets
    Case("rrset-ttl-mismatch",
         add_records("{name: multi, type: A, address: 192.0.2.1, ttl: 60}",
                     f"{{name: multi, type: A, address: 192.0.2.2, ttl: 120}}  {MARK}"),
         f"{Z}.records[{N + 1}].ttl", "TTL 120 differs from 60"),
    Case("rrset-ttl-mismatch-with-default",
         add_records("{name: multi, type: A, address: 192.0.2.1}",
                     f"{{name: multi, type: A, address: 192.0.2.2, ttl: 60}}  {MARK}"),
         f"{Z}.records[{N + 1}].ttl", "TTL 60 differs from 300"),
    # ---- nameservers and delegations
    Case("in-zone-nameserver-without-glue",
         replace("      - name: ns2.gslb.example.com\n        addresses: [198.51.100.53]\n",
                 f"      - name: ns2.gslb.example.com  {MARK}\n"),
         f"{Z}.nameservers[1].addresses", "needs glue"),
    Case("out-of-zone-nameserver-with-glue",
         replace("      - name: ns2.gslb.example.com\n        addresses: [198.51.100.53]\n",
                 f"      - name: ns2.example.net\n        addresses: [198.51.100.53]  {MARK}\n"),
         f"{Z}.nameservers[1].addresses", "only for nameservers inside"),
    Case("below-delegation-not-glue",
         add_records("{name: sub, type: NS, target: ns.sub.gslb.example.com}",
                     "{name: ns.sub, type: A, address: 192.0.2.7}",
                     f"{{name: x.sub, type: TXT, text: hello}}  {MARK}"),
         f"{Z}.records[{N + 2}]", f"x.sub.{APEX} is below the delegation point sub.{APEX}"),
    Case("data-at-delegation-point",
         add_records("{name: sub, type: NS, target: ns.example.net}",
                     f"{{name: sub, type: A, address: 192.0.2.8}}  {MARK}"),
         f"{Z}.records[{N + 1}]", f"only NS records may sit at the delegation point sub.{APEX}"),
    Case("service-below-delegation",
         add_service(f"  x.sub.gslb.example.com:  {MARK}\n"
                     "    endpoints:\n      - {site: us-east, ipv4: 192.0.2.11}\n",
                     add_records("{name: sub, type: NS, target: ns.example.net}")),
         "services[x.sub.gslb.example.com]", f"at or below the delegation point sub.{APEX}"),
    # ---- numbers
    Case("zone-ttl-negative", zone_key("ttl: 300", "ttl: -5"), f"{Z}.ttl", "greater than or equal to 0"),
    Case("record-ttl-negative", add_records(f"{{name: x, type: A, address: 192.0.2.1, ttl: -1}}  {MARK}"),
         f"{Z}.records[{N}].ttl", "greater than or equal to 0"),
    Case("service-ttl-negative", replace("    ttl: 30\n", f"    ttl: -30  {MARK}\n"), f"{S}.ttl",
         "greater than or equal to 0"),
    Case("ttl-not-a-number", zone_key("ttl: 300", "ttl: soon"), f"{Z}.ttl", "integer"),
    Case("mx-preference-negative",
         add_records(f"{{name: mx, type: MX, preference: -1, exchange: mail.gslb.example.com}}  {MARK}"),
         f"{Z}.records[{N}].preference", "greater than or equal to 0"),
    # ---- listen addresses
    Case("listen-host-name", replace('["127.0.0.1:5353"]', f'["localhost:5353"]  {MARK}'),
         "server.dns.listen[0]", "not an IP address"),
    Case("listen-port-range", replace('["127.0.0.1:5353"]', f'["127.0.0.1:99999"]  {MARK}'),
         "server.dns.listen[0]", "port must be 0-65535"),
    Case("listen-no-port", replace('["127.0.0.1:5353"]', f'["127.0.0.1"]  {MARK}'),
         "server.dns.listen[0]", "HOST:PORT"),
    Case("listen-ipv6-unbracketed", replace('["127.0.0.1:5353"]', f'["[::1:5353"]  {MARK}'),
         "server.dns.listen[0]", "[IPv6]:PORT"),
    Case("http-listen-bad", replace('    listen: "127.0.0.1:8053"', f'    listen: "nohost"  {MARK}'),
         "server.http.listen", "HOST:PORT"),
    # ---- YAML and document shape
    Case("yaml-syntax", zone_key("ttl: 300", "ttl: 300: x"), "", "invalid YAML"),
    Case("yaml-tab", replace("    ttl: 300\n", f"\tttl: 300  {MARK}\n"), "", "invalid YAML"),
    Case("yaml-two-documents", BASE.rstrip("\n") + f"\n---  {MARK}\nfoo: 1\n", "", "invalid YAML"),
    Case("document-is-list", f"- a  {MARK}\n- b\n", "", "must be a YAML mapping"),
    Case("document-is-scalar", f"just text  {MARK}\n", "", "must be a YAML mapping"),
    Case("document-empty", "", "", "must be a YAML mapping", line=1),
    Case("zones-missing", "sites: {}\nservices: {}\n", "zones", "required", line=None),
    Case("service-endpoints-missing",
         replace("    endpoints:\n", "    answers: 2\n  other.gslb.example.com:\n    endpoints:\n",
                 replace(SVC_KEY, SVC_KEY_MARKED)),
         f"{S}.endpoints", "required"),
    # ---- endpoints
    Case("endpoint-ipv4-and-cname", ep1("{site: eu-west, ipv4: 192.0.2.20, cname: lb.example.net}"),
         EP1_PATH, "not both"),
    Case("endpoint-no-address", ep1("{site: eu-west}"), EP1_PATH, "not both"),
    Case("endpoint-weight-negative", ep1("{site: eu-west, ipv4: 192.0.2.20, weight: -1}"),
         f"{EP1_PATH}.weight", "greater than or equal to 0"),
    Case("endpoints-empty",
         replace("    endpoints:\n", f"    endpoints: []  {MARK}\n",
                 BASE[: BASE.index("      - {site: us-east")] + "\n"),
         f"{S}.endpoints", "at least 1"),
    # ---- sites
    Case("site-country", site("country: DE", "country: Germany"), "sites.eu-west.country", "pattern"),
    Case("site-country-lowercase", site("country: DE", "country: de"), "sites.eu-west.country", "pattern"),
    Case("site-continent", site("continent: EU", "continent: XX"), "sites.eu-west.continent", "'EU'"),
    Case("site-lat-high", site("lat: 50.1", "lat: 95"), "sites.eu-west.lat", "less than or equal to 90"),
    Case("site-lat-low", site("lat: 50.1", "lat: -90.5"), "sites.eu-west.lat", "greater than or equal to -90"),
    Case("site-lat-text", site("lat: 50.1", "lat: north"), "sites.eu-west.lat", "number"),
    Case("site-lon", site("lon: 8.7", "lon: 181"), "sites.eu-west.lon", "less than or equal to 180"),
    Case("site-name", site("  eu-west:", "  'eu west':"), "sites.eu west", "pattern"),
    # ---- policy
    Case("policy-unknown-type", replace(POLICY_LINE, f"    policy: {{type: nope}}  {MARK}\n"),
         (f"{S}.policy.type", f"{S}.policy"), "'all'"),
    Case("policy-not-mapping", replace(POLICY_LINE, f"    policy: all  {MARK}\n"),
         f"{S}.policy", ""),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.id for c in ERROR_CASES])
def test_invalid_config(case: Case) -> None:
    errors = load_errors(case.text)
    paths = (case.path,) if isinstance(case.path, str) else case.path
    line = marked_line(case.text) if case.line == -1 else case.line
    matching = [e for e in errors if e.dotted in paths and case.message in e.message]
    assert matching, f"no error at {paths} with {case.message!r}; got:\n{show(errors)}"
    assert matching[0].line == line, f"expected line {line}; got:\n{show(errors)}"
    where = f" (line {line})" if line is not None else ""
    assert str(matching[0]) == f"{matching[0].dotted or '<root>'}: {matching[0].message}{where}"
    for err in errors:
        assert not INTERNAL.search(err.dotted), f"pydantic internals in a path:\n{show(errors)}"
    assert len(errors) == case.count, f"expected {case.count} error(s), got:\n{show(errors)}"


# --------------------------------------------------------------------------- duplicates in YAML


def _line_of(text: str, needle: str, nth: int = 0) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth]


@pytest.mark.parametrize("second_key", [SVC, "APP.gslb.example.com.", "App.Gslb.Example.Com"])
def test_duplicate_service_key_reports_both_lines(second_key: str) -> None:
    text = add_service(f"  {second_key}:\n    endpoints:\n      - {{site: us-east, ipv4: 192.0.2.11}}\n")
    first = _line_of(text, f"  {SVC}:")
    second = len(text.splitlines()) - 2
    errors = load_errors(text)
    dups = [e for e in errors if "duplicate key" in e.message]
    assert len(dups) == 1, show(errors)
    assert dups[0].dotted == f"services[{second_key}]"
    assert f"first defined on line {first}" in dups[0].message
    assert dups[0].line == second
    assert len(errors) == 1, show(errors)


def test_duplicate_zone_setting() -> None:
    text = replace("    negative_ttl: 60\n", "    negative_ttl: 60\n    ttl: 5\n")
    errors = load_errors(text)
    assert [str(e) for e in errors] == [
        f"{Z}.ttl: duplicate key (first defined on line {_line_of(text, '    ttl: 300')}) "
        f"(line {_line_of(text, '    ttl: 5')})"
    ]


def test_duplicate_site_key() -> None:
    text = replace("  ap-northeast: {lat", "  eu-west:      {lat")
    errors = load_errors(text)
    first = _line_of(text, "  eu-west:")
    second = _line_of(text, "  eu-west:", 1)
    assert any(e.dotted == "sites.eu-west" and f"first defined on line {first}" in e.message
               and e.line == second for e in errors), show(errors)


# --------------------------------------------------------------------------- all errors at once


def test_three_schema_errors_are_all_reported() -> None:
    text = replace("    negative_ttl: 60\n", "    negative_ttl: 60\n    bogus: 1\n")
    text = replace("country: DE", "country: Germany", text)
    text = replace("ipv4: 192.0.2.20", "ipv4: 192.0.2.999", text)
    errors = load_errors(text)
    assert sorted((e.dotted, e.line) for e in errors) == sorted([
        (f"{Z}.bogus", _line_of(text, "    bogus: 1")),
        ("sites.eu-west.country", _line_of(text, "country: Germany")),
        (f"{EP1_PATH}.ipv4", _line_of(text, "192.0.2.999")),
    ]), show(errors)


def test_three_semantic_errors_are_all_reported() -> None:
    text = add_records("{name: foo.example.org., type: A, address: 192.0.2.1}",
                       "{name: alias, type: CNAME, target: a.example.net}",
                       "{name: alias, type: TXT, text: hello}")
    text = replace("{site: eu-west,", "{site: mars,", text)
    errors = load_errors(text)
    assert sorted((e.dotted, e.line) for e in errors) == sorted([
        (f"{Z}.records[{N}].name", _line_of(text, "foo.example.org.")),
        (f"{Z}.records[{N + 1}]", _line_of(text, "type: CNAME, target: a.example.net")),
        (f"{EP1_PATH}.site", _line_of(text, "site: mars")),
    ]), show(errors)


def test_duplicate_keys_are_reported_with_schema_errors() -> None:
    text = replace("    negative_ttl: 60\n", "    negative_ttl: 60\n    ttl: 5\n")
    text = replace("country: DE", "country: Germany", text)
    text = replace("ipv4: 192.0.2.20", "ipv4: 192.0.2.999", text)
    errors = load_errors(text)
    assert sorted(e.dotted for e in errors) == sorted([f"{Z}.ttl", "sites.eu-west.country", f"{EP1_PATH}.ipv4"])


def test_config_error_message_lists_every_error() -> None:
    text = replace("    negative_ttl: 60\n", "    negative_ttl: 60\n    bogus: 1\n")
    text = replace("country: DE", "country: Germany", text)
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "site.yaml", base_dir=EXAMPLE.parent)
    message = str(info.value)
    assert message.startswith("site.yaml: 2 error(s)")
    for err in info.value.errors:
        assert f"  {err}" in message.splitlines()


def test_unreadable_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.source == str(missing)
    assert "cannot read config" in info.value.errors[0].message


def test_format_path() -> None:
    assert format_path(("zones", APEX, "records", 2, "ttl")) == f"{Z}.records[2].ttl"
    assert format_path(("services", SVC, "endpoints", 0, "site")) == f"{S}.endpoints[0].site"
    assert format_path(("sites", "eu-west", "lat")) == "sites.eu-west.lat"
    assert format_path(()) == ""
    assert str(FieldError((), "bad", 3)) == "<root>: bad (line 3)"
    assert str(FieldError(("server", "dns"), "bad")) == "server.dns: bad"


# --------------------------------------------------------------------------- good configs


def load(text: str) -> LoadedConfig:
    try:
        return load_text(text)
    except ConfigError as exc:  # show every error, not just the exception type
        pytest.fail(f"config rejected:\n{exc}")


def nodes(loaded: LoadedConfig, apex: str = APEX):  # type: ignore[no-untyped-def]
    return loaded.compiled.zones[apex].nodes


def test_example_config_loads() -> None:
    loaded = load_config(EXAMPLE)
    zone = loaded.compiled.zones[APEX]
    assert set(loaded.compiled.zones) == {APEX}
    assert set(zone.services) == {SVC}
    assert set(loaded.config.sites) == {"us-east", "eu-west", "ap-northeast"}
    assert [ep.id for ep in zone.services[SVC].endpoints] == [
        "us-east/192.0.2.10", "eu-west/192.0.2.20", "ap-northeast/192.0.2.30"]
    apex = zone.nodes[APEX]
    for rtype in ("SOA", "NS", "TXT", "MX", "CAA"):
        assert getattr(QTYPE, rtype) in apex, rtype
    assert len(apex[QTYPE.NS].rrs) == 2
    assert str(zone.nodes[f"ns1.{APEX}"][QTYPE.A].rrs[0].rdata) == "192.0.2.53"
    assert str(zone.nodes[f"www.{APEX}"][QTYPE.CNAME].rrs[0].rdata) == f"{SVC}."
    assert {QTYPE.A, QTYPE.AAAA} <= set(zone.nodes[f"static.{APEX}"])
    # empty non-terminals and GSLB names are names of the zone
    assert {SVC, f"_tcp.app.{APEX}", f"_https._tcp.app.{APEX}"} <= zone.names


def test_owner_names_qualify() -> None:
    loaded = load(add_records(
        "{name: rel, type: A, address: 192.0.2.1}",
        "{name: deep.rel2, type: A, address: 192.0.2.2}",
        "{name: abs.gslb.example.com., type: A, address: 192.0.2.3}",
        "{name: Mixed.GSLB.Example.Com, type: A, address: 192.0.2.4}",
        "{name: UPPER, type: A, address: 192.0.2.5}",
        "{name: '@', type: TXT, text: second apex txt}",
        "{name: 'gslb.example.com.', type: TXT, text: third apex txt}",
        "{name: '*.wild', type: A, address: 192.0.2.6}",
    ))
    zone = nodes(loaded)
    assert str(zone[f"rel.{APEX}"][QTYPE.A].rrs[0].rdata) == "192.0.2.1"
    assert str(zone[f"deep.rel2.{APEX}"][QTYPE.A].rrs[0].rdata) == "192.0.2.2"
    assert str(zone[f"abs.{APEX}"][QTYPE.A].rrs[0].rdata) == "192.0.2.3"
    assert str(zone[f"mixed.{APEX}"][QTYPE.A].rrs[0].rdata) == "192.0.2.4"
    assert str(zone[f"upper.{APEX}"][QTYPE.A].rrs[0].rdata) == "192.0.2.5"
    assert str(zone[f"*.wild.{APEX}"][QTYPE.A].rrs[0].rdata) == "192.0.2.6"
    assert len(zone[APEX][QTYPE.TXT].rrs) == 3
    # nothing doubled up or left unqualified
    for owner in zone:
        assert owner == APEX or owner.endswith("." + APEX), owner
        assert not owner.endswith(f"{APEX}.{APEX}"), owner
    assert f"rel2.{APEX}" in loaded.compiled.zones[APEX].names  # empty non-terminal


def test_record_ttls_default_to_zone_ttl() -> None:
    loaded = load(add_records("{name: d, type: A, address: 192.0.2.1}",
                              "{name: e, type: A, address: 192.0.2.2, ttl: 42}"))
    assert nodes(loaded)[f"d.{APEX}"][QTYPE.A].ttl == 300
    assert nodes(loaded)[f"e.{APEX}"][QTYPE.A].rrs[0].ttl == 42


@pytest.mark.parametrize(("size", "chunks"), [(0, [0]), (10, [10]), (255, [255]), (256, [255, 1]),
                                               (300, [255, 45]), (600, [255, 255, 90])])
def test_long_txt_is_split_into_255_byte_strings(size: int, chunks: list[int]) -> None:
    text = "a" * size
    loaded = load(add_records(f"{{name: long, type: TXT, text: '{text}'}}"))
    rr = nodes(loaded)[f"long.{APEX}"][QTYPE.TXT].rrs[0]
    assert [len(part) for part in rr.rdata.data] == chunks
    assert b"".join(rr.rdata.data) == text.encode()


def test_txt_list_keeps_strings_apart_and_splits_each() -> None:
    loaded = load(add_records("{name: multi, type: TXT, text: ['short', '" + "b" * 300 + "']}"))
    rr = nodes(loaded)[f"multi.{APEX}"][QTYPE.TXT].rrs[0]
    assert rr.rdata.data == [b"short", b"b" * 255, b"b" * 45]


def test_txt_utf8_is_split_by_bytes() -> None:
    text = "é" * 200  # 400 bytes
    loaded = load(add_records(f"{{name: utf, type: TXT, text: '{text}'}}"))
    parts = nodes(loaded)[f"utf.{APEX}"][QTYPE.TXT].rrs[0].rdata.data
    assert all(len(part) <= 255 for part in parts)
    assert b"".join(parts) == text.encode()


def test_gslb_name_at_apex_with_addresses() -> None:
    loaded = load(add_service(f"  {APEX}:\n    endpoints:\n      - {{site: us-east, ipv4: 192.0.2.11}}\n"
                              "      - {site: eu-west, ipv6: '2001:db8::11'}\n"))
    zone = loaded.compiled.zones[APEX]
    assert set(zone.services) == {SVC, APEX}
    assert [ep.site for ep in zone.services[APEX].endpoints] == ["us-east", "eu-west"]
    assert QTYPE.SOA in zone.nodes[APEX]


def test_glue_below_delegation_is_allowed() -> None:
    loaded = load(add_records("{name: sub, type: NS, target: ns.sub.gslb.example.com}",
                              "{name: ns.sub, type: A, address: 192.0.2.7}",
                              "{name: ns.sub, type: AAAA, address: '2001:db8::7'}"))
    zone = loaded.compiled.zones[APEX]
    assert zone.cuts == frozenset({f"sub.{APEX}"})
    assert QTYPE.A in zone.nodes[f"ns.sub.{APEX}"]


def test_explicit_ttls_equal_in_rrset_are_fine() -> None:
    loaded = load(add_records("{name: m, type: A, address: 192.0.2.1, ttl: 60}",
                              "{name: m, type: A, address: 192.0.2.2, ttl: 60}"))
    rrset = nodes(loaded)[f"m.{APEX}"][QTYPE.A]
    assert rrset.ttl == 60 and len(rrset.rrs) == 2


def test_cname_endpoint_below_apex_is_allowed() -> None:
    loaded = load(ep1("{site: eu-west, cname: lb.example.net.}").replace(f"  {MARK}", ""))
    eps = loaded.compiled.zones[APEX].services[SVC].endpoints
    assert eps[1].cname == "lb.example.net"


def test_listen_addresses_parse() -> None:
    loaded = load(replace('["127.0.0.1:5353"]', '["127.0.0.1:0", "[::1]:53", ":5300"]'))
    assert loaded.config.server.dns.listen == [("127.0.0.1", 0), ("::1", 53), ("0.0.0.0", 5300)]


def test_yaml_anchors_and_merge_keys_load() -> None:
    """Anchors are ordinary YAML; line tracking must not choke on them."""
    text = replace(EP1, "&ep {site: eu-west, ipv4: 192.0.2.20}")
    loaded = load(text)
    assert loaded.compiled.zones[APEX].services[SVC].endpoints[1].ipv4 is not None
