"""unbound as a real delegating resolver in front of our node.

unbound (Debian's package) runs with a stub zone for gslb.example.com pointing at our node on an
ephemeral 127.0.0.1 port and ``local-zone: "." refuse``, so it never contacts anything off the
machine. Every query here goes THROUGH unbound with RD=1, the way a stub resolver would ask.
Queries that reach our node are recorded at the socket level by wrapping
``UdpProtocol.datagram_received`` (the exact-reply cache is checked inside it, so every datagram
is seen, cached or not).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from dnsserver.udp import UdpProtocol
from tests.support.servers import ThreadedNode, require_binary, threaded_node

pytestmark = pytest.mark.peer

ZONE = "gslb.example.com."
APP = dns.name.from_text("app.gslb.example.com.")
WWW = dns.name.from_text("www.gslb.example.com.")
APP_TTL = 30  # services.app.gslb.example.com.ttl in config/example.yaml
ZONE_TTL = 300  # zones.gslb.example.com.ttl (the www CNAME)
NEGATIVE_TTL = 60  # zones.gslb.example.com.negative_ttl
APP_V4 = ["192.0.2.10", "192.0.2.20", "192.0.2.30"]
APP_V6 = ["2001:db8:10::10", "2001:db8:20::20", "2001:db8:30::30"]

UNBOUND_CONF = """\
server:
    interface: 127.0.0.1@{port}
    port: {port}
    do-ip4: yes
    do-ip6: no
    outgoing-interface: 127.0.0.1
    access-control: 127.0.0.0/8 allow
    username: ""
    chroot: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    num-threads: 1
    module-config: "iterator"
    do-not-query-localhost: no
    local-zone: "." refuse
    local-zone: "{zone}" transparent
remote-control:
    control-enable: no
stub-zone:
    name: "{zone}"
    stub-addr: 127.0.0.1@{our_port}
