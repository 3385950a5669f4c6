"""TLS contexts for cluster links and the peer's SPIFFE identity.

Both ends of a link present a gateway certificate issued by the mesh CA (``clusterlink.ca``);
TLS proves the chain, then ``peer_identity`` reads *who* the peer is from its one
``spiffe://<trust-domain>/cluster/<name>`` URI SAN. Host names play no part: gateways are
dialled by address, and the cluster name in the SAN is what a link is authorised by.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gslb.errors import GslbError

__all__ = [
    "ALPN",
    "CertInfo",
    "IdentityError",
    "PeerIdentity",
    "TlsFiles",
    "cert_fingerprint",
    "check_expected",
    "client_context",
    "files_digest",
    "identity_from_der",
    "load_cert_info",
    "peer_identity",
    "server_context",
    "spiffe_id",
    "validate_cluster",
    "validate_trust_domain",
]

ALPN = "gslb-link/1"

_CLUSTER = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SPIFFE = re.compile(r"^spiffe://([^/?#]*)(.*)$")


class IdentityError(GslbError):
    """The peer's certificate does not name an acceptable cluster gateway.

    ``reason`` is a short fixed label for counters (``trust-domain``, ``wrong-cluster`` ...),
    so callers need not parse the message.
    """

    def __init__(self, message: str, *, reason: str = "identity") -> None:
        super().__init__(message)
        self.reason = reason


def validate_cluster(name: str) -> str:
    """A cluster name is one DNS label: it becomes a SPIFFE path segment and a DNS SAN."""
    if not _CLUSTER.match(name):
        raise ValueError(f"invalid cluster name {name!r}: 1-63 lowercase letters, digits and '-', "
                         "starting and ending with a letter or digit")
    return name


def validate_trust_domain(text: str) -> str:
    """A trust domain is a lowercase DNS name (``mesh.example.com``); returns it unchanged."""
    if not text or len(text) > 253:
        raise ValueError(f"invalid trust domain {text!r}: 1-253 characters")
    for label in text.split("."):
        if not _LABEL.match(label):
            raise ValueError(f"invalid trust domain {text!r}: label {label!r} is not 1-63 lowercase letters, "
                             "digits and '-' (no leading or trailing '-')")
    return text


def spiffe_id(trust_domain: str, cluster: str) -> str:
    """The gateway identity of ``cluster``: ``spiffe://<trust-domain>/cluster/<name>``."""
    return f"spiffe://{validate_trust_domain(trust_domain)}/cluster/{validate_cluster(cluster)}"


@dataclass(frozen=True)
class TlsFiles:
    """One gateway's PEM files: its chain (leaf first), its key, and the mesh trust bundle."""

    cert: Path
    key: Path
    ca: Path


def _configure(ctx: ssl.SSLContext, files: TlsFiles) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    # strict RFC 5280 checks: the mesh CA makes only conforming certificates
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cafile=str(files.ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.set_alpn_protocols([ALPN])
    return ctx


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """Accepting side of a link: TLS 1.3 only, a client certificate from the mesh CA required.

    Raises ``OSError`` (``ssl.SSLError`` included) if a file is missing or the key does not match.
    """
    ctx = _configure(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files)
    # links are long-lived and never resumed: tickets would only cost a round of writes
    ctx.num_tickets = 0
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """Dialling side of a link: TLS 1.3 only, presents our certificate, verifies the chain.

    Host names are not checked (``check_hostname`` off): ``peer_identity`` checks the SPIFFE URI.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    return _configure(ctx, files)


@dataclass(frozen=True)
class PeerIdentity:
    """Who is at the other end of a link, from its verified certificate."""

    cluster: str
    spiffe: str
    serial: int
    not_after: datetime


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, trust_domain: str) -> PeerIdentity:
    """The peer's identity after a completed handshake (``get_extra_info("ssl_object")``)."""
    if ssl_object is None:
        raise IdentityError("connection is not TLS", reason="not-tls")
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except ValueError as exc:  # "handshake not done yet"
        raise IdentityError(f"no peer identity yet: {exc}", reason="no-handshake") from exc
    if not der:
        raise IdentityError("peer presented no certificate", reason="no-certificate")
    return identity_from_der(der, trust_domain)


def identity_from_der(der: bytes, trust_domain: str) -> PeerIdentity:
    """Read exactly one ``spiffe://<trust_domain>/cluster/<name>`` URI SAN from a DER certificate.

    Does not verify the chain: that is the TLS handshake's job, done before this is called.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise IdentityError(f"peer certificate is unreadable: {exc}", reason="unreadable") from exc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except ValueError as exc:  # a malformed extension surfaces on access
        raise IdentityError(f"peer certificate has an unreadable SAN: {exc}", reason="unreadable") from exc
    ids = [u for u in uris if u[:9].lower() == "spiffe://"]
    if not ids:
        raise IdentityError(f"peer certificate ({cert.subject.rfc4514_string()}) has no spiffe:// URI SAN",
                            reason="no-spiffe-id")
    if len(ids) > 1:
        raise IdentityError(f"peer certificate has {len(ids)} spiffe:// URI SANs ({', '.join(ids)}); "
                            "exactly one is allowed", reason="several-spiffe-ids")
    uri = ids[0]
    match = _SPIFFE.match(uri)
    if match is None or match.group(1) != trust_domain:
        raise IdentityError(f"peer is {uri}, outside trust domain {trust_domain}", reason="trust-domain")
    path = match.group(2)
    cluster = path.removeprefix("/cluster/")
    if cluster == path or not _CLUSTER.match(cluster):
        raise IdentityError(f"peer is {uri}, not a cluster gateway (spiffe://{trust_domain}/cluster/<name>)",
                            reason="not-gateway")
    return PeerIdentity(cluster=cluster, spiffe=uri, serial=cert.serial_number, not_after=cert.not_valid_after_utc)


def check_expected(identity: PeerIdentity, expected_cluster: str | None) -> None:
    """A link dialled to (or configured for) one cluster must reach that cluster's gateway."""
    if expected_cluster is not None and identity.cluster != expected_cluster:
        raise IdentityError(f"peer is {identity.spiffe}, expected cluster {expected_cluster}",
                            reason="wrong-cluster")


# --------------------------------------------------------------------------- rotation helpers


@dataclass(frozen=True)
class CertInfo:
    """The leaf of a PEM chain file, for logs, metrics and rotation checks."""

    subject: str
    spiffe: tuple[str, ...]
    serial: int
    not_before: datetime
    not_after: datetime
    fingerprint: str
    chain_length: int


def load_cert_info(path: Path) -> CertInfo:
    """Parse a PEM chain file (leaf first); ``ValueError`` if it holds no certificate."""
    chain = x509.load_pem_x509_certificates(Path(path).read_bytes())
    leaf = chain[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://"))
    except x509.ExtensionNotFound:
        uris = ()
    return CertInfo(subject=leaf.subject.rfc4514_string(), spiffe=uris, serial=leaf.serial_number,
                    not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
                    fingerprint=leaf.fingerprint(hashes.SHA256()).hex(), chain_length=len(chain))


def cert_fingerprint(path: Path) -> str:
    """SHA-256 of the leaf certificate's DER, hex: changes exactly when the leaf is reissued."""
    return load_cert_info(path).fingerprint


def files_digest(files: TlsFiles) -> str:
    """SHA-256 over cert, key and bundle contents: a watcher rebuilds contexts when it changes
    (mtime alone misses a same-second rewrite and fires on a no-op touch)."""
    digest = hashlib.sha256()
    for path in (files.cert, files.key, files.ca):
        data = Path(path).read_bytes()
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()
