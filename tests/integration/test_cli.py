"""``gslb check`` and ``gslb serve`` as real processes: exit codes, error output, listener
logs, signals (TERM/INT shut down, HUP reloads without dropping queries)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.dnswire import query_a
from tests.support.servers import EXAMPLE, ROOT, NodeProcess, node_process

BASE = EXAMPLE.read_text()
SVC = "app.gslb.example.com"
OLD_APP = ("192.0.2.10", "192.0.2.20", "192.0.2.30")
NEW_APP = ("192.0.2.10", "192.0.2.21", "192.0.2.30")
RECORD_ANCHOR = '      - {name: static, type: AAAA, address: "2001:db8::80"}\n'


def edited(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, f"anchor {old!r} must occur once"
    return text.replace(old, new)


WITH_ADDED = edited(RECORD_ANCHOR, RECORD_ANCHOR + "      - {name: added, type: A, address: 192.0.2.77}\n")
NEW_CONFIG = edited("ipv4: 192.0.2.20,", "ipv4: 192.0.2.21,", WITH_ADDED)
# "listening dns/udp on 127.0.0.1:5353" or "... on [::1]:5353"
LISTENING = re.compile(r"listening (dns/udp|dns/tcp|http) on (?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d+)")


def listeners(log: str) -> list[tuple[str, str, int]]:
    """(kind, host, port) of every listener line in a node's log."""
    return [(kind, v6 or v4, int(port)) for kind, v6, v4, port in LISTENING.findall(log)]


