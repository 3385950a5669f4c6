"""DNS helpers for tests: TCP framing for raw bytes (RFC 7766: 2-byte length prefix) and a
plain A query over UDP."""

from __future__ import annotations

import socket
import struct

import dns.message
import dns.query
import dns.rdatatype


def query_a(host: str, port: int, name: str, timeout: float = 2.0) -> tuple[int, tuple[str, ...]]:
    """(rcode, sorted A addresses) of one UDP query."""
    response = dns.query.udp(dns.message.make_query(name, "A"), host, port=port, timeout=timeout)
    addrs = sorted(rd.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)
    return response.rcode(), tuple(addrs)


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


def send_without_reading(sock: socket.socket, messages: list[bytes]) -> int:
    """Write ``messages`` framed, never reading the replies; stop early when the kernel takes
    no more (the server stopped reading). Returns the bytes sent."""
    payload = b"".join(frame(m) for m in messages)
    sock.setblocking(False)
    sent = 0
    for _ in range(10_000):
        if sent >= len(payload):
            break
        try:
            sent += sock.send(payload[sent : sent + 65536])
        except BlockingIOError:
            break
    return sent


def read_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack("!H", recv_exact(sock, 2))
    return recv_exact(sock, size)
