"""The mesh CA: files and permissions, what the certificates say, chains, refusals and the CLI."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from clusterlink.ca import SKEW, init_ca, issue, load_ca, write_atomic
from clusterlink.identity import cert_fingerprint, files_digest, load_cert_info
from gslb.cli import main
from tests.support.servers import ROOT

TD = "mesh.test"
E = TypeVar("E", bound=x509.ExtensionType)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca", TD)
    return tmp_path / "ca"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Keys must be 0600 because they are created so, not because the umask hides the rest."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- init


def test_init_writes_a_self_signed_p256_root(tmp_path: Path, umask_zero: None) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    files = init_ca(tmp_path / "ca", TD, days=10)
    after = dt.datetime.now(dt.UTC)
    assert (files.cert, files.key, files.trust_domain) == (tmp_path / "ca" / "ca.pem", tmp_path / "ca" / "ca.key", TD)
    assert mode(files.key) == 0o600
    assert mode(files.cert) == 0o644
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == ["ca.key", "ca.pem"]  # no temp files left

    (root,) = chain(files.cert)
    root.verify_directly_issued_by(root)
    assert root.subject == root.issuer
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"gslb mesh CA {TD}"
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    bc = ext(root, x509.BasicConstraints)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=True, path_length=None)
    ku = ext(root, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    san = ext(root, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}"]
    assert before - SKEW <= root.not_valid_before_utc <= after - SKEW
    assert root.not_valid_after_utc - root.not_valid_before_utc == dt.timedelta(days=10) + SKEW
    assert load_ca(tmp_path / "ca").trust_domain == TD


@pytest.mark.parametrize("existing", ["ca.pem", "ca.key"])
def test_init_refuses_to_overwrite_a_ca(tmp_path: Path, existing: str) -> None:
    init_ca(tmp_path, TD)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / ({"ca.pem", "ca.key"} - {existing}).pop()).unlink()
    with pytest.raises(FileExistsError, match=r"already holds a CA .*--force"):
        init_ca(tmp_path, TD)
    assert (tmp_path / existing).read_bytes() == old[existing]


def test_init_force_replaces_the_root(tmp_path: Path) -> None:
    init_ca(tmp_path, TD)
    old = load_ca(tmp_path)
    init_ca(tmp_path, "other.test", force=True)
    new = load_ca(tmp_path)
    assert new.trust_domain == "other.test"
    assert new.key.public_key() != old.key.public_key()


def test_init_rejects_a_bad_validity(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1 day"):
        init_ca(tmp_path, TD, days=0)
    assert not tmp_path.joinpath("ca.pem").exists()


def test_load_ca_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no CA in .*ca\.pem is missing .*gslb ca init"):
        load_ca(tmp_path)
    init_ca(tmp_path / "a", TD)
    init_ca(tmp_path / "b", TD)
    (tmp_path / "b" / "ca.key").write_bytes((tmp_path / "a" / "ca.key").read_bytes())
    with pytest.raises(ValueError, match=r"ca\.key does not belong to .*ca\.pem"):
        load_ca(tmp_path / "b")


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "0", "eu-west", "eu-west-1", "a--b", "a" * 63])
def test_good_cluster_names(ca_dir: Path, name: str) -> None:
    files = issue(ca_dir, name)
    assert load_cert_info(files.cert).spiffe == (f"spiffe://{TD}/cluster/{name}",)


@pytest.mark.parametrize("name", ["", "-a", "a-", "EU", "a_b", "a.b", "a b", "a/b", "é", "a" * 64])
def test_bad_cluster_names(ca_dir: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"invalid cluster name .*lowercase letters, digits and '-'"):
        issue(ca_dir, name)
    assert not (ca_dir / "clusters").exists()


@pytest.mark.parametrize("domain", ["mesh.test", "localhost", "a-b.c9", "x." * 125 + "yz"])
def test_good_trust_domains(tmp_path: Path, domain: str) -> None:
    assert init_ca(tmp_path, domain).trust_domain == domain
    assert load_ca(tmp_path).trust_domain == domain
    # the longest names still make certificates: the CN is cut, a DNS SAN over 253 left out
    info = load_cert_info(issue(tmp_path, "c" * 63).cert)
    assert info.spiffe == (f"spiffe://{domain}/cluster/{'c' * 63}",)
    leaf = chain(tmp_path / "clusters" / ("c" * 63) / "cert.pem")[0]
    dns = ext(leaf, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert dns == ([f"{'c' * 63}.{domain}"] if len(domain) < 190 else [])


@pytest.mark.parametrize(
    ("domain", "fragment"),
    [
        ("", "1-253 characters"),
        ("x." * 126 + "yz", "1-253 characters"),
        ("Mesh.test", "label 'Mesh'"),
        ("a..b", "label ''"),
        (".a", "label ''"),
        ("a.", "label ''"),
        ("-a.b", "label '-a'"),
        ("a_b.c", "label 'a_b'"),
        ("a/b", "label 'a/b'"),
        ("a" * 64 + ".b", "label 'aaaa"),
    ],
)
def test_bad_trust_domains(tmp_path: Path, domain: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=rf"invalid trust domain .*{fragment}"):
        init_ca(tmp_path, domain)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- issue


def test_issue_writes_a_gateway_leaf(ca_dir: Path, umask_zero: None) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    files = issue(ca_dir, "eu-west", hours=0.5)
    after = dt.datetime.now(dt.UTC)
    dest = ca_dir / "clusters" / "eu-west"
    assert (files.cert, files.key, files.ca) == (dest / "cert.pem", dest / "key.pem", dest / "ca.pem")
    assert sorted(p.name for p in dest.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert mode(files.key) == 0o600
    assert mode(files.cert) == mode(files.ca) == 0o644
    assert files.ca.read_bytes() == (ca_dir / "ca.pem").read_bytes()

    root = chain(ca_dir / "ca.pem")[0]
    (leaf,) = chain(files.cert)
    leaf.verify_directly_issued_by(root)
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/cluster/eu-west"]
    assert san.get_values_for_type(x509.DNSName) == [f"eu-west.{TD}"]
    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(leaf, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert list(ext(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                            ExtendedKeyUsageOID.CLIENT_AUTH]
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    # a minute of clock skew before issue time, then exactly ``hours`` after it
    assert before - SKEW <= leaf.not_valid_before_utc <= after - SKEW
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == dt.timedelta(minutes=30) + SKEW


def test_leaf_passes_a_strict_verifier_as_server_and_client(ca_dir: Path) -> None:
    root = chain(ca_dir / "ca.pem")[0]
    leaf = chain(issue(ca_dir, "eu-west").cert)[0]
    policy = PolicyBuilder().store(Store([root]))
    server = policy.build_server_verifier(x509.DNSName(f"eu-west.{TD}")).verify(leaf, [])
    assert server[-1] == root
    client = policy.build_client_verifier().verify(leaf, [])
    assert client.chain[-1] == root
    assert client.subjects is not None
    assert x509.UniformResourceIdentifier(f"spiffe://{TD}/cluster/eu-west") in client.subjects


def test_intermediate_chain_verifies_to_the_root(ca_dir: Path) -> None:
    files = issue(ca_dir, "us-east", intermediate=True)
    root = chain(ca_dir / "ca.pem")[0]
    leaf, inter = chain(files.cert)
    leaf.verify_directly_issued_by(inter)
    inter.verify_directly_issued_by(root)
    bc = ext(inter, x509.BasicConstraints)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=True, path_length=0)
    assert ext(inter, x509.KeyUsage).value.key_cert_sign
    assert (inter.not_valid_before_utc, inter.not_valid_after_utc) == (leaf.not_valid_before_utc,
                                                                      leaf.not_valid_after_utc)
    verified = PolicyBuilder().store(Store([root])).build_client_verifier().verify(leaf, [inter])
    assert verified.chain == [leaf, inter, root]
    # the leaf alone does not reach the root
    with pytest.raises(x509.verification.VerificationError):
        PolicyBuilder().store(Store([root])).build_client_verifier().verify(leaf, [])
    assert load_cert_info(files.cert).chain_length == 2


def test_issue_to_out_and_reissue_rotates(ca_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gw"
    first = issue(ca_dir, "eu-west", out=out)
    assert first.cert == out / "cert.pem"
    info1, fp1, digest1 = load_cert_info(first.cert), cert_fingerprint(first.cert), files_digest(first)
    key1 = first.key.read_bytes()
    second = issue(ca_dir, "eu-west", out=out)
    assert second == first
    info2 = load_cert_info(second.cert)
    assert info2.serial != info1.serial
    assert cert_fingerprint(second.cert) != fp1
    assert files_digest(second) != digest1
    assert second.key.read_bytes() != key1
    assert info2.spiffe == info1.spiffe == (f"spiffe://{TD}/cluster/eu-west",)
    assert sorted(p.name for p in out.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]


def test_issue_rejects_bad_validity_and_missing_ca(ca_dir: Path, tmp_path: Path) -> None:
    for hours in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="must be positive"):
            issue(ca_dir, "eu-west", hours=hours)
    with pytest.raises(FileNotFoundError, match="gslb ca init"):
        issue(tmp_path / "nowhere", "eu-west")


def test_write_atomic_keeps_the_old_file_when_the_rename_fails(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "key.pem"
    write_atomic(target, b"old", 0o600)

    def fail(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new", 0o600)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


# --------------------------------------------------------------------------- CLI


def test_cli_init_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = tmp_path / "ca"
    assert main(["ca", "init", "--dir", str(ca), "--trust-domain", TD, "--days", "30"]) == 0
    assert f"{ca / 'ca.pem'}" in capsys.readouterr().out

    assert main(["ca", "init", "--dir", str(ca), "--trust-domain", TD]) == 1
    assert "already holds a CA" in capsys.readouterr().err
    assert main(["ca", "init", "--dir", str(ca), "--trust-domain", TD, "--force"]) == 0
    capsys.readouterr()

    assert main(["ca", "issue", "--dir", str(ca), "--cluster", "eu-west", "--hours", "2", "--intermediate"]) == 0
    out = capsys.readouterr().out
    assert f"spiffe://{TD}/cluster/eu-west" in out
    assert str(ca / "clusters" / "eu-west" / "cert.pem") in out
    assert load_cert_info(ca / "clusters" / "eu-west" / "cert.pem").chain_length == 2

    assert main(["ca", "issue", "--dir", str(ca), "--cluster", "eu-west", "--out", str(tmp_path / "o")]) == 0
    assert str(tmp_path / "o" / "key.pem") in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ca", "init", "--trust-domain", "Bad_Domain"], "gslb ca init: invalid trust domain"),
        (["ca", "init", "--trust-domain", TD, "--days", "0"], "gslb ca init: CA validity"),
        (["ca", "issue", "--cluster", "eu-west"], "gslb ca issue: no CA in"),
    ],
)
def test_cli_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                           message: str) -> None:
    assert main([*argv, "--dir", str(tmp_path / "ca")]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(message)
    assert captured.out == ""


def test_cli_bad_cluster_as_a_process(ca_dir: Path) -> None:
    """The installed entry point's real exit code and streams."""
    run = subprocess.run([sys.executable, "-m", "gslb.cli", "ca", "issue", "--dir", str(ca_dir),
                          "--cluster", "Not_A_Label"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 1
    assert run.stdout == ""
    assert "gslb ca issue: invalid cluster name 'Not_A_Label'" in run.stderr
    ok = subprocess.run([sys.executable, "-m", "gslb.cli", "ca", "issue", "--dir", str(ca_dir),
                         "--cluster", "ok"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "spiffe://mesh.test/cluster/ok" in ok.stdout
