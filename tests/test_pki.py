"""``mgfast pki`` and ``mgfast.pki.store`` against the openssl CLI and the seed guide's own CA.

Interop both ways: what mgfast writes is checked with ``openssl verify / x509 / crl / pkey``, and
the hash directory made by the guide's openssl commands (tests/seed_ca.py) is read by
``read_store``. RSA key generation is the slow part: one RSA CA per module, EC CAs where a test
needs a CA of its own.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto

from mgfast.pki.cli import main
from mgfast.pki.namehash import cert_hash, cert_issuer_der, crl_hash, name_hash
from mgfast.pki.store import read_store
from tests.seed_ca import SeedCa

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


# ---- helpers --------------------------------------------------------------------------------

@dataclass
class Run:
    rc: int
    out: str
    err: str


def pki(*args: object) -> Run:
    """Run ``mgfast pki ARGS`` in-process."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in args])
    return Run(rc, out.getvalue(), err.getvalue())


def ok(*args: object) -> str:
    r = pki(*args)
    assert r.rc == 0, f"mgfast pki {args} -> {r.rc}\n{r.out}\n{r.err}"
    return r.out


def openssl(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([OPENSSL, *map(str, args)], capture_output=True, text=True, timeout=30)
    if check:
        assert proc.returncode == 0, f"openssl {args}: {proc.stdout}{proc.stderr}"
    return proc


def verify(hash_dir: Path, cert: Path) -> subprocess.CompletedProcess:
    return openssl("verify", "-CApath", hash_dir, "-crl_check", cert, check=False)


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).replace(microsecond=0).isoformat()


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(path.read_bytes())


NOW = datetime.now(timezone.utc)


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mg(tmp_path_factory) -> Path:
    """An mgfast RSA CA (``ca/``) with ``server`` and ``client`` issued."""
    root = tmp_path_factory.mktemp("mg")
    ok("init-ca", root / "ca", "--cn", "media-gateway-ca")
    ok("issue-server", root / "ca", "--cn", "media-gateway-server", "--ip", "127.0.0.1",
       "--dns", "localhost", "--out", root / "server")
    ok("issue-client", root / "ca", "--cn", "media-gateway-client", "--out", root / "client")
    return root


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> SeedCa:
    """The guide's CA, server, client and hash directory (HASH.0 + empty HASH.r0); read-only."""
    return SeedCa.create(tmp_path_factory.mktemp("seed"))


@pytest.fixture
def ec_ca(tmp_path) -> Path:
    """A fresh EC CA of this test's own (fast to make)."""
    ok("init-ca", tmp_path / "ca", "--cn", "test-ca", "--ec")
    return tmp_path / "ca"


# ---- name hashes ----------------------------------------------------------------------------

TRICKY_SUBJECTS = [
    "/CN=media-gateway-ca",
    "/CN=  Mixed   CASE  Name ",
    "/C=DE/O=Acme\\, Inc./OU=a+OU=B/CN=multi valued",
    "/CN=Grüße  Ünïcode   X",
    "/emailAddress=Foo@Bar.COM/CN=ia5",
    "/DC=Com/DC=Example/CN=dc",
]


@pytest.mark.parametrize("subject", TRICKY_SUBJECTS)
def test_name_hash_matches_openssl_cli(tmp_path, subject):
    key = tmp_path / "k.pem"
    crt = tmp_path / "c.pem"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    openssl("req", "-new", "-x509", "-key", key, "-utf8", "-multivalue-rdn", "-subj", subject,
            "-days", "1", "-out", crt)
    cert = load_cert(crt)
    expected = openssl("x509", "-in", crt, "-noout", "-subject_hash").stdout.strip()
    assert cert_hash(cert) == expected

    signer = ec.generate_private_key(ec.SECP256R1())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(cert.subject)
           .last_update(NOW).next_update(NOW + timedelta(days=1)).sign(signer, hashes.SHA256()))
    crl_file = tmp_path / "c.crl"
    crl_file.write_bytes(crl.public_bytes(Encoding.PEM))
    assert crl_hash(crl) == openssl("crl", "-in", crl_file, "-noout", "-hash").stdout.strip()

    # a leaf it issued: the issuer hash the live re-check looks its CRL up by
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Leaf")]))
            .issuer_name(cert.subject).public_key(leaf_key.public_key()).serial_number(7)
            .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
            .sign(signer, hashes.SHA256()))
    leaf_file = tmp_path / "leaf.pem"
    leaf_file.write_bytes(leaf.public_bytes(Encoding.PEM))
    assert name_hash(cert_issuer_der(leaf)) == expected == openssl(
        "x509", "-in", leaf_file, "-noout", "-issuer_hash").stdout.strip()


