"""DNS over TCP (RFC 7766): 2-byte length framing, several and pipelined queries per
connection, and the resource bounds a server facing the open internet needs.

- Caps: at most ``max_connections`` in all and ``max_per_client`` per client (an IPv4
  address, or an IPv6 /64, which one host usually holds whole).
- At the global cap the least recently active *idle* connection (nothing half received,
  nothing unsent, quiet for a tenth of the idle timeout) is closed to make room, the way
  Knot's XDP TCP stack resets its least recently active connections; only when none
  qualifies is the newcomer turned away, as NSD does with ``tcp-reject-overflow`` (plain
  NSD and Knot stop accepting, which leaves newcomers in the kernel's backlog instead).
  The quiet period keeps a flood of new connections from cutting clients off between
  two of their queries.
- Timeouts, checked by one sweep: idle (no byte from the client), read (a message begun
  but not finished, timed from its first byte, so trickling a byte now and then does not
  help a slowloris; Knot's ``tcp-io-timeout``) and write (a client that stops reading
  its replies: the server stops reading from it too, and gives up after this).
- Bounded buffers: the transport reads into one buffer that never grows past one
  maximal message (64 KiB plus its length), and no more queries are answered while the
  transport holds more than ``WRITE_HIGH`` unsent bytes. (A zone transfer is written
  whole; only clients in ``allow_transfer`` get one.)

Every close is counted by reason in ``TcpConnections.closed``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter, OrderedDict
from typing import Any

from dnsserver.handler import QueryHandler

log = logging.getLogger("gslb.dns")

MAX_MESSAGE = 2 + 65535  # the length prefix and the largest message it can announce
INITIAL_BUFFER = 4096
WRITE_HIGH = 64 * 1024  # unsent reply bytes at which a connection stops being answered
WRITE_LOW = 16 * 1024
CLOSE_REASONS = ("client", "idle", "read_timeout", "write_timeout", "evicted", "refused",
                 "refused_per_client", "shutdown")
_ABORT = frozenset({"read_timeout", "write_timeout"})  # nothing worth flushing, or it never would be


def client_key(host: str) -> str:
    """What the per-client cap counts: the address, or for IPv6 its /64."""
    if ":" not in host:
        return host
    prefix = int(ipaddress.IPv6Address(host.partition("%")[0])) >> 64
    return f"{prefix:016x}::/64"


class TcpConnections:
    """Shared by every connection of one server: the caps, the timeouts and their sweep,
    and the close counters."""

    def __init__(self, *, max_connections: int, idle_timeout: float, max_per_client: int = 32,
                 read_timeout: float = 5.0, write_timeout: float = 5.0) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.evict_after = idle_timeout / 10
        self.open: set[TcpProtocol] = set()
        self._by_activity: OrderedDict[TcpProtocol, None] = OrderedDict()  # least recently active first
        self.per_client: Counter[str] = Counter()
        self.closed: Counter[str] = Counter()
        self._interval = min(1.0, idle_timeout, read_timeout, write_timeout) / 2
        self._sweeper: asyncio.TimerHandle | None = None
        self._last_warning = 0.0

    @property
    def refused(self) -> int:
        """New connections turned away at once (either cap)."""
        return self.closed["refused"] + self.closed["refused_per_client"]

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(self._interval, self._sweep)

    def admit(self, conn: TcpProtocol) -> bool:
        """Take ``conn`` in, making room if needed; False (counted) when it must go."""
        reason = None
        if self.per_client[conn.key] >= self.max_per_client:
            reason = "refused_per_client"
        elif len(self.open) >= self.max_connections and not self._evict_one(time.monotonic()):
            reason = "refused"
        if reason is not None:
            self.closed[reason] += 1
            now = time.monotonic()
            if now - self._last_warning > 10:
                self._last_warning = now
                log.warning("dns/tcp: connection from %s %s (%d open, %d from this client)", conn.client,
                            reason.replace("_", " "), len(self.open), self.per_client[conn.key])
            return False
        self.open.add(conn)
        self._by_activity[conn] = None
        self.per_client[conn.key] += 1
        return True

    def _evict_one(self, now: float) -> bool:
        for conn in self._by_activity:  # least recently active first
            if conn.is_idle():
                if now - conn.last_active < self.evict_after:
                    return False  # every other idle one was active more recently still
                conn.close("evicted")
                return True
        return False

    def touch(self, conn: TcpProtocol) -> None:
        if conn in self._by_activity:  # not one already let go
            self._by_activity.move_to_end(conn)

    def forget(self, conn: TcpProtocol, reason: str) -> None:
        """Release ``conn``'s slot now (not when the transport is done) and count why."""
        if conn not in self.open:
            return
        self.open.discard(conn)
        del self._by_activity[conn]
        left = self.per_client[conn.key] - 1
        if left > 0:
            self.per_client[conn.key] = left
        else:
            del self.per_client[conn.key]
        self.closed[reason] += 1

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.open):
            reason = conn.overdue(now)
            if reason is not None:
                conn.close(reason)
        self._sweeper = asyncio.get_running_loop().call_later(self._interval, self._sweep)

    def close_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.open):
            conn.close("shutdown")


