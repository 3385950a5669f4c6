"""``tls``: a TLS handshake (certificate verified unless ``verify: false``), failing when
the certificate has expired or, with ``fail_days``, expires within that many days;
``warn_days`` only notes it in the check detail.

```yaml
monitor: {type: tls, port: 443, server_name: app.example.com, warn_days: 14}
```
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path
from typing import Literal

from pydantic import Field

from healthmon.base import Monitor, MonitorConfig, local, register
from healthmon.tlsutil import client_context, peer_not_after


class TlsConfig(MonitorConfig):
    type: Literal["tls"] = "tls"
    server_name: str | None = Field(None, description="SNI and the name verified; default: the address")
    verify: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = Field(None, description="client certificate, for servers that require one")
    key_file: Path | None = None
    warn_days: float = Field(14, ge=0)
    fail_days: float = Field(0, ge=0)

    def default_port(self) -> int:
        return 443


@register
class TlsMonitor(Monitor):
    name = "tls"
    config_model = TlsConfig
    config: TlsConfig

    def __init__(self, config: TlsConfig) -> None:
        super().__init__(config)
        self.context = client_context(verify=config.verify, ca_file=config.ca_file,
                                      cert_file=config.cert_file, key_file=config.key_file)

    async def check(self, address: str, source: str | None) -> tuple[bool, str]:
        cfg = self.config
        async with asyncio.timeout(cfg.timeout):
            try:
                reader, writer = await asyncio.open_connection(
                    address, self.port, ssl=self.context, local_addr=local(source),
                    server_hostname=cfg.server_name or address)
            except ssl.SSLError as exc:
                return False, f"TLS handshake failed: {exc.reason or exc}"
            try:
                not_after = peer_not_after(writer.get_extra_info("ssl_object"))
                # With TLS 1.3 the client finishes its handshake before the server has judged
                # the client certificate; a server that rejects it says so right after.
                # Servers that refuse close at once, with an alert or (Python's ssl) with none.
                try:
                    first = await asyncio.wait_for(reader.read(1), min(0.25, cfg.timeout / 2))
                except TimeoutError:
                    first = None  # the server waits for us to speak: the session stands
                except (ssl.SSLError, ConnectionError) as exc:
                    return False, f"TLS session refused by the server: {getattr(exc, 'reason', None) or exc}"
                if first == b"":
                    return False, ("the server closed the session right after the handshake "
                                   "(client certificate refused?)")
            finally:
                writer.close()
        return expiry_verdict(not_after, warn_days=cfg.warn_days, fail_days=cfg.fail_days)


def expiry_verdict(not_after: dt.datetime | None, *, warn_days: float, fail_days: float) -> tuple[bool, str]:
    if not_after is None:
        return True, "handshake ok (no certificate seen)"
    left = (not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    if left <= 0:
        return False, f"certificate expired {-left:.1f} days ago ({not_after:%Y-%m-%d})"
    if left <= fail_days:
        return False, f"certificate expires in {left:.1f} days (fail_days {fail_days:g})"
    if left <= warn_days:
        return True, f"handshake ok; WARNING certificate expires in {left:.1f} days"
    return True, f"handshake ok; certificate valid {left:.0f} more days"
