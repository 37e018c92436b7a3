"""Issuing server and client certificates signed by a CA directory.

The extensions are the seed's ``-extfile`` lines: ``basicConstraints=CA:FALSE``,
``subjectKeyIdentifier=hash``, ``authorityKeyIdentifier=keyid,issuer`` (the key id is always
available, so it is the key id alone), a critical keyUsage and the extendedKeyUsage of the profile,
and for servers the subjectAltName. The seed's ``nsComment`` is left out: nothing reads it.
EC keys cannot encipher, so an EC certificate's keyUsage omits keyEncipherment.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mgfast.pki.ca import CaDir, IssuedCert, now_utc
from mgfast.pki.files import PkiError, write_new
from mgfast.pki.keys import issuer_public_key, key_pem, new_key, signing_hash

CERT_DAYS = 365  # the seed's default_days
Profile = Literal["server", "client"]


@dataclass(frozen=True, slots=True)
class Issued:
    serial: int
    cert_path: Path
    key_path: Path
    not_before: datetime
    not_after: datetime


def parse_san(ips: list[str], dns_names: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PkiError(f"--ip {ip!r} is not an IP address") from None
    for name in dns_names:
        if not name or " " in name:
            raise PkiError(f"--dns {name!r} is not a DNS name")
        names.append(x509.DNSName(name))
    return names


def _key_usage(profile: Profile, is_rsa: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=profile == "client",
                         key_encipherment=is_rsa, data_encipherment=False, key_agreement=False,
                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                         decipher_only=False)


def authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The CA's key id (``keyid``), as the seed's authorityKeyIdentifier lines produce."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key(ca_cert))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def issue(ca: CaDir, profile: Profile, cn: str, out: Path, *,
          san: list[x509.GeneralName] | None = None, days: int = CERT_DAYS,
          not_before: datetime | None = None, not_after: datetime | None = None,
          use_ec: bool = False) -> Issued:
    """Make a key and a certificate for it; write ``OUT.crt`` and ``OUT.key`` (PKCS#8 PEM).

    ``not_before`` defaults to now and ``not_after`` to ``not_before + days``; pass both in the
    past to make an already expired certificate for tests.
    """
    if profile == "server" and not san:
        raise PkiError("a server certificate needs at least one --ip or --dns: clients check "
                       "the subjectAltName, not the CN")
    cert_path, key_path = Path(f"{out}.crt"), Path(f"{out}.key")
    for p in (cert_path, key_path):
        if p.exists():
            raise PkiError(f"{p} exists; remove it or choose another --out")
    ca.check()
    ca_cert, ca_key = ca.load_cert(), ca.load_key()
    start = not_before or now_utc()
    end = not_after or start + timedelta(days=days)
    if end <= start:
        raise PkiError(f"the certificate would expire ({end:%Y-%m-%d %H:%M:%SZ}) before it "
                       f"becomes valid ({start:%Y-%m-%d %H:%M:%SZ})")
    if end > ca_cert.not_valid_after_utc:
        raise PkiError(f"the certificate would outlive its CA, which expires "
                       f"{ca_cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}; choose fewer --days")

    key = new_key(use_ec)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    eku = {"server": ExtendedKeyUsageOID.SERVER_AUTH,
           "client": ExtendedKeyUsageOID.CLIENT_AUTH}[profile]
    with ca.locked() as db:
        serial = db.next_serial
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(ca_cert.subject)
                   .public_key(key.public_key())
                   .serial_number(serial)
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
                   .add_extension(ski, critical=False)
                   .add_extension(authority_key_id(ca_cert), critical=False)
                   .add_extension(_key_usage(profile, isinstance(key, rsa.RSAPrivateKey)),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([eku]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, signing_hash())
        copy = ca.certs_dir / f"{serial:02X}.pem"
        # The serial is spent before any file exists, so a crash can never reuse it.
        db.next_serial = serial + 1
        db.certs[serial] = IssuedCert(serial, cert.subject.rfc4514_string(), profile, end,
                                      str(copy.relative_to(ca.path)))
        ca.save_db(db)
        pem = cert.public_bytes(Encoding.PEM)
        write_new(copy, pem)
    if not write_new(key_path, key_pem(key), 0o600) or not write_new(cert_path, pem):
        raise PkiError(f"{out}.crt or {out}.key appeared while issuing; the certificate "
                       f"(serial {serial:02X}) is kept in {copy}")
    return Issued(serial, cert_path, key_path, start, end)
