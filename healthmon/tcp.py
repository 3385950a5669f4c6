"""``tcp``: connect, optionally send bytes and expect a substring in the reply.

```yaml
monitor: {type: tcp, port: 5432, interval: 2, timeout: 1, rise: 2, fall: 2}
monitor: {type: tcp, port: 6379, send: "PING\\r\\n", expect: "+PONG"}
```
"""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field

from healthmon.base import Monitor, MonitorConfig, local, register


class TcpConfig(MonitorConfig):
    type: Literal["tcp"] = "tcp"
    send: str | None = Field(None, max_length=4096)
    expect: str | None = Field(None, max_length=4096)
    read_limit: int = Field(4096, ge=1, le=1 << 20)


async def read_until(reader: asyncio.StreamReader, needle: bytes, limit: int) -> bytes:
    """Read until ``needle`` shows up, EOF, or ``limit`` bytes."""
    data = b""
    while len(data) < limit:
        chunk = await reader.read(limit - len(data))
        if not chunk:
            break
        data += chunk
        if needle and needle in data:
            break
    return data


@register
class TcpMonitor(Monitor):
    name = "tcp"
    config_model = TcpConfig
    config: TcpConfig

    async def check(self, address: str, source: str | None) -> tuple[bool, str]:
        cfg = self.config
        if not cfg.send and cfg.expect is None:
            # a bare connect: a Protocol that closes at once costs far less than streams
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(cfg.timeout):
                transport, _ = await loop.create_connection(asyncio.Protocol, address, self.port,
                                                            local_addr=local(source))
            transport.abort()
            return True, "connected"
        async with asyncio.timeout(cfg.timeout):
            reader, writer = await asyncio.open_connection(address, self.port, local_addr=local(source))
            try:
                if cfg.send:
                    writer.write(cfg.send.encode())
                    await writer.drain()
                if cfg.expect is None:
                    return True, "connected"
                data = await read_until(reader, cfg.expect.encode(), cfg.read_limit)
                if cfg.expect.encode() in data:
                    return True, f"got {cfg.expect!r}"
                return False, f"expected {cfg.expect!r}, got {data[:80]!r}"
            finally:
                writer.close()
