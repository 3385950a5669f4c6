"""Mesh certificates for link tests: a CA, good gateways, and the certificates a gateway must refuse.

One ``MeshPki`` per test session (keys are cheap, but a link suite asks for dozens): the
``mesh_pki`` fixture, which tests/conftest.py makes available everywhere, or build one
yourself with ``build_mesh_pki(tmp_path)``.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clusterlink.ca import MeshCa, init_ca, issue, load_ca, write_gateway
from clusterlink.identity import ALPN, TlsFiles, client_context, spiffe_id

TRUST_DOMAIN = "mesh.test"
OTHER_DOMAIN = "other.test"


@dataclass
class MeshPki:
    """Certificates under ``root``; good gateways are issued on first use and cached."""

    root: Path
    trust_domain: str
    ca: MeshCa
    other_ca: MeshCa
    _made: dict[tuple[str, bool], TlsFiles] = field(default_factory=dict)

    def gateway(self, cluster: str, *, intermediate: bool = False) -> TlsFiles:
        """A valid gateway of ``cluster`` (24 h), optionally signed through an intermediate."""
        key = (cluster, intermediate)
        if key not in self._made:
            dest = self.root / "good" / (f"{cluster}-int" if intermediate else cluster)
            self._made[key] = issue(self.root / "ca", cluster, intermediate=intermediate, out=dest)
        return self._made[key]

    # ---- certificates a gateway of this mesh must refuse; each trusts *this* mesh's root,
    # so the only thing wrong is the certificate it presents

    def from_other_ca(self, cluster: str = "rogue") -> TlsFiles:
        """The right trust domain and SAN, signed by a different root."""
        return self._bad(f"other-ca-{cluster}", cluster, ca=self.other_ca)

    def expired(self, cluster: str = "stale") -> TlsFiles:
        """Signed by our root; its validity window ended an hour ago."""
        now = dt.datetime.now(dt.UTC)
        return self._bad(f"expired-{cluster}", cluster, not_before=now - dt.timedelta(days=2),
                         not_after=now - dt.timedelta(hours=1))

    def not_yet_valid(self, cluster: str = "early") -> TlsFiles:
        """Signed by our root; valid from tomorrow."""
        now = dt.datetime.now(dt.UTC)
        return self._bad(f"early-{cluster}", cluster, not_before=now + dt.timedelta(days=1),
                         not_after=now + dt.timedelta(days=2))

    def foreign_domain(self, cluster: str = "alien") -> TlsFiles:
        """Signed by our root, but names ``spiffe://other.test/cluster/<cluster>``."""
        return self._bad(f"foreign-{cluster}", cluster, uris=[spiffe_id(OTHER_DOMAIN, cluster)])

    def no_uri(self, cluster: str = "nameless") -> TlsFiles:
        """Signed by our root, a DNS SAN only: no SPIFFE identity at all."""
        return self._bad(f"no-uri-{cluster}", cluster, uris=[])

    def two_uris(self, cluster: str = "twin") -> TlsFiles:
        """Signed by our root, two SPIFFE identities (ours and another cluster's)."""
        return self._bad(f"two-uris-{cluster}", cluster,
                         uris=[spiffe_id(self.trust_domain, cluster), spiffe_id(self.trust_domain, "other")])

    def not_a_gateway(self, cluster: str = "workload") -> TlsFiles:
        """Signed by our root, a SPIFFE ID of this trust domain that is not ``/cluster/<name>``."""
        return self._bad(f"workload-{cluster}", cluster, uris=[f"spiffe://{self.trust_domain}/ns/default/sa/{cluster}"])

    def impostor(self, presented: str = "eu-west", expected: str = "us-east") -> tuple[TlsFiles, str]:
        """A valid gateway of ``presented`` and the cluster a link expected instead."""
        return self.gateway(presented), expected

    def context_without_cert(self) -> ssl.SSLContext:
        """A TLS 1.3 client that trusts our root but presents no certificate."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cafile=str(self.root / "ca" / "ca.pem"))
        ctx.set_alpn_protocols([ALPN])
        return ctx

    def context_tls12(self, cluster: str = "legacy") -> ssl.SSLContext:
        """A client with a valid gateway certificate that speaks TLS 1.2 at most."""
        ctx = client_context(self.gateway(cluster))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def _bad(self, label: str, cluster: str, *, ca: MeshCa | None = None, not_before: dt.datetime | None = None,
             not_after: dt.datetime | None = None, uris: list[str] | None = None) -> TlsFiles:
        key = (label, False)
        if key not in self._made:
            now = dt.datetime.now(dt.UTC)
            files = write_gateway(ca or self.ca, cluster, self.root / "bad" / label,
                                  not_before=not_before or now - dt.timedelta(minutes=1),
                                  not_after=not_after or now + dt.timedelta(hours=24), uris=uris)
            # a refused peer still trusts our mesh: it must be its own certificate that fails
            self._made[key] = TlsFiles(cert=files.cert, key=files.key, ca=self.root / "ca" / "ca.pem")
        return self._made[key]


def build_mesh_pki(root: Path, trust_domain: str = TRUST_DOMAIN) -> MeshPki:
    """A CA for ``trust_domain`` (and an unrelated second one) under ``root``."""
    init_ca(root / "ca", trust_domain, days=30)
    init_ca(root / "other-ca", trust_domain, days=30)
    return MeshPki(root=root, trust_domain=trust_domain, ca=load_ca(root / "ca"), other_ca=load_ca(root / "other-ca"))


_SESSION: list[MeshPki] = []


@pytest.fixture(scope="session")
def mesh_pki(tmp_path_factory: pytest.TempPathFactory) -> MeshPki:
    """One mesh per session, however many modules import this fixture."""
    if not _SESSION:
        _SESSION.append(build_mesh_pki(tmp_path_factory.mktemp("mesh-pki")))
    return _SESSION[0]
