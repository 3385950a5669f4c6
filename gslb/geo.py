"""Where a client is: GeoIP lookups (MaxMind .mmdb) cached per prefix, centroid fallbacks,
and great-circle distance.

The search tree is walked by ``gslb._mmdb`` (C) when it is built: it names the record an
address leads to, so results are cached per record (a database holds far fewer records than
networks) and the DNS server can keep one reply per record. Records are decoded by
``maxminddb`` (the reader ``geoip2`` itself uses), once each, without geoip2's model objects.
Without the extension, ``maxminddb`` alone answers, cached per network. Records without
coordinates fall back to their country's centroid, then their continent's.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import maxminddb

from gslb.errors import GslbError

_GeoTree: Any
try:
    from gslb._mmdb import GeoTree as _GeoTree
except ImportError:  # not built here: maxminddb alone walks the tree
    _GeoTree = None

EARTH_RADIUS_KM = 6371.0088

# Approximate geographic centres (lat, lon), for records that carry only a country or continent.
CONTINENT_CENTROIDS: dict[str, tuple[float, float]] = {
    "AF": (2.0, 17.0), "AN": (-80.0, 0.0), "AS": (34.0, 100.0), "EU": (50.0, 10.0),
    "NA": (40.0, -100.0), "OC": (-25.0, 135.0), "SA": (-15.0, -60.0),
}
COUNTRY_CENTROIDS: dict[str, tuple[float, float]] = {
    "AE": (23.4, 53.8), "AR": (-38.4, -63.6), "AT": (47.5, 14.6), "AU": (-25.3, 133.8), "BD": (23.7, 90.4),
    "BE": (50.5, 4.5), "BG": (42.7, 25.5), "BR": (-14.2, -51.9), "BT": (27.5, 90.4), "CA": (56.1, -106.3),
    "CH": (46.8, 8.2), "CL": (-35.7, -71.5), "CN": (35.9, 104.2), "CO": (4.6, -74.3), "CZ": (49.8, 15.5),
    "DE": (51.2, 10.5), "DK": (56.3, 9.5), "DZ": (28.0, 1.7), "EG": (26.8, 30.8), "ES": (40.5, -3.7),
    "FI": (61.9, 25.7), "FR": (46.2, 2.2), "GB": (55.4, -3.4), "GR": (39.1, 21.8), "HK": (22.4, 114.1),
    "HU": (47.2, 19.5), "ID": (-0.8, 113.9), "IE": (53.4, -8.2), "IL": (31.0, 34.9), "IM": (54.2, -4.5),
    "IN": (20.6, 79.0), "IR": (32.4, 53.7), "IT": (41.9, 12.6), "JP": (36.2, 138.3), "KE": (-0.0, 37.9),
    "KR": (35.9, 127.8), "LY": (26.3, 17.2), "MA": (31.8, -7.1), "MX": (23.6, -102.6), "MY": (4.2, 102.0),
    "NG": (9.1, 8.7), "NL": (52.1, 5.3), "NO": (60.5, 8.5), "NZ": (-40.9, 174.9), "PE": (-9.2, -75.0),
    "PH": (12.9, 121.8), "PK": (30.4, 69.3), "PL": (51.9, 19.1), "PT": (39.4, -8.2), "RO": (45.9, 25.0),
    "RU": (61.5, 105.3), "SA": (23.9, 45.1), "SE": (60.1, 18.6), "SG": (1.35, 103.8), "TH": (15.9, 100.99),
    "TR": (39.0, 35.2), "TW": (23.7, 121.0), "UA": (48.4, 31.2), "US": (37.1, -95.7), "VN": (14.1, 108.3),
    "ZA": (-30.6, 22.9),
}


@dataclass(frozen=True, slots=True)
class Location:
    country: str | None
    continent: str | None
    lat: float | None
    lon: float | None
    precision: str
    """'city' (the record's own coordinates), 'country' or 'continent' (a centroid), 'none'."""


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def location_from_record(record: dict[str, Any] | None) -> Location | None:
    if not record:
        return None
    country = (record.get("country") or {}).get("iso_code")
    continent = (record.get("continent") or {}).get("code")
    loc = record.get("location") or {}
    lat, lon = loc.get("latitude"), loc.get("longitude")
    if lat is not None and lon is not None:
        return Location(country, continent, float(lat), float(lon), "city")
    if country in COUNTRY_CENTROIDS:
        return Location(country, continent, *COUNTRY_CENTROIDS[country], "country")
    if continent in CONTINENT_CENTROIDS:
        return Location(country, continent, *CONTINENT_CENTROIDS[continent], "continent")
    if country is None and continent is None:
        return None
    return Location(country, continent, None, None, "none")


class GeoDatabase:
    """A MaxMind City or Country database with a result cache.

    ``locate`` is given the client's address already masked to its ECS source prefix.
    """

    def __init__(self, path: str | Path, *, cache_size: int = 100_000) -> None:
        try:
            self._reader = maxminddb.open_database(str(path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise GslbError(f"cannot open GeoIP database {path}: {exc}") from exc
        meta = self._reader.metadata()
        kind = meta.database_type
        if "City" not in kind and "Country" not in kind:
            raise GslbError(f"GeoIP database {path} is a {kind} database; a City or Country one is needed")
        self.path = str(path)
        self.database_type = kind
        self.tree: Any = None
        """The C walker over the same file (``gslb._mmdb.GeoTree``), or None when not built."""
        if _GeoTree is not None:
            try:
                with open(path, "rb") as fh:
                    self.tree = _GeoTree(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ),
                                        meta.node_count, meta.record_size, meta.ip_version)
            except (OSError, ValueError) as exc:
                raise GslbError(f"cannot read the search tree of GeoIP database {path}: {exc}") from exc
        self._records: dict[int, Location | None] = {}
        # Without the walker, results per database network: (address bits, prefix, network
        # number) -> result. An MMDB is a trie, so every address under a network the database
        # returned shares its record: a later address in that network is found by probing the
        # prefix lengths seen.
        self._networks: dict[tuple[int, int, int], tuple[Location | None, int]] = {}
        self._prefixes: dict[int, list[int]] = {32: [], 128: []}
        self._cache_size = cache_size

    def locate(self, address: IPv4Address | IPv6Address) -> tuple[Location | None, int, int | None]:
        """The location of ``address``, the prefix length of the database network holding it
        (for IPv4 counted in IPv4 bits), and the record's identity in the tree (the same for
        every address whose network holds the same record; None without the C walker)."""
        tree = self.tree
        if tree is None:
            return (*self._locate_by_network(address), None)
        record, prefix = tree.lookup(address.packed)
        records = self._records
        try:
            return records[record], prefix, record
        except KeyError:
            pass
        if record == tree.node_count:
            location = None
        else:
            location = location_from_record(self._reader.get(address))  # type: ignore[arg-type]
        if len(records) >= self._cache_size:
            records.clear()
        records[record] = location
        return location, prefix, record

    def _locate_by_network(self, address: IPv4Address | IPv6Address) -> tuple[Location | None, int]:
        bits = address.max_prefixlen
        value = int(address)
        networks = self._networks
        for prefix in self._prefixes[bits]:
            hit = networks.get((bits, prefix, value >> (bits - prefix)))
            if hit is not None:
                return hit
        if bits == 128 and self._reader.metadata().ip_version == 4:
            return None, 0  # an IPv4-only database knows no IPv6 address
        record, prefix = self._reader.get_with_prefix_len(address)
        if bits == 32 and prefix > 32:  # IPv4 in an IPv6 tree
            prefix -= 96
        prefix = max(0, min(prefix, bits))
        result = (location_from_record(record), prefix)  # type: ignore[arg-type]
        if len(networks) >= self._cache_size:
            networks.clear()
            self._prefixes = {32: [], 128: []}
        networks[(bits, prefix, value >> (bits - prefix))] = result
        known = self._prefixes[bits]
        if prefix not in known:
            known.append(prefix)
            known.sort(reverse=True)
        return result

    def close(self) -> None:
        self._reader.close()
