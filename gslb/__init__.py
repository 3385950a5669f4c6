"""gslb: a global server load balancer built around an authoritative asyncio DNS server.

Data flows one way: config -> store -> snapshot -> answers. The answer path
(``gslb.resolve.resolve``) is pure and synchronous; I/O lives in ``dnsserver``,
``healthmon``, the store adapters and the CLI wiring.
"""

__version__ = "0.1.0"
