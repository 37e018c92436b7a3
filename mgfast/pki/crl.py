"""Revoking certificates and publishing CRLs (the seed's ``openssl ca -revoke`` / ``-gencrl``).

A CRL is v2 with the seed's ``crl_ext`` (authorityKeyIdentifier = the CA's key id) plus a
crlNumber that counts up from 1000. lastUpdate is now and nextUpdate now + days (the seed's
``default_crl_days = 30``).

OpenSSL picks, among several CRLs of one issuer, the one with the later lastUpdate, compared to
the second; a CRL made within the same second as the previous one is ignored by a server that
already holds the previous one. :func:`gen_crl` therefore waits, when needed, until its
lastUpdate is strictly later than that of the previous CRL it published, so "revoke, gen-crl,
install" right after an earlier gen-crl takes effect.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from mgfast.pki.ca import CaDir, IssuedCert, now_utc
from mgfast.pki.files import PkiError, load_certificate, write_replace
from mgfast.pki.issue import authority_key_id
from mgfast.pki.keys import signing_hash

CRL_DAYS = 30  # the seed's default_crl_days
MAX_CLOCK_WAIT = 2.0  # seconds gen-crl may wait for lastUpdate to pass the previous CRL's


@dataclass(frozen=True, slots=True)
class Revoked:
    serial: int
    revoked_at: datetime
    already: bool  # it was revoked before; nothing changed


@dataclass(frozen=True, slots=True)
class Published:
    path: Path
    number: int
    last_update: datetime
    next_update: datetime
    revoked: int


def revoke(ca: CaDir, cert_file: Path) -> Revoked:
    """Mark the certificate in ``cert_file`` revoked; the next :func:`gen_crl` lists it."""
    cert = load_certificate(cert_file)
    ca.check()
    ca_cert = ca.load_cert()
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(f"{cert_file} was not issued by the CA in {ca.path} "
                       f"(its issuer is {cert.issuer.rfc4514_string()})") from None
    serial = cert.serial_number
    with ca.locked() as db:
        entry = db.certs.get(serial)
        if entry is not None and entry.revoked_at is not None:
            return Revoked(serial, entry.revoked_at, True)
        if entry is None:  # signed by this CA but not in the database (e.g. restored backup)
            entry = IssuedCert(serial, cert.subject.rfc4514_string(), "unknown",
                               cert.not_valid_after_utc, str(cert_file))
            db.certs[serial] = entry
        entry.revoked_at = now_utc()
        ca.save_db(db)
        return Revoked(serial, entry.revoked_at, False)


def _wait_past(previous: datetime | None) -> datetime:
    now = now_utc()
    if previous is None or now > previous:
        return now
    wait = (previous - now).total_seconds() + 1 - (time.time() % 1)
    if wait > MAX_CLOCK_WAIT:
        raise PkiError(f"the previous CRL's lastUpdate ({previous:%Y-%m-%d %H:%M:%SZ}) is in "
                       "the future; a CRL dated now would be ignored. Fix the clock or pass "
                       "--last-update")
    time.sleep(wait)
    return max(now_utc(), previous + timedelta(seconds=1))


def gen_crl(ca: CaDir, *, days: int = CRL_DAYS, out: Path | None = None,
            last_update: datetime | None = None, next_update: datetime | None = None) -> Published:
    """Sign a CRL of every revoked certificate; write it to ``DIR/crl/ca.crl`` and ``out``.

    ``last_update`` / ``next_update`` override now / now + days (tests use them to make an
    expired CRL).
    """
    ca.check()
    ca_cert, ca_key = ca.load_cert(), ca.load_key()
    with ca.locked() as db:
        last = last_update or _wait_past(db.last_crl_update)
        nxt = next_update or last + timedelta(days=days)
        if nxt < last:
            raise PkiError(f"nextUpdate ({nxt:%Y-%m-%d %H:%M:%SZ}) is before lastUpdate "
                           f"({last:%Y-%m-%d %H:%M:%SZ})")
        number = db.next_crl_number
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(ca_cert.subject)
                   .last_update(last).next_update(nxt)
                   .add_extension(authority_key_id(ca_cert), critical=False)
                   .add_extension(x509.CRLNumber(number), critical=False))
        revoked = sorted(((c.serial, c.revoked_at) for c in db.certs.values()
                          if c.revoked_at is not None))
        for serial, revoked_at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(revoked_at).build())
        pem = builder.sign(ca_key, signing_hash()).public_bytes(Encoding.PEM)
        db.next_crl_number = number + 1
        if db.last_crl_update is None or last > db.last_crl_update:
            db.last_crl_update = last
        ca.save_db(db)
        ca.crl_path.parent.mkdir(exist_ok=True)
        write_replace(ca.crl_path, pem)
        if out is not None and Path(out).resolve() != ca.crl_path.resolve():
            write_replace(Path(out), pem)
    return Published(Path(out) if out is not None else ca.crl_path, number, last, nxt,
                     len(revoked))