@pytest.mark.parametrize("string_type", [
    _ASN1Type.UTF8String, _ASN1Type.PrintableString, _ASN1Type.IA5String,
    _ASN1Type.T61String, _ASN1Type.BMPString, _ASN1Type.UniversalString,
])  # (OpenSSL refuses to parse a VisibleString in a name at all)
def test_name_hash_string_types_match_pyopenssl(string_type):
    key = ec.generate_private_key(ec.SECP256R1())
    value = "  Some\t  Mixed CASE  "
    if string_type is _ASN1Type.PrintableString:
        value = "  Some  Mixed CASE  "
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, value, string_type),
                      x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    expected = f"{crypto.X509.from_cryptography(cert).subject_name_hash():08x}"
    assert cert_hash(cert) == expected


def test_name_hash_of_empty_name_matches_pyopenssl():
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "i")])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("a")]), critical=True)
            .sign(key, hashes.SHA256()))
    assert cert_hash(cert) == f"{crypto.X509.from_cryptography(cert).subject_name_hash():08x}"


# ---- what mgfast issues ---------------------------------------------------------------------

def test_ca_certificate_has_the_seed_v3_ca_extensions(mg):
    cert = load_cert(mg / "ca" / "ca.crt")
    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.crl_sign
    assert ku.value.key_cert_sign and not ku.value.key_encipherment
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.public_key().key_size == 2048
    text = openssl("x509", "-in", mg / "ca" / "ca.crt", "-noout", "-text").stdout
    assert "CA:TRUE" in text and "Certificate Sign, CRL Sign" in text


