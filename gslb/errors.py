"""One exception root for the project; foreign exceptions are translated at the edges."""

from __future__ import annotations

from dataclasses import dataclass


class GslbError(Exception):
    """A gslb operation failed."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem in a config file, located by its path of keys and list indexes."""

    path: tuple[str | int, ...]
    message: str
    line: int | None = None

    @property
    def dotted(self) -> str:
        return format_path(self.path)

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.dotted or '<root>'}: {self.message}{where}"


def format_path(path: tuple[str | int, ...]) -> str:
    """``zones[gslb.example.com].records[2].ttl``: dots join plain keys, brackets hold
    indexes and keys that contain dots themselves (zone apexes, service names)."""
    out = ""
    for part in path:
        if isinstance(part, int) or "." in part or not part:
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class ConfigError(GslbError):
    """The site config is invalid; ``errors`` lists every problem found."""

    def __init__(self, source: str, errors: list[FieldError]) -> None:
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"{source}: {len(errors)} error(s)\n{lines}")


class StoreError(GslbError):
    """The state store could not be read or written."""
