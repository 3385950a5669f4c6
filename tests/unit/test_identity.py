"""Reading a gateway's identity from its certificate; the TLS contexts' settings.
Real handshakes are in tests/integration/test_link_tls.py."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from clusterlink import identity
from clusterlink.ca import write_gateway
from clusterlink.identity import (
    ALPN,
    IdentityError,
    PeerIdentity,
    TlsFiles,
    check_expected,
    client_context,
    identity_from_der,
    load_cert_info,
    peer_identity,
    server_context,
    spiffe_id,
)
from gslb.errors import GslbError
from tests.support.mesh_pki import MeshPki


def der(files: TlsFiles) -> bytes:
    return x509.load_pem_x509_certificates(files.cert.read_bytes())[0].public_bytes(Encoding.DER)


def test_public_surface() -> None:
    assert ALPN == "gslb-link/1"
    assert sorted(identity.__all__) == [
        "ALPN", "CertInfo", "IdentityError", "PeerIdentity", "TlsFiles", "cert_fingerprint", "check_expected",
        "client_context", "files_digest", "identity_from_der", "load_cert_info", "peer_identity",
        "server_context", "spiffe_id", "validate_cluster", "validate_trust_domain",
    ]
    assert all(hasattr(identity, name) for name in identity.__all__)
    assert issubclass(IdentityError, GslbError)


@pytest.mark.parametrize(
    ("domain", "cluster", "expected"),
    [("mesh.test", "eu-west", "spiffe://mesh.test/cluster/eu-west"), ("td", "0", "spiffe://td/cluster/0")],
)
def test_spiffe_id(domain: str, cluster: str, expected: str) -> None:
    assert spiffe_id(domain, cluster) == expected


@pytest.mark.parametrize(("domain", "cluster"), [("mesh.test", "EU"), ("mesh..test", "eu"), ("", "eu")])
def test_spiffe_id_rejects_bad_parts(domain: str, cluster: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        spiffe_id(domain, cluster)


def test_identity_of_a_gateway(mesh_pki: MeshPki) -> None:
    files = mesh_pki.gateway("eu-west")
    got = identity_from_der(der(files), mesh_pki.trust_domain)
    info = load_cert_info(files.cert)
    assert got == PeerIdentity(cluster="eu-west", spiffe="spiffe://mesh.test/cluster/eu-west",
                               serial=info.serial, not_after=info.not_after)
    assert got.not_after.tzinfo is dt.UTC
    check_expected(got, "eu-west")
    check_expected(got, None)
    wrong = r"^peer is spiffe://mesh.test/cluster/eu-west, expected cluster us-east$"
    with pytest.raises(IdentityError, match=wrong) as refused:
        check_expected(got, "us-east")
    assert refused.value.reason == "wrong-cluster"
    assert IdentityError("on the deny list").reason == "identity"


def test_identity_through_an_intermediate(mesh_pki: MeshPki) -> None:
    got = identity_from_der(der(mesh_pki.gateway("eu-west", intermediate=True)), mesh_pki.trust_domain)
    assert got.cluster == "eu-west"


@pytest.mark.parametrize(
    ("make", "reason", "message"),
    [
        (MeshPki.foreign_domain, "trust-domain",
         r"^peer is spiffe://other.test/cluster/alien, outside trust domain mesh.test$"),
        (MeshPki.no_uri, "no-spiffe-id", r"^peer certificate \(CN=gslb gateway nameless\) has no spiffe:// URI SAN$"),
        (MeshPki.two_uris, "several-spiffe-ids",
         r"^peer certificate has 2 spiffe:// URI SANs \(spiffe://mesh.test/cluster/twin, "
         r"spiffe://mesh.test/cluster/other\); exactly one is allowed$"),
        (MeshPki.not_a_gateway, "not-gateway",
         r"^peer is spiffe://mesh.test/ns/default/sa/workload, not a cluster gateway"),
    ],
)
def test_identity_refusals(mesh_pki: MeshPki, make: object, reason: str, message: str) -> None:
    files = make(mesh_pki)  # type: ignore[operator]
    with pytest.raises(IdentityError, match=message) as info:
        identity_from_der(der(files), mesh_pki.trust_domain)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://mesh.test",
        "spiffe://mesh.test/",
        "spiffe://mesh.test/cluster/",
        "spiffe://mesh.test/cluster/EU",
        "spiffe://mesh.test/cluster/eu/extra",
        "spiffe://mesh.test/cluster/eu?x=1",
        "spiffe://mesh.test/cluster/eu#x",
        "spiffe://mesh.test:443/cluster/eu",
        "spiffe://user@mesh.test/cluster/eu",
        "spiffe://mesh.test.evil/cluster/eu",
        "spiffe://evil.mesh.test/cluster/eu",
        "SPIFFE://mesh.test/cluster/eu",
    ],
)
def test_identity_refuses_near_misses(mesh_pki: MeshPki, tmp_path: Path, uri: str) -> None:
    now = dt.datetime.now(dt.UTC)
    files = write_gateway(mesh_pki.ca, "eu", tmp_path, not_before=now, not_after=now + dt.timedelta(hours=1),
                          uris=[uri])
    with pytest.raises(IdentityError, match=r"^peer is "):
        identity_from_der(der(files), mesh_pki.trust_domain)


def test_identity_of_a_certificate_without_any_san(mesh_pki: MeshPki, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    files = write_gateway(mesh_pki.ca, "eu", tmp_path, not_before=now, not_after=now + dt.timedelta(hours=1),
                          uris=[], dns_names=[])
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    with pytest.raises(IdentityError, match="has no spiffe:// URI SAN"):
        identity_from_der(der(files), mesh_pki.trust_domain)


def test_identity_of_garbage() -> None:
    with pytest.raises(IdentityError, match="unreadable"):
        identity_from_der(b"\x30\x03\x02\x01\x00", "mesh.test")
    with pytest.raises(IdentityError, match=r"^connection is not TLS$"):
        peer_identity(None, "mesh.test")


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A TLS handshake in memory: two SSLObjects pumped through BIOs until both finish."""
    bios = [(ssl.MemoryBIO(), ssl.MemoryBIO()) for _ in range(2)]
    s_obj = server.wrap_bio(*bios[0], server_side=True)
    c_obj = client.wrap_bio(*bios[1])
    pending = {s_obj, c_obj}
    for _ in range(20):
        for obj in list(pending):
            try:
                obj.do_handshake()
                pending.discard(obj)
            except ssl.SSLWantReadError:
                pass
        bios[0][0].write(bios[1][1].read())
        bios[1][0].write(bios[0][1].read())
        if not pending:
            return s_obj, c_obj
    raise AssertionError("handshake did not finish in 20 rounds")


