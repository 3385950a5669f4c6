"""DNS over TCP framing for tests that speak raw bytes (RFC 7766: 2-byte length prefix)."""

from __future__ import annotations

import socket
import struct


def frame(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    for _ in range(n + 1):
        if len(buf) == n:
            return buf
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    raise AssertionError("unreachable")


def read_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack("!H", recv_exact(sock, 2))
    return recv_exact(sock, size)
