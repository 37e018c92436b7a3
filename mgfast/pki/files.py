"""File primitives shared by the pki commands: atomic writes and reading PEM/DER objects.

A server reads the hash directory while ``mgfast pki`` writes into it, and a CA directory may be
written by two commands at once, so nothing is ever written in place: data goes to a hidden
temporary file in the same directory, is flushed to disk, and is then renamed (replace) or
hard-linked (create, never overwrite) to its final name.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from cryptography import x509

Pkix = x509.Certificate | x509.CertificateRevocationList

_PEM_BLOCK = re.compile(
    rb"-----BEGIN (CERTIFICATE|X509 CRL)-----\r?\n.*?-----END \1-----\r?\n?",
    re.S)


class PkiError(Exception):
    """A pki operation cannot proceed; the message says why and what to do."""


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_replace(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` atomically, replacing it if it exists."""
    tmp = _write_temp(path, data, mode)
    os.replace(tmp, path)
    _sync_dir(path.parent)


def write_new(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Create ``path`` atomically with ``data``; False (nothing written) if it already exists."""
    tmp: Path | None = _write_temp(path, data, mode)
    assert tmp is not None
    try:
        os.link(tmp, path)  # fails with EEXIST instead of overwriting, unlike rename
    except FileExistsError:
        return False
    except OSError as exc:  # a filesystem without hard links: best effort
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if path.exists():
            return False
        os.rename(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    _sync_dir(path.parent)
    return True


def parse_objects(data: bytes) -> list[Pkix]:
    """Every certificate and CRL in ``data`` (PEM, possibly several blocks, or a single DER)."""
    if b"-----BEGIN" not in data:
        try:
            return [x509.load_der_x509_certificate(data)]
        except ValueError:
            return [x509.load_der_x509_crl(data)]  # raises ValueError if neither
    out: list[Pkix] = []
    for match in _PEM_BLOCK.finditer(data):
        if match.group(1) == b"X509 CRL":
            out.append(x509.load_pem_x509_crl(match.group(0)))
        else:
            out.append(x509.load_pem_x509_certificate(match.group(0)))
    if not out:
        raise ValueError("no PEM certificate or CRL found")
    return out


def load_certificate(path: Path) -> x509.Certificate:
    """The single certificate in a PEM or DER file, or a PkiError naming the file."""
    try:
        objs = parse_objects(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"{path}: cannot read a certificate: {exc}") from None
    certs = [o for o in objs if isinstance(o, x509.Certificate)]
    if len(certs) != 1:
        raise PkiError(f"{path}: expected one certificate, found {len(certs)}")
    return certs[0]
