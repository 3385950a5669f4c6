"""TLS pieces shared by the https and tls monitors."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

from cryptography import x509


def client_context(*, verify: bool, ca_file: Path | None = None, cert_file: Path | None = None,
                   key_file: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


def peer_not_after(sslobj: ssl.SSLObject | ssl.SSLSocket | None) -> dt.datetime | None:
    """The peer certificate's expiry, read from its DER form (works with verification off)."""
    if sslobj is None:
        return None
    der = sslobj.getpeercert(binary_form=True)
    if not der:
        return None
    return x509.load_der_x509_certificate(der).not_valid_after_utc
