"""Restarts without loss: a running node hands its listening sockets to its successor.

Rebinding the ports (even with ``SO_REUSEPORT``) loses whatever waits in the old sockets:
queued datagrams and connections in the accept queue die with them. So, as HAProxy's
seamless reload and systemd socket activation do, the new process serves on the *same*
sockets: the kernel queues are shared, and whoever reads next answers.

The conversation on the hand-over socket (a Unix stream socket, mode 0600), one JSON line each::

    new -> old   {"takeover": 1}
    old -> new   {"dns": [[host, port], ...], "http": [host, port] | null}
                 with the descriptors udp, tcp (per DNS address) then http, as SCM_RIGHTS
    new -> old   {"go": true}       once the new node serves on them
    old -> new   {"going": true, "state": {...}}
                 the old node's drains, registrations and events (embedded store; else null);
                 then it stops reading, finishes its TCP connections and exits 0

Until ``go`` the old node serves as before: a successor that dies half-way changes nothing.
Sockets inherited from systemd (``LISTEN_FDS``) take the same path as those received here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnsserver.server import ListenerSockets, format_address
from gslb.errors import GslbError

log = logging.getLogger("gslb.handover")

HELLO_TIMEOUT = 10.0
"""How long either side waits for the other's next line, except for ``go``."""
GO_TIMEOUT = 300.0
"""How long the old node waits for its successor to start (config, store, first checks)."""
PEER_EXIT_WAIT = 3.0
"""How long a successor whose predecessor did not confirm waits for it to exit."""
MAX_LINE = 64 * 1024 * 1024  # "going" carries the store's state
MAX_FDS = 253  # the kernel's SCM_MAX_FD


@dataclass
class Offer:
    """What a node hands over: its DNS listeners and its HTTP listening socket."""

    dns: list[ListenerSockets]
    http: socket.socket | None

    def manifest(self) -> dict[str, Any]:
        http = self.http.getsockname()[:2] if self.http is not None else None
        return {"dns": [[lst.host, lst.port] for lst in self.dns], "http": http}

    def fds(self) -> list[int]:
        fds = [fd for lst in self.dns for fd in (lst.udp.fileno(), lst.tcp.fileno())]
        return fds + ([self.http.fileno()] if self.http is not None else [])

    def describe(self) -> str:
        http = " and the HTTP socket" if self.http is not None else ""
        return f"{len(self.dns)} DNS address(es) (UDP + TCP){http}"


class Inherited:
    """Listening sockets this process did not open (its predecessor's, or systemd's), matched to
    the configured addresses by what they are bound to; port 0 in the config matches any port."""

    def __init__(self, sockets: list[socket.socket], source: str) -> None:
        self.sockets = sockets
        self.source = source

    def take(self, kind: socket.SocketKind, host: str, port: int) -> socket.socket | None:
        wanted = ipaddress.ip_address(host)
        for sock in self.sockets:
            bound_host, bound_port = sock.getsockname()[:2]
            if sock.type == kind and ipaddress.ip_address(bound_host) == wanted and port in (0, bound_port):
                self.sockets.remove(sock)
                sock.setblocking(False)
                return sock
        return None

    def listeners(self, listen: Sequence[tuple[str, int]],
                  bind: Callable[[str, int], ListenerSockets]) -> list[ListenerSockets]:
        """One pair per configured address: the inherited one, else ``bind(host, port)``."""
        out = []
        for host, port in listen:
            udp = self.take(socket.SOCK_DGRAM, host, port)
            tcp = self.take(socket.SOCK_STREAM, host, udp.getsockname()[1] if udp else port)
            if udp is not None and tcp is not None:
                out.append(ListenerSockets(host, udp.getsockname()[1], udp, tcp))
                continue
            for sock in (udp, tcp):
                if sock is not None:
                    sock.close()
            if udp is not None or tcp is not None:
                missing = "TCP" if tcp is None else "UDP"
                raise GslbError(f"{self.source} passed no {missing} socket for {format_address(host, port)}; "
                                "DNS needs both on each address")
            out.append(bind(host, port))
        return out

    def close_rest(self) -> None:
        """Sockets the config no longer asks for: close them (the old node stops serving them too)."""
        for sock in self.sockets:
            kind = "udp" if sock.type == socket.SOCK_DGRAM else "tcp"
            log.info("handover: closing %s socket %s from %s: not in this config", kind,
                     format_address(*sock.getsockname()[:2]), self.source)
            sock.close()
        self.sockets.clear()


