"""A large synthetic GeoIP2-City database for bench/policy, and client subnets inside it.

Why: the shipped test DB holds ~7 distinct records, so once gslb keeps one reply per GeoIP
record (located replies) nearly every "cold" query is answered in C. A production City
database holds hundreds of thousands of records; this one makes many records new, so the
benchmark also measures the first client of each record (the Python path).

Shape (defaults of bench/policy, assumptions against a real GeoLite2-City, which holds a few
million networks and about 10^5 - 10^6 distinct records): an IPv6 tree holding IPv4 under
::/96 (as MaxMind's files do), ``networks`` networks, 90% IPv4 (/24 50%, /23 15%, /22 15%,
/21 10%, /20 10%; placed at random, without overlap, over the public IPv4 space) and 10% IPv6
(/32../48, each in its own random /32 of 2000::/3). They share ``records``
distinct GeoIP2-City-shaped records: every record holds at least one network, the rest of
the networks go to records with Zipf weights (1/rank), as city sizes do; the largest records
are country-level ones (country centroid, no city), as in MaxMind's data. Fewer networks
than a real file: mmdb-writer builds the tree in Python (about 15 s and 0.5 GB per 100,000
networks), and what drives the cost measured here is how many distinct records the queries
reach, not how many networks lead to them.

Client subnets: uniform over the networks (then a random /24 or /56 inside the chosen one,
never the same subnet twice), so records come in the skewed order of their network counts.
A network whose subnets are all used is drawn again, so long pools lean towards the larger
networks and IPv6 (300,000 subnets of the defaults: 17% IPv6, 500,000: 23%).

Everything is derived from ``BigDbSpec`` (seeded), so a cached file and the subnets drawn
for it always agree.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENERATOR_VERSION = 2
"""Part of the cache key: bump it when the generated database changes."""

V4_PREFIXES = ((24, 0.50), (23, 0.15), (22, 0.15), (21, 0.10), (20, 0.10))
V6_PREFIXES = ((32, 0.20), (36, 0.10), (40, 0.10), (44, 0.20), (48, 0.40))
V6_SHARE = 0.10
ZIPF_S = 1.0

_NOT_PUBLIC_V4 = [ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/3")]
_NOT_GLOBAL_V6 = [ipaddress.IPv6Network(n) for n in ("2001::/23", "2001:db8::/32", "2002::/16")]

# Countries (with a centroid in gslb.geo.COUNTRY_CENTROIDS) and their continents; the weights
# roughly follow how many cities a GeoIP City database names per country.
COUNTRIES: dict[str, tuple[str, float]] = {
    "US": ("NA", 25), "DE": ("EU", 6), "GB": ("EU", 5), "FR": ("EU", 5), "JP": ("AS", 5), "CN": ("AS", 5),
    "BR": ("SA", 4), "IN": ("AS", 4), "RU": ("EU", 4), "CA": ("NA", 3), "IT": ("EU", 3), "ES": ("EU", 3),
    "AU": ("OC", 2), "KR": ("AS", 2), "NL": ("EU", 2), "MX": ("NA", 2), "PL": ("EU", 2), "SE": ("EU", 1),
    "AR": ("SA", 1), "AT": ("EU", 1), "BE": ("EU", 1), "CH": ("EU", 1), "CL": ("SA", 1), "CO": ("SA", 1),
    "CZ": ("EU", 1), "DK": ("EU", 1), "EG": ("AF", 1), "FI": ("EU", 1), "GR": ("EU", 1), "HK": ("AS", 1),
    "HU": ("EU", 1), "ID": ("AS", 1), "IE": ("EU", 1), "IL": ("AS", 1), "IR": ("AS", 1), "KE": ("AF", 1),
    "MA": ("AF", 1), "MY": ("AS", 1), "NG": ("AF", 1), "NO": ("EU", 1), "NZ": ("OC", 1), "PE": ("SA", 1),
    "PH": ("AS", 1), "PK": ("AS", 1), "PT": ("EU", 1), "RO": ("EU", 1), "SA": ("AS", 1), "SG": ("AS", 1),
    "TH": ("AS", 1), "TR": ("AS", 1), "TW": ("AS", 1), "UA": ("EU", 1), "VN": ("AS", 1), "ZA": ("AF", 1),
}
TIME_ZONES = {"NA": "America/Chicago", "SA": "America/Sao_Paulo", "EU": "Europe/Berlin", "AS": "Asia/Tokyo",
              "AF": "Africa/Lagos", "OC": "Australia/Sydney"}
CONTINENT_IDS = {"AF": 6255146, "AS": 6255147, "EU": 6255148, "NA": 6255149, "SA": 6255150, "OC": 6255151}
LANGUAGES = ["de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN"]

Net = tuple[int, int, int]        # (IP version 4/6, network address as an int, prefix length)
Subnet = tuple[int, int, bytes]   # (ECS family 1/2, source prefix, full address bytes)


@dataclass(frozen=True)
class BigDbSpec:
    networks: int = 200_000
    records: int = 50_000
    seed: int = 2026

    def file_name(self) -> str:
        return f"bigdb-City-n{self.networks}-r{self.records}-s{self.seed}-v{GENERATOR_VERSION}.mmdb"


def _pick(rng: random.Random, table: tuple[tuple[int, float], ...]) -> int:
    x, acc = rng.random(), 0.0
    for value, share in table:
        acc += share
        if x < acc:
            return value
    return table[-1][0]


def _overlaps(start: int, end: int, ranges: list[tuple[int, int]]) -> bool:
    return any(start <= hi and lo <= end for lo, hi in ranges)


def plan(spec: BigDbSpec) -> tuple[list[Net], list[int]]:
    """The networks (shuffled) and, per network, the index of its record (0 = largest)."""
    if spec.records < len(COUNTRIES) or spec.networks < spec.records:
        raise ValueError(f"need networks >= records >= {len(COUNTRIES)}")
    rng = random.Random(spec.seed)
    n6 = int(spec.networks * V6_SHARE)
    nets: list[Net] = []
    taken: set[int] = set()   # the /24s of the IPv4 networks so far
    # the /20s (every IPv4 network here lies in one) that touch a non-public range
    bad20 = {b for n in _NOT_PUBLIC_V4
             for b in range(int(n.network_address) >> 12, (int(n.broadcast_address) >> 12) + 1)}
    bad6 = [(int(n.network_address), int(n.broadcast_address)) for n in _NOT_GLOBAL_V6]
    while len(nets) < spec.networks - n6:
        prefix = _pick(rng, V4_PREFIXES)
        start = rng.getrandbits(prefix) << (32 - prefix)
        units = range(start >> 8, (start >> 8) + (1 << (24 - prefix)))
        if start >> 12 in bad20 or any(u in taken for u in units):
            continue
        taken.update(units)
        nets.append((4, start, prefix))
    blocks6: set[int] = set()   # one network per /32 (all are /32 or longer)
    while len(nets) < spec.networks:
        prefix = _pick(rng, V6_PREFIXES)
        block = (0b001 << 125) | (rng.getrandbits(29) << 96)   # a /32 of 2000::/3
        if block in blocks6 or _overlaps(block, block + (1 << 96) - 1, bad6):
            continue
        blocks6.add(block)
        nets.append((6, block | (rng.getrandbits(prefix - 32) << (128 - prefix)), prefix))
    rng.shuffle(nets)
    owners = list(range(spec.records))
    weights = list(itertools.accumulate(1.0 / (rank + 1) ** ZIPF_S for rank in range(spec.records)))
    owners += rng.choices(range(spec.records), cum_weights=weights, k=spec.networks - spec.records)
    rng.shuffle(owners)
    return nets, owners


def _names(text: str, every_language: bool) -> dict[str, str]:
    return {lang: text for lang in LANGUAGES} if every_language else {"en": text}


def make_records(spec: BigDbSpec) -> list[dict[str, Any]]:
    """GeoIP2-City-shaped records, all distinct: the first ones country-level (the largest
    records of a City database), then cities scattered around their country's centroid."""
    from gslb.geo import COUNTRY_CENTROIDS

    rng = random.Random(spec.seed + 1)
    codes = list(COUNTRIES)
    countries = {}
    for i, code in enumerate(codes):
        cont = COUNTRIES[code][0]
        entry = {"geoname_id": 6_000_000 + i, "iso_code": code, "names": _names(f"Country {code}", True)}
        continent = {"code": cont, "geoname_id": CONTINENT_IDS[cont], "names": _names(f"Continent {cont}", True)}
        countries[code] = (entry, continent)
    records: list[dict[str, Any]] = []
    for code in codes:   # country-level records: centroid, no city
        entry, continent = countries[code]
        lat, lon = COUNTRY_CENTROIDS[code]
        records.append({"continent": continent, "country": entry, "registered_country": entry,
                        "location": {"accuracy_radius": 1000, "latitude": lat, "longitude": lon,
                                     "time_zone": TIME_ZONES[continent["code"]]}})
    weights = list(itertools.accumulate(w for _c, w in COUNTRIES.values()))
    for i in range(spec.records - len(codes)):
        code = rng.choices(codes, cum_weights=weights)[0]
        entry, continent = countries[code]
        lat0, lon0 = COUNTRY_CENTROIDS[code]
        lat = max(-89.9, min(89.9, lat0 + rng.uniform(-6, 6)))
        lon = (lon0 + rng.uniform(-9, 9) + 180) % 360 - 180
        records.append({
            "city": {"geoname_id": 1_000_000 + i, "names": _names(f"City {i}", i < spec.records // 50)},
            "continent": continent, "country": entry, "registered_country": entry,
            "location": {"accuracy_radius": rng.choice((5, 10, 20, 50, 100, 200)),
                         "latitude": round(lat, 4), "longitude": round(lon, 4),
                         "time_zone": TIME_ZONES[continent["code"]]},
            "postal": {"code": f"{rng.randrange(100000):05d}"},
            "subdivisions": [{"geoname_id": 5_000_000 + i % 5000, "iso_code": f"S{i % 97}",
                              "names": {"en": f"Region {code}-{i % 97}"}}],
        })
    return records


def build(spec: BigDbSpec, path: Path) -> None:
    """Write the database to ``path`` (through a temporary file, so a half-written one is never
    taken for a cached one)."""
    from mmdb_writer import MMDBWriter, SearchTreeNode
    from netaddr import IPNetwork, IPSet

    nets, owners = plan(spec)
    records = make_records(spec)
    # One IPSet per record: one leaf, so the writer encodes each record once (per network, its
    # deduplication re-freezes the whole record every time). IPSet merges sibling networks of
    # one record into their supernet, as MaxMind's own files have them.
    v4: list[list[IPNetwork]] = [[] for _ in records]
    v6: list[list[IPNetwork]] = [[] for _ in records]
    for (version, value, prefix), owner in zip(nets, owners, strict=True):
        (v4 if version == 4 else v6)[owner].append(IPNetwork((value, prefix), version=version))
    meta: dict[str, Any] = {"database_type": "GeoIP2-City-Synthetic", "languages": LANGUAGES,
                            "description": "bench/policy synthetic City database"}
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, **meta)
    # IPv4 goes into an IPv4 tree grafted at ::/96 (where ipv4_compatible would put it): the same
    # file, without walking 96 zero bits in Python for every network.
    tree4 = MMDBWriter(ip_version=4, **meta)
    for record, n4, n6 in zip(records, v4, v6, strict=True):
        if n4:
            tree4.insert_network(IPSet(n4), record)
        if n6:
            writer.insert_network(IPSet(n6), record)
    node = writer.tree
    for _ in range(95):
        child = node.get_or_create(0)
        if not isinstance(child, SearchTreeNode):
            raise ValueError("::/96 is taken by an IPv6 network")
        node = child
    node.left = tree4.tree
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    writer.to_db_file(str(part))
    part.replace(path)


def ensure(spec: BigDbSpec, cache_dir: Path) -> tuple[Path, float]:
    """The database file for ``spec`` under ``cache_dir``, built if missing; (path, build seconds)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / spec.file_name()
    if path.exists():
        return path, 0.0
    t0 = time.monotonic()
    build(spec, path)
    return path, time.monotonic() - t0


def client_subnets(nets: list[Net], count: int, seed: int) -> list[Subnet]:
    """``count`` distinct client subnets (/24 for IPv4, /56 for IPv6) inside ``nets`` (the
    database's networks, from ``plan``): each a uniform draw over the networks, then over the
    subnets of that network."""
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    out: list[Subnet] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 20 * count:
            raise ValueError(f"cannot draw {count} distinct subnets from {len(nets)} networks")
        version, value, prefix = nets[rng.randrange(len(nets))]
        if version == 4:
            value |= rng.getrandbits(24 - prefix) << 8
            sub: Subnet = (1, 24, value.to_bytes(4, "big"))
        else:
            value |= rng.getrandbits(56 - prefix) << 72
            sub = (2, 56, value.to_bytes(16, "big"))
        if (version, value) in seen:
            continue
        seen.add((version, value))
        out.append(sub)
    return out
