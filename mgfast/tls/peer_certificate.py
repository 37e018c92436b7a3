"""The client certificate as it arrived, also when verification rejects it.

Python 3.11's ssl module exposes no peer certificate after a failed handshake, yet a rejection is
worth logging with the subject, issuer and serial. OpenSSL's message callback sees the decrypted
Certificate handshake message (TLS 1.2 and 1.3), so we keep its first entry, the leaf, as DER.
"""

from __future__ import annotations

import _ssl
import functools
import ssl
from typing import Any

from cryptography import x509

_HANDSHAKE = 22
_CERTIFICATE = 11
_TLS13 = 0x0304
# skips ssl.py's enum wrapping; typeshed does not list this private attribute of CPython's
_set_raw_callback = _ssl._SSLContext._msg_callback.__set__  # type: ignore[attr-defined]


def capture_client_certificates(context: ssl.SSLContext) -> None:
    """Make every SSLObject of ``context`` keep ``peer_leaf_der`` from the client's Certificate."""
    _set_raw_callback(context, _on_message)


def _on_message(conn: Any, direction: str, version: int, content_type: int, msg_type: int,
                data: bytes) -> None:
    """OpenSSL's message callback; ``conn`` is the SSLObject, which takes the attribute."""
    if content_type != _HANDSHAKE or msg_type != _CERTIFICATE or direction != "read":
        return
    leaf = leaf_from_certificate_message(bytes(data), version)
    if leaf is not None and conn is not None:
        conn.peer_leaf_der = leaf


def leaf_from_certificate_message(message: bytes, version: int) -> bytes | None:
    """The first certificate of a TLS Certificate handshake message, or None if it has none."""
    pos = 4  # handshake type and 24-bit length
    if version == _TLS13:
        if len(message) < pos + 1:
            return None
        pos += 1 + message[pos]  # certificate_request_context
    if len(message) < pos + 6:
        return None
    list_length = int.from_bytes(message[pos:pos + 3], "big")
    if list_length == 0:
        return None
    cert_length = int.from_bytes(message[pos + 3:pos + 6], "big")
    der = message[pos + 6:pos + 6 + cert_length]
    return der if len(der) == cert_length else None


@functools.lru_cache(maxsize=256)
def describe(der: bytes | None) -> tuple[str, str, str]:
    """(subject, issuer, serial in hex) of a DER certificate, empty strings if unreadable.
    Cached: a client retrying with a refused certificate is parsed once, not per attempt."""
    if not der:
        return "", "", ""
    try:
        cert = x509.load_der_x509_certificate(der)
        return cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), f"{cert.serial_number:X}"
    except ValueError:
        return "", "", ""