def write_atomic(path: Path, text: str) -> None:
    """Replace the file in one rename, so a reload never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_config(tmp_path: Path, text: str, name: str = "gslb.yaml") -> Path:
    """Write a config next to links to the example's support files (GeoIP databases ...),
    so relative paths in it resolve as they do for config/example.yaml."""
    for entry in EXAMPLE.parent.iterdir():
        link = tmp_path / entry.name
        if entry.suffix not in (".yaml", ".yml") and not link.exists():
            link.symlink_to(entry)
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(text: str, needle: str) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, needle
    return hits[0]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gslb.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def poll_answer(host: str, port: int, name: str, want: tuple[str, ...], attempts: int = 100,
                pause: float = 0.05) -> tuple[int, tuple[str, ...]]:
    """Query until the answer is ``want`` (at most ``attempts`` times, ~5 s); return the last answer."""
    last: tuple[int, tuple[str, ...]] = (-1, ())
    for _ in range(attempts):
        last = query_a(host, port, name)
        if last == (dns.rcode.NOERROR, want):
            break
        time.sleep(pause)
    return last


def udp_address(node: NodeProcess) -> tuple[str, int]:
    """The first DNS/UDP listener the node logged."""
    return next((host, port) for kind, host, port in listeners(node.log()) if kind == "dns/udp")


def reload_count(node: NodeProcess) -> int:
    return len(re.findall(r"config reloaded", node.log()))


def wait_reloads(node: NodeProcess, count: int, attempts: int = 200) -> int:
    """Wait (bounded) until the log shows ``count`` successful reloads; return what it shows."""
    seen = reload_count(node)
    for _ in range(attempts):
        if seen >= count or node.proc.poll() is not None:
            break
        time.sleep(0.05)
        seen = reload_count(node)
    return seen


# --------------------------------------------------------------------------- gslb check


def test_check_example_exits_zero() -> None:
    result = run_cli("check", "-c", "config/example.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert result.stderr.strip() == ""


def test_check_console_script() -> None:
    script = Path(sys.executable).parent / "gslb"
    assert script.exists(), "the gslb console script is not installed in this environment"
    result = subprocess.run([str(script), "check", "-c", str(EXAMPLE)], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


def test_check_bad_config_prints_every_error(tmp_path: Path) -> None:
    text = edited("    negative_ttl: 60\n", "    negative_ttl: 60\n    bogus: 1\n")
    text = edited("ipv4: 192.0.2.20,", "ipv4: 192.0.2.999,", text)
    text = edited("country: DE", "country: Germany", text)
    path = write_config(tmp_path, text, "bad.yaml")
    result = run_cli("check", "-c", str(path))
    assert result.returncode != 0
    expected = [
        ("zones[gslb.example.com].bogus", "unknown key", line_of(text, "bogus: 1")),
        (f"services[{SVC}].endpoints[1].ipv4", "IPv4", line_of(text, "192.0.2.999")),
        ("sites.eu-west.country", "pattern", line_of(text, "country: Germany")),
    ]
    error_lines = [line.strip() for line in result.stderr.splitlines() if re.search(r"\(line \d+\)$", line)]
    assert len(error_lines) == 3, result.stderr
    for path_text, fragment, line in expected:
        pattern = re.compile(rf"^{re.escape(path_text)}: .*{re.escape(fragment)}.* \(line {line}\)$")
        assert any(pattern.match(err) for err in error_lines), f"missing {path_text} (line {line}):\n{result.stderr}"
    assert "3 error(s)" in result.stderr
    assert result.stdout == ""


def test_check_semantic_errors(tmp_path: Path) -> None:
    text = edited(RECORD_ANCHOR, RECORD_ANCHOR + "      - {name: foo.example.org., type: A, address: 192.0.2.1}\n"
                  "      - {name: '@', type: CNAME, target: lb.example.net}\n")
    text = edited("{site: eu-west,", "{site: mars,", text)
    path = write_config(tmp_path, text, "semantic.yaml")
    result = run_cli("check", "-c", str(path))
    assert result.returncode != 0
    lines = [line.strip() for line in result.stderr.splitlines()]
    ooz = line_of(text, "foo.example.org.")
    apex = line_of(text, "type: CNAME, target: lb.example.net")
    site = line_of(text, "site: mars")
    assert any(re.match(rf"^zones\[gslb\.example\.com\]\.records\[\d+\]\.name: .*outside zone.* \(line {ooz}\)$", x)
               for x in lines), result.stderr
    assert any(re.match(rf"^zones\[gslb\.example\.com\]\.records\[\d+\]\.type: .*apex.* \(line {apex}\)$", x)
               for x in lines), result.stderr
    assert f"services[{SVC}].endpoints[1].site: unknown site 'mars' (sites: ap-northeast, eu-west, us-east) " \
           f"(line {site})" in lines, result.stderr


def test_check_bad_yaml_reports_line(tmp_path: Path) -> None:
    text = edited("    negative_ttl: 60\n", "    negative_ttl: 60: x\n")
    path = write_config(tmp_path, text, "syntax.yaml")
    result = run_cli("check", "-c", str(path))
    assert result.returncode != 0
    assert re.search(rf"<root>: invalid YAML: .* \(line {line_of(text, 'negative_ttl: 60: x')}\)", result.stderr), \
        result.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    result = run_cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode != 0
    assert "cannot read config" in result.stderr


def test_serve_refuses_bad_config(tmp_path: Path) -> None:
    text = edited("ipv4: 192.0.2.20,", "ipv4: 192.0.2.999,")
    path = write_config(tmp_path, text, "bad.yaml")
    result = run_cli("serve", "-c", str(path), "--dns", "127.0.0.1:0", "--no-http", timeout=30)
    assert result.returncode != 0
    assert f"services[{SVC}].endpoints[1].ipv4: " in result.stderr
    assert f"(line {line_of(text, '192.0.2.999')})" in result.stderr
    assert "listening" not in result.stderr


def test_serve_rejects_bad_dns_flag() -> None:
    result = run_cli("serve", "-c", str(EXAMPLE), "--dns", "localhost:53", "--no-http", timeout=30)
    assert result.returncode == 2
    assert "not an IP address" in result.stderr


# --------------------------------------------------------------------------- gslb serve


def test_serve_logs_each_listener_with_its_real_port(tmp_path: Path) -> None:
    with node_process(EXAMPLE, tmp_path=tmp_path) as node:
        node.wait_for_log(r"gslb node ready")
        found = listeners(node.log())
        kinds = [kind for kind, _, _ in found]
        assert sorted(kinds) == ["dns/tcp", "dns/udp", "http"], node.log()
        ports = {kind: (host, port) for kind, host, port in found}
        assert all(port != 0 for _, port in ports.values())
        assert ports["dns/udp"] == ports["dns/tcp"]
        assert ports["dns/udp"][0] == "127.0.0.1"
        host, port = ports["dns/udp"]
        assert query_a(host, port, SVC) == (dns.rcode.NOERROR, OLD_APP)
        response = dns.query.tcp(dns.message.make_query(SVC, "A"), host, port=port, timeout=2)
        assert response.rcode() == dns.rcode.NOERROR


def test_serve_two_dns_listeners(tmp_path: Path) -> None:
    with node_process(EXAMPLE, "--dns", "127.0.0.1:0", "--dns", "[::1]:0", "--no-http",
                      tmp_path=tmp_path, expect=4) as node:
        node.wait_for_log(r"gslb node ready")
        udp = [(host, port) for kind, host, port in listeners(node.log()) if kind == "dns/udp"]
        tcp = [(host, port) for kind, host, port in listeners(node.log()) if kind == "dns/tcp"]
        assert sorted(h for h, _ in udp) == ["127.0.0.1", "::1"], node.log()
        assert sorted(udp) == sorted(tcp)
        assert "listening http" not in node.log()
        assert re.search(r"listening dns/udp on \[::1\]:\d+", node.log())
        for host, port in udp:
            assert port != 0
            assert query_a(host, port, SVC) == (dns.rcode.NOERROR, OLD_APP)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_shuts_down_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    with node_process(EXAMPLE, tmp_path=tmp_path) as node:
        node.wait_for_log(r"gslb node ready")
        host, port = udp_address(node)
        assert query_a(host, port, SVC)[0] == dns.rcode.NOERROR
        node.signal(sig)
        try:
            code = node.proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gslb serve did not exit within 10 s of {sig.name}:\n{node.log()}")
        assert code == 0, node.log()
        log = node.log()
        assert "shutting down" in log
        assert "Traceback" not in log
        assert " ERROR " not in log


def test_sighup_swaps_in_valid_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, BASE)
    with node_process(config, tmp_path=tmp_path) as node:
        node.wait_for_log(r"gslb node ready")
        host, port = udp_address(node)
        assert query_a(host, port, SVC) == (dns.rcode.NOERROR, OLD_APP)
        assert query_a(host, port, "added.gslb.example.com")[0] == dns.rcode.NXDOMAIN
        write_atomic(config, NEW_CONFIG)
        node.signal(signal.SIGHUP)
        assert poll_answer(host, port, SVC, NEW_APP) == (dns.rcode.NOERROR, NEW_APP), node.log()
        assert query_a(host, port, "added.gslb.example.com") == (dns.rcode.NOERROR, ("192.0.2.77",))
        node.wait_for_log(r"config reloaded")
        assert node.proc.poll() is None


def test_sighup_loses_no_query(tmp_path: Path) -> None:
    """Queries keep flowing while the config is reloaded over and over: each one is
    answered (no retries, a timeout is a loss) with the old or the new answer."""
    config = write_config(tmp_path, BASE)
    configs = [NEW_CONFIG, BASE]
    reloads = 6
    with node_process(config, tmp_path=tmp_path) as node:
        node.wait_for_log(r"gslb node ready")
        host, port = udp_address(node)
        query = dns.message.make_query(SVC, "A")
        answers: dict[tuple[int, tuple[str, ...]], int] = {}
        losses: list[str] = []
        warmed_up = threading.Event()
        reloads_done = threading.Event()
        sent = [0]

        def client() -> None:
            # at least 2000 queries, and on until every reload is done; never more than 20000
            while sent[0] < 20_000 and (sent[0] < 2000 or not reloads_done.is_set()):
                sent[0] += 1
                try:
                    response = dns.query.udp(query, host, port=port, timeout=2)
                except (dns.exception.Timeout, OSError) as exc:
                    losses.append(f"query {sent[0]}: {exc!r}")
                else:
                    addrs = sorted(rd.address for rrset in response.answer
                                   if rrset.rdtype == dns.rdatatype.A for rd in rrset)
                    key = (response.rcode(), tuple(addrs))
                    answers[key] = answers.get(key, 0) + 1
                if sent[0] == 50:
                    warmed_up.set()
            warmed_up.set()

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        try:
            assert warmed_up.wait(30), "the query thread never got going"
            at_signal = []
            for i in range(reloads):
                write_atomic(config, configs[i % 2])
                at_signal.append(sent[0])
                node.signal(signal.SIGHUP)
                assert wait_reloads(node, i + 1) == i + 1, node.log()
        finally:
            reloads_done.set()
            thread.join(120)
        assert not thread.is_alive(), "the query thread did not finish"
        assert losses == [], f"{len(losses)} of {sent[0]} queries lost: {losses[:5]}"
        allowed = {(dns.rcode.NOERROR, OLD_APP), (dns.rcode.NOERROR, NEW_APP)}
        assert set(answers) <= allowed, f"unexpected answers: {set(answers) - allowed}"
        assert sum(answers.values()) == sent[0] >= 2000
        assert (dns.rcode.NOERROR, NEW_APP) in answers and (dns.rcode.NOERROR, OLD_APP) in answers
        assert at_signal[-1] < sent[0], "no query was sent after the last SIGHUP"
        assert node.proc.poll() is None, node.log()
        assert "rejected" not in node.log()


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        ("ipv4: 192.0.2.20,", "ipv4: 192.0.2.999,", f"services[{SVC}].endpoints[1].ipv4"),
        ("{site: eu-west,", "{site: mars,", f"services[{SVC}].endpoints[1].site"),
    ],
    ids=["bad-ip", "unknown-site"],
)
def test_sighup_with_invalid_config_keeps_serving(tmp_path: Path, old: str, new: str, path: str) -> None:
    config = write_config(tmp_path, BASE)
    with node_process(config, tmp_path=tmp_path) as node:
        node.wait_for_log(r"gslb node ready")
        host, port = udp_address(node)
        bad = edited(old, new, WITH_ADDED)
        write_atomic(config, bad)
        node.signal(signal.SIGHUP)
        node.wait_for_log(r"config reload rejected")
        line = line_of(bad, new)
        node.wait_for_log(rf"{re.escape(path)}: .+ \(line {line}\)")
        assert "config reloaded" not in node.log()
        # still the old config: old answer, no new record
        assert query_a(host, port, SVC) == (dns.rcode.NOERROR, OLD_APP)
        assert query_a(host, port, "added.gslb.example.com")[0] == dns.rcode.NXDOMAIN
        assert node.proc.poll() is None
        # and a later good config is still picked up
        write_atomic(config, NEW_CONFIG)
        node.signal(signal.SIGHUP)
        assert poll_answer(host, port, SVC, NEW_APP) == (dns.rcode.NOERROR, NEW_APP), node.log()
