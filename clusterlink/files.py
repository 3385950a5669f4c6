"""Noticing that files on disk changed, cheaply: stat first, hash only when stat moved."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path


class Watched:
    """A set of files; ``changed()`` is true once per change of their contents (including a
    file appearing or disappearing). The first call records the baseline and returns False."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self._stat: tuple[tuple[int, int] | None, ...] | None = None
        self._digest: str | None = None

    def _stats(self) -> tuple[tuple[int, int] | None, ...]:
        out: list[tuple[int, int] | None] = []
        for path in self.paths:
            try:
                st = path.stat()
            except OSError:
                out.append(None)
            else:
                out.append((st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _hash(self) -> str:
        digest = hashlib.sha256()
        for path in self.paths:
            try:
                digest.update(path.read_bytes())
            except OSError:
                digest.update(b"\0missing\0")
            digest.update(b"\0")
        return digest.hexdigest()

    def changed(self) -> bool:
        stats = self._stats()
        if stats == self._stat:
            return False
        first = self._stat is None
        self._stat = stats
        digest = self._hash()
        if first or digest == self._digest:
            self._digest = digest
            return False
        self._digest = digest
        return True