class TcpProtocol(asyncio.BufferedProtocol):
    def __init__(self, handler: QueryHandler, connections: TcpConnections) -> None:
        self.handler = handler
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.key = ""
        self.last_active = time.monotonic()
        self.partial_since: float | None = None  # first byte of the message still incomplete
        self.paused_since: float | None = None
        self.paused = False
        self._buf = bytearray(INITIAL_BUFFER)
        self._view = memoryview(self._buf)
        self._end = 0  # bytes held; complete messages are answered and dropped at once

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer: Any = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        self.key = client_key(self.client)
        if not self.connections.admit(self):
            transport.abort()  # type: ignore[attr-defined]
            return
        self.transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)  # type: ignore[union-attr]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._end == len(self._buf):  # one message larger than the buffer so far
            self._resize(min(MAX_MESSAGE, 2 * len(self._buf)))
        return self._view[self._end :]

    def _resize(self, size: int) -> None:
        buf = bytearray(size)
        buf[: self._end] = self._view[: self._end]
        self._buf, self._view = buf, memoryview(buf)

    def buffer_updated(self, nbytes: int) -> None:
        now = time.monotonic()
        self.last_active = now
        self.connections.touch(self)
        if self._end == 0:
            self.partial_since = now
        self._end += nbytes
        self._answer_buffered(now)

    def _answer_buffered(self, now: float) -> None:
        """Answer every complete message, stopping as soon as the client's unread replies
        pass the transport's high-water mark (``pause_writing``): the rest waits here."""
        buf, view, end = self._buf, self._view, self._end
        transport = self.transport
        assert transport is not None
        exact = self.handler.exact_tcp
        start = 0
        while not self.paused and end - start >= 2:
            stop = start + 2 + ((buf[start] << 8) | buf[start + 1])
            if stop > end:
                break
            entry = exact.get(view[start + 4 : stop].tobytes())
            if entry is not None:
                entry.hits += 1
                transport.write((len(entry.tail) + 2).to_bytes(2, "big") + view[start + 2 : start + 4].tobytes()
                                + entry.tail)
            else:
                for reply in self.handler.handle_stream(view[start + 2 : stop].tobytes(), self.client):
                    transport.write(len(reply).to_bytes(2, "big") + reply)
            start = stop
            if transport.is_closing():
                break
        if start == 0:
            return
        left = end - start
        if left:
            buf[:left] = buf[start:end]
            self.partial_since = now  # what is left began with the last read
        else:
            self.partial_since = None
            if len(buf) > INITIAL_BUFFER:  # give back what one large message needed
                self._buf = bytearray(INITIAL_BUFFER)
                self._view = memoryview(self._buf)
        self._end = left

    @property
    def buffer(self) -> memoryview:
        """What has been received and not answered yet."""
        return self._view[: self._end]

    def is_idle(self) -> bool:
        """Nothing half received and nothing unsent: closing it loses no work."""
        return self._end == 0 and not self.paused

    def overdue(self, now: float) -> str | None:
        """Which timeout, if any, this connection has run past."""
        if self.paused:
            return "write_timeout" if now - (self.paused_since or now) > self.connections.write_timeout else None
        if self.partial_since is not None and now - self.partial_since > self.connections.read_timeout:
            return "read_timeout"
        if now - self.last_active > self.connections.idle_timeout:
            return "idle"
        return None

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading and answering its queries.
        self.paused = True
        self.paused_since = time.monotonic()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        now = time.monotonic()
        self.paused = False
        self.paused_since = None
        self.last_active = now
        self.connections.touch(self)
        if self._end:
            self.partial_since = now  # the read clock stood still while we were not reading
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self._answer_buffered(now)

    def eof_received(self) -> bool | None:
        return False  # close our side once the replies are flushed

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.forget(self, "client")

    def close(self, reason: str = "shutdown") -> None:
        self.connections.forget(self, reason)
        if self.transport is not None:
            if reason in _ABORT:
                self.transport.abort()
            else:
                self.transport.close()
