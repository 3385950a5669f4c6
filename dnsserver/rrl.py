"""Response rate limiting (RRL), as BIND's ``rate-limit`` and NSD's ``rrl-*`` do it.

A spoofed-source flood asks us for big answers "from" a victim's address; RRL keeps us
from being its amplifier. Replies are accounted per (client network, response kind, key):

| kind     | key                                  | rate                    |
|----------|--------------------------------------|-------------------------|
| answer   | question name (any case) and type    | ``responses_per_second``|
| nodata   | zone (owner of the SOA in authority) | ``nodata_per_second``   |
| nxdomain | zone (owner of the SOA in authority) | ``nxdomains_per_second``|
| referral | delegation (owner of the NS set)     | ``referrals_per_second``|
| error    | none: all errors to that network     | ``errors_per_second``   |

Each account earns ``rate`` credits a second up to ``rate`` and spends one per reply; a
reply that finds it negative is limited. The balance may sink to ``-window * rate``, so a
flood that keeps going stays limited, and a network that was limited must slow down for
up to ``window`` seconds to be answered again. Of the limited replies every ``slip``-th is
sent as a tiny TC=1 reply (header and question) so a real client whose address is being
spoofed retries over TCP; ``slip: 0`` drops them all, ``slip: 1`` truncates them all.
Error replies are as small as a truncated one and slip as themselves. TCP is never limited.

The table is two generations of plain dicts: when the newer one fills half of
``max_table_size`` it becomes the older one and the previous older one is dropped; an
account in use moves forward on its next reply. A flood from random networks churns the
table but cannot grow it. ``RateLimiter`` is pure (the caller passes the time), so tests
need no sockets and no sleeping.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum
from ipaddress import IPv4Network, IPv6Network, ip_address

from dnsserver.wire import WireError, question_name_end, skip_name


class Kind(IntEnum):
    ANSWER = 0
    NODATA = 1
    NXDOMAIN = 2
    REFERRAL = 3
    ERROR = 4


class Action(IntEnum):
    SEND = 0
    DROP = 1
    SLIP = 2


_SEND, _DROP, _SLIP = Action.SEND, Action.DROP, Action.SLIP
# plain ints on the hot path: they hash and index faster than enum members
_ANSWER, _NODATA, _NXDOMAIN, _REFERRAL, _ERROR = (int(kind) for kind in Kind)
EXEMPT = -1
"""The prefix key of an exempt client: its replies are never limited."""
PREFIX_CACHE = 65536
_V6_TAG = 1 << 128
_NS = 2
_FLAG_AA, _FLAG_TC = 0x04, 0x02  # in the third header byte


class _Account:
    __slots__ = ("credit", "slips", "stamp")

    def __init__(self, credit: float, stamp: float) -> None:
        self.credit = credit
        self.stamp = stamp
        self.slips = 0


class RateLimiter:
    """Per (network, kind, key) token accounts; ``check`` says what to do with one reply."""

    def __init__(
        self,
        *,
        responses_per_second: int = 20,
        nxdomains_per_second: int | None = None,
        nodata_per_second: int | None = None,
        referrals_per_second: int | None = None,
        errors_per_second: int | None = None,
        window: int = 15,
        slip: int = 2,
        ipv4_prefix_length: int = 24,
        ipv6_prefix_length: int = 56,
        exempt_clients: Iterable[IPv4Network | IPv6Network] = (),
        log_only: bool = False,
        max_table_size: int = 100_000,
    ) -> None:
        def rate(value: int | None) -> float:
            return float(responses_per_second if value is None else value)

        self.rates = (rate(responses_per_second), rate(nodata_per_second), rate(nxdomains_per_second),
                      rate(referrals_per_second), rate(errors_per_second))  # indexed by Kind
        self.window = window
        self.slip = slip
        self.log_only = log_only
        self.ipv4_prefix_length = ipv4_prefix_length
        self.ipv6_prefix_length = ipv6_prefix_length
        self.exempt = tuple(exempt_clients)
        self.max_table_size = max_table_size
        self._generation = max(1, max_table_size // 2)
        self._current: dict[tuple[int, int, bytes], _Account] = {}
        self._previous: dict[tuple[int, int, bytes], _Account] = {}
        self.prefixes: dict[str, int] = {}
        """Source address text -> prefix key (or ``EXEMPT``); read inline by the UDP path."""
        self.dropped = [0] * len(Kind)
        self.slipped = [0] * len(Kind)
        self.exempted = 0

    @property
    def table_size(self) -> int:
        return len(self._current) + len(self._previous)

    def prefix(self, host: str) -> int:
        """The accounting key of a client address: its network as an int, or ``EXEMPT``."""
        key = self.prefixes.get(host)
        if key is None:
            address = ip_address(host.partition("%")[0])
            if any(address in net for net in self.exempt):
                key = EXEMPT
            elif address.version == 4:
                key = int(address) >> (32 - self.ipv4_prefix_length)
            else:
                key = _V6_TAG | int(address) >> (128 - self.ipv6_prefix_length)
            if len(self.prefixes) >= PREFIX_CACHE:
                self.prefixes.clear()
            self.prefixes[host] = key
        return key

    def check(self, prefix: int, kind: int, key: bytes, now: float) -> Action:
        """Account one reply of ``kind`` for ``key`` to the network ``prefix`` at time ``now``
        (seconds, monotonic) and say whether to send it, drop it or slip it."""
        if prefix < 0:  # EXEMPT
            self.exempted += 1
            return _SEND
        rate = self.rates[kind]
        if not rate:
            return _SEND
        table_key = (prefix, kind, key)
        account = self._current.get(table_key)
        if account is None:
            account = self._previous.pop(table_key, None)
            if account is None:
                account = _Account(rate, now)
            if len(self._current) >= self._generation:
                self._previous = self._current
                self._current = {}
            self._current[table_key] = account
        credit = account.credit
        if now > account.stamp:
            credit += (now - account.stamp) * rate
            if credit > rate:
                credit = rate
            account.stamp = now
        credit -= 1
        if credit >= 0:
            account.credit = credit
            return _SEND
        floor = -self.window * rate
        account.credit = credit if credit > floor else floor
        if self.slip:
            account.slips += 1
            if account.slips >= self.slip:
                account.slips = 0
                self.slipped[kind] += 1
                return _SLIP
        self.dropped[kind] += 1
        return _DROP

    def counts(self) -> dict[tuple[str, str], int]:
        """(action, kind) -> replies so far; with ``log_only`` the actions are would_drop and
        would_slip (the replies went out)."""
        drop, slip = ("would_drop", "would_slip") if self.log_only else ("dropped", "slipped")
        out = {("exempt", "any"): self.exempted}
        for kind in Kind:
            out[(drop, kind.name.lower())] = self.dropped[kind]
            out[(slip, kind.name.lower())] = self.slipped[kind]
        return out


def classify(reply: bytes) -> tuple[int, bytes]:
    """The (kind, key) a reply of ours is accounted under, read from its bytes (so cached
    and freshly built replies are treated alike). Names are lowercased: changing the case
    of the question does not open a new account."""
    rcode = reply[3] & 0x0F
    if rcode not in (0, 3) or reply[4:6] != b"\x00\x01":
        return _ERROR, b""
    try:
        end = question_name_end(reply, 12)
        an, ns = struct.unpack_from("!HH", reply, 6)
        if rcode == 0 and an:
            return _ANSWER, reply[12:end].lower() + reply[end : end + 2]
        offset = end + 4
        for _ in range(an):  # a CNAME chain ending in NXDOMAIN
            offset = skip_name(reply, offset)
            offset += 10 + struct.unpack_from("!H", reply, offset + 8)[0]
        if not ns:
            # no authority: a TC=1 reply with no records stands for an answer
            return (_NXDOMAIN, b"") if rcode else (_ANSWER, reply[12:end].lower() + reply[end : end + 2])
        owner = _name_at(reply, offset)
        rtype = struct.unpack_from("!H", reply, skip_name(reply, offset))[0]
    except (WireError, IndexError, struct.error):
        return (_NXDOMAIN if rcode else _ANSWER), b""
    if rcode:
        return _NXDOMAIN, owner
    if rtype == _NS and not reply[2] & _FLAG_AA:
        return _REFERRAL, owner
    return _NODATA, owner


def _name_at(message: bytes, offset: int) -> bytes:
    """The name at ``offset`` in wire form, pointers followed, lowercased."""
    out = bytearray()
    for _ in range(128):
        length = message[offset]
        if length >= 0xC0:
            offset = ((length & 0x3F) << 8) | message[offset + 1]
            continue
        out += message[offset : offset + length + 1]
        if not length:
            return bytes(out).lower()
        offset += length + 1
    raise IndexError("name too long or pointer loop")


def slip_reply(reply: bytes, kind: int, query: bytes, *, udp_size: int) -> bytes:
    """The TC=1 stand-in for a limited reply: its header and question, and an OPT when the
    query had one. Errors are that small already and slip as they are."""
    if kind == _ERROR or reply[4:6] != b"\x00\x01":
        return reply
    end = question_name_end(reply, 12) + 4
    has_opt = query[10:12] != b"\x00\x00"
    opt = b"\x00\x00\x29" + struct.pack("!H", udp_size) + bytes(6) if has_opt else b""
    return (reply[:2] + bytes((reply[2] | _FLAG_TC, reply[3])) + b"\x00\x01\x00\x00\x00\x00"
            + (b"\x00\x01" if has_opt else b"\x00\x00") + reply[12:end] + opt)
