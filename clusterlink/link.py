"""One mTLS connection between two gateways, carrying many client connections as streams.

The data path is asyncio Protocols end to end (no StreamReader/Writer): a local socket's
``data_received`` becomes one DATA frame written to the TLS transport, and a DATA frame's
payload is written straight to the other side's local socket.

Flow control is per stream, by credit: a sender may have ``INITIAL_WINDOW`` unacknowledged
bytes in flight; the receiver returns credit (WINDOW) once it has handed bytes to its local
socket and that socket is not backed up. A slow reader therefore stalls only its own stream.
The TLS transport's own backpressure pauses reading from every local socket of the link.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from clusterlink.frames import (
    HEADER_SIZE,
    FrameReader,
    FrameType,
    ProtocolError,
    decode_json,
    frame,
    json_frame,
    pack_header,
    window_frame,
)
from clusterlink.identity import PeerIdentity

log = logging.getLogger("gslb.link")

INITIAL_WINDOW = 4 << 20
CREDIT_BATCH = INITIAL_WINDOW // 4
LINK_WRITE_HIGH = 4 << 20
LOCAL_WRITE_HIGH = 1 << 20
SMALL_WRITE = 16 << 10
"""Frames smaller than this are coalesced into one TLS write per loop iteration."""


@dataclass
class LinkStats:
    bytes_in: int = 0
    bytes_out: int = 0
    streams_opened: int = 0
    streams_accepted: int = 0
    streams_reset: int = 0
    rtt_samples: list[float] = field(default_factory=list)


class Link(asyncio.Protocol):
    """A TLS connection to one peer gateway. Created unconnected; ``connection_made`` is
    called with the TLS transport once the handshake (and identity check) is done."""

    def __init__(self, *, local_cluster: str, dialer: bool,
                 on_open: Callable[[Link, int, str, str], None] | None = None,
                 on_status: Callable[[Link, dict[str, int]], None] | None = None,
                 on_ready: Callable[[Link], bool] | None = None,
                 on_closed: Callable[[Link, Exception | None], None] | None = None,
                 on_goaway: Callable[[Link], None] | None = None,
                 ping_interval: float = 1.0) -> None:
        self.local_cluster = local_cluster
        self.dialer = dialer
        self.peer: PeerIdentity | None = None
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.stats = LinkStats()
        self.status: dict[str, int] = {}
        """Healthy endpoint count per service, as the peer last reported it."""
        self.draining = False
        self.peer_draining = False
        self.closed = False
        self.ping_interval = ping_interval
        self._on_open = on_open
        self._on_status = on_status
        self._on_ready = on_ready
        self._on_closed = on_closed
        self._on_goaway = on_goaway
        self.rtt_median: float | None = None
        """Median of the last 16 ping round trips, in seconds: what routing compares."""
        self._next_id = 1 if dialer else 2
        self._reader = FrameReader(self._on_data, self._on_control)
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._write_paused = False
        self._last_seen = time.monotonic()
        self._ping_sent: dict[bytes, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._early: list[bytes] = []
        """Bytes that arrived before ``connection_made`` (a server-side start_tls hands the
        transport over only after the peer may already have sent its first frames)."""

    # ------------------------------------------------------------------ transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Room for several large frames: with the default 64 KiB mark every 256 KiB chunk
        # would pause and resume every local socket of the link.
        transport.set_write_buffer_limits(high=LINK_WRITE_HIGH)  # type: ignore[attr-defined]
        self._loop = asyncio.get_running_loop()
        self._last_seen = time.monotonic()
        if self._on_ready is not None and not self._on_ready(self):
            self.closed = True
            transport.abort()  # type: ignore[attr-defined]
            return
        self._timer = self._loop.call_later(self.ping_interval, self._tick)
        self.ping()
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            self._early.append(data)
            return
        self._last_seen = time.monotonic()
        self.stats.bytes_in += len(data)
        try:
            self._reader.feed(data)
        except ProtocolError as exc:
            log.warning("link to %s: protocol error: %s", self.peer_name, exc)
            self.abort()

    def eof_received(self) -> bool | None:
        return False

    def pause_writing(self) -> None:
        self._write_paused = True
        for stream in self.streams.values():
            stream.pause_local_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        for stream in list(self.streams.values()):
            stream.maybe_resume_local_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for stream in list(self.streams.values()):
            stream.link_lost()
        self.streams.clear()
        if self._on_closed is not None:
            self._on_closed(self, exc)

    # ------------------------------------------------------------------ writing

    @property
    def peer_name(self) -> str:
        return self.peer.cluster if self.peer is not None else "?"

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.draining and not self.peer_draining

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.stats.bytes_out += len(data)
        if len(data) >= SMALL_WRITE:
            if self._pending:
                self._flush()
            self.transport.write(data)  # type: ignore[union-attr]
            return
        self._pending.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]

    def write_data(self, sid: int, data: bytes) -> None:
        """A DATA frame. Large payloads go to TLS beside their header (``writelines``), never
        copied into a joined buffer first."""
        if self.closed:
            return
        n = len(data)
        self.stats.bytes_out += n + HEADER_SIZE
        header = pack_header(FrameType.DATA, sid, n)
        if n < SMALL_WRITE:
            self._pending.append(header + data)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)  # type: ignore[union-attr]
            return
        pending = self._pending
        self._pending = []
        pending.append(header)
        pending.append(data)
        self.transport.writelines(pending)  # type: ignore[union-attr]

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending and not self.closed:
            pending = self._pending
            self._pending = []
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))  # type: ignore[union-attr]

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    # ------------------------------------------------------------------ streams

    def open_stream(self, stream: Stream, service: str, client: str) -> None:
        """Give ``stream`` an id on this link and ask the peer to connect it to ``service``."""
        sid = self._next_id
        self._next_id += 2
        stream.attach(self, sid)
        self.streams[sid] = stream
        self.stats.streams_opened += 1
        self.write(frame(FrameType.OPEN, sid, f"{service}\n{client}".encode()))

    def accept_stream(self, sid: int, stream: Stream) -> None:
        stream.attach(self, sid)
        self.streams[sid] = stream
        self.stats.streams_accepted += 1

    def reset(self, sid: int, code: str, reason: str) -> None:
        self.streams.pop(sid, None)
        self.stats.streams_reset += 1
        self.write(json_frame(FrameType.RST, sid, {"code": code, "reason": reason}))
        self._maybe_idle()

    def forget(self, sid: int) -> None:
        self.streams.pop(sid, None)
        self._maybe_idle()

    def send_status(self, status: dict[str, int]) -> None:
        self.write(json_frame(FrameType.STATUS, 0, status))

    def go_away(self) -> None:
        """Stop carrying new streams; close once the open ones finish (certificate rotation)."""
        if not self.draining:
            self.draining = True
            self.write(frame(FrameType.GOAWAY, 0))
            self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.streams:
            return
        if self.draining and not self.closed and self.transport is not None:
            self._flush()
            self.closed = True
            self.transport.close()

    # ------------------------------------------------------------------ reading

    def _on_data(self, sid: int, chunk: bytes | memoryview) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            stream.remote_data(chunk)

    def _on_control(self, kind: int, sid: int, payload: bytes) -> None:
        if kind == FrameType.WINDOW:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.add_credit(int.from_bytes(payload[:4], "big"))
        elif kind == FrameType.FIN:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.remote_fin()
        elif kind == FrameType.OPEN:
            if sid in self.streams or sid % 2 == self._next_id % 2 or sid == 0:
                raise ProtocolError(f"OPEN for stream {sid} that is in use or ours to number")
            if self._on_open is None or self.draining:
                self.reset(sid, "refused", "this gateway accepts no streams on this link")
                return
            service, _, client = payload.decode("utf-8", "replace").partition("\n")
            if not service or len(service) > 255:
                raise ProtocolError("OPEN without a valid service name")
            self._on_open(self, sid, service, client)
        elif kind == FrameType.RST:
            stream = self.streams.pop(sid, None)
            if stream is not None:
                body = decode_json(payload) if payload else {}
                stream.remote_reset(str(body.get("code", "")), str(body.get("reason", "")))
                self._maybe_idle()
        elif kind == FrameType.PING:
            self.write(frame(FrameType.PONG, 0, payload))
        elif kind == FrameType.PONG:
            sent = self._ping_sent.pop(payload, None)
            if sent is not None:
                rtt = time.monotonic() - sent
                samples = self.stats.rtt_samples
                samples.append(rtt)
                if len(samples) > 16:
                    del samples[0]
                self.rtt_median = sorted(samples)[len(samples) // 2]
        elif kind == FrameType.STATUS:
            body = decode_json(payload)
            if not isinstance(body, dict):
                raise ProtocolError("STATUS is not an object")
            self.status = {str(k): int(v) for k, v in body.items() if isinstance(v, int)}
            if self._on_status is not None:
                self._on_status(self, self.status)
        elif kind == FrameType.GOAWAY:
            self.peer_draining = True
            if self._on_goaway is not None:
                self._on_goaway(self)
        else:
            raise ProtocolError(f"unknown frame type {kind}")

    # ------------------------------------------------------------------ liveness

    def ping(self) -> None:
        token = os.urandom(8)
        self._ping_sent[token] = time.monotonic()
        if len(self._ping_sent) > 8:
            self._ping_sent.pop(next(iter(self._ping_sent)))
        self.write(frame(FrameType.PING, 0, token))

    def _tick(self) -> None:
        """A link that has shown no sign of life for two ping intervals is dead: streams
        fail fast so clients retry, and the gateway redials."""
        if self.closed:
            return
        silent = time.monotonic() - self._last_seen
        if silent > 2 * self.ping_interval:
            log.warning("link to %s: silent for %.1fs, closing", self.peer_name, silent)
            self.abort()
            return
        self.ping()
        self._timer = self._loop.call_later(self.ping_interval, self._tick)  # type: ignore[union-attr]


class Stream(asyncio.Protocol):
    """One client connection: the protocol of its local socket and its half of a link stream."""

    __slots__ = (
        "_done",
        "_early",
        "_early_fin",
        "_fin_received",
        "_fin_sent",
        "_local_write_paused",
        "_out",
        "_owed",
        "_reading_paused",
        "bytes_down",
        "bytes_up",
        "link",
        "on_finished",
        "send_window",
        "sid",
        "transport",
    )

    def __init__(self) -> None:
        self.link: Link | None = None
        self.sid = 0
        self.transport: asyncio.Transport | None = None
        self.send_window = INITIAL_WINDOW
        self._out: list[bytes] = []
        self._owed = 0
        self._local_write_paused = False
        self._reading_paused = False
        self._early: list[bytes] = []
        self._early_fin = False
        self._fin_sent = False
        self._fin_received = False
        self._done = False
        self.on_finished: Callable[[Stream, str], None] | None = None
        self.bytes_up = 0
        """Local socket to link."""
        self.bytes_down = 0

    def attach(self, link: Link, sid: int) -> None:
        self.link = link
        self.sid = sid

    # ------------------------------------------------------------------ local socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=LOCAL_WRITE_HIGH)  # type: ignore[attr-defined]
        if self._done:
            transport.abort()  # type: ignore[attr-defined]
            return
        if self._early:
            early, self._early = self._early, []
            for chunk in early:
                self.remote_data(chunk)
        if self._early_fin:
            self.remote_fin()
        if self.link is not None and self.link.write_paused:
            self.pause_local_reading()

    def data_received(self, data: bytes) -> None:
        link = self.link
        if link is None or self._done:
            return
        n = len(data)
        self.bytes_up += n
        if not self._out and n <= self.send_window:
            self.send_window -= n
            link.write_data(self.sid, data)
            return
        self._out.append(data)
        self._drain_out()
        if self._out:
            self.pause_local_reading()

    def eof_received(self) -> bool | None:
        if self._done or self.link is None:
            return False
        self._fin_sent = True
        if not self._out:
            self.link.write(frame(FrameType.FIN, self.sid))
        self._maybe_finish()
        return True

    def pause_writing(self) -> None:
        self._local_write_paused = True

    def resume_writing(self) -> None:
        self._local_write_paused = False
        self._return_credit()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._done:
            return
        self._done = True
        link = self.link
        if link is not None and not link.closed:
            link.reset(self.sid, "closed", f"local connection lost: {exc}" if exc else "local connection closed")
        self._finished("reset" if exc else "closed")

    # ------------------------------------------------------------------ link side

    def remote_data(self, chunk: bytes | memoryview) -> None:
        transport = self.transport
        if transport is None:
            if sum(map(len, self._early)) + len(chunk) > INITIAL_WINDOW:
                self._violation("data beyond the window before the stream was connected")
                return
            self._early.append(bytes(chunk))
            return
        n = len(chunk)
        self.bytes_down += n
        transport.write(chunk)
        self._owed += n
        if self._owed >= CREDIT_BATCH and not self._local_write_paused:
            self._return_credit()

    def _return_credit(self) -> None:
        if self._owed and self.link is not None and not self._done:
            self.link.write(window_frame(self.sid, self._owed))
            self._owed = 0

    def add_credit(self, credit: int) -> None:
        self.send_window += credit
        if self._out:
            self._drain_out()
            if self._out:
                return
            if self._fin_sent and self.link is not None:
                self.link.write(frame(FrameType.FIN, self.sid))
                self._maybe_finish()
        self.maybe_resume_local_reading()

    def _drain_out(self) -> None:
        link = self.link
        assert link is not None
        while self._out and self.send_window > 0:
            head = self._out[0]
            if len(head) <= self.send_window:
                self._out.pop(0)
                part = head
            else:
                part, self._out[0] = head[:self.send_window], head[self.send_window:]
            self.send_window -= len(part)
            link.write_data(self.sid, part)

    def remote_fin(self) -> None:
        self._fin_received = True
        transport = self.transport
        if transport is None:
            self._early_fin = True
            return
        if transport.can_write_eof():
            transport.write_eof()
        self._maybe_finish()

    def remote_reset(self, code: str, reason: str) -> None:
        if self._done:
            return
        self._done = True
        log.debug("stream %d reset by peer: %s %s", self.sid, code, reason)
        if self.transport is not None:
            self.transport.abort()
        self._finished(f"peer-{code or 'reset'}")

    def link_lost(self) -> None:
        if self._done:
            return
        self._done = True
        if self.transport is not None:
            self.transport.abort()
        self._finished("link-lost")

    def _violation(self, why: str) -> None:
        if self.link is not None:
            self.link.reset(self.sid, "flow-control", why)
        self._done = True
        if self.transport is not None:
            self.transport.abort()
        self._finished("flow-control")

    def _maybe_finish(self) -> None:
        if self._fin_sent and self._fin_received and not self._out and not self._done:
            self._done = True
            if self.transport is not None:
                self.transport.close()
            if self.link is not None:
                self.link.forget(self.sid)
            self._finished("done")

    def _finished(self, how: str) -> None:
        if self.on_finished is not None:
            self.on_finished(self, how)

    # ------------------------------------------------------------------ backpressure

    def pause_local_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def maybe_resume_local_reading(self) -> None:
        if (self._reading_paused and not self._out and self.link is not None
                and not self.link.write_paused and self.transport is not None and not self._done):
            self._reading_paused = False
            self.transport.resume_reading()


__all__ = ["HEADER_SIZE", "INITIAL_WINDOW", "Link", "LinkStats", "Stream"]
