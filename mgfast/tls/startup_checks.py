"""What to refuse or warn about before serving mutual TLS from a hash directory."""

from __future__ import annotations

import logging
from pathlib import Path

from mgfast.config.model import Peers
from mgfast.pki.store import read_store
from mgfast.tls.context import TlsSetupError

log = logging.getLogger("mgfast.tls")


def check_peers(peers: Peers) -> None:
    """Raise TlsSetupError for a store that would reject every client; warn for expired CRLs."""
    directory = Path(peers.lookup_hash_directory)
    status = read_store(directory)
    if not directory.is_dir():
        raise TlsSetupError(f"{directory}: no such directory (tls.peers.lookup_hash_directory); "
                            f"create it and install the CA certificate: "
                            f"mgfast pki install {directory} ca.crt")
    if not [ca for ca in status.cas if ca.reachable]:
        raise TlsSetupError(f"{directory}: no CA certificate OpenSSL can find there "
                            f"(tls.peers.lookup_hash_directory); install one as HASH.0: "
                            f"mgfast pki install {directory} ca.crt")
    if not peers.crl_enabled:
        return
    crl_issuers = {crl.hash for crl in status.crls if crl.reachable}
    for ca in status.cas:
        if ca.reachable and ca.hash not in crl_issuers:
            raise TlsSetupError(
                f"{ca.file}: CA '{ca.subject}' has no CRL in {directory} and crl_enabled is "
                f"true, so every client it issued would be rejected; publish one "
                f"(openssl ca -gencrl, or mgfast pki gen-crl CA_DIR) and install it as "
                f"{ca.hash}.r0, or set tls.peers.crl_enabled to false")
    for crl in status.effective_crls():
        if (crl.next_update is not None and status.checked_at is not None
                and crl.next_update < status.checked_at):
            log.warning("CRL EXPIRED: every handshake of a client of this CA will fail "
                        "until a new CRL is installed", extra={
                            "file": str(crl.file), "issuer": crl.issuer,
                            "next_update": crl.next_update.isoformat()})
