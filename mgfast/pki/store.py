"""Read-only inspection of an OpenSSL hash directory: what a server's verify store will see.

:func:`read_store` lists every CA certificate (``HASH.N``) and CRL (``HASH.rN``), marks the CRL
OpenSSL uses for each issuer, and explains every problem in terms of the file and the fix. The
server's start-up checks and the Prometheus CRL gauges are built on it, and ``mgfast pki status``
prints it.

How OpenSSL reads the directory, and so what is checked:

- File names are ``%08lx.N`` / ``%08lx.rN``: lower-case hex, plain decimal. Another spelling is
  never opened. A file whose content hashes differently is never looked up under its own name.
- Sequence numbers start at 0; OpenSSL stops at the first missing one, so files after a gap are
  invisible (``reachable=False``).
- Among the CRLs of one issuer, the one valid now is preferred, then the later lastUpdate, compared
  to the second; on a tie the one loaded first (the lower number) stays. That one is ``effective``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mgfast.pki.files import parse_objects
from mgfast.pki.keys import issuer_public_key
from mgfast.pki.namehash import canonical_name, cert_subject_der, crl_issuer_der, name_hash

CRL_RENEW_WARNING = timedelta(hours=48)  # time left to publish a new CRL before clients fail

_HASH_FILE = re.compile(r"([0-9a-f]{8})\.(r?)(0|[1-9][0-9]*)")
_LOOKS_LIKE_HASH_FILE = re.compile(r"([0-9a-fA-F]{8})\.(r?)([0-9]+)")
_RENEW = "publish a new one (mgfast pki gen-crl CA_DIR --install HASH_DIR)"


@dataclass
class CaInfo:
    subject: str
    hash: str
    file: Path
    not_after: datetime
    expired: bool
    reachable: bool = True  # OpenSSL finds it: right name, no gap before it


@dataclass
class CrlInfo:
    issuer: str
    hash: str
    file: Path
    number: int | None
    last_update: datetime
    next_update: datetime | None
    revoked_serials: list[int]
    effective: bool = False  # the CRL OpenSSL uses for this issuer now
    reachable: bool = True


@dataclass
class StoreStatus:
    cas: list[CaInfo]
    crls: list[CrlInfo]
    problems: list[str]  # each names the file and the fix
    hash_dir: Path | None = None
    checked_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def effective_crls(self) -> list[CrlInfo]:
        """The CRL in use for each issuer: what the CRL metrics report."""
        return [c for c in self.crls if c.effective]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for orjson; serials become upper-case hex strings, as openssl prints them
        (JSON numbers cannot hold 160-bit serials)."""
        out = asdict(self)
        out["ok"] = self.ok
        for crl in out["crls"]:
            crl["revoked_serials"] = [f"{s:02X}" for s in crl["revoked_serials"]]
        return out


@dataclass
class _FoundCa:
    """One parsed CA certificate and what is known about it while checking."""
    info: CaInfo
    obj: x509.Certificate
    canon: bytes  # canonical name: equal for names OpenSSL considers equal


@dataclass
class _FoundCrl:
    """One parsed CRL and what is known about it while checking."""
    info: CrlInfo
    obj: x509.CertificateRevocationList
    canon: bytes
    verified_by: list[int] = field(default_factory=list)  # ids of the CAs whose key signed it


_Found = _FoundCa | _FoundCrl

def _utc(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


def _public_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer_public_key(ca))
    except (TypeError, ValueError, InvalidSignature):
        return False


def _scan(hash_dir: Path, problems: list[str]) -> dict[tuple[str, bool], dict[int, Path]]:
    """Hash-named files grouped by (hash, is_crl) -> {sequence number: path}."""
    groups: dict[tuple[str, bool], dict[int, Path]] = {}
    for path in sorted(hash_dir.iterdir()):
        m = _HASH_FILE.fullmatch(path.name)
        if m is None:
            if _LOOKS_LIKE_HASH_FILE.fullmatch(path.name):
                problems.append(f"{path}: OpenSSL never opens this name (it looks for "
                                "lower-case hex and a number without leading zeros); install "
                                "it under its proper name (mgfast pki install HASH_DIR FILE) "
                                "and remove it")
            continue
        groups.setdefault((m[1], m[2] == "r"), {})[int(m[3])] = path
    return groups


