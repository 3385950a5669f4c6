"""GeoIP lookups on MaxMind's test databases (fixtures listed in config/geoip/README.md),
centroid fallbacks, the per-address cache, great-circle distance, and errors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

from gslb.config import load_config_text
from gslb.errors import ConfigError, GslbError
from gslb.geo import (
    CONTINENT_CENTROIDS,
    COUNTRY_CENTROIDS,
    EARTH_RADIUS_KM,
    GeoDatabase,
    Location,
    distance_km,
    location_from_record,
)

GEOIP = Path(__file__).resolve().parents[2] / "config" / "geoip"
CITY = GEOIP / "GeoIP2-City-Test.mmdb"
COUNTRY = GEOIP / "GeoIP2-Country-Test.mmdb"


WALKERS = ["c-walker", "maxminddb"]


def open_db(path: Path, walker: str, **kw: int) -> GeoDatabase:
    """The database as the product opens it, or with maxminddb alone (as where gslb._mmdb
    did not build): both must give the same locations and prefixes."""
    db = GeoDatabase(path, **kw)
    if walker == "maxminddb":
        db.tree = None
    else:
        assert db.tree is not None, "gslb._mmdb is not built (pip install -e . builds it)"
    return db


@pytest.fixture(scope="module", params=WALKERS)
def city(request: pytest.FixtureRequest) -> Iterator[GeoDatabase]:
    db = open_db(CITY, request.param)
    yield db
    db.close()


@pytest.fixture(scope="module", params=WALKERS)
def country(request: pytest.FixtureRequest) -> Iterator[GeoDatabase]:
    db = open_db(COUNTRY, request.param)
    yield db
    db.close()


# address, country, continent, (lat, lon) of the city record, prefix length of its network
CITY_FIXTURES = [
    pytest.param("81.2.69.160", "GB", "EU", (51.5142, -0.0931), 27, id="london"),
    pytest.param("81.2.69.191", "GB", "EU", (51.5142, -0.0931), 27, id="london-last"),
    pytest.param("89.160.20.128", "SE", "EU", (58.4167, 15.6167), 25, id="linkoping"),
    pytest.param("216.160.83.56", "US", "NA", (47.2513, -122.3149), 29, id="milton"),
    pytest.param("175.16.199.1", "CN", "AS", (43.88, 125.3228), 24, id="changchun"),
    pytest.param("2001:218::1", "JP", "AS", (35.68536, 139.75309), 32, id="japan-v6"),
    pytest.param("214.0.1.1", "AU", "OC", (-37.8159, 144.9669), 24, id="melbourne"),
]


def test_database_types(city: GeoDatabase, country: GeoDatabase) -> None:
    assert city.database_type == "GeoIP2-City"
    assert country.database_type == "GeoIP2-Country"
    assert city.path == str(CITY)


@pytest.mark.parametrize("address,cc,continent,coords,prefix", CITY_FIXTURES)
def test_city_fixtures(city: GeoDatabase, address: str, cc: str, continent: str, coords: tuple[float, float],
                       prefix: int) -> None:
    loc, got_prefix, _ = city.locate(ip_address(address))
    assert loc is not None
    assert (loc.country, loc.continent, loc.precision) == (cc, continent, "city")
    assert loc.lat == pytest.approx(coords[0]) and loc.lon == pytest.approx(coords[1])
    assert got_prefix == prefix


def test_ipv4_prefix_is_counted_in_ipv4_bits(city: GeoDatabase) -> None:
    # the database is an IPv6 tree holding IPv4 under ::/96; a plain IPv4 address gets IPv4 bits
    _, v4, _ = city.locate(ip_address("81.2.69.160"))
    assert v4 == 27
    # neighbouring London networks are smaller
    assert city.locate(ip_address("81.2.69.150"))[1] == 28
    assert city.locate(ip_address("81.2.69.200"))[1] == 28


def test_continent_only_record_gets_the_continent_centroid(city: GeoDatabase) -> None:
    loc, prefix, _ = city.locate(ip_address("2.3.3.1"))
    assert loc == Location(None, "EU", *CONTINENT_CENTROIDS["EU"], "continent")
    assert prefix == 24


@pytest.mark.parametrize("address", ["10.0.0.1", "127.0.0.1", "::1", "2001:db8::1"])
def test_not_found(city: GeoDatabase, address: str) -> None:
    loc, prefix, _ = city.locate(ip_address(address))
    assert loc is None
    assert 0 <= prefix <= ip_address(address).max_prefixlen


def test_not_found_prefix_is_the_empty_network(city: GeoDatabase) -> None:
    # 10.0.0.0/8 holds no data in the test DB: every address in it shares the answer
    assert city.locate(ip_address("10.0.0.1"))[:2] == (None, 8)
    assert city.locate(ip_address("10.255.1.2"))[:2] == (None, 8)


@pytest.mark.parametrize("address,cc,prefix", [
    ("81.2.69.160", "GB", 27), ("89.160.20.128", "SE", 25), ("216.160.83.56", "US", 29),
    ("175.16.199.1", "CN", 24), ("2001:218::1", "JP", 32),
])
def test_country_database_gives_the_country_centroid(country: GeoDatabase, address: str, cc: str,
                                                     prefix: int) -> None:
    loc, got_prefix, _ = country.locate(ip_address(address))
    assert loc == Location(cc, loc.continent if loc else None, *COUNTRY_CENTROIDS[cc], "country")
    assert loc is not None and loc.continent is not None
    assert got_prefix == prefix


def test_country_database_not_found(country: GeoDatabase) -> None:
    assert country.locate(ip_address("10.0.0.1"))[0] is None


def test_cache_returns_the_same_result(city: GeoDatabase) -> None:
    address = ip_address("89.160.20.128")
    one = city.locate(address)
    two = city.locate(address)
    assert one == two
    assert one[0] is two[0]  # served from the cache
    assert city.locate(ip_address("89.160.20.129"))[:2] == (one[0], 25)


@pytest.mark.parametrize("walker", WALKERS)
def test_small_cache_still_answers_correctly(city: GeoDatabase, walker: str) -> None:
    db = open_db(CITY, walker, cache_size=2)
    try:
        addresses = ["81.2.69.160", "216.160.83.56", "175.16.199.1", "2001:218::1", "10.0.0.1"]
        want = {a: city.locate(ip_address(a)) for a in addresses}
        for _ in range(3):
            for a in addresses:
                assert db.locate(ip_address(a))[:2] == want[a][:2]
    finally:
        db.close()


def test_location_from_record_fallbacks() -> None:
    assert location_from_record(None) is None
    assert location_from_record({}) is None
    assert location_from_record({"country": {"iso_code": "DE"}, "continent": {"code": "EU"}}) == \
        Location("DE", "EU", *COUNTRY_CENTROIDS["DE"], "country")
    assert location_from_record({"country": {"iso_code": "XX"}, "continent": {"code": "SA"}}) == \
        Location("XX", "SA", *CONTINENT_CENTROIDS["SA"], "continent")
    assert location_from_record({"country": {"iso_code": "XX"}}) == Location("XX", None, None, None, "none")
    assert location_from_record({"location": {"latitude": 1.5, "longitude": 2}}) == \
        Location(None, None, 1.5, 2.0, "city")


def test_distance_km() -> None:
    london, frankfurt = (51.5074, -0.1278), (50.1109, 8.6821)
    d = distance_km(*london, *frankfurt)
    assert 620 < d < 660  # ~638 km
    assert distance_km(*frankfurt, *london) == pytest.approx(d)
    assert distance_km(*london, *london) == 0
    assert distance_km(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_KM)  # half the equator
    assert distance_km(90, 0, -90, 0) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    # New York - Los Angeles ~ 3936 km
    assert 3900 < distance_km(40.7128, -74.0060, 34.0522, -118.2437) < 3980
    # across the antimeridian: 1 degree of longitude at the equator
    assert distance_km(0, 179.5, 0, -179.5) == pytest.approx(math.pi * EARTH_RADIUS_KM / 180)


@pytest.mark.parametrize("make_path", [
    pytest.param(lambda tmp: tmp / "missing.mmdb", id="missing"),
    pytest.param(lambda tmp: tmp, id="directory"),
    pytest.param(lambda tmp: (tmp / "text.mmdb", (tmp / "text.mmdb").write_text("not a database\n"))[0],
                 id="text-file"),
    pytest.param(lambda tmp: (tmp / "empty.mmdb", (tmp / "empty.mmdb").write_bytes(b""))[0], id="empty-file"),
    pytest.param(lambda tmp: GEOIP / "README.md", id="readme"),
])
def test_opening_a_bad_file_raises_gslb_error(tmp_path: Path, make_path) -> None:  # type: ignore[no-untyped-def]
    path = make_path(tmp_path)
    with pytest.raises(GslbError) as info:
        GeoDatabase(path)
    assert str(path) in str(info.value)


def _config(database: str) -> str:
    return (
        "zones:\n"
        "  gslb.example.com:\n"
        "    nameservers: [{name: ns1.example.net}]\n"
        "geoip:\n"
        f"  database: {database}\n"
    )


def test_config_with_a_missing_database_is_a_config_error_at_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(_config("geoip/nope.mmdb"), base_dir=tmp_path)
    paths = [e.dotted for e in info.value.errors]
    assert paths == ["geoip.database"]
    assert "nope.mmdb" in info.value.errors[0].message
    assert info.value.errors[0].line == 5


def test_config_with_a_non_mmdb_database_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.mmdb").write_text("garbage")
    with pytest.raises(ConfigError) as info:
        load_config_text(_config("bad.mmdb"), base_dir=tmp_path)
    assert [e.dotted for e in info.value.errors] == ["geoip.database"]


def test_config_database_is_relative_to_the_config_file() -> None:
    loaded = load_config_text(_config("geoip/GeoIP2-City-Test.mmdb"), base_dir=GEOIP.parent)
    geo = loaded.compiled.geo
    assert geo is not None
    assert geo.locate(ip_address("81.2.69.160"))[0] is not None
