"""``dns``: ask a DNS server a question; expect an rcode and, optionally, an answer.

```yaml
monitor: {type: dns, port: 53, query: www.example.com, qtype: A, expect_rcode: NOERROR, expect_answer: 192.0.2.1}
```
"""

from __future__ import annotations

import asyncio
import random
from typing import Literal

from dnslib import QTYPE, RCODE, DNSError, DNSRecord
from pydantic import Field, field_validator

from healthmon.base import Monitor, MonitorConfig, local, register


def _known(table: object, name: str) -> bool:
    """dnslib's tables raise their own error, not AttributeError, for unknown names."""
    try:
        getattr(table, name)
    except (AttributeError, DNSError):
        return False
    return True


class DnsConfig(MonitorConfig):
    type: Literal["dns"] = "dns"
    query: str = Field(min_length=1, max_length=253)
    qtype: str = "A"
    expect_rcode: str = "NOERROR"
    expect_answer: str | None = Field(None, description="text that must appear in one answer record's data")

    @field_validator("qtype")
    @classmethod
    def _qtype(cls, value: str) -> str:
        if not _known(QTYPE, value.upper()):
            raise ValueError(f"unknown query type {value!r}")
        return value.upper()

    @field_validator("expect_rcode")
    @classmethod
    def _rcode(cls, value: str) -> str:
        if not _known(RCODE, value.upper()):
            raise ValueError(f"unknown rcode {value!r}")
        return value.upper()

    def default_port(self) -> int:
        return 53


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) >= 2 and int.from_bytes(data[:2], "big") == self.ident and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


@register
class DnsMonitor(Monitor):
    name = "dns"
    config_model = DnsConfig
    config: DnsConfig

    async def check(self, address: str, source: str | None) -> tuple[bool, str]:
        cfg = self.config
        query = DNSRecord.question(cfg.query, cfg.qtype)
        query.header.id = random.randrange(1 << 16)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(cfg.timeout):
            transport, proto = await loop.create_datagram_endpoint(
                lambda: _OneReply(query.header.id), remote_addr=(address, self.port), local_addr=local(source))
            try:
                transport.sendto(query.pack())
                data = await proto.reply
            finally:
                transport.close()
        reply = DNSRecord.parse(data)
        rcode = RCODE[reply.header.rcode]
        if rcode != cfg.expect_rcode:
            return False, f"rcode {rcode}, expected {cfg.expect_rcode}"
        answers = [str(rr.rdata) for rr in reply.rr]
        if cfg.expect_answer is not None and not any(cfg.expect_answer in a for a in answers):
            return False, f"answer {answers} lacks {cfg.expect_answer!r}"
        return True, f"{rcode} {', '.join(answers[:3])}".strip()
