"""The CA directory: key, certificate and a small JSON database, and creating one.

Layout (``mgfast pki init-ca DIR``)::

    DIR/ca.key          CA private key, PKCS#8 PEM, mode 0600
    DIR/ca.crt          self-signed CA certificate (the seed's v3_ca extensions)
    DIR/ca.json         database: serial counter, CRL number counter, issued certificates
    DIR/certs/SERIAL.pem  a copy of every issued certificate (like openssl's new_certs_dir)
    DIR/crl/ca.crl      the latest CRL published by gen-crl

The database replaces openssl's ``index.txt``, ``serial`` and ``crlnumber``. Serials count from 1
and CRL numbers from 1000, after the seed's ``echo 01 > serial`` and ``echo 1000 > crlnumber``
(openssl reads those files as hex, so the seed's first CRL is actually number 0x1000 = 4096;
only the increase matters to OpenSSL).
Commands that change it hold an exclusive lock on ``DIR/.lock`` and rewrite it atomically.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from mgfast.pki.files import PkiError, load_certificate, write_new, write_replace
from mgfast.pki.keys import PrivateKey, key_pem, load_key, new_key, signing_hash

FIRST_SERIAL = 1
FIRST_CRL_NUMBER = 1000
CA_DAYS = 3650  # the seed's 365 would make every issued certificate die with the CA in a year
DB_VERSION = 1


def now_utc() -> datetime:
    """Now, truncated to the second: X.509 times have no finer resolution."""
    return datetime.now(timezone.utc).replace(microsecond=0)


def _ts(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(slots=True)
class IssuedCert:
    serial: int
    subject: str
    profile: str  # "server" or "client"
    not_after: datetime
    file: str  # relative to the CA directory
    revoked_at: datetime | None = None


@dataclass(slots=True)
class CaDatabase:
    next_serial: int = FIRST_SERIAL
    next_crl_number: int = FIRST_CRL_NUMBER
    last_crl_update: datetime | None = None  # lastUpdate of the newest CRL published
    certs: dict[int, IssuedCert] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps({
            "version": DB_VERSION,
            "next_serial": f"{self.next_serial:02X}",
            "next_crl_number": self.next_crl_number,
            "last_crl_update": _ts(self.last_crl_update),
            "certs": [{
                "serial": f"{c.serial:02X}", "subject": c.subject, "profile": c.profile,
                "not_after": _ts(c.not_after), "file": c.file, "revoked_at": _ts(c.revoked_at),
            } for c in sorted(self.certs.values(), key=lambda c: c.serial)],
        }, option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> CaDatabase:
        raw = orjson.loads(data)
        if raw.get("version") != DB_VERSION:
            raise ValueError(f"unknown database version {raw.get('version')!r}")
        certs = {}
        for c in raw["certs"]:  # serials are hex strings: JSON numbers cannot hold 160 bits
            serial = int(c["serial"], 16)
            certs[serial] = IssuedCert(serial, c["subject"], c["profile"],
                                       datetime.fromisoformat(c["not_after"]),
                                       c["file"], _dt(c["revoked_at"]))
        return cls(int(raw["next_serial"], 16), raw["next_crl_number"],
                   _dt(raw["last_crl_update"]), certs)


class CaDir:
    """A CA directory made by :func:`init_ca`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.key_path = self.path / "ca.key"
        self.cert_path = self.path / "ca.crt"
        self.db_path = self.path / "ca.json"
        self.certs_dir = self.path / "certs"
        self.crl_path = self.path / "crl" / "ca.crl"

    def check(self) -> None:
        for p in (self.key_path, self.cert_path, self.db_path):
            if not p.is_file():
                raise PkiError(f"{self.path} is not a CA directory ({p.name} missing); "
                               f"create one with `mgfast pki init-ca {self.path} --cn NAME`")

    def load_cert(self) -> x509.Certificate:
        return load_certificate(self.cert_path)

    def load_key(self) -> PrivateKey:
        try:
            return load_key(self.key_path.read_bytes())
        except (OSError, ValueError, TypeError) as exc:
            raise PkiError(f"{self.key_path}: cannot read the CA key: {exc}") from None

    def load_db(self) -> CaDatabase:
        try:
            return CaDatabase.from_json(self.db_path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PkiError(f"{self.db_path}: unreadable CA database: {exc}") from None

    def save_db(self, db: CaDatabase) -> None:
        write_replace(self.db_path, db.to_json(), 0o600)

    @contextmanager
    def locked(self) -> Iterator[CaDatabase]:
        """The database under an exclusive lock; the caller saves it with :meth:`save_db`."""
        self.check()
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.load_db()
        finally:
            os.close(fd)  # releases the lock


def ca_extensions(builder: x509.CertificateBuilder,
                  public_key: CertificateIssuerPublicKeyTypes) -> x509.CertificateBuilder:
    """The seed's ``[ v3_ca ]`` section."""
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    return (builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False))


def init_ca(path: Path, cn: str, *, days: int = CA_DAYS, use_ec: bool = False) -> CaDir:
    """Create a CA directory with a fresh key and self-signed certificate."""
    ca = CaDir(path)
    if ca.path.exists() and any(ca.path.iterdir()):
        raise PkiError(f"{ca.path} exists and is not empty; a CA is never overwritten, "
                       "choose a new directory")
    if days <= 0:
        raise PkiError(f"--days must be positive, got {days}")
    ca.path.mkdir(parents=True, exist_ok=True)
    ca.certs_dir.mkdir()
    ca.crl_path.parent.mkdir()
    key = new_key(use_ec)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = now_utc()
    builder = (x509.CertificateBuilder()
               .subject_name(name).issuer_name(name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())  # like `openssl req -x509`
               .not_valid_before(now).not_valid_after(now + timedelta(days=days)))
    cert = ca_extensions(builder, key.public_key()).sign(key, signing_hash())
    write_new(ca.key_path, key_pem(key), 0o600)
    write_new(ca.cert_path, cert.public_bytes(Encoding.PEM))
    write_new(ca.db_path, CaDatabase().to_json(), 0o600)
    return ca

