"""Response rate limiting: the pure limiter (time passed in), reply classification on real
replies of the handler, the TC=1 slip reply, and the ``server.dns.rrl`` config block."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from ipaddress import ip_network

import dns.flags
import dns.message
import dns.rcode
import pytest
import yaml

from dnsserver.handler import QueryHandler
from dnsserver.rrl import EXEMPT, PREFIX_CACHE, Action, Kind, RateLimiter, classify, slip_reply
from gslb.config import RrlConfig, load_config_text
from gslb.errors import ConfigError, format_path
from gslb.snapshot import build_snapshot
from tests.support.servers import EXAMPLE

SEND, DROP, SLIP = Action.SEND, Action.DROP, Action.SLIP
NAME = b"\x03www\x03rrl\x04test\x00\x00\x01"  # an answer's key: name and type


def run(limiter: RateLimiter, times: list[float], *, prefix: int = 1, kind: int = Kind.ANSWER,
        key: bytes = NAME) -> list[Action]:
    return [limiter.check(prefix, kind, key, t) for t in times]


def evenly(rate: float, seconds: float, start: float = 0.0) -> list[float]:
    """Arrival times of a steady stream of ``rate`` per second for ``seconds``."""
    return [start + i / rate for i in range(round(rate * seconds))]


# --------------------------------------------------------------------------- rates and window


@dataclass(frozen=True)
class Stream:
    id: str
    rate: int        # responses_per_second
    window: int
    offered: float   # queries per second
    seconds: float
    sent: int        # replies that pass


STREAMS = [
    # under the rate, all pass; a burst of exactly `rate` at once passes too
    Stream("under-rate", 10, 15, 9.5, 20, 190),
    Stream("at-rate", 10, 15, 10, 20, 200),
    Stream("burst-equal-to-rate", 50, 15, 1e9, 50 / 1e9, 50),
    Stream("one-over-the-burst", 50, 15, 1e9, 51 / 1e9, 50),
    # over the rate: the credit runs out (from 10, a net 2/3 less per query at 30/s: 14 pass),
    # then the debt sinks to its floor (-window*rate) and holds the account there, so a flood
    # that keeps going stays limited instead of passing `rate` a second
    Stream("three-times-the-rate", 10, 15, 30, 30, 14),
    Stream("flood", 5, 2, 1000, 10, 5),
]


@pytest.mark.parametrize("case", STREAMS, ids=[c.id for c in STREAMS])
def test_stream(case: Stream) -> None:
    limiter = RateLimiter(responses_per_second=case.rate, window=case.window, slip=0)
    actions = run(limiter, evenly(case.offered, case.seconds))
    assert actions.count(SEND) == case.sent
    assert set(actions) <= {SEND, DROP}
    assert limiter.dropped[Kind.ANSWER] == len(actions) - case.sent


@pytest.mark.parametrize(("quiet", "passes"), [(4.9, False), (5.0, False), (5.2, True), (30, True)])
def test_window_is_how_long_a_flooded_account_must_stay_quiet(quiet: float, passes: bool) -> None:
    """rate 10, window 5: after a long flood the debt is 50 credits, earned back in 5 s."""
    limiter = RateLimiter(responses_per_second=10, window=5, slip=0)
    flood = evenly(100, 60)
    run(limiter, flood)
    assert limiter.check(1, Kind.ANSWER, NAME, flood[-1] + quiet) == (SEND if passes else DROP)


def test_debt_does_not_grow_past_the_window() -> None:
    """A flood of an hour costs no more than one of `window` seconds."""
    short, long_ = (RateLimiter(responses_per_second=10, window=5, slip=0) for _ in range(2))
    run(short, evenly(100, 6))
    run(long_, evenly(100, 600))
    assert short.check(1, Kind.ANSWER, NAME, 6 + 5.2) == SEND
    assert long_.check(1, Kind.ANSWER, NAME, 600 + 5.2) == SEND


def test_accounts_are_separate_per_key_kind_and_prefix() -> None:
    limiter = RateLimiter(responses_per_second=2, slip=0)
    other_name = b"\x04mail\x03rrl\x04test\x00\x00\x01"
    assert run(limiter, [0.0] * 3) == [SEND, SEND, DROP]
    assert run(limiter, [0.0] * 3, key=other_name) == [SEND, SEND, DROP]
    assert run(limiter, [0.0] * 3, prefix=2) == [SEND, SEND, DROP]
    assert run(limiter, [0.0] * 3, kind=Kind.NODATA, key=b"\x04rrl\x04test\x00") == [SEND, SEND, DROP]


# --------------------------------------------------------------------------- slip


@pytest.mark.parametrize("slip", [0, 1, 2, 3, 5, 10])
def test_slip_ratio_is_exact(slip: int) -> None:
    limiter = RateLimiter(responses_per_second=5, slip=slip)
    actions = run(limiter, [0.0] * 1005)
    limited = actions[5:]
    assert actions[:5] == [SEND] * 5 and SEND not in limited
    assert limited.count(SLIP) == (1000 // slip if slip else 0)
    if slip:
        assert limited[slip - 1 :: slip] == [SLIP] * (1000 // slip)  # every slip-th, not just as many
    assert limiter.slipped[Kind.ANSWER] == limited.count(SLIP)
    assert limiter.dropped[Kind.ANSWER] == limited.count(DROP)


# --------------------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    ("kind", "expected_sent"),
    [(Kind.ANSWER, 50), (Kind.NXDOMAIN, 4), (Kind.NODATA, 50), (Kind.REFERRAL, 7), (Kind.ERROR, 2)],
)
def test_each_kind_has_its_own_rate(kind: Kind, expected_sent: int) -> None:
    limiter = RateLimiter(responses_per_second=50, nxdomains_per_second=4, referrals_per_second=7,
                          errors_per_second=2, slip=0)
    assert run(limiter, [0.0] * 200, kind=kind).count(SEND) == expected_sent


def test_rate_zero_leaves_a_kind_unlimited() -> None:
    limiter = RateLimiter(responses_per_second=1, errors_per_second=0, slip=0)
    assert run(limiter, [0.0] * 1000, kind=Kind.ERROR) == [SEND] * 1000
    assert run(limiter, [0.0] * 2) == [SEND, DROP]
    assert limiter.table_size == 1  # nothing is kept for an unlimited kind


# --------------------------------------------------------------------------- prefixes


@pytest.mark.parametrize(
    ("v4", "v6", "a", "b", "shared"),
    [
        (24, 56, "198.51.100.1", "198.51.100.254", True),
        (24, 56, "198.51.100.1", "198.51.101.1", False),
        (32, 56, "198.51.100.1", "198.51.100.2", False),
        (16, 56, "198.51.100.1", "198.51.7.9", True),
        (0, 56, "198.51.100.1", "203.0.113.1", True),
        (24, 56, "2001:db8:0:ff::1", "2001:db8:0:1::2", True),       # same /56: 2001:db8:0:00xx::
        (24, 56, "2001:db8:0:ff::1", "2001:db8:0:100::1", False),
        (24, 64, "2001:db8:0:ff::1", "2001:db8:0:fe::1", False),
        (24, 0, "2001:db8::1", "2600::1", True),
        (0, 0, "0.0.0.1", "::1", False),                              # families never share
        (24, 56, "fe80::1%eth0", "fe80::2", True),                    # a zone id is ignored
    ],
)
def test_prefixes_aggregate(v4: int, v6: int, a: str, b: str, shared: bool) -> None:
    limiter = RateLimiter(responses_per_second=3, slip=0, ipv4_prefix_length=v4, ipv6_prefix_length=v6)
    assert (limiter.prefix(a) == limiter.prefix(b)) is shared
    first = run(limiter, [0.0] * 3, prefix=limiter.prefix(a))
    second = run(limiter, [0.0] * 3, prefix=limiter.prefix(b))
    assert first == [SEND] * 3
    assert second == ([DROP] * 3 if shared else [SEND] * 3)


def test_exempt_networks_are_never_limited() -> None:
    limiter = RateLimiter(responses_per_second=1, slip=0,
                          exempt_clients=[ip_network("192.0.2.0/24"), ip_network("2001:db8::/32")])
    for host in ("192.0.2.7", "192.0.2.255", "2001:db8:ffff::1"):
        assert limiter.prefix(host) == EXEMPT
        for kind in Kind:
            assert set(run(limiter, evenly(1000, 5), prefix=limiter.prefix(host), kind=kind)) == {SEND}
    assert limiter.exempted == 3 * len(Kind) * 5000
    assert limiter.table_size == 0
    assert limiter.prefix("192.0.3.1") != EXEMPT
    assert run(limiter, [0.0] * 2, prefix=limiter.prefix("192.0.3.1")) == [SEND, DROP]


# --------------------------------------------------------------------------- bounded state


def test_table_cap_holds_under_a_flood_of_random_prefixes() -> None:
    rng = random.Random(7)
    limiter = RateLimiter(responses_per_second=5, slip=0, max_table_size=10_000)
    attacker = limiter.prefix("203.0.113.9")
    attacker_sent = 0
    largest = 0
    for i in range(100_000):
        host = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        now = i / 100_000  # all within one second
        limiter.check(limiter.prefix(host), Kind.ANSWER, NAME, now)
        if i % 10 == 0:  # an account in steady use survives the churn and stays limited
            attacker_sent += limiter.check(attacker, Kind.ANSWER, NAME, now) == SEND
        largest = max(largest, limiter.table_size)
    assert largest <= 10_000
    assert len(limiter.prefixes) <= PREFIX_CACHE
    assert attacker_sent == 5


# --------------------------------------------------------------------------- real replies

ZONE = """\
zones:
  rrl.test:
    nameservers:
      - {name: ns1.rrl.test, addresses: [192.0.2.53]}
    records:
      - {name: www, type: A, address: 192.0.2.1}
      - {name: "@", type: TXT, text: ["one", "two"]}
      - {name: alias, type: CNAME, target: gone.rrl.test}
      - {name: sub, type: NS, target: ns.sub.rrl.test}
      - {name: ns.sub, type: A, address: 192.0.2.99}
