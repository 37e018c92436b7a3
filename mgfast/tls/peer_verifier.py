"""Re-verify the certificate of a live connection against the hash directory as it is now.

OpenSSL verifies a client once, at the handshake; a keep-alive connection would outlive a later
revocation. The reloader builds one ``PeerVerifier`` per directory change and asks it about every
live connection.

Beyond OpenSSL's own choice of CRL (the later lastUpdate, to the second, so a CRL published within
the same second as its predecessor is ignored), a serial listed in the issuer's CRL with the
highest CRL number also counts as revoked: the newest CRL wins, however fast it was published.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from OpenSSL import crypto

from mgfast.pki.namehash import cert_issuer_der, name_hash
from mgfast.pki.store import read_store
from mgfast.tls.outcome import reason_for_verify_code


class PeerVerifier:
    def __init__(self, hash_dir: Path, crl_enabled: bool) -> None:
        self.store = crypto.X509Store()
        self.store.load_locations(None, str(hash_dir))
        self.revoked: dict[str, set[int]] = {}  # issuer hash -> serials in its newest CRL
        if crl_enabled:
            self.store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)
            newest: dict[str, tuple[tuple[int, datetime], set[int]]] = {}
            for crl in read_store(hash_dir).crls:
                rank = (crl.number if crl.number is not None else -1, crl.last_update)
                if crl.hash not in newest or rank > newest[crl.hash][0]:
                    newest[crl.hash] = (rank, set(crl.revoked_serials))
            self.revoked = {issuer: serials for issuer, (_, serials) in newest.items()}

    def verdict(self, leaf_der: bytes) -> str | None:
        """None if the certificate is still acceptable, else the reason it is not."""
        try:
            cert = crypto.load_certificate(crypto.FILETYPE_ASN1, leaf_der)
        except crypto.Error:
            return "bad_certificate"
        try:
            crypto.X509StoreContext(self.store, cert).verify_certificate()
        except crypto.X509StoreContextError as exc:
            return reason_for_verify_code(exc.errors[0])
        if not self.revoked:
            return None
        parsed = cert.to_cryptography()
        serials = self.revoked.get(name_hash(cert_issuer_der(parsed)))
        if serials and parsed.serial_number in serials:
            return "revoked"
        return None
