"""The authoritative DNS server: wire format, UDP and TCP transports, zone transfers.

It knows nothing of Redis, monitors or config files: it asks ``gslb.resolve`` for an
answer against the current snapshot and turns it into bytes.
"""
