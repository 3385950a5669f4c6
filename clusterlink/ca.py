"""A small mesh CA: one EC P-256 root per trust domain, short-lived gateway certificates.

```
<dir>/ca.pem  ca.key                       the root (ca.key 0600)
<dir>/clusters/<name>/cert.pem key.pem ca.pem   one gateway: chain, key (0600), trust bundle
```

Every file is written to a temporary name and renamed over the old one, so a gateway that
watches them for rotation never reads half a file. The trust bundle goes first and the
certificate last: a watcher that wakes between ``key.pem`` and ``cert.pem`` sees a key that
does not match, gets ``ssl.SSLError`` from ``load_cert_chain`` and should simply try again.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clusterlink.identity import TlsFiles, spiffe_id, validate_cluster, validate_trust_domain

__all__ = ["CaFiles", "MeshCa", "init_ca", "issue", "load_ca", "write_atomic", "write_gateway"]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SKEW = dt.timedelta(minutes=1)  # not_before this far in the past: peers' clocks differ a little


@dataclass(frozen=True)
class CaFiles:
    cert: Path
    key: Path
    trust_domain: str


@dataclass(frozen=True)
class MeshCa:
    """A loaded root: signs intermediates and gateway certificates."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    trust_domain: str

    @property
    def bundle(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def init_ca(directory: Path, trust_domain: str, *, days: int = 3650, force: bool = False) -> CaFiles:
    """Create the root key and self-signed certificate; refuse to replace an existing CA
    unless ``force`` (every gateway certificate it signed stops verifying)."""
    validate_trust_domain(trust_domain)
    if days < 1:
        raise ValueError(f"CA validity must be at least 1 day, not {days}")
    directory = Path(directory)
    files = CaFiles(directory / CA_CERT, directory / CA_KEY, trust_domain)
    if not force and (files.cert.exists() or files.key.exists()):
        raise FileExistsError(f"{directory} already holds a CA ({CA_CERT}, {CA_KEY}); --force replaces it")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = _name(f"gslb mesh CA {trust_domain}")
    cert = (
        _builder(name, name, key.public_key(), now - SKEW, now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(files.key, _key_pem(key), 0o600)
    write_atomic(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def load_ca(directory: Path) -> MeshCa:
    """Read the root made by ``init_ca``; its trust domain comes from the root's URI SAN."""
    directory = Path(directory)
    try:
        cert_pem = (directory / CA_CERT).read_bytes()
        key_pem = (directory / CA_KEY).read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no CA in {directory}: {exc.filename} is missing (run 'gslb ca init')") from None
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory / CA_KEY}: not an EC private key")
    if key.public_key() != cert.public_key():
        raise ValueError(f"{directory / CA_KEY} does not belong to {directory / CA_CERT}")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    domains = [u.removeprefix("spiffe://") for u in uris if u.startswith("spiffe://")]
    if len(domains) != 1:
        raise ValueError(f"{directory / CA_CERT}: no spiffe://<trust-domain> URI SAN; not a gslb mesh CA")
    return MeshCa(cert, key, validate_trust_domain(domains[0]))


def issue(directory: Path, cluster: str, *, hours: float = 24, intermediate: bool = False,
          out: Path | None = None) -> TlsFiles:
    """Issue a gateway certificate for ``cluster``, valid ``hours`` from now, into
    ``out`` (default ``<directory>/clusters/<cluster>``)."""
    validate_cluster(cluster)
    if not hours > 0:
        raise ValueError(f"certificate validity must be positive, not {hours} hours")
    ca = load_ca(directory)
    now = dt.datetime.now(dt.UTC)
    dest = Path(out) if out is not None else Path(directory) / "clusters" / cluster
    return write_gateway(ca, cluster, dest, not_before=now - SKEW, not_after=now + dt.timedelta(hours=hours),
                         intermediate=intermediate)


def write_gateway(ca: MeshCa, cluster: str, dest: Path, *, not_before: dt.datetime, not_after: dt.datetime,
                  intermediate: bool = False, uris: Sequence[str] | None = None,
                  dns_names: Sequence[str] | None = None) -> TlsFiles:
    """Sign and write one gateway's files. ``uris`` and ``dns_names`` override the SANs
    (tests use this to make certificates a gateway must refuse)."""
    if uris is None:
        uris = [spiffe_id(ca.trust_domain, cluster)]
    if dns_names is None:
        dns = f"{cluster}.{ca.trust_domain}"
        dns_names = [dns] if len(dns) <= 253 else []
    signer_cert, signer_key = ca.cert, ca.key
    chain: list[x509.Certificate] = []
    if intermediate:
        signer_key = ec.generate_private_key(ec.SECP256R1())
        name = _name(f"gslb mesh intermediate {cluster}")
        signer_cert = (
            _builder(name, ca.cert.subject, signer_key.public_key(), not_before, not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(_aki(ca.cert), critical=False)
            .sign(ca.key, hashes.SHA256())
        )
        chain.append(signer_cert)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns_names]
    subject = _name(f"gslb gateway {cluster}")
    builder = (
        _builder(subject, signer_cert.subject, key.public_key(), not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(_aki(signer_cert), critical=False)
    )
    if sans:
        # RFC 5280: with an empty subject the SAN is critical; ours has a CN, so it need not be
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    leaf = builder.sign(signer_key, hashes.SHA256())
    chain.insert(0, leaf)

    files = TlsFiles(cert=dest / "cert.pem", key=dest / "key.pem", ca=dest / "ca.pem")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(files.ca, ca.bundle, 0o644)
    write_atomic(files.key, _key_pem(key), 0o600)
    write_atomic(files.cert, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain), 0o644)
    return files


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` under a temporary name created with ``mode`` (never wider), then rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             not_before: dt.datetime, not_after: dt.datetime) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _name(common_name: str) -> x509.Name:
    """A subject for people reading logs; identity lives in the SAN, so a long name is cut
    to the 64 characters X.509 allows in a CN."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