def test_issued_certificates_have_the_seed_extfile_extensions(mg):
    ca_ski = load_cert(mg / "ca" / "ca.crt").extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value.digest
    server, client = load_cert(mg / "server.crt"), load_cert(mg / "client.crt")
    for cert, eku in ((server, ExtendedKeyUsageOID.SERVER_AUTH),
                      (client, ExtendedKeyUsageOID.CLIENT_AUTH)):
        ext = cert.extensions
        assert not ext.get_extension_for_class(x509.BasicConstraints).value.ca
        assert ext.get_extension_for_class(x509.KeyUsage).critical
        assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [eku]
        assert ext.get_extension_for_class(
            x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski
        ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert client.extensions.get_extension_for_class(x509.KeyUsage).value.content_commitment
    assert (server.serial_number, client.serial_number) == (1, 2)
    ca = mg / "ca" / "ca.crt"
    openssl("verify", "-CAfile", ca, "-purpose", "sslserver", mg / "server.crt")
    openssl("verify", "-CAfile", ca, "-purpose", "sslclient", mg / "client.crt")


def test_keys_are_pkcs8_pem_that_openssl_reads(mg):
    for name in ("server", "client"):
        key = mg / f"{name}.key"
        assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
        assert key.stat().st_mode & 0o777 == 0o600
        pub_key = openssl("pkey", "-in", key, "-pubout").stdout
        pub_crt = openssl("x509", "-in", mg / f"{name}.crt", "-noout", "-pubkey").stdout
        assert pub_key == pub_crt
    assert (mg / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600


def test_ec_certificates_work_with_openssl(ec_ca, tmp_path):
    ok("issue-client", ec_ca, "--cn", "ec-client", "--out", tmp_path / "c", "--ec")
    hd = tmp_path / "hd"
    ok("install", hd, ec_ca / "ca.crt")
    ok("gen-crl", ec_ca, "--install", hd)
    assert "OK" in verify(hd, tmp_path / "c.crt").stdout
    assert "BEGIN PRIVATE KEY" in (tmp_path / "c.key").read_text()
    openssl("pkey", "-in", tmp_path / "c.key", "-noout")


def test_expired_client_certificate(ec_ca, tmp_path):
    ok("issue-client", ec_ca, "--cn", "old", "--out", tmp_path / "old", "--ec",
       "--not-before", iso(NOW - timedelta(days=10)), "--not-after", iso(NOW - timedelta(days=1)))
    hd = tmp_path / "hd"
    ok("install", hd, ec_ca / "ca.crt")
    ok("gen-crl", ec_ca, "--install", hd)
    proc = verify(hd, tmp_path / "old.crt")
    assert proc.returncode != 0 and "certificate has expired" in proc.stdout + proc.stderr


# ---- the full flow against openssl verify ----------------------------------------------------

def test_verify_ok_then_revoked_after_revoke_gen_crl_install(mg, tmp_path):
    ca = mg / "ca"
    ok("issue-client", ca, "--cn", "to-be-revoked", "--out", tmp_path / "victim")
    victim = tmp_path / "victim.crt"
    hd = tmp_path / "lookup-hash-dir"

    out = ok("install", hd, ca / "ca.crt")
    ca_hash = openssl("x509", "-in", ca / "ca.crt", "-noout", "-subject_hash").stdout.strip()
    assert (hd / f"{ca_hash}.0").is_file() and f"{ca_hash}.0" in out
    ok("gen-crl", ca, "--out", tmp_path / "first.crl")
    ok("install", hd, tmp_path / "first.crl")
    assert openssl("crl", "-in", hd / f"{ca_hash}.r0", "-noout", "-hash").stdout.strip() == ca_hash
    assert verify(hd, victim).stdout.strip() == f"{victim}: OK"
    assert verify(hd, mg / "client.crt").stdout.strip() == f"{mg / 'client.crt'}: OK"

    assert "revoked" in ok("revoke", ca, victim)
    assert "already revoked" in ok("revoke", ca, victim)
    # No sleep: gen-crl itself makes lastUpdate later than the previous CRL's, to the second.
    ok("gen-crl", ca, "--install", hd)
    assert (hd / f"{ca_hash}.r1").is_file()
    proc = verify(hd, victim)
    assert proc.returncode != 0 and "certificate revoked" in proc.stdout + proc.stderr
    assert verify(hd, mg / "client.crt").returncode == 0  # the others stay valid

    text = openssl("crl", "-in", hd / f"{ca_hash}.r1", "-noout", "-text").stdout
    assert "Version 2 (0x1)" in text and "X509v3 CRL Number" in text
    assert "X509v3 Authority Key Identifier" in text
    victim_serial = load_cert(victim).serial_number
    crl = load_crl(hd / f"{ca_hash}.r1")
    assert crl.get_revoked_certificate_by_serial_number(victim_serial) is not None
    first = load_crl(hd / f"{ca_hash}.r0")
    assert crl.last_update_utc > first.last_update_utc
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1

    st = read_store(hd)
    assert st.problems == []
    assert [c.effective for c in st.crls] == [False, True]
    assert victim_serial in st.crls[1].revoked_serials


def test_revoke_refuses_a_certificate_of_another_ca(ec_ca, seed):
    r = pki("revoke", ec_ca, seed.client_crt)
    assert r.rc == 2 and "not issued by the CA" in r.err


# ---- reading the seed's openssl-made store ---------------------------------------------------

def _openssl_time(text: str) -> datetime:
    return datetime.strptime(text.split("=", 1)[1].strip(), "%b %d %H:%M:%S %Y %Z").replace(
        tzinfo=timezone.utc)


def test_read_store_on_the_seed_directory_and_after_its_revoke_flow(tmp_path):
    seed = SeedCa.create(tmp_path)
    st = read_store(seed.hash_dir)
    assert st.problems == []
    assert [(c.subject, c.hash, c.file.name, c.expired) for c in st.cas] == [
        ("CN=media-gateway-ca", seed.ca_hash, f"{seed.ca_hash}.0", False)]
    [crl] = st.crls
    next_update = _openssl_time(openssl("crl", "-in", seed.hash_dir / f"{seed.ca_hash}.r0",
                                        "-noout", "-nextupdate").stdout)
    assert crl.next_update == next_update
    assert (crl.file.name, crl.revoked_serials, crl.effective) == (f"{seed.ca_hash}.r0", [], True)
    assert crl.number == 0x1000  # the seed's crlnumber file holds hex "1000"

    seed.revoke_client()
    st = read_store(seed.hash_dir)
    assert st.problems == []
    r0, r1 = st.crls
    assert (r0.effective, r1.effective) == (False, True)
    assert r1.revoked_serials == [load_cert(seed.client_crt).serial_number] == [1 + 1]
    assert r1.number == 0x1001
    assert [c.revoked_serials for c in st.effective_crls()] == [[2]]
    proc = verify(seed.hash_dir, seed.client_crt)
    assert "certificate revoked" in proc.stdout + proc.stderr


def test_install_into_the_seed_directory(seed, tmp_path):
    hd = tmp_path / "hd"
    shutil.copytree(seed.hash_dir, hd)
    before = sorted(p.name for p in hd.iterdir())
    out = ok("install", hd, seed.ca_crt, seed.crl)  # the guide copied exactly these
    assert out.count("already installed") == 2
    assert sorted(p.name for p in hd.iterdir()) == before
    assert verify(hd, seed.client_crt).returncode == 0


# ---- install -----------------------------------------------------------------------------------

def test_install_picks_the_next_free_number_and_is_idempotent(ec_ca, tmp_path):
    hd = tmp_path / "new" / "hash-dir"  # created on demand
    ca_hash = cert_hash(load_cert(ec_ca / "ca.crt"))
    out = ok("install", hd, ec_ca / "ca.crt")
    assert out.strip() == f"installed certificate of CN=test-ca as {hd / f'{ca_hash}.0'}"
    out = ok("install", hd, ec_ca / "ca.crt")
    assert out.startswith("already installed") and f"{ca_hash}.0" in out

    # Another CA with the same name (a re-created or renewed CA) takes the next number.
    ok("init-ca", tmp_path / "ca2", "--cn", "test-ca", "--ec")
    assert f"{ca_hash}.1" in ok("install", hd, tmp_path / "ca2" / "ca.crt")

    ok("gen-crl", ec_ca, "--out", tmp_path / "a.crl")
    assert f"{ca_hash}.r0" in ok("install", hd, tmp_path / "a.crl")
    assert "already" in ok("install", hd, tmp_path / "a.crl")
    ok("gen-crl", ec_ca, "--out", tmp_path / "b.crl")
    # DER input is converted; both CRLs of one file set go in order.
    der = tmp_path / "b.der"
    der.write_bytes(load_crl(tmp_path / "b.crl").public_bytes(Encoding.DER))
    assert f"{ca_hash}.r1" in ok("install", hd, der)
    assert (hd / f"{ca_hash}.r1").read_text().startswith("-----BEGIN X509 CRL-----")
    assert sorted(p.name for p in hd.iterdir()) == [
        f"{ca_hash}.0", f"{ca_hash}.1", f"{ca_hash}.r0", f"{ca_hash}.r1"]  # no temp files left


def test_install_refuses_leaf_certificates_and_junk(mg, tmp_path):
    hd = tmp_path / "hd"
    r = pki("install", hd, mg / "ca" / "ca.crt", mg / "client.crt")
    assert r.rc == 2 and "not a CA certificate" in r.err
    assert not hd.exists()  # checked before anything was written
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    r = pki("install", hd, junk)
    assert r.rc == 2 and "junk.pem" in r.err


# ---- status --------------------------------------------------------------------------------------

def test_status_flags_a_ca_without_crl(ec_ca, tmp_path):
    hd = tmp_path / "hd"
    ok("install", hd, ec_ca / "ca.crt")
    r = pki("status", hd)
    assert r.rc == 1
    ca_file = hd / f"{cert_hash(load_cert(ec_ca / 'ca.crt'))}.0"
    assert f"{ca_file}: CA 'CN=test-ca' has no CRL" in r.out
    assert "gen-crl" in r.out  # the fix

    r = pki("status", hd, "--json")
    assert r.rc == 1
    data = orjson.loads(r.out)
    assert data["ok"] is False and data["crls"] == []
    assert data["cas"][0]["subject"] == "CN=test-ca" and data["cas"][0]["file"] == str(ca_file)
    assert len(data["problems"]) == 1

    ok("gen-crl", ec_ca, "--install", hd)
    r = pki("status", hd)
    assert r.rc == 0 and "OK: no problems" in r.out


def test_status_flags_an_expired_crl_as_openssl_does(ec_ca, tmp_path):
    ok("issue-client", ec_ca, "--cn", "c", "--out", tmp_path / "c", "--ec")
    hd = tmp_path / "hd"
    ok("install", hd, ec_ca / "ca.crt")
    ok("gen-crl", ec_ca, "--install", hd, "--last-update", iso(NOW - timedelta(days=2)),
       "--next-update", iso(NOW - timedelta(days=1)))
    r = pki("status", hd)
    assert r.rc == 1 and "expired" in r.out and ".r0" in r.out
    proc = verify(hd, tmp_path / "c.crt")
    assert "CRL has expired" in proc.stdout + proc.stderr

    # A fresh CRL fixes it: the valid one is in use, the expired one is just history.
    ok("gen-crl", ec_ca, "--install", hd)
    st = read_store(hd)
    assert st.problems == [] and [c.effective for c in st.crls] == [False, True]
    assert verify(hd, tmp_path / "c.crt").returncode == 0


def test_status_warns_of_a_crl_expiring_within_48_hours(ec_ca, tmp_path):
    hd = tmp_path / "hd"
    ok("install", hd, ec_ca / "ca.crt")
    ok("gen-crl", ec_ca, "--days", "1", "--install", hd)
    st = read_store(hd)
    assert len(st.problems) == 1 and "expires in 24.0 h" in st.problems[0]
    assert any("is not valid until" in p for p in read_store(hd, now=NOW - timedelta(days=2))
               .problems)
    assert "CRL has expired" in read_store(hd, now=NOW + timedelta(days=2)).problems[0]


def test_status_flags_unparseable_misnamed_and_unreachable_files(seed, tmp_path):
    hd = tmp_path / "hd"
    shutil.copytree(seed.hash_dir, hd)
    h = seed.ca_hash
    (hd / "deadbeef.0").write_text("not a certificate\n")
    shutil.copy(seed.crl, hd / f"{h}.r2")  # r1 missing: OpenSSL never reads r2
    shutil.copy(seed.ca_crt, hd / f"{h.upper()}.5")  # never opened: upper-case hex
    shutil.copy(seed.ca_crt, hd / "0badf00d.0")  # content hashes differently
    (hd / "README").write_text("ignored\n")
    r = pki("status", hd)
    assert r.rc == 1
    problems = read_store(hd).problems
    assert any(p.startswith(f"{hd / 'deadbeef.0'}: does not parse") for p in problems)
    assert any(p.startswith(f"{hd / f'{h}.r2'}: never read") and f"rename it to {h}.r1" in p
               for p in problems)
    assert any(p.startswith(f"{hd / f'{h.upper()}.5'}: OpenSSL never opens this name")
               for p in problems)
    assert any(p.startswith(f"{hd / '0badf00d.0'}") and f"hash is {h}" in p for p in problems)
    assert len(problems) == 4, problems
    st = read_store(hd)
    assert [c.reachable for c in st.crls] == [True, False]


def test_status_explains_a_newer_crl_that_openssl_ignores(ec_ca, tmp_path):
    """A CRL with a higher number but an earlier lastUpdate: OpenSSL keeps the other one."""
    ok("issue-client", ec_ca, "--cn", "c", "--out", tmp_path / "c", "--ec")
    hd = tmp_path / "hd"
    ok("install", hd, ec_ca / "ca.crt")
    ok("gen-crl", ec_ca, "--install", hd, "--last-update", iso(NOW - timedelta(minutes=1)))
    ok("revoke", ec_ca, tmp_path / "c.crt")
    ok("gen-crl", ec_ca, "--install", hd, "--last-update", iso(NOW - timedelta(minutes=2)))
    assert verify(hd, tmp_path / "c.crt").returncode == 0  # OpenSSL uses r0: not revoked
    st = read_store(hd)
    assert [(c.number, c.effective) for c in st.crls] == [(1000, True), (1001, False)]
    [problem] = st.problems
    assert ".r1: CRL number 1001 is newer" in problem and "earlier lastUpdate" in problem


def test_status_flags_a_crl_from_a_recreated_ca(ec_ca, tmp_path):
    ok("init-ca", tmp_path / "again", "--cn", "test-ca", "--ec")  # same name, new key
    hd = tmp_path / "hd"
    ok("install", hd, ec_ca / "ca.crt")
    ok("gen-crl", tmp_path / "again", "--install", hd)
    problems = read_store(hd).problems
    assert any("signature does not verify" in p for p in problems)
    assert any("has no CRL" in p for p in problems)


def test_status_flags_an_expired_ca(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old-ca")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(NOW - timedelta(days=30)).not_valid_after(NOW - timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    crl = (x509.CertificateRevocationListBuilder().issuer_name(name)
           .last_update(NOW - timedelta(hours=1)).next_update(NOW + timedelta(days=30))
           .add_extension(x509.CRLNumber(1), critical=False).sign(key, hashes.SHA256()))
    (tmp_path / "ca.crt").write_bytes(cert.public_bytes(Encoding.PEM))
    (tmp_path / "ca.crl").write_bytes(crl.public_bytes(Encoding.PEM))
    hd = tmp_path / "hd"
    ok("install", hd, tmp_path / "ca.crt", tmp_path / "ca.crl")
    st = read_store(hd)
    assert st.cas[0].expired and st.crls[0].effective
    [problem] = st.problems
    assert problem.startswith(f"{st.cas[0].file}: CA 'CN=old-ca' expired")


def test_status_of_a_missing_directory(tmp_path):
    r = pki("status", tmp_path / "nope")
    assert r.rc == 1 and "no such directory" in r.out


# ---- command line ------------------------------------------------------------------------------

def test_cli_errors_are_clear(ec_ca, tmp_path):
    r = pki("init-ca", ec_ca, "--cn", "x")
    assert r.rc == 2 and "not empty" in r.err
    r = pki("issue-server", ec_ca, "--cn", "s", "--out", tmp_path / "s")
    assert r.rc == 2 and "--ip or --dns" in r.err
    r = pki("issue-server", ec_ca, "--cn", "s", "--ip", "300.1.1.1", "--out", tmp_path / "s")
    assert r.rc == 2 and "300.1.1.1" in r.err
    r = pki("issue-client", tmp_path / "no-ca", "--cn", "c", "--out", tmp_path / "c")
    assert r.rc == 2 and "not a CA directory" in r.err
    ok("issue-client", ec_ca, "--cn", "c", "--out", tmp_path / "c", "--ec")
    r = pki("issue-client", ec_ca, "--cn", "c", "--out", tmp_path / "c", "--ec")
    assert r.rc == 2 and "exists" in r.err
    r = pki("issue-client", ec_ca, "--cn", "c", "--out", tmp_path / "d", "--days", "100000")
    assert r.rc == 2 and "outlive" in r.err
    out = ok("gen-crl", ec_ca, "--next-update", "2099-01-01T00:00:00Z")  # Z works on 3.10 too
    assert "nextUpdate 2099-01-01 00:00:00Z" in out
    r = pki("gen-crl", ec_ca, "--next-update", "yesterday")
    assert r.rc == 2 and "ISO 8601" in r.err
    assert pki("frobnicate").rc == 2
    assert pki("--help").rc == 0


def test_python_dash_m_entry_point(mg, tmp_path):
    hd = tmp_path / "hd"
    ok("install", hd, mg / "ca" / "ca.crt")
    ok("gen-crl", mg / "ca", "--install", hd)
    proc = subprocess.run([sys.executable, "-m", "mgfast.pki", "status", hd, "--json"],
                          capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    data = orjson.loads(proc.stdout)
    assert data["ok"] and data["crls"][0]["effective"] and data["crls"][0]["number"] >= 1000
    assert all(isinstance(s, str) for s in data["crls"][0]["revoked_serials"])


def test_seed_helper_second_client_and_next_crl(tmp_path):
    seed = SeedCa.create(tmp_path, with_crl=False)
    assert sorted(p.name for p in seed.hash_dir.iterdir()) == [f"{seed.ca_hash}.0"]
    assert any("has no CRL" in p for p in read_store(seed.hash_dir).problems)
    crt, key = seed.issue_client("client2", "media-gateway-client-2")
    assert seed.publish_crl().name == f"{seed.ca_hash}.r0"
    assert verify(seed.hash_dir, crt).returncode == 0
    seed.revoke(crt)
    assert seed.publish_crl().name == f"{seed.ca_hash}.r1"
    proc = verify(seed.hash_dir, crt)
    assert "certificate revoked" in proc.stdout + proc.stderr
    assert verify(seed.hash_dir, seed.client_crt).returncode == 0
    st = read_store(seed.hash_dir)
    assert st.problems == [] and st.effective_crls()[0].revoked_serials == [3]
