"""The link's wire format: 9-byte frame headers over one TLS 1.3 connection.

    type (u8) | stream id (u32) | payload length (u32) | payload

Many client connections ride one long-lived link as streams, so a new connection costs a
frame, not a TLS handshake. Stream ids are odd when the dialing side opens them and even
when the accepting side does, so both ends can open streams without agreeing first.
Stream 0 carries link-level frames (ping, pong, service status, go-away).
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct("!BII")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 1 << 20
"""A peer sending a larger frame is broken or hostile: the link is closed."""
MAX_CONTROL = 64 << 10
"""Control frames are buffered whole, so they get a much smaller bound."""

pack_header = HEADER.pack
unpack_header = HEADER.unpack_from


class FrameType(enum.IntEnum):
    OPEN = 1       # payload: UTF-8 "<service>\n<client ip:port>"
    DATA = 2
    FIN = 3        # the sender will write no more on this stream (half-close)
    RST = 4        # payload: JSON {"code": ..., "reason": ...}; the stream is gone
    WINDOW = 5     # payload: u32 credit the receiver returns
    PING = 6       # stream 0; payload: 8 opaque bytes echoed in PONG
    PONG = 7
    STATUS = 8     # stream 0; payload: JSON {service: healthy endpoint count}
    GOAWAY = 9     # stream 0; the sender opens no more streams here and will close when idle


class ProtocolError(Exception):
    """The peer broke the framing rules; the whole link is closed."""


def frame(kind: FrameType, stream: int, payload: bytes = b"") -> bytes:
    return pack_header(kind, stream, len(payload)) + payload


def json_frame(kind: FrameType, stream: int, body: Any) -> bytes:
    return frame(kind, stream, json.dumps(body, separators=(",", ":")).encode())


def window_frame(stream: int, credit: int) -> bytes:
    return pack_header(FrameType.WINDOW, stream, 4) + credit.to_bytes(4, "big")


def decode_json(payload: bytes | memoryview) -> Any:
    try:
        return json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"bad JSON payload: {exc}") from None


class FrameReader:
    """Incremental parser. DATA payloads are handed on as they arrive (a 1 MiB frame is
    never buffered whole); control frames are delivered complete.

    ``on_data(stream, chunk)`` and ``on_control(type, stream, payload)`` are called in order.
    """

    __slots__ = ("_buf", "_data_left", "_data_stream", "_on_control", "_on_data")

    def __init__(self, on_data: Callable[[int, bytes | memoryview], None],
                 on_control: Callable[[int, int, bytes], None]) -> None:
        self._buf = bytearray()
        self._data_left = 0
        self._data_stream = 0
        self._on_data = on_data
        self._on_control = on_control

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos = 0
        end = len(data)
        if self._buf:
            # Finish a header or control frame split across reads, using as few bytes as it needs.
            pos = self._complete_buffered(view)
            if pos < 0:
                return
        while pos < end:
            if self._data_left:
                take = min(self._data_left, end - pos)
                self._data_left -= take
                self._on_data(self._data_stream, view[pos:pos + take])
                pos += take
                continue
            if end - pos < HEADER_SIZE:
                self._buf += view[pos:]
                return
            kind, stream, length = unpack_header(view, pos)
            if kind == FrameType.DATA:
                if length > MAX_PAYLOAD:
                    raise ProtocolError(f"DATA frame of {length} bytes exceeds {MAX_PAYLOAD}")
                pos += HEADER_SIZE
                self._data_left = length
                self._data_stream = stream
                continue
            if length > MAX_CONTROL:
                raise ProtocolError(f"control frame of {length} bytes exceeds {MAX_CONTROL}")
            if end - pos - HEADER_SIZE < length:
                self._buf += view[pos:]
                return
            start = pos + HEADER_SIZE
            self._on_control(kind, stream, bytes(view[start:start + length]))
            pos = start + length

    def _complete_buffered(self, view: memoryview) -> int:
        """Move bytes from ``view`` into the buffer until it holds a whole header (DATA) or
        frame (control). Returns the position in ``view`` to continue from, or -1 when
        everything was consumed and more is needed."""
        buf = self._buf
        need = HEADER_SIZE - len(buf)
        if need > 0:
            if len(view) < need:
                buf += view
                return -1
            buf += view[:need]
            used = need
        else:
            used = 0
        kind, stream, length = unpack_header(buf, 0)
        if kind == FrameType.DATA:
            if length > MAX_PAYLOAD:
                raise ProtocolError(f"DATA frame of {length} bytes exceeds {MAX_PAYLOAD}")
            buf.clear()
            self._data_left = length
            self._data_stream = stream
            return used
        if length > MAX_CONTROL:
            raise ProtocolError(f"control frame of {length} bytes exceeds {MAX_CONTROL}")
        missing: int = HEADER_SIZE + length - len(buf)
        if len(view) - used < missing:
            buf += view[used:]
            return -1
        buf += view[used:used + missing]
        payload = bytes(buf[HEADER_SIZE:])
        buf.clear()
        self._on_control(kind, stream, payload)
        return used + missing
