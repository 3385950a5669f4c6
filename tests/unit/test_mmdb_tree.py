"""The C search-tree walker (gslb._mmdb.GeoTree): every record size on trees built here,
and agreement with maxminddb on the shipped databases."""

from __future__ import annotations

import ipaddress
import itertools
import random
from pathlib import Path

import maxminddb
import pytest

from gslb._mmdb import GeoTree
from gslb.geo import GeoDatabase

GEOIP = Path(__file__).resolve().parents[2] / "config" / "geoip"
DATABASES = sorted(GEOIP.glob("*.mmdb"))


def pack_node(left: int, right: int, record_size: int) -> bytes:
    if record_size == 24:
        return left.to_bytes(3, "big") + right.to_bytes(3, "big")
    if record_size == 28:
        middle = ((left >> 24) & 0x0F) << 4 | ((right >> 24) & 0x0F)
        return (left & 0xFFFFFF).to_bytes(3, "big") + bytes([middle]) + (right & 0xFFFFFF).to_bytes(3, "big")
    return left.to_bytes(4, "big") + right.to_bytes(4, "big")


def reference_walk(nodes: list[tuple[int, int]], address: bytes, start: int = 0) -> tuple[int, int]:
    node, depth = start, 0
    while depth < len(address) * 8 and node < len(nodes):
        bit = (address[depth // 8] >> (7 - depth % 8)) & 1
        node = nodes[node][bit]
        depth += 1
    return node, depth


def random_tree(rng: random.Random, depth: int, count: int, big: int) -> list[tuple[int, int]]:
    """A chain-shaped trie: node i leads to node i+1 on one side and to a leaf on the other,
    with leaves spread over values above node_count (as large as ``big`` allows)."""
    nodes: list[tuple[int, int]] = []
    for i in range(count):
        leaf = count + 16 + rng.randrange(big)
        nxt = i + 1 if i + 1 < count else count + 16 + rng.randrange(big)
        nodes.append((nxt, leaf) if rng.random() < 0.5 else (leaf, nxt))
    return nodes


@pytest.mark.parametrize("record_size,big", [(24, 1 << 23), (28, 1 << 27), (32, 1 << 31)])
def test_every_record_size_walks_like_the_reference(record_size: int, big: int) -> None:
    rng = random.Random(record_size)
    nodes = random_tree(rng, 40, 40, big)
    data = b"".join(pack_node(left, right, record_size) for left, right in nodes)
    tree = GeoTree(data, len(nodes), record_size, 4)
    assert tree.node_count == len(nodes)
    for _ in range(2000):
        address = rng.getrandbits(32).to_bytes(4, "big")
        assert tree.lookup(address) == reference_walk(nodes, address)


def test_an_ipv4_tree_knows_no_ipv6_address() -> None:
    data = pack_node(1, 1 + 16 + 7, 24)  # one node: 0/1 empty, 128/1 a record
    tree = GeoTree(data, 1, 24, 4)
    assert tree.lookup(bytes([10, 0, 0, 1])) == (1, 1)
    assert tree.lookup(bytes([200, 0, 0, 1])) == (24, 1)
    assert tree.lookup(bytes(16)) == (1, 0)


def test_ipv4_in_an_ipv6_tree_starts_below_96_zero_bits() -> None:
    # 97 nodes: node i (< 96) goes left to i+1, right to "empty"; node 96 splits IPv4 in two
    count = 97
    nodes = [(i + 1, count) for i in range(96)] + [(count + 16 + 1, count + 16 + 2)]
    data = b"".join(pack_node(left, right, 32) for left, right in nodes)
    tree = GeoTree(data, count, 32, 6)
    assert tree.lookup(bytes([10, 0, 0, 1])) == (count + 17, 1)
    assert tree.lookup(bytes([192, 0, 0, 1])) == (count + 18, 1)
    assert tree.lookup(bytes(12) + bytes([192, 0, 0, 1])) == (count + 18, 97)
    # 2001:: is 0010...: two zero bits down the chain, then "empty"
    assert tree.lookup(ipaddress.IPv6Address("2001:db8::1").packed) == (count, 3)


def test_a_leaf_above_the_ipv4_subtree_holds_all_of_ipv4() -> None:
    data = pack_node(1 + 16 + 5, 1, 24)  # ::/1 is one record: IPv4 included, at prefix 0
    tree = GeoTree(data, 1, 24, 6)
    assert tree.lookup(bytes([8, 8, 8, 8])) == (22, 0)


@pytest.mark.parametrize("args,message", [
    ((b"\0" * 6, 1, 20, 4), "record size"),
    ((b"\0" * 6, 1, 24, 5), "IP version"),
    ((b"\0" * 6, 0, 24, 4), "node count"),
    ((b"\0" * 5, 1, 24, 4), "cannot hold"),
])
def test_bad_trees_are_refused(args: tuple[bytes, int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GeoTree(*args)


def test_a_tree_deeper_than_the_address_is_an_error() -> None:
    nodes = [(i + 1, i + 1) for i in range(40)] + [(41, 41)]  # 41 levels, every path internal
    data = b"".join(pack_node(left, right, 24) for left, right in nodes)
    tree = GeoTree(data, 41, 24, 4)
    with pytest.raises(ValueError, match="corrupt"):
        tree.lookup(bytes(4))
    with pytest.raises(ValueError, match="4 or 16"):
        tree.lookup(b"\0" * 5)


@pytest.mark.parametrize("path", DATABASES, ids=lambda p: p.name)
def test_agrees_with_maxminddb_on_the_shipped_databases(path: Path) -> None:
    """Same prefix, found/not found alike, and one record value per distinct record."""
    reader = maxminddb.open_database(str(path))
    db = GeoDatabase(path)
    assert db.tree is not None
    rng = random.Random(path.name)
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for _ in range(3000):
        addresses.append(ipaddress.IPv4Address(rng.getrandbits(32)))
        addresses.append(ipaddress.IPv6Address(rng.getrandbits(128)))
        addresses.append(ipaddress.IPv6Address(0x2001 << 112 | rng.getrandbits(112)))
    for net in ("81.2.69.128/26", "89.160.20.128/25", "175.16.199.0/24", "216.160.83.56/29", "2001:218::/32",
                "2.125.160.216/29", "214.0.0.0/16", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"):
        addresses.extend(itertools.islice(ipaddress.ip_network(net), 64))
    seen: dict[int, object] = {}
    for address in addresses:
        record, prefix = reader.get_with_prefix_len(address)
        if address.version == 4 and prefix > 32:
            prefix -= 96
        value, got = db.tree.lookup(address.packed)
        assert got == prefix, address
        assert (value == db.tree.node_count) == (record is None), address
        if record is not None:
            assert seen.setdefault(value, record) == record, address
    assert len(seen) >= 1
    reader.close()
    db.close()