def _load(path: Path, is_crl: bool, now: datetime, problems: list[str]) -> list[_Found]:
    what = "CRL" if is_crl else "certificate"
    try:
        data = path.read_bytes()
        if b"-----BEGIN" not in data:
            raise ValueError("not PEM (OpenSSL reads only PEM from a hash directory)")
        objs = [o for o in parse_objects(data) if isinstance(o, x509.CertificateRevocationList)
                == is_crl]
        if not objs:
            raise ValueError(f"no PEM {what} in it")
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: does not parse as a PEM {what} ({exc}); replace it with a "
                        f"valid {what} or remove it and renumber the files after it")
        return []
    found: list[_Found] = []
    for obj in objs:
        if isinstance(obj, x509.CertificateRevocationList):
            der = crl_issuer_der(obj)
            crl = CrlInfo(obj.issuer.rfc4514_string(), name_hash(der), path, _crl_number(obj),
                          obj.last_update_utc, obj.next_update_utc,
                          [r.serial_number for r in obj])
            found.append(_FoundCrl(crl, obj, canonical_name(der)))
        else:
            der = cert_subject_der(obj)
            ca = CaInfo(obj.subject.rfc4514_string(), name_hash(der), path,
                        obj.not_valid_after_utc, obj.not_valid_after_utc < now)
            found.append(_FoundCa(ca, obj, canonical_name(der)))
    return found


def read_store(hash_dir: Path, *, now: datetime | None = None) -> StoreStatus:
    """Inspect ``hash_dir`` as OpenSSL's hash-directory lookup would read it at ``now``."""
    hash_dir = Path(hash_dir)
    now = now or datetime.now(timezone.utc)
    problems: list[str] = []
    status = StoreStatus([], [], problems, hash_dir, now)
    if not hash_dir.is_dir():
        problems.append(f"{hash_dir}: no such directory; create it by installing the CA "
                        "certificate (mgfast pki install HASH_DIR ca.crt)")
        return status
    try:
        groups = _scan(hash_dir, problems)
    except OSError as exc:
        problems.append(f"{hash_dir}: cannot list the directory ({exc}); a server cannot "
                        "either: fix its permissions")
        return status

    cas: list[_FoundCa] = []
    crls: list[_FoundCrl] = []
    for (hash_, is_crl), files in sorted(groups.items()):
        for f in _load_group(hash_, is_crl, files, now, problems):
            if isinstance(f, _FoundCrl):
                crls.append(f)
            else:
                cas.append(f)
    visible_cas = [c for c in cas if c.info.reachable]
    _check_cas(visible_cas, now, problems)
    by_issuer: dict[bytes, list[_FoundCrl]] = {}
    for crl in crls:
        if crl.info.reachable:
            _check_crl_issuer(crl, visible_cas, problems)
            by_issuer.setdefault(crl.canon, []).append(crl)
    for group in by_issuer.values():
        _choose_effective(group, now, problems)
    for ca in visible_cas:
        if not any(id(ca) in crl.verified_by for crl in crls):
            problems.append(f"{ca.info.file}: CA '{ca.info.subject}' has no CRL; with "
                            "crl_enabled every client it issued is rejected ('unable to get "
                            f"certificate CRL'); {_RENEW}")
    status.cas = [c.info for c in cas]
    status.crls = [c.info for c in crls]
    return status


def _load_group(hash_: str, is_crl: bool, files: dict[int, Path], now: datetime,
                problems: list[str]) -> list[_Found]:
    """Parse the files of one hash and kind in load order; mark what OpenSSL cannot reach."""
    suffix = "r" if is_crl else ""
    gap = next(n for n in range(len(files) + 1) if n not in files)
    found: list[_Found] = []
    renumber = gap
    for seq, path in sorted(files.items()):
        if seq > gap:
            problems.append(f"{path}: never read, because {hash_}.{suffix}{gap} is missing "
                            f"(OpenSSL stops at the first gap); rename it to "
                            f"{hash_}.{suffix}{renumber}")
            renumber += 1
        for f in _load(path, is_crl, now, problems):
            if f.info.hash != hash_:
                held = (f"the CRL of '{f.info.issuer}'" if isinstance(f, _FoundCrl)
                        else f"the certificate of '{f.info.subject}'")
                problems.append(f"{path}: holds {held}, whose hash is {f.info.hash}, so "
                                "OpenSSL never finds it under this name; remove it and "
                                "install it with mgfast pki install HASH_DIR FILE")
            f.info.reachable = seq < gap and f.info.hash == hash_
            found.append(f)
    return found


