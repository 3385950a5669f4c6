"""Binding and running the listeners: UDP and TCP on the same address and port."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from dnsserver import fastudp
from dnsserver.handler import QueryHandler
from dnsserver.rrl import RateLimiter
from dnsserver.tcp import TcpConnections, TcpProtocol
from dnsserver.udp import RateLimitedUdpProtocol, UdpProtocol
from gslb.errors import GslbError

log = logging.getLogger("gslb.dns")
UDP_BUFFER = 4 * 1024 * 1024
TCP_BACKLOG = 1024


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class ListenerSockets:
    """A UDP and a TCP socket bound to the same address and port."""

    host: str
    port: int
    udp: socket.socket
    tcp: socket.socket

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


def bind_listener(host: str, port: int, *, reuse_port: bool = False, attempts: int = 20) -> ListenerSockets:
    """Bind UDP then TCP on one port; with port 0, retry until both get the same free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last: OSError | None = None
    for _ in range(attempts if port == 0 else 1):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio then sets TCP_NODELAY
        try:
            for sock in (udp, tcp):
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):  # capped by net.core.*mem_max; best effort
                    udp.setsockopt(socket.SOL_SOCKET, opt, UDP_BUFFER)
            udp.bind((host, port))
            bound = udp.getsockname()[1]
            tcp.bind((host, bound))
            tcp.listen(TCP_BACKLOG)
            udp.setblocking(False)
            tcp.setblocking(False)
            return ListenerSockets(host, bound, udp, tcp)
        except OSError as exc:
            udp.close()
            tcp.close()
            last = exc
    raise GslbError(f"cannot listen for DNS on {format_address(host, port)}: {last}")


@dataclass
class DnsServer:
    """The UDP and TCP listeners of one process, all answering through one handler."""

    handler: QueryHandler
    listeners: list[ListenerSockets]
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1024
    tcp_max_per_client: int = 32
    tcp_read_timeout: float = 5.0
    tcp_write_timeout: float = 5.0
    label: str = ""
    _transports: list[asyncio.BaseTransport] = field(default_factory=list)
    _servers: list[asyncio.Server] = field(default_factory=list)
    connections: TcpConnections | None = None
    rrl: RateLimiter | None = None
    """Response rate limiting on UDP, shared by this process's sockets; None: off."""
    fast_udp: fastudp.FastUdp | None = field(default=None, init=False)
    """The C threads answering UDP (when built, not turned off, and RRL is off); else asyncio does."""

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(lst.host, lst.port) for lst in self.listeners]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.connections = TcpConnections(max_connections=self.tcp_max_connections,
                                          idle_timeout=self.tcp_idle_timeout,
                                          max_per_client=self.tcp_max_per_client,
                                          read_timeout=self.tcp_read_timeout, write_timeout=self.tcp_write_timeout)
        self.connections.start()
        conns = self.connections
        rrl = self.rrl
        udp: Callable[[], UdpProtocol]
        if rrl is None:
            udp = functools.partial(UdpProtocol, self.handler)
        else:
            udp = functools.partial(RateLimitedUdpProtocol, self.handler, rrl)
            log.info("response rate limiting on UDP%s: %g answers/s per /%d or /%d network, window %d s, "
                     "slip %d%s", self.label, rrl.rates[0], rrl.ipv4_prefix_length, rrl.ipv6_prefix_length,
                     rrl.window, rrl.slip, ", log only" if rrl.log_only else "")
        if rrl is None and self.listeners and fastudp.available():
            self.fast_udp = fastudp.FastUdp(self.handler, label=self.label)
            log.info("dns/udp answered by the C fast path (recvmmsg/sendmmsg), one thread per socket%s",
                     self.label)
        for lst in self.listeners:
            if self.fast_udp is not None:
                self.fast_udp.start(lst.udp)
            else:
                transport, _ = await loop.create_datagram_endpoint(udp, sock=lst.udp)
                self._transports.append(transport)
            log.info("listening dns/udp on %s%s", format_address(lst.host, lst.port), self.label)
            server = await loop.create_server(lambda: TcpProtocol(self.handler, conns), sock=lst.tcp,
                                              backlog=TCP_BACKLOG)  # the default (100) would shrink it
            self._servers.append(server)
            log.info("listening dns/tcp on %s%s", format_address(lst.host, lst.port), self.label)

    async def release(self, grace: float) -> tuple[int, int]:
        """Give the sockets up to a successor that serves on the same ones: stop reading UDP (what
        is queued is the successor's to read) and accepting TCP; each open connection finishes the
        query it is reading, flushes its answers and closes. Connections still busy after
        ``grace`` seconds are cut. Returns (closed after their answers, cut)."""
        self._stop_udp(close=False)  # the UDP threads' sockets close at stop()
        for server in self._servers:
            server.close()
        conns = self.connections
        if conns is None:
            return 0, 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        finished = 0
        while conns.open:
            for conn in [c for c in conns.open if c.is_idle()]:  # between queries, all answered
                conn.close("shutdown")  # flushes, then closes
                finished += 1
            if not conns.open or loop.time() >= deadline:
                break
            await asyncio.sleep(0.01)
        cut = list(conns.open)
        for conn in cut:
            conn.close("shutdown")
            if conn.transport is not None:
                conn.transport.abort()
        return finished, len(cut)

    def _stop_udp(self, *, close: bool) -> None:
        """Stop reading UDP. The C threads stop on their eventfd, never by closing the socket
        under them (a closed descriptor does not wake a thread blocked on it, and may be
        reused); with ``close`` their sockets are closed once they have ended. An asyncio
        transport closes its socket in any case. A successor holds its own descriptors."""
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        if self.fast_udp is not None and self.fast_udp.stop() and close:
            for lst in self.listeners:
                lst.udp.close()

    async def stop(self) -> None:
        self._stop_udp(close=True)
        for server in self._servers:
            server.close()
        if self.connections is not None:
            self.connections.close_all()
        for server in self._servers:
            await server.wait_closed()
        self._transports.clear()
        self._servers.clear()
