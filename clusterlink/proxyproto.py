"""PROXY protocol v2 headers, so an exported service sees who really called it: the
original client address and the calling cluster's SPIFFE identity (in a TLV)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address, ip_address

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
VERSION_PROXY = 0x21
TCP4, TCP6 = 0x11, 0x21
TLV_SPIFFE = 0xE0
"""A type in the range the spec leaves to applications (PP2_TYPE_MIN_CUSTOM)."""


def _split(hostport: str) -> tuple[str, int] | None:
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def proxy_header(client: str, destination: tuple[str, int], spiffe: str) -> bytes:
    """The header for a stream from ``client`` ("ip:port") to ``destination``. When the
    client address is unknown or of another family than the destination, the LOCAL-style
    UNSPEC form is used and only the identity is carried."""
    tlv = b""
    if spiffe:
        raw = spiffe.encode()
        tlv = struct.pack("!BH", TLV_SPIFFE, len(raw)) + raw
    src = _split(client)
    try:
        dst_ip = ip_address(destination[0])
        src_ip = ip_address(src[0]) if src else None
    except ValueError:
        src_ip = dst_ip = None
    if src is not None and isinstance(src_ip, IPv4Address) and isinstance(dst_ip, IPv4Address):
        body = src_ip.packed + dst_ip.packed + struct.pack("!HH", src[1], destination[1])
        family = TCP4
    elif src is not None and isinstance(src_ip, IPv6Address) and isinstance(dst_ip, IPv6Address):
        body = src_ip.packed + dst_ip.packed + struct.pack("!HH", src[1], destination[1])
        family = TCP6
    else:
        body, family = b"", 0x00
    payload = body + tlv
    return SIGNATURE + struct.pack("!BBH", VERSION_PROXY, family, len(payload)) + payload
