"""``gslb demo``: failover you can watch.

Three small HTTP backends on 127.0.0.11-13 stand for three clouds; a GSLB node monitors
them (HTTP, every second, fall 2, rise 2) and answers ``app.demo.test`` with the closest
healthy one. The table shows, live, what clients in Europe, the US and Japan get (their
resolvers' EDNS Client Subnet), and the health of each backend. Press 1, 2 or 3 to stop or
start a backend, q to quit; ``--script`` does the same on a timetable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gslb.config import load_config
from gslb.node import Node

GEOIP = Path(__file__).resolve().parents[1] / "config" / "geoip" / "GeoIP2-City-Test.mmdb"
SITES = [("us-east", "127.0.0.11", 38.9, -77.0, "US", "NA"),
         ("eu-west", "127.0.0.12", 50.1, 8.7, "DE", "EU"),
         ("ap-northeast", "127.0.0.13", 35.7, 139.7, "JP", "AS")]
CLIENTS = [("Europe (London)", "81.2.69.160", 32), ("US (Milton, WA)", "216.160.83.56", 32),
           ("Japan", "2001:218::1", 128)]
NAME = "app.demo.test"


def demo_config(port: int, geoip: Path) -> str:
    sites = "\n".join(f"  {s}: {{lat: {lat}, lon: {lon}, country: {c}, continent: {k}}}"
                      for s, _, lat, lon, c, k in SITES)
    endpoints = "\n".join(f"      - {{site: {s}, ipv4: {a}}}" for s, a, *_ in SITES)
    return f"""
geoip: {{database: "{geoip}"}}
server: {{http: {{listen: null}}}}
zones:
  demo.test:
    nameservers: [{{name: ns1.demo.test, addresses: [127.0.0.1]}}]
sites:
{sites}
services:
  {NAME}:
    ttl: 30
    min_ttl: 1
    policy: {{type: geo}}
    monitor: {{type: http, port: {port}, path: /health, interval: 1, timeout: 0.5, rise: 2, fall: 2}}
    endpoints:
{endpoints}
"""


class Backend:
    """A tiny HTTP server that says ok; stop() and start() are the demo's cloud outages."""

    def __init__(self, site: str, address: str, port: int) -> None:
        self.site, self.address, self.port = site, address, port
        self.server: asyncio.Server | None = None

    @property
    def running(self) -> bool:
        return self.server is not None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            body = f"ok from {self.site}\n".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        writer.close()

    async def start(self) -> None:
        if self.server is None:
            self.server = await asyncio.start_server(self._serve, self.address, self.port, reuse_address=True)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def toggle(self) -> None:
        await (self.stop() if self.running else self.start())


@dataclass
class Seen:
    answer: str
    ttl: int | None
    rcode: int


def ecs_query(ident: int, name: str, address: str, prefix: int) -> bytes:
    qname = b"".join(bytes([len(p)]) + p for p in name.encode().split(b".")) + b"\0"
    family, raw = (2, socket.inet_pton(socket.AF_INET6, address)) if ":" in address else (
        1, socket.inet_pton(socket.AF_INET, address))
    addr = raw[: (prefix + 7) // 8]
    option = struct.pack("!HHHBB", 8, 4 + len(addr), family, prefix, 0) + addr
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(option)) + option
    return struct.pack("!6H", ident, 0, 1, 0, 0, 1) + qname + b"\0\1\0\1" + opt


def parse_answer(data: bytes) -> Seen:
    rcode = data[3] & 0xF
    ancount = int.from_bytes(data[6:8], "big")
    offset = 12
    while data[offset]:
        offset += data[offset] + 1
    offset += 5
    addrs, ttl = [], None
    for _ in range(ancount):
        if data[offset] & 0xC0 == 0xC0:
            offset += 2
        else:
            while data[offset]:
                offset += data[offset] + 1
            offset += 1
        rtype, _, rr_ttl, rdlen = struct.unpack_from("!HHIH", data, offset)
        offset += 10
        if rtype == 1:
            addrs.append(socket.inet_ntoa(data[offset : offset + rdlen]))
            ttl = rr_ttl if ttl is None else min(ttl, rr_ttl)
        offset += rdlen
    return Seen(", ".join(addrs) or "(none)", ttl, rcode)


class Asker(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[bytes]] = {}

    def datagram_received(self, data: bytes, addr: object) -> None:
        future = self.waiting.pop(int.from_bytes(data[:2], "big"), None)
        if future is not None and not future.done():
            future.set_result(data)