def test_peer_identity_in_memory(mesh_pki: MeshPki) -> None:
    server = server_context(mesh_pki.gateway("eu-west"))
    client = client_context(mesh_pki.gateway("us-east"))
    s_obj, c_obj = handshake(server, client)
    assert peer_identity(s_obj, mesh_pki.trust_domain).cluster == "us-east"
    assert peer_identity(c_obj, mesh_pki.trust_domain).cluster == "eu-west"
    assert s_obj.selected_alpn_protocol() == c_obj.selected_alpn_protocol() == ALPN
    assert s_obj.version() == "TLSv1.3"


def test_peer_identity_without_a_peer_certificate(mesh_pki: MeshPki) -> None:
    obj = client_context(mesh_pki.gateway("eu-west")).wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    with pytest.raises(IdentityError, match=r"^no peer identity yet: handshake not done yet$"):
        peer_identity(obj, mesh_pki.trust_domain)
    # a server that does not ask for a client certificate (not ours) sees none
    lax = server_context(mesh_pki.gateway("eu-west"))
    lax.verify_mode = ssl.CERT_NONE
    s_obj, _ = handshake(lax, mesh_pki.context_without_cert())
    with pytest.raises(IdentityError, match=r"^peer presented no certificate$") as info:
        peer_identity(s_obj, mesh_pki.trust_domain)
    assert info.value.reason == "no-certificate"


def test_contexts_are_tls13_mutual(mesh_pki: MeshPki) -> None:
    files = mesh_pki.gateway("eu-west")
    server, client = server_context(files), client_context(files)
    for ctx in (server, client):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.verify_flags & ssl.VERIFY_X509_STRICT
        assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "gslb mesh CA mesh.test"),),)]
    assert not client.check_hostname
    assert server.num_tickets == 0


def test_contexts_report_bad_files_as_oserror(mesh_pki: MeshPki, tmp_path: Path) -> None:
    good, other = mesh_pki.gateway("eu-west"), mesh_pki.gateway("us-east")
    for build in (server_context, client_context):
        with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH"):
            build(TlsFiles(cert=good.cert, key=other.key, ca=good.ca))
        with pytest.raises(FileNotFoundError):
            build(TlsFiles(cert=good.cert, key=good.key, ca=tmp_path / "missing.pem"))


def test_files_digest_follows_content(mesh_pki: MeshPki, tmp_path: Path) -> None:
    src = mesh_pki.gateway("eu-west")
    files = TlsFiles(cert=tmp_path / "c", key=tmp_path / "k", ca=tmp_path / "a")
    for a, b in ((src.cert, files.cert), (src.key, files.key), (src.ca, files.ca)):
        b.write_bytes(a.read_bytes())
    assert identity.files_digest(files) == identity.files_digest(src)
    files.ca.write_bytes(files.ca.read_bytes() + b"\n")
    assert identity.files_digest(files) != identity.files_digest(src)
    assert identity.cert_fingerprint(files.cert) == identity.cert_fingerprint(src.cert)
    with pytest.raises(ValueError):
        load_cert_info(files.key)