def from_systemd(environ: MutableMapping[str, str] | None = None) -> Inherited | None:
    """Sockets passed by systemd socket activation (fds 3.., ``LISTEN_FDS``), if meant for us."""
    env = os.environ if environ is None else environ
    if "LISTEN_FDS" not in env or env.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(env["LISTEN_FDS"])
    except ValueError:
        raise GslbError(f"LISTEN_FDS={env['LISTEN_FDS']!r} is not a number") from None
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)  # not for our children
    sockets = []
    for fd in range(3, 3 + count):
        try:
            sockets.append(socket.socket(fileno=fd))
        except OSError as exc:
            raise GslbError(f"systemd fd {fd} is not a socket: {exc}") from None
    log.info("handover: %d socket(s) from systemd (LISTEN_FDS)", count)
    return Inherited(sockets, "systemd")


class Handover:
    """A node's end of the hand-over socket: take the listeners over from the node serving at
    ``path`` (if any), then listen there for the next one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handed_over = False
        self._peer: socket.socket | None = None
        self._peer_pid = 0
        self._listener: socket.socket | None = None
        self._inode = 0
        self._busy = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def taking_over(self) -> bool:
        return self._peer is not None

    # ----------------------------------------------------------------- the new node

    def take(self, timeout: float = HELLO_TIMEOUT) -> Inherited | None:
        """Receive the listening sockets of the node at ``path``; None when nobody answers there
        (first start, or a stale file left by a node that died). Blocking: call before the loop."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            why = "no such file" if isinstance(exc, FileNotFoundError) else "stale socket, nobody listening"
            log.info("handover: nobody answers at %s (%s); binding the listeners", self.path, why)
            return None
        except OSError as exc:
            sock.close()
            raise GslbError(f"handover: cannot connect to {self.path}: {exc}") from None
        try:
            pid = _peer_pid(sock)
            sock.sendall(_line({"takeover": 1}))
            manifest, fds = _receive_manifest(sock)
        except (OSError, ValueError) as exc:
            sock.close()
            raise GslbError(f"handover: the node at {self.path} failed to hand over: {exc}") from None
        sockets = [socket.socket(fileno=fd) for fd in fds]
        if "error" in manifest:
            sock.close()
            for s in sockets:
                s.close()
            raise GslbError(f"handover: pid {pid} at {self.path} refused: {manifest['error']}")
        self._peer, self._peer_pid = sock, pid
        http = manifest.get("http")
        log.info("handover: received %d socket(s) from pid %d via %s: dns %s, http %s", len(sockets), pid,
                 self.path, ", ".join(format_address(h, p) for h, p in manifest.get("dns", [])) or "none",
                 format_address(*http) if http else "none")
        return Inherited(sockets, f"pid {pid}")

    async def confirm(self) -> Any:
        """Serving now: tell the predecessor to go. Returns the state it sent as it went (its
        store's drains and registrations), or None. The next node may connect from here on
        (and waits until ``listen``)."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            listener.bind(str(tmp))
            os.chmod(tmp, 0o600)
            listener.listen(4)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise GslbError(f"handover: cannot listen at {tmp}: {exc}") from None
        try:
            state = await self._confirm(self._peer) if self._peer is not None else None
        except GslbError:
            listener.close()
            tmp.unlink()
            raise
        os.replace(tmp, self.path)
        self._listener, self._inode = listener, os.stat(self.path).st_ino
        return state

    def listen(self, offer: Callable[[], Offer], release: Callable[[], Awaitable[None]],
               state: Callable[[], Any]) -> None:
        """Hand over to the next node that connects: ``offer`` gives the sockets, ``state`` what
        goes with ``going``, and ``release`` stops this node once the successor serves."""
        assert self._listener is not None, "confirm() first"
        self._offer, self._release, self._state = offer, release, state
        self._spawn(self._accept_forever(self._listener))
        log.info("handover: ready to hand over to the next node at %s", self.path)

    async def _confirm(self, peer: socket.socket) -> Any:
        loop = asyncio.get_running_loop()
        peer.setblocking(False)
        try:
            await loop.sock_sendall(peer, _line({"go": True}))
            log.info("handover: serving; told pid %d to go", self._peer_pid)
            reply = await asyncio.wait_for(_read_line(peer), HELLO_TIMEOUT)
            if not reply.get("going"):
                raise ValueError(f"unexpected reply {str(reply)[:200]}")
            log.info("handover: pid %d is going", self._peer_pid)
            return reply.get("state")
        except (OSError, ValueError, TimeoutError) as exc:
            why = str(exc) or type(exc).__name__
        finally:
            peer.close()
            self._peer = None
        # It gave up waiting, or is being stopped: two nodes must not go on serving the same sockets.
        if await _still_running(self._peer_pid, PEER_EXIT_WAIT):
            raise GslbError(f"handover: pid {self._peer_pid} did not confirm ({why}) and still runs; "
                            "leaving the sockets to it")
        log.warning("handover: pid %d did not confirm (%s) and is gone; serving alone", self._peer_pid, why)
        return None

    # ----------------------------------------------------------------- the old node

    async def _accept_forever(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            self._spawn(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        pid, mine = 0, False
        try:
            pid = _peer_pid(conn)
            hello = await asyncio.wait_for(_read_line(conn), HELLO_TIMEOUT)
            if hello.get("takeover") != 1:
                raise ValueError(f"not a takeover request: {hello}")
        except (OSError, ValueError, TimeoutError) as exc:
            log.info("handover: ignored a connection from pid %d: %s", pid, exc or type(exc).__name__)
            conn.close()
            return
        try:
            if self._busy or self.handed_over:
                await loop.sock_sendall(conn, _line({"error": "another hand-over is under way"}))
                log.warning("handover: refused pid %d: another hand-over is under way", pid)
                return
            self._busy = mine = True
            offer = self._offer()
            socket.send_fds(conn, [_line(offer.manifest())], offer.fds())
            log.info("handover: pid %d connected; sent %s; serving until it confirms", pid, offer.describe())
            go = await asyncio.wait_for(_read_line(conn), GO_TIMEOUT)
            if not go.get("go"):
                raise ValueError(f"expected go, got {go}")
            await loop.sock_sendall(conn, _line({"going": True, "state": self._state()}))
            self.handed_over = True
            self._close_listener(unlink=False)  # the successor's listener replaces the file
            log.info("handover: pid %d serves; stopping here", pid)
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("handover: pid %d went away before confirming (%s); still serving",
                        pid, exc or type(exc).__name__)
            return
        finally:
            conn.close()
            if mine and not self.handed_over:
                self._busy = False
        await self._release()

    def _close_listener(self, *, unlink: bool) -> None:
        if self._listener is None:
            return
        self._listener.close()
        self._listener = None
        if unlink:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:  # not a successor's
                    self.path.unlink()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._close_listener(unlink=True)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._peer is not None:
            self._peer.close()
            self._peer = None


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def _parse(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    if not isinstance(message, dict):
        raise ValueError(f"expected a JSON object, got {raw[:80]!r}")
    return message


def _peer_pid(sock: socket.socket) -> int:
    """The pid at the other end (Linux ``SO_PEERCRED``); refuses other users than ours and root."""
    if not hasattr(socket, "SO_PEERCRED"):
        return 0
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid not in (0, os.getuid()):
        raise ValueError(f"peer pid {pid} runs as uid {uid}")
    return int(pid)


async def _still_running(pid: int, wait: float) -> bool:
    """Whether ``pid`` still runs after up to ``wait`` seconds (0: unknown, taken as gone)."""
    if not pid:
        return False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists
        if loop.time() >= deadline:
            return True
        await asyncio.sleep(0.1)


def _receive_manifest(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The old node's one line and the descriptors that came with it (blocking)."""
    data, fds, flags, _ = socket.recv_fds(sock, 65536, MAX_FDS)
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ValueError("descriptors were truncated")
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk or len(data) > MAX_LINE:
            for fd in fds:
                os.close(fd)
            raise ValueError("connection closed before the manifest ended" if not chunk else "manifest too long")
        data += chunk
    try:
        manifest = _parse(data)
        expected = 2 * len(manifest.get("dns", [])) + (manifest.get("http") is not None)
        if "error" not in manifest and len(fds) != expected:
            raise ValueError(f"manifest names {expected} socket(s), {len(fds)} came")
    except ValueError:
        for fd in fds:
            os.close(fd)
        raise
    return manifest, fds


async def _read_line(sock: socket.socket) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise ValueError("connection closed")
        data += chunk
        if len(data) > MAX_LINE:
            raise ValueError("line too long")
    return _parse(bytes(data))