def _check_cas(cas: list[_FoundCa], now: datetime, problems: list[str]) -> None:
    for ca in cas:
        info, cert = ca.info, ca.obj
        if info.expired:
            key = _public_der(cert)
            if any(o.canon == ca.canon and not o.info.expired and _public_der(o.obj) == key
                   for o in cas):
                continue  # renewed: OpenSSL prefers the valid certificate of the same CA
            problems.append(f"{info.file}: CA '{info.subject}' expired {_utc(info.not_after)}; "
                            "clients it issued are rejected; install a renewed CA certificate")
        elif cert.not_valid_before_utc > now:
            problems.append(f"{info.file}: CA '{info.subject}' is not valid until "
                            f"{_utc(cert.not_valid_before_utc)}; check the clock")


def _check_crl_issuer(crl: _FoundCrl, cas: list[_FoundCa], problems: list[str]) -> None:
    """Find the CA certificates whose key signed ``crl``."""
    issuers = [c for c in cas if c.canon == crl.canon]
    crl.verified_by = [id(c) for c in issuers if _signed_by(crl.obj, c.obj)]
    if not issuers:
        problems.append(f"{crl.info.file}: CRL of '{crl.info.issuer}' matches no CA "
                        "certificate in the directory and is never used; install the CA "
                        "certificate or remove the CRL")
    elif not crl.verified_by:
        problems.append(f"{crl.info.file}: CRL signature does not verify with the CA "
                        f"certificate of '{crl.info.issuer}' (was the CA re-created with the "
                        "same name?); clients fail with 'CRL signature failure'; "
                        "publish a CRL from the installed CA")


def _time_valid(crl: CrlInfo, now: datetime) -> bool:
    return crl.last_update <= now and (crl.next_update is None or crl.next_update >= now)


def _choose_effective(group: list[_FoundCrl], now: datetime, problems: list[str]) -> None:
    """Mark the CRL OpenSSL uses among the reachable CRLs of one issuer; flag its state."""
    # max() keeps the first of equal keys, and the group is in load order (lower number first).
    best = max(group, key=lambda c: (_time_valid(c.info, now), c.info.last_update))
    eff = best.info
    eff.effective = True
    if eff.last_update > now:
        problems.append(f"{eff.file}: CRL of '{eff.issuer}' is not valid until "
                        f"{_utc(eff.last_update)} (lastUpdate in the future); check the clock")
    elif eff.next_update is not None and eff.next_update < now:
        problems.append(f"{eff.file}: CRL of '{eff.issuer}' expired {_utc(eff.next_update)}; "
                        f"clients are rejected ('CRL has expired'); {_RENEW}")
    elif eff.next_update is not None and eff.next_update - now < CRL_RENEW_WARNING:
        hours = (eff.next_update - now).total_seconds() / 3600
        problems.append(f"{eff.file}: CRL of '{eff.issuer}' expires in {hours:.1f} h at "
                        f"{_utc(eff.next_update)}; {_RENEW}")
    for other in group:
        c = other.info
        if c is eff or c.number is None or eff.number is None or c.number <= eff.number:
            continue
        if c.last_update <= eff.last_update:
            why = ("has the same lastUpdate, to the second," if c.last_update == eff.last_update
                   else "has an earlier lastUpdate")
        else:
            why = "is not valid now"
        problems.append(f"{c.file}: CRL number {c.number} is newer than the CRL in use "
                        f"({eff.file.name}, number {eff.number}) but {why} so OpenSSL ignores "
                        f"it; {_RENEW}")