"""
HANDLER = QueryHandler(build_snapshot(load_config_text(ZONE, "<rrl>").compiled))
APEX = b"\x03rrl\x04test\x00"


def reply_to(name: str, qtype: str = "A", *, edns: bool = True) -> tuple[bytes, bytes]:
    query = dns.message.make_query(name, qtype, use_edns=0 if edns else False, payload=1232).to_wire()
    reply = HANDLER.handle(query, "192.0.2.200")
    assert reply is not None
    return query, reply


@pytest.mark.parametrize(
    ("name", "qtype", "kind", "key"),
    [
        ("www.rrl.test", "A", Kind.ANSWER, b"\x03www\x03rrl\x04test\x00\x00\x01"),
        ("WwW.RRL.test", "A", Kind.ANSWER, b"\x03www\x03rrl\x04test\x00\x00\x01"),   # 0x20 does not evade
        ("rrl.test", "TXT", Kind.ANSWER, APEX + b"\x00\x10"),
        ("www.rrl.test", "AAAA", Kind.NODATA, APEX),
        ("random-1.rrl.test", "A", Kind.NXDOMAIN, APEX),
        ("Random-2.RRL.test", "AAAA", Kind.NXDOMAIN, APEX),                          # one account per zone
        ("alias.rrl.test", "A", Kind.NXDOMAIN, APEX),                                # CNAME, then NXDOMAIN
        ("host.sub.rrl.test", "A", Kind.REFERRAL, b"\x03sub" + APEX),
        ("example.org", "A", Kind.ERROR, b""),                                       # REFUSED
    ],
)
def test_classify_real_replies(name: str, qtype: str, kind: Kind, key: bytes) -> None:
    assert classify(reply_to(name, qtype)[1]) == (kind, key)


def test_classify_errors_without_a_question() -> None:
    bad = b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00"  # QDCOUNT 2 and nothing after: FORMERR
    reply = HANDLER.handle(bad, "192.0.2.200")
    assert reply is not None and reply[3] & 0xF == dns.rcode.FORMERR
    assert classify(reply) == (Kind.ERROR, b"")


@pytest.mark.parametrize("edns", [True, False])
@pytest.mark.parametrize(("name", "qtype"), [("rrl.test", "TXT"), ("random.rrl.test", "A")])
def test_slip_reply_is_tc_and_tiny(name: str, qtype: str, edns: bool) -> None:
    query, reply = reply_to(name, qtype, edns=edns)
    slipped = slip_reply(reply, classify(reply)[0], query, udp_size=1232)
    msg = dns.message.from_wire(slipped)
    full = dns.message.from_wire(reply)
    assert msg.id == full.id and msg.flags & dns.flags.TC and msg.flags & dns.flags.QR
    assert msg.rcode() == full.rcode()
    assert msg.question == full.question and not msg.answer and not msg.authority
    assert (msg.edns == 0) is edns
    assert len(slipped) == len(query)  # as small as the question that asked for it


def test_error_replies_slip_as_themselves() -> None:
    query, reply = reply_to("example.org")
    assert slip_reply(reply, Kind.ERROR, query, udp_size=1232) == reply


def test_log_only_counts_what_it_would_do() -> None:
    limiter = RateLimiter(responses_per_second=1, slip=2, log_only=True)
    run(limiter, [0.0] * 5)
    counts = limiter.counts()
    assert counts[("would_drop", "answer")] == 2 and counts[("would_slip", "answer")] == 2
    assert not any(action in ("dropped", "slipped") for action, _ in counts)


# --------------------------------------------------------------------------- config

BASE = EXAMPLE.read_text()
DNS_LINE = '    listen: ["127.0.0.1:5353"]    # port 53 needs root; change for production\n'


def with_rrl(block: str) -> str:
    assert BASE.count(DNS_LINE) == 1
    return BASE.replace(DNS_LINE, DNS_LINE + "".join(f"    {line}\n" for line in block.splitlines()))


def test_rrl_is_off_by_default_and_on_with_an_empty_block() -> None:
    assert load_config_text(BASE, base_dir=EXAMPLE.parent).config.server.dns.rrl is None
    rrl = load_config_text(with_rrl("rrl: {}"), base_dir=EXAMPLE.parent).config.server.dns.rrl
    assert rrl is not None
    limiter = RateLimiter(**rrl.model_dump())
    assert (limiter.rates, limiter.window, limiter.slip) == ((20.0,) * 5, 15, 2)
    assert (limiter.ipv4_prefix_length, limiter.ipv6_prefix_length) == (24, 56)


def test_rrl_config_reaches_the_limiter() -> None:
    block = """rrl:
  responses_per_second: 7
  nxdomains_per_second: 3
  errors_per_second: 0
  window: 4
  slip: 0
  ipv4_prefix_length: 32
  exempt_clients: [10.0.0.0/8, "2001:db8::/32"]
  log_only: true
  max_table_size: 500"""
    rrl = load_config_text(with_rrl(block), base_dir=EXAMPLE.parent).config.server.dns.rrl
    assert rrl is not None
    limiter = RateLimiter(**rrl.model_dump())
    assert limiter.rates == (7.0, 7.0, 3.0, 7.0, 0.0)
    assert (limiter.window, limiter.slip, limiter.log_only, limiter.max_table_size) == (4, 0, True, 500)
    assert limiter.prefix("10.1.2.3") == EXEMPT and limiter.prefix("2001:db8::5") == EXEMPT


def test_the_documented_examples_load() -> None:
    readme = (EXAMPLE.parents[1] / "README.md").read_text()
    section = readme[readme.index("### Response rate limiting") :]
    block = section[section.index("```yaml\n") + 8 : section.index("```\n", section.index("```yaml"))]
    documented = yaml.safe_load(block)["server"]["dns"]["rrl"]
    text = with_rrl(f"rrl: {json.dumps(documented)}")
    rrl = load_config_text(text, base_dir=EXAMPLE.parent).config.server.dns.rrl
    assert rrl is not None and rrl.model_dump(mode="json") == {**documented, "exempt_clients": ["192.0.2.0/24"]}
    shown, default = RateLimiter(**rrl.model_dump()), RateLimiter(**RrlConfig().model_dump())
    settings = ("rates", "window", "slip", "ipv4_prefix_length", "ipv6_prefix_length", "log_only", "max_table_size")
    assert [getattr(shown, a) for a in settings] == [getattr(default, a) for a in settings]  # defaults as shown
    docstring = (RrlConfig.__doc__ or "").split("\n\n")[1].strip()
    assert load_config_text(with_rrl(docstring), base_dir=EXAMPLE.parent).config.server.dns.rrl is not None


@pytest.mark.parametrize(
    ("block", "path", "fragment"),
    [
        ("rrl: {slip: 11}", "server.dns.rrl.slip", "less than or equal to 10"),
        ("rrl: {slip: -1}", "server.dns.rrl.slip", "greater than or equal to 0"),
        ("rrl: {window: 0}", "server.dns.rrl.window", "greater than or equal to 1"),
        ("rrl: {responses_per_second: -5}", "server.dns.rrl.responses_per_second", "greater than or equal to 0"),
        ("rrl: {errors_per_second: lots}", "server.dns.rrl.errors_per_second", "valid integer"),
        ("rrl: {ipv4_prefix_length: 33}", "server.dns.rrl.ipv4_prefix_length", "less than or equal to 32"),
        ("rrl: {ipv6_prefix_length: 129}", "server.dns.rrl.ipv6_prefix_length", "less than or equal to 128"),
        ("rrl: {exempt_clients: [10.0.0.1/8]}", "server.dns.rrl.exempt_clients[0]", "host bits set"),
        ("rrl: {exempt_clients: [nowhere]}", "server.dns.rrl.exempt_clients[0]", "not a valid network"),
        ("rrl: {max_table_size: 10}", "server.dns.rrl.max_table_size", "greater than or equal to 100"),
        ("rrl: {log_only: maybe}", "server.dns.rrl.log_only", "valid boolean"),
        ("rrl: {responses-per-second: 5}", "server.dns.rrl.responses-per-second", "unknown key"),
        ("rrl: 20", "server.dns.rrl", "valid dictionary"),
    ],
)
def test_bad_rrl_fields_name_their_path(block: str, path: str, fragment: str) -> None:
    text = with_rrl(block)
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "test.yaml", base_dir=EXAMPLE.parent)
    errors = info.value.errors
    assert [format_path(e.path) for e in errors] == [path], errors
    assert fragment in errors[0].message, errors
    assert errors[0].line == text.splitlines().index(f"    {block.splitlines()[0]}") + 1