"""


@dataclass
class QueryLog:
    """(qname, qtype) of every UDP datagram our node received, thread-safe."""

    seen: list[tuple[dns.name.Name, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, data: bytes) -> None:
        try:
            msg = dns.message.from_wire(data)
            key = (msg.question[0].name, msg.question[0].rdtype)
        except Exception:  # garbage still counts as "something reached us"
            key = (dns.name.empty, -1)
        with self.lock:
            self.seen.append(key)

    def count(self, name: dns.name.Name) -> int:
        """Datagrams whose question name is ``name`` (case-insensitive, any type)."""
        with self.lock:
            return sum(1 for qname, _ in self.seen if qname == name)


@dataclass
class Stack:
    node: ThreadedNode
    port: int  # unbound's port
    log: QueryLog
    conf: Path
    stderr_path: Path

    def ask(self, name: str | dns.name.Name, rdtype: str) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype)  # RD=1 by default
        assert q.flags & dns.flags.RD
        return dns.query.udp(q, "127.0.0.1", port=self.port, timeout=5)


def _free_port() -> int:
    """A 127.0.0.1 port free for both UDP and TCP right now (unbound binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free 127.0.0.1 port for unbound")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 15.0) -> bool:
    """True once unbound answers anything on ``port``; False if it exited or timed out."""
    probe = dns.message.make_query("ready.invalid.", "A")  # a default local zone: never reaches us
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            dns.query.udp(probe, "127.0.0.1", port=port, timeout=0.5)
            return True
        except (dns.exception.Timeout, OSError):
            time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    unbound = require_binary("unbound")
    log = QueryLog()
    original = UdpProtocol.datagram_received

    def counting(self: UdpProtocol, data: bytes, addr: Any) -> None:
        log.record(data)
        original(self, data, addr)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GSLB_UDP_FASTPATH", "0")  # the C loop would answer without passing through here
        mp.setattr(UdpProtocol, "datagram_received", counting)
        with threaded_node() as node:
            tmp = tmp_path_factory.mktemp("unbound")
            proc: subprocess.Popen[bytes] | None = None
            failures: list[str] = []
            try:
                for attempt in range(5):
                    port = _free_port()
                    conf = tmp / f"unbound-{attempt}.conf"
                    conf.write_text(UNBOUND_CONF.format(port=port, dir=tmp, zone=ZONE, our_port=node.port))
                    checkconf = Path(unbound).with_name("unbound-checkconf")
                    if checkconf.exists():
                        check = subprocess.run([str(checkconf), str(conf)], capture_output=True, text=True,
                                               timeout=30)
                        assert check.returncode == 0, check.stdout + check.stderr
                    stderr_path = tmp / f"unbound-{attempt}.log"
                    with open(stderr_path, "wb") as err:
                        proc = subprocess.Popen([unbound, "-d", "-c", str(conf)], stdout=err,
                                                stderr=subprocess.STDOUT, cwd=tmp)
                    if _wait_ready(proc, port):
                        break
                    _stop(proc)
                    failures.append(f"attempt {attempt} on port {port}:\n{stderr_path.read_text()}")
                    proc = None
                else:
                    pytest.fail("unbound never answered:\n" + "\n".join(failures))
                yield Stack(node, port, log, conf, stderr_path)
            finally:
                if proc is not None:
                    _stop(proc)


def _rrset(msg: dns.message.Message, name: dns.name.Name, rdtype: int) -> Any:
    for rrset in msg.answer:
        if rrset.name == name and rrset.rdtype == rdtype:
            return rrset
    raise AssertionError(f"no {dns.rdatatype.to_text(rdtype)} for {name} in answer:\n{msg}")


def _resolver_flags(msg: dns.message.Message) -> None:
    """unbound is a recursive resolver: RA set, AA clear (it is not authoritative for anything)."""
    assert msg.flags & dns.flags.RA, f"RA not set:\n{msg}"
    assert not msg.flags & dns.flags.AA, f"AA set by a resolver:\n{msg}"
    assert msg.flags & dns.flags.RD, f"RD not echoed:\n{msg}"
    assert msg.flags & dns.flags.QR


def test_app_a_through_unbound(stack: Stack) -> None:
    r = stack.ask(APP, "A")
    assert r.rcode() == dns.rcode.NOERROR, r
    _resolver_flags(r)
    rrset = _rrset(r, APP, dns.rdatatype.A)
    assert sorted(rd.address for rd in rrset) == APP_V4
    assert 0 < rrset.ttl <= APP_TTL, rrset.ttl
    assert stack.log.count(APP) >= 1, "unbound answered app A without asking our server"


def test_app_aaaa_through_unbound(stack: Stack) -> None:
    r = stack.ask(APP, "AAAA")
    assert r.rcode() == dns.rcode.NOERROR, r
    _resolver_flags(r)
    rrset = _rrset(r, APP, dns.rdatatype.AAAA)
    assert sorted(rd.address for rd in rrset) == APP_V6
    assert 0 < rrset.ttl <= APP_TTL, rrset.ttl


def test_www_cname_chain_through_unbound(stack: Stack) -> None:
    r = stack.ask(WWW, "A")
    assert r.rcode() == dns.rcode.NOERROR, r
    _resolver_flags(r)
    cname = _rrset(r, WWW, dns.rdatatype.CNAME)
    assert [rd.target for rd in cname] == [APP]
    assert 0 < cname.ttl <= ZONE_TTL, cname.ttl
    a = _rrset(r, APP, dns.rdatatype.A)
    assert sorted(rd.address for rd in a) == APP_V4
    assert 0 < a.ttl <= APP_TTL, a.ttl
    # The chain is in order: the CNAME first, then the records of its target.
    assert [rrset.rdtype for rrset in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]


def _negative_soa(r: dns.message.Message) -> Any:
    soas = [rrset for rrset in r.authority if rrset.rdtype == dns.rdatatype.SOA]
    assert len(soas) == 1, f"expected one SOA in authority:\n{r}"
    assert soas[0].name == dns.name.from_text(ZONE)
    return soas[0]


def test_nxdomain_is_cached_by_unbound(stack: Stack) -> None:
    missing = dns.name.from_text(f"no-such-name-{time.monotonic_ns()}.{ZONE}")
    before = stack.log.count(missing)
    nx_before = stack.node.node.handler.rcodes[dns.rcode.NXDOMAIN]

    first = stack.ask(missing, "A")
    assert first.rcode() == dns.rcode.NXDOMAIN, first
    _resolver_flags(first)
    assert first.answer == []
    soa1 = _negative_soa(first)
    assert 0 < soa1.ttl <= NEGATIVE_TTL, soa1.ttl
    reached = stack.log.count(missing)
    assert reached > before, "the first query for a missing name never reached our server"
    assert stack.node.node.handler.rcodes[dns.rcode.NXDOMAIN] > nx_before

    second = stack.ask(missing, "A")
    assert second.rcode() == dns.rcode.NXDOMAIN, second
    _resolver_flags(second)
    soa2 = _negative_soa(second)
    assert soa2.ttl <= soa1.ttl, (soa1.ttl, soa2.ttl)
    assert soa2[0] == soa1[0]  # same SOA rdata (serial and all)
    assert stack.log.count(missing) == reached, "the repeated query reached our server: not cached"
