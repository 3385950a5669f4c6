"""DNS over UDP: one ``DatagramProtocol`` per socket; the exact-reply cache is checked inline.

With response rate limiting configured the server builds ``RateLimitedUdpProtocol``
instead, so the plain path pays nothing for RRL when it is off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from dnsserver.handler import QueryHandler
from dnsserver.rrl import Action, Kind, RateLimiter, classify, slip_reply

log = logging.getLogger("gslb.dns")
RRL_LOG_INTERVAL = 10.0
_DROP = Action.DROP


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


class RateLimitedUdpProtocol(UdpProtocol):
    """UDP with RRL: every reply, cached or not, is accounted before it is sent. Replies
    are still counted in the query stats when RRL then drops or slips them."""

    def __init__(self, handler: QueryHandler, limiter: RateLimiter) -> None:
        super().__init__(handler)
        self.limiter = limiter
        self._logged_at = [-RRL_LOG_INTERVAL] * len(Kind)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        entry = self.handler.exact_udp.get(data[2:])
        if entry is not None:
            entry.hits += 1
            reply = data[:2] + entry.tail
            account = entry.rrl
            if account is None:
                account = entry.rrl = classify(reply)
        else:
            fresh = self.handler.handle(data, addr[0])
            if fresh is None:
                return
            reply = fresh
            account = classify(reply)
        limiter = self.limiter
        host = addr[0]
        prefix = limiter.prefixes.get(host)
        if prefix is None:
            prefix = limiter.prefix(host)
        kind, key = account
        action = limiter.check(prefix, kind, key, time.monotonic())
        if action:
            self._note(host, kind)
            if not limiter.log_only:
                if action == _DROP:
                    return
                reply = slip_reply(reply, kind, data, udp_size=self.handler.udp_size)
        self.transport.sendto(reply, addr)  # type: ignore[union-attr]

    def _note(self, host: str, kind: int) -> None:
        """At most one line per kind and interval: a flood must not become a log flood."""
        now = time.monotonic()
        if now - self._logged_at[kind] < RRL_LOG_INTERVAL:
            return
        self._logged_at[kind] = now
        limiter = self.limiter
        log.warning("rate limiting %s replies to the network of %s%s; so far %d dropped, %d slipped "
                    "(all kinds)", Kind(kind).name.lower(), host, " (log only)" if limiter.log_only else "",
                    sum(limiter.dropped), sum(limiter.slipped))