async def run_demo(*, dns_port: int = 0, script: list[tuple[float, str, str]] | None = None,
                   duration: float | None = None, keys: bool = True, refresh: float = 0.5) -> int:
    if not GEOIP.exists():
        print(f"gslb demo needs the GeoIP test database at {GEOIP}", file=sys.stderr)
        return 2
    port = random.randint(20000, 40000)
    backends = [Backend(site, address, port) for site, address, *_ in SITES]
    for backend in backends:
        await backend.start()
    workdir = Path(tempfile.mkdtemp(prefix="gslb-demo-"))
    config_path = workdir / "demo.yaml"
    config_path.write_text(demo_config(port, GEOIP))
    from dnsserver.server import bind_listener

    node = Node(config_path, load_config(config_path))
    listener = bind_listener("127.0.0.1", dns_port)
    stop = asyncio.Event()
    node_task = asyncio.ensure_future(node.run([listener], None, stop))
    loop = asyncio.get_running_loop()
    transport, asker = await loop.create_datagram_endpoint(Asker, remote_addr=("127.0.0.1", listener.port))
    tty = sys.stdout.isatty()
    started = time.monotonic()
    ident = 0
    last_lines: list[str] = []
    restore = _raw_keys(loop, backends, stop) if keys and sys.stdin.isatty() else None
    pending = sorted(script or [])
    try:
        while not stop.is_set():
            now = time.monotonic() - started
            while pending and pending[0][0] <= now:
                _, action, site = pending.pop(0)
                backend = next(b for b in backends if b.site == site)
                await (backend.stop() if action == "stop" else backend.start())
                print(f"[{now:5.1f}s] {action} {site}", flush=True)
            seen = []
            for label, address, prefix in CLIENTS:
                ident = (ident + 1) & 0xFFFF
                future: asyncio.Future[bytes] = loop.create_future()
                asker.waiting[ident] = future
                transport.sendto(ecs_query(ident, NAME, address, prefix))
                try:
                    seen.append((label, address, parse_answer(await asyncio.wait_for(future, 1.0))))
                except TimeoutError:
                    seen.append((label, address, Seen("(no answer)", None, -1)))
            lines = _table(seen, backends, node)
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J" + f"gslb demo: {NAME} on 127.0.0.1:{listener.port}   "
                                 f"t={now:5.1f}s\n\n" + "\n".join(lines)
                                 + "\n\nkeys: 1/2/3 stop or start us-east / eu-west / ap-northeast, q quits\n")
                sys.stdout.flush()
            elif lines != last_lines:
                print(f"--- t={now:5.1f}s\n" + "\n".join(lines), flush=True)
            last_lines = lines
            if duration is not None and now >= duration:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), refresh)
    finally:
        if restore is not None:
            restore()
        transport.close()
        stop.set()
        await node_task
        for backend in backends:
            await backend.stop()
    return 0


def _table(seen: list[tuple[str, str, Seen]], backends: list[Backend], node: Node) -> list[str]:
    site_of = {address: site for site, address, *_ in SITES}
    lines = [f"{'client':<18} {'subnet':<16} {'answer':<14} {'site':<13} {'ttl':>4}"]
    for label, address, s in seen:
        site = ", ".join(site_of.get(a.strip(), "?") for a in s.answer.split(",")) if s.rcode == 0 else "-"
        lines.append(f"{label:<18} {address:<16} {s.answer:<14} {site:<13} {s.ttl if s.ttl is not None else '-':>4}")
    lines += ["", f"{'key':<4} {'site':<13} {'backend':<22} {'health':<8} last check"]
    states = {t.name.split("//")[1].split(":")[0]: t for t in node.tracker.targets.values()}
    for i, b in enumerate(backends, 1):
        health = states.get(b.address)
        detail = health.last_result.detail if health and health.last_result else ""
        lines.append(f"{i:<4} {b.site:<13} {b.address + (' running' if b.running else ' STOPPED'):<22} "
                     f"{(health.state if health else '?'):<8} {detail}")
    return lines


def _raw_keys(loop: asyncio.AbstractEventLoop, backends: list[Backend], stop: asyncio.Event):  # type: ignore[no-untyped-def]
    """Read single key presses without Enter; returns the function that restores the terminal."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def on_key() -> None:
        key = os.read(fd, 1).decode(errors="ignore").lower()
        if key == "q":
            stop.set()
        elif key in "123" and key:
            loop.create_task(backends[int(key) - 1].toggle())

    loop.add_reader(fd, on_key)

    def restore() -> None:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    return restore


def parse_script(text: str) -> list[tuple[float, str, str]]:
    """'3:stop eu-west, 8:start eu-west' -> [(3.0, 'stop', 'eu-west'), (8.0, 'start', 'eu-west')]."""
    out = []
    sites = {s for s, *_ in SITES}
    for item in filter(None, (part.strip() for part in text.split(","))):
        when, _, rest = item.partition(":")
        action, _, site = rest.strip().partition(" ")
        if action not in ("stop", "start") or site not in sites:
            raise ValueError(f"bad script step {item!r}: want 'SECONDS:stop|start SITE' with SITE in "
                             f"{', '.join(sorted(sites))}")
        out.append((float(when), action, site))
    return out
