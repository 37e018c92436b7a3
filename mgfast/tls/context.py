"""SSL contexts: the server's (identity + hash-directory verify store) and the client's.

The server verifies client certificates against an OpenSSL hash directory (``capath``), which
OpenSSL reads lazily by subject hash, so CA certificates and CRLs added later govern new
handshakes. ``VERIFY_CRL_CHECK_CHAIN`` checks the CRLs of the whole chain. The server issues no
session tickets unless ``mgfast.tls.tickets`` turns them on with the key all workers share.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from mgfast.config.model import ClientTls, Identity, ServerTls
from mgfast.tls.ciphersuites import prefer_aes128
from mgfast.tls.peer_certificate import capture_client_certificates
from mgfast.tls.tickets import disable as no_session_tickets


class TlsSetupError(Exception):
    """TLS material that cannot be used; the message names the file and the fix."""


def _load_identity(context: ssl.SSLContext, identity: Identity, where: str) -> None:
    for path in (identity.certificate, identity.key):
        if not Path(path).is_file():
            raise TlsSetupError(f"{path}: not a readable file ({where}); point it at a PEM file")
    try:
        context.load_cert_chain(str(identity.certificate), str(identity.key))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsSetupError(
                f"{identity.certificate}: the certificate does not match the key {identity.key} "
                f"({where}); use the key the certificate was issued for") from None
        raise TlsSetupError(
            f"{identity.certificate} / {identity.key}: cannot load the PEM certificate chain and "
            f"key ({exc.reason or exc}); check both are PEM and the key is not encrypted "
            f"({where})") from None


def server_context(tls: ServerTls) -> ssl.SSLContext:
    """The server context: its identity and, with ``peers``, required client certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    prefer_aes128(context)  # the server's order decides (OP_CIPHER_SERVER_PREFERENCE)
    no_session_tickets(context)  # a per-process ticket key would make them useless anyway
    _load_identity(context, tls.identity, "tls.identity")
    if tls.peers is not None:
        directory = tls.peers.lookup_hash_directory
        if not Path(directory).is_dir():
            raise TlsSetupError(
                f"{directory}: not a directory (tls.peers.lookup_hash_directory); create it and "
                f"install CA certificates as HASH.N (see `mgfast pki install`)")
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(capath=str(directory))
        if tls.peers.crl_enabled:
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
        capture_client_certificates(context)
    return context


def client_context(tls: ClientTls | None) -> ssl.SSLContext:
    """The client context: trust ``root_certificate`` (or the system store), present ``identity``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    prefer_aes128(context)  # offered first, for servers that follow the client's order
    if tls is not None and tls.root_certificate is not None:
        try:
            context.load_verify_locations(cafile=str(tls.root_certificate))
        except (ssl.SSLError, OSError) as exc:
            raise TlsSetupError(
                f"{tls.root_certificate}: cannot load it as a PEM certificate ({exc}) "
                f"(tls.root_certificate); point it at the server's CA or self-signed certificate"
            ) from None
    if tls is not None and tls.identity is not None:
        _load_identity(context, tls.identity, "tls.identity")
    return context
