"""DNS over UDP: one ``DatagramProtocol`` per socket; the exact-reply cache is checked inline."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dnsserver.handler import QueryHandler

log = logging.getLogger("gslb.dns")


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, handler: QueryHandler) -> None:
        self.handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        entry = self.handler.exact_udp.get(data[2:])
        if entry is not None:
            entry.hits += 1
            self.transport.sendto(data[:2] + entry.tail, addr)  # type: ignore[union-attr]
            return
        reply = self.handler.handle(data, addr[0])
        if reply is not None:
            self.transport.sendto(reply, addr)  # type: ignore[union-attr]

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: nothing to do but not crash.
        log.debug("udp error: %s", exc)
