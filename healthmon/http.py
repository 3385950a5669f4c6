"""``http`` and ``https``: one HTTP/1.1 request, the status checked against a list of codes
or ranges, optionally the first bytes of the body against a substring or a regex.

The request is written by hand on one connection (``Connection: close``): a probe needs
the status line and a few body bytes, not a client library's pooling and redirects.

```yaml
monitor:
  type: https
  path: /healthz
  host: app.example.com          # Host header and SNI; default: the address
  expect_status: ["200-299", 301]
  body: "ok"                     # or body_regex: "status.+up"
  verify: false
  interval: 1
  timeout: 0.5
  rise: 2
  fall: 2
```
"""

from __future__ import annotations

import asyncio
import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from healthmon.base import Monitor, MonitorConfig, local, register
from healthmon.tlsutil import client_context


def _status_ranges(values: list[int | str]) -> list[tuple[int, int]]:
    out = []
    for value in values:
        text = str(value).strip()
        low, dash, high = text.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"{value!r} is not a status code or a range like 200-299")
        lo, hi = int(low), int(high or low)
        if not (100 <= lo <= 599 and 100 <= hi <= 599):
            raise ValueError(f"{value!r} is not within 100-599")
        if lo > hi:
            raise ValueError(f"{value!r}: the range starts above its end")
        out.append((lo, hi))
    return out


class HttpConfig(MonitorConfig):
    type: Literal["http", "https"] = "http"
    method: Literal["GET", "HEAD", "POST", "OPTIONS"] = "GET"
    path: str = Field("/", pattern=r"^/[^\s]*$")
    host: str | None = Field(None, description="Host header and TLS SNI; default: the probed address")
    expect_status: list[int | str] = Field(default_factory=lambda: list[int | str](["200-399"]), min_length=1)
    body: str | None = Field(None, description="substring the first read_limit bytes of the body must hold")
    body_regex: str | None = None
    read_limit: int = Field(4096, ge=64, le=1 << 20)
    verify: bool = Field(True, description="https: verify the certificate and host name")
    ca_file: Path | None = None
    cert_file: Path | None = Field(None, description="https: client certificate")
    key_file: Path | None = None

    @field_validator("expect_status")
    @classmethod
    def _ranges(cls, value: list[int | str]) -> list[int | str]:
        _status_ranges(value)
        return value

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from None
        return value

    def default_port(self) -> int:
        return 443 if self.type == "https" else 80

    @cached_property
    def status_ranges(self) -> list[tuple[int, int]]:
        return _status_ranges(self.expect_status)


@register
class HttpMonitor(Monitor):
    name = "http"
    config_model = HttpConfig
    config: HttpConfig

    def __init__(self, config: HttpConfig) -> None:
        super().__init__(config)
        self.context = (client_context(verify=config.verify, ca_file=config.ca_file,
                                       cert_file=config.cert_file, key_file=config.key_file)
                        if config.type == "https" else None)
        self.pattern = re.compile(config.body_regex.encode()) if config.body_regex else None

    def request(self, address: str) -> bytes:
        host = self.config.host or (f"[{address}]" if ":" in address else address)
        return (f"{self.config.method} {self.config.path} HTTP/1.1\r\nHost: {host}\r\n"
                "User-Agent: gslb-healthmon\r\nAccept: */*\r\nConnection: close\r\n\r\n").encode()

    async def check(self, address: str, source: str | None) -> tuple[bool, str]:
        cfg = self.config
        async with asyncio.timeout(cfg.timeout):
            reader, writer = await asyncio.open_connection(
                address, self.port, ssl=self.context, local_addr=local(source),
                server_hostname=(cfg.host or address) if self.context is not None else None)
            try:
                writer.write(self.request(address))
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                if cfg.method != "HEAD" and (cfg.body is not None or self.pattern is not None):
                    while len(body) < cfg.read_limit:
                        chunk = await reader.read(cfg.read_limit - len(body))
                        if not chunk:
                            break
                        body += chunk
                        if (cfg.body is not None and cfg.body.encode() in body) or (
                                self.pattern is not None and self.pattern.search(body)):
                            break
            finally:
                writer.close()
        return self.verdict(head, body)

    def verdict(self, head: bytes, body: bytes) -> tuple[bool, str]:
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return False, f"not an HTTP response: {status_line[:80]!r}"
        status = int(parts[1])
        if not any(lo <= status <= hi for lo, hi in self.config.status_ranges):
            return False, f"HTTP {status}, expected {', '.join(map(str, self.config.expect_status))}"
        if self.config.body is not None and self.config.body.encode() not in body:
            return False, f"HTTP {status} but body lacks {self.config.body!r}"
        if self.pattern is not None and not self.pattern.search(body):
            return False, f"HTTP {status} but body does not match {self.config.body_regex!r}"
        return True, f"HTTP {status}"


@register
class HttpsMonitor(HttpMonitor):
    name = "https"
