"""Domain names in one normal form: lowercase text, no trailing dot, the root as ``""``.

Config names are restricted to letters, digits, ``-``, ``_`` and a leading ``*``; names
from the wire may hold any byte and are escaped (``\\DDD``) so they never collide with them.
"""

from __future__ import annotations

import re

_LABEL = re.compile(r"^(\*|[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)$")


def normalize_name(text: str) -> str:
    """Validate a config domain name and return its normal form."""
    name = text.strip().lower()
    if name in ("", "."):
        return ""
    if name.endswith("."):
        name = name[:-1]
    if len(name) > 253:
        raise ValueError(f"domain name longer than 253 characters: {text!r}")
    for i, label in enumerate(name.split(".")):
        if not label:
            raise ValueError(f"empty label in domain name {text!r}")
        if not _LABEL.match(label):
            raise ValueError(
                f"invalid label {label!r} in domain name {text!r} "
                "(letters, digits, '-' and '_' only, 1-63 characters, no leading or trailing '-')"
            )
        if label == "*" and i != 0:
            raise ValueError(f"'*' is only allowed as the leftmost label: {text!r}")
    return name


def is_subdomain(name: str, parent: str) -> bool:
    """True when ``name`` equals ``parent`` or lies below it."""
    return not parent or name == parent or name.endswith("." + parent)


def qualify(owner: str, apex: str) -> str:
    """Resolve a record owner written in a zone: ``@`` is the apex, a name ending in a dot
    or in the apex is absolute, anything else is relative to the apex."""
    raw = owner.strip()
    if raw == "@":
        return apex
    if not raw or raw == ".":
        raise ValueError("empty name (use '@' for the zone apex)")
    name = normalize_name(raw)
    if raw.endswith(".") or is_subdomain(name, apex):
        return name
    full = f"{name}.{apex}" if apex else name
    if len(full) > 253:
        raise ValueError(f"{raw!r} in {apex} is longer than 253 characters")
    return full


def parent_names(name: str, apex: str) -> list[str]:
    """The names strictly between ``apex`` and ``name``, nearest the apex first."""
    if name == apex:
        return []
    rel = name[: len(name) - len(apex) - 1] if apex else name
    labels = rel.split(".")
    out = []
    for i in range(len(labels) - 1, 0, -1):
        out.append(".".join(labels[i:]) + ("." + apex if apex else ""))
    return out
