"""Real Redis servers for tests: ``redis-server`` on an ephemeral 127.0.0.1 port (or a unix
socket in the test's tmp_path), with no persistence, so a restart always comes back empty;
and a small Sentinel setup (one master, one replica, one sentinel) for failover tests.

Every wait here is a bounded poll; a server that does not come up fails the test with its
log attached.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from tests.support.servers import free_port

START_TIMEOUT = 10.0


@dataclass
class RedisServer:
    """One ``redis-server`` process. ``port`` stays the same across ``restart``; with
    ``unix=True`` it listens on ``socket_path`` only."""

    binary: str
    workdir: Path
    name: str = "redis"
    unix: bool = False
    extra_args: list[str] = field(default_factory=list)
    port: int = 0
    socket_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def url(self) -> str:
        if self.unix:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def client(self, **kw: Any) -> redis.Redis:
        """A synchronous redis-py client (decoded replies); the caller closes it."""
        options: dict[str, Any] = {"decode_responses": True, "socket_timeout": 2.0,
                                   "socket_connect_timeout": 2.0, **kw}
        if self.unix:
            return redis.Redis(unix_socket_path=str(self.socket_path), **options)
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def ping(self) -> bool:
        client = self.client(socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def command(self) -> list[str]:
        cmd = [self.binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.workdir), "--dbfilename", f"{self.name}.rdb", "--logfile", "",
               "--daemonize", "no"]
        if self.unix:
            assert self.socket_path is not None
            cmd += ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        else:
            cmd += ["--port", str(self.port)]
        return cmd + self.extra_args

    def start(self) -> RedisServer:
        """Start (empty) and wait until PING answers. The first start picks the port; if the
        port was taken meanwhile, pick another (only on the first start: a restart must keep
        its port)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.unix and self.socket_path is None:
            self.socket_path = self.workdir / f"{self.name}.sock"
        attempts = 1 if (self.starts or self.unix or self.port) else 5
        for _ in range(attempts):
            if not self.unix and not self.port:
                self.port = free_port()
            if self._spawn():
                self.starts += 1
                return self
            if self.starts == 0 and not self.unix and attempts > 1:
                self.port = 0  # taken between free_port() and the bind: try another
        raise AssertionError(f"{self.name} did not start ({' '.join(self.command())}):\n{self.log()}")

    def _spawn(self) -> bool:
        with open(self.log_path, "ab") as out:
            out.write(f"---- start {self.starts + 1}: {' '.join(self.command())}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.ping():
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def stop(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Stop the process (SIGKILL by default: nothing is saved, clients see a dead peer)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.unix and self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    def restart(self) -> RedisServer:
        """Start again, empty, on the same port (or socket)."""
        self.stop()
        return self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextmanager
def redis_server(binary: str, tmp_path: Path, *, name: str = "redis", unix: bool = False,
                 extra_args: list[str] | None = None) -> Iterator[RedisServer]:
    """A running ``redis-server`` for the duration of the block, always stopped after."""
    server = RedisServer(binary, tmp_path / name, name=name, unix=unix, extra_args=list(extra_args or []))
    try:
        yield server.start()
    finally:
        server.stop()


# --------------------------------------------------------------------------- sentinel


def wait_for(what: str, check: Any, timeout: float, interval: float = 0.1, log: Any = None) -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (redis.RedisError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            extra = f"\n{log()}" if log is not None else ""
            raise AssertionError(f"{what}: not the case after {timeout}s (last: {last!r}){extra}")
        time.sleep(interval)


@dataclass
class SentinelSetup:
    """A master, its replica and one sentinel watching them as ``master_name``."""

    master: RedisServer
    replica: RedisServer
    sentinel_binary: str
    workdir: Path
    master_name: str = "mymaster"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "sentinel.log"

    def log(self) -> str:
        parts = [f"== {p.name}\n{p.log()}" for p in (self.master, self.replica)]
        with contextlib.suppress(OSError):
            parts.append(f"== sentinel\n{self.log_path.read_text(errors='replace')}")
        return "\n".join(parts)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=2.0,
                           socket_connect_timeout=2.0)

    def master_address(self) -> tuple[str, int] | None:
        """Where the sentinel says the master is now."""
        client = self.client()
        try:
            reply = client.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        finally:
            client.close()
        return (str(reply[0]), int(reply[1])) if reply else None

    def known_replicas(self) -> list[dict[str, Any]]:
        client = self.client()
        try:
            replies = client.execute_command("SENTINEL", "REPLICAS", self.master_name)  # type: ignore[no-untyped-call]
        finally:
            client.close()
        out = []
        for reply in replies or []:
            if isinstance(reply, dict):
                out.append(reply)
            else:  # a flat list of name, value pairs
                out.append(dict(zip(reply[::2], reply[1::2], strict=False)))
        return out

    def start_sentinel(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "sentinel.conf"
        for _ in range(5):
            self.port = free_port()
            conf.write_text(
                f"port {self.port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.workdir}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.master_name} 500\n"
                f"sentinel failover-timeout {self.master_name} 2000\n"
                f"sentinel parallel-syncs {self.master_name} 1\n")
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen([self.sentinel_binary, str(conf)], stdout=out,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self.master_address():
                        return
                except (redis.RedisError, OSError):
                    pass
                time.sleep(0.05)
            self.stop_sentinel()
        raise AssertionError(f"sentinel did not start:\n{self.log()}")

    def stop_sentinel(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """The replica is in sync and the sentinel knows it (so it can promote it)."""
        def replica_synced() -> bool:
            client = self.replica.client()
            try:
                info = client.info("replication")
            finally:
                client.close()
            return info.get("role") == "slave" and info.get("master_link_status") == "up"

        def sentinel_sees_replica() -> bool:
            return any(int(r.get("port", 0)) == self.replica.port and "s_down" not in str(r.get("flags", ""))
                       and str(r.get("master-link-status", "")) == "ok" for r in self.known_replicas())

        wait_for("replica in sync with the master", replica_synced, timeout, log=self.log)
        wait_for("sentinel knows the replica", sentinel_sees_replica, timeout, log=self.log)

    def wait_failover(self, timeout: float = 15.0) -> tuple[str, int]:
        """Bounded wait until the sentinel names the replica as master."""
        result: tuple[str, int] = wait_for(
            "sentinel promoted the replica",
            lambda: (addr := self.master_address()) and addr[1] == self.replica.port and addr,
            timeout, log=self.log)
        return result


@contextmanager
def redis_sentinel(server_binary: str, sentinel_binary: str, tmp_path: Path,
                   master_name: str = "mymaster") -> Iterator[SentinelSetup]:
    """One master + one replica + one sentinel (quorum 1, down-after 500 ms, failover-timeout
    2000 ms) on ephemeral 127.0.0.1 ports, all stopped after the block."""
    # no 5 s wait before the replica's first (diskless) sync
    master = RedisServer(server_binary, tmp_path / "sentinel-master", name="master",
                         extra_args=["--repl-diskless-sync-delay", "0"])
    replica = RedisServer(server_binary, tmp_path / "sentinel-replica", name="replica")
    setup = SentinelSetup(master, replica, sentinel_binary, tmp_path / "sentinel", master_name)
    try:
        master.start()
        replica.extra_args = ["--replicaof", "127.0.0.1", str(master.port)]
        replica.start()
        setup.start_sentinel()
        setup.wait_ready()
        yield setup
    finally:
        setup.stop_sentinel()
        replica.stop()
        master.stop()
