"""UDP answered by the C loop in ``dnsserver._fastudp``: one thread per socket, batches of
datagrams per system call, cache hits without entering the interpreter.

The asyncio path (``dnsserver.udp``) stays for response rate limiting, for machines where the
extension did not build, and for comparison: ``GSLB_UDP_FASTPATH=0`` turns this one off.

Threads and the handler: misses call ``handler.handle`` from the UDP thread, beside the event
loop's TCP queries and snapshot swaps; the handler's lock keeps those apart, so an answer
resolved on an old snapshot never lands in the new one's caches. Hits take no lock: the C loop
counts them under the GIL and never keeps the exact-cache dict across a GIL release, and the
handler swaps its caches before it folds the old ones' counters, so no hit goes uncounted.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from types import ModuleType

from dnsserver.handler import QueryHandler

log = logging.getLogger("gslb.dns")

ENV = "GSLB_UDP_FASTPATH"
BATCH = 32
"""Datagrams per recvmmsg/sendmmsg: enough to spread a system call over many queries, small
enough that one batch holds the GIL for only tens of microseconds."""
JOIN_TIMEOUT = 5.0

_native: ModuleType | None
_why = ""
try:
    from dnsserver import _fastudp as _native
except ImportError as exc:  # not built here (no compiler, not Linux): asyncio answers UDP
    _native, _why = None, str(exc)
_explained = False


def available() -> bool:
    """Whether UDP goes through the C loop: built, and not turned off by ``GSLB_UDP_FASTPATH=0``.
    Says once per process why not, when it was not built."""
    global _explained
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if _native is None:
        if not _explained:
            _explained = True
            log.warning("dns/udp: the C fast path is not built (%s); answering through asyncio "
                        "(pip install -e . builds it)", _why)
        return False
    return True


class FastUdp:
    """The UDP threads of one server, started together and stopped together by one eventfd
    (never read, so once written it wakes every thread, however often each one polls)."""

    def __init__(self, handler: QueryHandler, *, label: str = "", batch: int = BATCH) -> None:
        self.handler = handler
        if _native is not None and _native.LOCATED:
            handler.keep_located_replies(_native.located_key)
        self.label = label
        self.batch = batch
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._threads: list[threading.Thread] = []
        self.counts: dict[str, dict[str, int]] = {}
        """Per thread, once it has stopped: datagrams received, hits, handled, sent, errors."""

    def start(self, sock: socket.socket) -> None:
        """Answer ``sock`` in a new thread until ``stop``; the socket stays the caller's."""
        name = f"dns-udp-{sock.getsockname()[1]}"
        thread = threading.Thread(target=self._serve, args=(sock.fileno(), name), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _serve(self, fd: int, name: str) -> None:
        assert _native is not None
        try:
            counts = _native.serve(fd, self.handler, self._stop_fd, self.batch)
        except Exception:  # the socket itself failed (closed under us): this listener is gone
            log.exception("dns/udp: %s stopped answering%s", name, self.label)
            return
        self.counts[name] = counts
        log.debug("dns/udp: %s stopped%s: %s", name, self.label, counts)

    def stop(self) -> bool:
        """Stop every thread; each answers what it has read first. Returns whether all ended
        (the sockets must not be closed under a thread still reading them)."""
        if self._stop_fd < 0:
            return True
        os.eventfd_write(self._stop_fd, 1)
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT)
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.error("dns/udp: %s did not stop within %g s%s", ", ".join(stuck), JOIN_TIMEOUT, self.label)
            return False
        self._threads.clear()
        os.close(self._stop_fd)
        self._stop_fd = -1
        return True
