"""Installing CA certificates and CRLs into an OpenSSL hash directory (``X509_LOOKUP_hash_dir``).

A certificate goes to ``HASH.N`` and a CRL to ``HASH.rN``, where HASH is the subject (issuer)
name hash and N the first free sequence number: OpenSSL stops at the first missing number, and a
running server only looks for CRL numbers above the one it has cached, so a new CRL must take the
next number and an existing file must never be rewritten in place. Files are written to a hidden
temporary name and hard-linked into place, so a reader never sees half a file and two installers
never overwrite each other. An object already present (same DER) is not installed twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mgfast.pki.files import PkiError, Pkix, parse_objects, write_new
from mgfast.pki.namehash import cert_hash, crl_hash

MAX_SEQUENCE = 10_000  # a directory with more files per hash than this is broken


@dataclass(frozen=True, slots=True)
class Installed:
    kind: Literal["certificate", "crl"]
    name: str  # subject of a certificate, issuer of a CRL
    path: Path
    written: bool  # False: an identical object was already installed at ``path``


def _same(path: Path, der: bytes) -> bool:
    try:
        return any(o.public_bytes(Encoding.DER) == der for o in parse_objects(path.read_bytes()))
    except (OSError, ValueError):
        return False


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return cert.issuer == cert.subject  # a v1 root: OpenSSL accepts it as a trust anchor


def _require_ca(cert: x509.Certificate, source: Path | None = None) -> None:
    if not _is_ca(cert):
        where = f"{source}: " if source else ""
        raise PkiError(f"{where}{cert.subject.rfc4514_string()} is not a CA certificate "
                       "(basicConstraints CA:FALSE); the hash directory holds the CAs that "
                       "issue client certificates, not the clients")


def install_object(hash_dir: Path, obj: Pkix) -> Installed:
    """Install one certificate or CRL under the next free number (or find it installed)."""
    kind: Literal["certificate", "crl"]
    if isinstance(obj, x509.Certificate):
        _require_ca(obj)
        kind, name, stem = "certificate", obj.subject, f"{cert_hash(obj)}."
    else:
        kind, name, stem = "crl", obj.issuer, f"{crl_hash(obj)}.r"
    der = obj.public_bytes(Encoding.DER)
    pem = obj.public_bytes(Encoding.PEM)
    hash_dir.mkdir(parents=True, exist_ok=True)
    for n in range(MAX_SEQUENCE):
        path = hash_dir / f"{stem}{n}"
        if not path.exists() and write_new(path, pem):
            return Installed(kind, name.rfc4514_string(), path, True)
        if _same(path, der):  # installed before, or by a concurrent installer just now
            return Installed(kind, name.rfc4514_string(), path, False)
    raise PkiError(f"{hash_dir}: more than {MAX_SEQUENCE} files for one hash")


def install_files(hash_dir: Path, files: list[Path]) -> list[Installed]:
    """Install every certificate and CRL found in ``files`` (PEM, several per file, or DER).

    All files are read and checked before anything is written.
    """
    objs: list[Pkix] = []
    for f in files:
        try:
            found = parse_objects(Path(f).read_bytes())
        except (OSError, ValueError) as exc:
            raise PkiError(f"{f}: not a certificate or CRL: {exc}") from None
        for o in found:
            if isinstance(o, x509.Certificate):
                _require_ca(o, f)
        objs.extend(found)
    return [install_object(Path(hash_dir), o) for o in objs]
