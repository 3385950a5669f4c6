"""DNS over TCP (RFC 7766): 2-byte length framing, several and pipelined queries per
connection, an idle timeout, a connection cap, and backpressure when a client stops reading."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from dnsserver.handler import QueryHandler

log = logging.getLogger("gslb.dns")


class TcpConnections:
    """Shared by every connection of one server: the cap and the idle sweep."""

    def __init__(self, *, max_connections: int, idle_timeout: float) -> None:
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.open: set[TcpProtocol] = set()
        self.refused = 0
        self._sweeper: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(min(1.0, self.idle_timeout / 2), self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self.open if now - c.last_active > self.idle_timeout]:
            conn.close()
        self._sweeper = asyncio.get_running_loop().call_later(min(1.0, self.idle_timeout / 2), self._sweep)

    def close_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.open):
            conn.close()


class TcpProtocol(asyncio.Protocol):
    def __init__(self, handler: QueryHandler, connections: TcpConnections) -> None:
        self.handler = handler
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.client = ""
        self.last_active = time.monotonic()
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.connections.open) >= self.connections.max_connections:
            self.connections.refused += 1
            transport.abort()  # type: ignore[attr-defined]
            return
        peer: Any = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        self.connections.open.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        self.buffer += data
        self._answer_buffered()

    def _answer_buffered(self) -> None:
        """Answer every complete message, stopping as soon as the client's unread replies
        pass the transport's high-water mark (``pause_writing``): the rest waits here."""
        buf = self.buffer
        transport = self.transport
        assert transport is not None
        exact = self.handler.exact_tcp
        while not self.paused and len(buf) >= 2:
            size = (buf[0] << 8) | buf[1]
            if len(buf) < size + 2:
                break
            message = bytes(buf[2 : size + 2])
            del buf[: size + 2]
            entry = exact.get(message[2:])
            if entry is not None:
                entry.hits += 1
                transport.write((len(entry.tail) + 2).to_bytes(2, "big") + message[:2] + entry.tail)
                continue
            for reply in self.handler.handle_stream(message, self.client):
                transport.write(len(reply).to_bytes(2, "big") + reply)
            if transport.is_closing():
                return

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading and answering its queries.
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self._answer_buffered()

    def eof_received(self) -> bool | None:
        return False  # close our side once the replies are flushed

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.open.discard(self)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
