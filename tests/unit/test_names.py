"""Domain name normal form: ``normalize_name``, ``qualify``, ``is_subdomain``, ``parent_names``."""

from __future__ import annotations

import pytest

from gslb.names import is_subdomain, normalize_name, parent_names, qualify

L63 = "a" * 63
# 253 characters: the longest name in text form (255 octets on the wire)
MAX_NAME = ".".join([L63, "b" * 63, "c" * 63, "d" * 61])
assert len(MAX_NAME) == 253


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", "example.com"),
        ("Example.COM.", "example.com"),
        ("  www.example.com  ", "www.example.com"),
        ("WWW.Example.Com.", "www.example.com"),
        (".", ""),
        ("", ""),
        ("  .  ", ""),
        ("com", "com"),
        ("a", "a"),
        ("a-b.c", "a-b.c"),
        ("a--b.c", "a--b.c"),
        ("_srv._tcp.example.com", "_srv._tcp.example.com"),
        ("_", "_"),
        ("a_", "a_"),
        ("1.2.3.4", "1.2.3.4"),
        ("0a.example", "0a.example"),
        ("*.example.com", "*.example.com"),
        ("*", "*"),
        (f"{L63}.com", f"{L63}.com"),
        (MAX_NAME, MAX_NAME),
        (MAX_NAME + ".", MAX_NAME),
        (MAX_NAME.upper(), MAX_NAME),
    ],
)
def test_normalize_name_valid(text: str, expected: str) -> None:
    assert normalize_name(text) == expected
    assert normalize_name(expected) == expected  # idempotent


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a..b", "empty label"),
        ("..", "empty label"),
        (".example.com", "empty label"),
        ("example.com..", "empty label"),
        ("-a.example.com", "invalid label '-a'"),
        ("a-.example.com", "invalid label 'a-'"),
        ("a.-", "invalid label '-'"),
        ("a b.example.com", "invalid label 'a b'"),
        ("a/b.example.com", "invalid label"),
        ("a\\.b", "invalid label"),
        ("é.example.com", "invalid label"),
        ("a@b.example.com", "invalid label"),
        ("*a.example.com", "invalid label '*a'"),
        ("**.example.com", "invalid label '**'"),
        ("a.*.example.com", "only allowed as the leftmost label"),
        ("example.*", "only allowed as the leftmost label"),
        (f"{L63}a.com", "invalid label"),
        (MAX_NAME + "d", "longer than 253"),
        ("x." + MAX_NAME, "longer than 253"),
    ],
)
def test_normalize_name_invalid(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_name(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value)  # the message quotes the name as written


APEX = "gslb.example.com"


@pytest.mark.parametrize(
    ("owner", "apex", "expected"),
    [
        ("@", APEX, APEX),
        (" @ ", APEX, APEX),
        ("www", APEX, f"www.{APEX}"),
        ("WWW", APEX, f"www.{APEX}"),
        ("a.b", APEX, f"a.b.{APEX}"),
        ("_https._tcp.app", APEX, f"_https._tcp.app.{APEX}"),
        ("*", APEX, f"*.{APEX}"),
        ("*.wild", APEX, f"*.wild.{APEX}"),
        # absolute: trailing dot, or already ends in the apex
        (f"www.{APEX}.", APEX, f"www.{APEX}"),
        (f"www.{APEX}", APEX, f"www.{APEX}"),
        (f"WWW.{APEX.upper()}", APEX, f"www.{APEX}"),
        (f"{APEX}.", APEX, APEX),
        (APEX, APEX, APEX),
        ("foo.example.org.", APEX, "foo.example.org"),  # absolute and outside: compile rejects it
        ("example.com.", APEX, "example.com"),
        # relative names that merely look like other zones are relative
        ("foo.example.org", APEX, f"foo.example.org.{APEX}"),
        ("example.com", APEX, f"example.com.{APEX}"),
        # a name ending in the apex text but not on a label boundary is relative
        ("xgslb.example.com", APEX, f"xgslb.example.com.{APEX}"),
        # the root zone
        ("www", "", "www"),
        ("@", "", ""),
        ("www.example.", "", "www.example"),
    ],
)
def test_qualify(owner: str, apex: str, expected: str) -> None:
    assert qualify(owner, apex) == expected


@pytest.mark.parametrize("owner", ["a..b", "-bad", "a.*", "bad name", f"{L63}a"])
def test_qualify_rejects_invalid_owner(owner: str) -> None:
    with pytest.raises(ValueError):
        qualify(owner, APEX)


def test_qualify_rejects_empty_owner() -> None:
    """An empty owner is neither the apex (that is ``@``) nor a name: ``.gslb.example.com``
    is not a domain name."""
    with pytest.raises(ValueError):
        qualify("", APEX)


def test_qualify_rejects_name_too_long_once_qualified() -> None:
    """Each part is a valid name on its own, but relative name + apex exceeds 253 characters."""
    relative = ".".join(["a" * 60] * 4)  # 243 characters
    assert normalize_name(relative) == relative
    with pytest.raises(ValueError, match="253"):
        qualify(relative, APEX)


def test_qualify_accepts_longest_name() -> None:
    relative = MAX_NAME[: len(MAX_NAME) - len(APEX) - 1]
    relative = relative.rstrip(".")
    name = qualify(relative, APEX)
    assert name == f"{relative}.{APEX}"
    assert len(name) <= 253


@pytest.mark.parametrize(
    ("name", "parent", "expected"),
    [
        ("example.com", "example.com", True),
        ("www.example.com", "example.com", True),
        ("a.b.c.example.com", "example.com", True),
        ("example.com", "www.example.com", False),
        ("xexample.com", "example.com", False),  # suffix, not a label boundary
        ("example.com.evil", "example.com", False),
        ("example.org", "example.com", False),
        ("com", "example.com", False),
        ("example.com", "com", True),
        ("anything.at.all", "", True),  # everything is under the root
        ("", "", True),
        ("", "example.com", False),
        ("*.example.com", "example.com", True),
    ],
)
def test_is_subdomain(name: str, parent: str, expected: bool) -> None:
    assert is_subdomain(name, parent) is expected


@pytest.mark.parametrize(
    ("name", "apex", "expected"),
    [
        ("example.com", "example.com", []),
        ("www.example.com", "example.com", []),
        ("a.b.example.com", "example.com", ["b.example.com"]),
        ("a.b.c.example.com", "example.com", ["c.example.com", "b.c.example.com"]),
        ("_https._tcp.app.gslb.example.com", APEX, [f"app.{APEX}", f"_tcp.app.{APEX}"]),
        ("*.x.example.com", "example.com", ["x.example.com"]),
        ("com", "", []),
        ("a.b.c", "", ["c", "b.c"]),
    ],
)
def test_parent_names(name: str, apex: str, expected: list[str]) -> None:
    parents = parent_names(name, apex)
    assert parents == expected
    for parent in parents:
        assert is_subdomain(name, parent) and parent != name
        assert is_subdomain(parent, apex) and parent != apex
