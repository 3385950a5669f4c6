"""One query in, one reply out: the transport-independent core of the server.

Two caches make the common case cheap, both dropped whole when a new snapshot arrives:
- ``exact_udp`` / ``exact_tcp`` map the query bytes after the ID to the reply bytes after
  the ID. A repeated query costs one dict lookup; transports consult them first.
- ``_prepared`` maps (name, type, class) to the encoded sections, so a query that differs
  only in ID-independent details (letter case, EDNS size, flags) skips resolve and dnslib.
Answers that depend on the client are cached only in two forms: per client subnet (the ECS
option is part of the exact key), and, for answers that depended on nothing but the GeoIP
record of the client's address (``VARY_LOCATION``), per record in ``located_udp``:
query shape (the bytes after the ID, ECS address zeroed) -> (GeoIP tree, {record: Entry}).
Only the C UDP loop (``dnsserver.fastudp``) reads that one; it walks the tree itself and
writes the client's ECS address and the record network's scope into the reply.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, NamedTuple

from dnsserver.encode import Prepared, build_reply, is_plain_negative, plain_rdata, prepare, prepare_negative
from dnsserver.stats import Entry, Labels, QueryStats, rcode_label, type_label
from dnsserver.transfer import axfr_messages, transfer_allowed
from dnsserver.wire import (
    FORMERR,
    NOTIMP,
    OPCODE_NOTIFY,
    OPCODE_QUERY,
    REFUSED,
    SERVFAIL,
    Drop,
    ParsedQuery,
    WireError,
    header_only_reply,
    parse_query,
)
from gslb.compile import zone_of
from gslb.endpoint import Client
from gslb.policies import VARY_CLIENT, VARY_LOCATION, VARY_NONE
from gslb.resolve import Answer, Query, resolve
from gslb.snapshot import Snapshot

log = logging.getLogger("gslb.dns")

T_OPT, T_IXFR, T_AXFR, T_SOA = 41, 251, 252, 6
META_TYPES = frozenset({T_OPT, 249, 250})  # OPT, TKEY, TSIG are not questions
NOTAUTH = 9
CACHE_LIMIT = 100_000
NEGATIVE_CACHE_LIMIT = 8192
"""Replies without answer records (NXDOMAIN, NODATA, referrals) get their own small cache: a
random-name flood makes every one of them new, and must neither grow memory nor push the
popular positive answers out."""


class LocatedReplies(NamedTuple):
    """The replies to one query shape, per GeoIP record (a tuple: the C loop reads it as one)."""

    tree: Any
    """The ``gslb._mmdb.GeoTree`` the records are values of."""
    replies: dict[int, Entry]


class QueryHandler:
    def __init__(self, snapshot: Snapshot, *, udp_size: int = 1232, cache_limit: int = CACHE_LIMIT) -> None:
        self.udp_size = udp_size
        self.cache_limit = cache_limit
        self.rcodes: Counter[int] = Counter()
        self.stats = QueryStats()
        self.errors = 0
        self.exact_udp: dict[bytes, Entry] = {}
        self.exact_tcp: dict[bytes, Entry] = {}
        self.negative_udp: dict[bytes, Entry] = {}
        self.negative_tcp: dict[bytes, Entry] = {}
        self.located_udp: dict[bytes, LocatedReplies] = {}
        self._located_count = 0
        self._located_key: Any = None
        """``dnsserver._fastudp.located_key`` once the C UDP loop reads ``located_udp``."""
        self._last_error_log = 0.0
        self._lock = threading.Lock()
        """Held while a query is answered in Python and while the snapshot is swapped: with the
        UDP threads of ``dnsserver.fastudp`` a query can be answered beside the event loop, and
        one that resolved on the old snapshot must not land in the new one's caches."""
        self.set_snapshot(snapshot)

    def set_snapshot(self, snapshot: Snapshot, *, keep_caches: bool = False) -> None:
        """Swap in a new snapshot; queries already in flight finish on the old one. With
        ``keep_caches`` the caller vouches that every answer stays the same."""
        with self._lock:
            self._set_snapshot(snapshot, keep_caches)

    def _set_snapshot(self, snapshot: Snapshot, keep_caches: bool) -> None:
        self.snapshot = snapshot
        if keep_caches:
            return
        old = (self.exact_udp, self.exact_tcp, self.negative_udp, self.negative_tcp)
        located = self.located_udp
        self.exact_udp = {}
        self.exact_tcp = {}
        self.negative_udp = {}
        self.negative_tcp = {}
        self.located_udp = {}
        self._located_count = 0
        # Folded after the swap: the UDP threads of dnsserver.fastudp count cache hits without
        # this lock, and must find the new caches by the time an old one is being folded.
        for cache in old:
            self.stats.fold(cache.values())
        self.stats.fold(_located_entries(located))
        self._prepared: dict[tuple[tuple[bytes, ...], int, int], tuple[Prepared, Labels]] = {}
        self._bodies: dict[tuple[Any, ...], Prepared] = {}
        self._addresses: dict[str, IPv4Address | IPv6Address] = {}
        self._soa_rdata: dict[int, bytes] = {}

    def keep_located_replies(self, located_key: Any) -> None:
        """Called by the C UDP loop, which answers from ``located_udp``: from now on keep
        them, under the keys ``located_key(query)`` gives."""
        self._located_key = located_key

    def handle(self, data: bytes, client: str) -> bytes | None:
        """The reply to one UDP datagram, or None when it gets none. Never raises."""
        with self._lock:
            reply = self._guarded(data, client, False)
        assert not isinstance(reply, list)
        return reply

    def handle_stream(self, data: bytes, client: str) -> list[bytes]:
        """Replies to one TCP message (a zone transfer needs several). Never raises."""
        with self._lock:
            reply = self._guarded(data, client, True)
        if reply is None:
            return []
        return reply if isinstance(reply, list) else [reply]

    def _guarded(self, data: bytes, client: str, tcp: bool) -> bytes | list[bytes] | None:
        try:
            return self._handle(data, client, tcp)
        except Exception:
            self.errors += 1
            now = time.monotonic()
            if now - self._last_error_log > 10:
                self._last_error_log = now
                log.exception("internal error answering a query from %s; replying SERVFAIL", client)
            if len(data) < 12:
                return None
            return header_only_reply(data, SERVFAIL, None, self.udp_size)

    @property
    def dropped(self) -> int:
        return self.stats.dropped

    def current_stats(self) -> QueryStats:
        """Totals so far, with the hits of the live cache entries."""
        return self.stats.current([*self.exact_udp.values(), *self.exact_tcp.values(),
                                   *self.negative_udp.values(), *self.negative_tcp.values(),
                                   *_located_entries(self.located_udp)])

    def _handle(self, data: bytes, client: str, tcp: bool) -> bytes | list[bytes] | None:
        started = time.perf_counter()
        negative = (self.negative_tcp if tcp else self.negative_udp).get(data[2:])
        if negative is not None:
            negative.hits += 1
            return data[:2] + negative.tail
        try:
            query = parse_query(data)
        except Drop:
            self.stats.dropped += 1
            return None
        except WireError as exc:
            if exc.rcode == FORMERR:
                self.stats.malformed += 1
            return self._rcode_only(data, exc.rcode, exc.query, tcp)
        if query.opcode != OPCODE_QUERY:
            return self._rcode_only(data, REFUSED if query.opcode == OPCODE_NOTIFY else NOTIMP, query, tcp)
        if query.qtype in META_TYPES:
            return self._rcode_only(data, FORMERR, query, tcp)
        if query.qtype in (T_AXFR, T_IXFR):
            return self._transfer(data, query, client) if tcp else self._udp_transfer(data, query, client)

        edns = query.edns
        ecs = edns.ecs if edns is not None else None
        if tcp:
            max_size = None
        else:
            max_size = 512 if edns is None else min(edns.udp_size, self.udp_size)
        key = (query.labels, query.qtype, query.qclass)
        known = self._prepared.get(key)
        scope = 0
        record: int | None = None
        if known is not None:
            prepared, labels = known
            cacheable = True
        else:
            address = self._addresses.get(client)
            if address is None:
                address = ip_address(client.partition("%")[0])
                self._remember(self._addresses, client, address)
            answer = resolve(self.snapshot, Query(query.qname, query.qtype, query.qclass),
                             Client(address, ecs.network if ecs is not None and ecs.source else None, query.id))
            prepared = self._encoded(answer, query)
            labels = Labels("tcp" if tcp else "udp", answer.zone or "-", type_label(query.qtype),
                            rcode_label(answer.rcode), answer.service, answer.sites, ecs is not None)
            if answer.vary == VARY_NONE:
                if answer.answer:
                    self._remember(self._prepared, key, (prepared, labels))
                cacheable = True
            else:
                scope = answer.scope if ecs is not None and ecs.source else 0
                if answer.vary == VARY_LOCATION and not tcp and self._located_key is not None:
                    record = answer.record  # kept per GeoIP record below, not per subnet
                # The exact key holds the ECS option, so an answer that depended only on it
                # (never on the resolver's own address) may still be replayed for it.
                cacheable = (record is None and answer.vary in (VARY_LOCATION, VARY_CLIENT)
                             and ecs is not None and ecs.source > 0)
        reply = build_reply(prepared, query, max_size=max_size, udp_size=self.udp_size, scope=scope)
        self.rcodes[prepared.flags & 0xF] += 1
        truncated = bool(reply[2] & 0x02)
        if tcp != (labels.transport == "tcp") or (ecs is not None) != labels.ecs or truncated != labels.truncated:
            labels = Labels("tcp" if tcp else "udp", labels.zone, labels.qtype, labels.rcode, labels.name,
                            labels.sites, ecs is not None, truncated)
        self.stats.count(labels)
        self.stats.observe(time.perf_counter() - started)
        if cacheable:
            if prepared.full[0]:  # answer records: the popular, bounded set of names
                exact, limit = (self.exact_tcp if tcp else self.exact_udp), self.cache_limit
            else:
                exact, limit = (self.negative_tcp if tcp else self.negative_udp), NEGATIVE_CACHE_LIMIT
            if len(exact) >= limit:
                self.stats.fold(exact.values())
                exact.clear()
            exact[data[2:]] = Entry(reply[2:], labels)
        elif record is not None:
            self._keep_located(data, record, Entry(reply[2:], labels))
        return reply

    def _keep_located(self, data: bytes, record: int, entry: Entry) -> None:
        geo = self.snapshot.geo
        key = self._located_key(data)
        if key is None or geo is None or geo.tree is None:
            return  # a query shape the C loop does not answer located replies for
        if self._located_count >= self.cache_limit:
            self.stats.fold(_located_entries(self.located_udp))
            self.located_udp = {}
            self._located_count = 0
        kept = self.located_udp.get(key)
        if kept is None:
            kept = self.located_udp[key] = LocatedReplies(geo.tree, {})
        if record not in kept.replies:
            self._located_count += 1
        kept.replies[record] = entry

    def _encoded(self, answer: Answer, query: ParsedQuery) -> Prepared:
        """Encode an answer, reusing the bytes of an identical earlier one. Records are owned
        by the snapshot, which outlives this cache, so their identities are a sound key."""
        key = (query.labels, query.qtype, query.qclass, answer.rcode, answer.authoritative,
               *map(id, answer.answer), None, *map(id, answer.authority), None, *map(id, answer.additional))
        prepared = self._bodies.get(key)
        if prepared is None:
            if is_plain_negative(answer):
                soa = answer.authority[0]
                rdata = self._soa_rdata.get(id(soa))
                if rdata is None:
                    rdata = self._soa_rdata[id(soa)] = plain_rdata(soa)
                # not remembered: for a negative answer the name is the only variable part,
                # and random names would only churn the cache
                return prepare_negative(answer, query.labels, rdata)
            prepared = prepare(answer, query.labels, query.qtype, query.qclass)
            self._remember(self._bodies, key, prepared)
        return prepared

    def _remember(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= self.cache_limit:
            cache.clear()
        cache[key] = value

    def _rcode_only(self, data: bytes, rcode: int, query: ParsedQuery | None, tcp: bool) -> bytes:
        self.rcodes[rcode] += 1
        zone = (zone_of(query.qname, self.snapshot.zones) if query is not None else None) or "-"
        self.stats.count(Labels("tcp" if tcp else "udp", zone, type_label(query.qtype) if query else "-",
                                rcode_label(rcode)))
        return header_only_reply(data, rcode, query, self.udp_size)

    def _udp_transfer(self, data: bytes, query: ParsedQuery, client: str) -> bytes:
        """Over UDP an IXFR gets the current SOA (RFC 1995: 'the SOA alone means: use TCP');
        an AXFR is not possible."""
        zone = self.snapshot.zones.get(query.qname) if query.qclass == 1 else None  # our zones are class IN
        if zone is None:
            return self._rcode_only(data, NOTAUTH, query, False)
        if query.qtype == T_AXFR:
            return self._rcode_only(data, NOTIMP, query, False)
        if not transfer_allowed(zone, client):
            return self._rcode_only(data, REFUSED, query, False)
        reply = build_reply(
            prepare(Answer(0, answer=zone.soa.rrs), query.labels, query.qtype, query.qclass),
            query, max_size=512 if query.edns is None else min(query.edns.udp_size, self.udp_size),
            udp_size=self.udp_size,
        )
        self.rcodes[0] += 1
        return reply

    def _transfer(self, data: bytes, query: ParsedQuery, client: str) -> list[bytes]:
        zone = self.snapshot.zones.get(query.qname) if query.qclass == 1 else None  # our zones are class IN
        if zone is None:
            rcode = NOTAUTH if zone_of(query.qname, self.snapshot.zones) else REFUSED
            return [self._rcode_only(data, rcode, query, True)]
        if not transfer_allowed(zone, client):
            log.info("refused zone transfer of %s to %s", zone.apex, client)
            return [self._rcode_only(data, REFUSED, query, True)]
        log.info("zone transfer of %s to %s", zone.apex, client)
        self.rcodes[0] += 1
        return list(axfr_messages(zone, query, udp_size=self.udp_size))


def _located_entries(located: dict[bytes, LocatedReplies]) -> list[Entry]:
    return [entry for kept in located.values() for entry in kept.replies.values()]
