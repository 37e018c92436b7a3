"""The client certificate as it arrived, also when verification rejects it.

Python 3.11's ssl module exposes no peer certificate after a failed handshake, yet a rejection is
worth logging with the subject, issuer and serial. OpenSSL's message callback sees the decrypted
Certificate handshake message (TLS 1.2 and 1.3), so we keep its first entry, the leaf, as DER.

OpenSSL calls that callback for every handshake message and record header, and after the
handshake for every record (two calls per record each way: about 1 us of server CPU for a small
request and its response, measured on memory BIOs). So ``stop_capturing`` takes the callback off
the connection (OpenSSL's ``SSL_set_msg_callback`` on the connection's own ``SSL``) as soon as the
Certificate message is seen, and again once the handshake is over. The ``SSL`` pointer is read
from CPython's ``PySSLSocket`` after its ``Socket`` field, and used only when the next field holds
the connection's own context object; otherwise the callback stays, which costs only time.
"""

from __future__ import annotations

import _ssl
import ctypes
import functools
import ssl
from typing import Any

from cryptography import x509

from mgfast.tls import libssl

_HANDSHAKE = 22
_CERTIFICATE = 11
_TLS13 = 0x0304
# skips ssl.py's enum wrapping; typeshed does not list this private attribute of CPython's
_set_raw_callback = _ssl._SSLContext._msg_callback.__set__  # type: ignore[attr-defined]

_SET_MSG_CALLBACK = libssl.function("SSL_set_msg_callback",
                                    (ctypes.c_void_p, ctypes.c_void_p), None)
# PySSLSocket: the object header, then PyObject *Socket, SSL *ssl, PySSLContext *ctx
_POINTER = ctypes.sizeof(ctypes.c_void_p)
_SSL_OFFSET = object.__basicsize__ + _POINTER
_CTX_OFFSET = object.__basicsize__ + 2 * _POINTER


def capture_client_certificates(context: ssl.SSLContext) -> None:
    """Make every SSLObject of ``context`` keep ``peer_leaf_der`` from the client's Certificate."""
    _set_raw_callback(context, _on_message)


def stop_capturing(conn: ssl.SSLObject) -> None:
    """No more message callbacks on this connection (where CPython's layout is as expected)."""
    inner = getattr(conn, "_sslobj", None)
    if _SET_MSG_CALLBACK is None or inner is None:
        return
    address = id(inner)
    if ctypes.c_void_p.from_address(address + _CTX_OFFSET).value != id(inner.context):
        return  # not the layout this was written for: leave the callback on
    ssl_pointer = ctypes.c_void_p.from_address(address + _SSL_OFFSET).value
    if ssl_pointer:
        _SET_MSG_CALLBACK(ssl_pointer, None)


def _on_message(conn: Any, direction: str, version: int, content_type: int, msg_type: int,
                data: bytes) -> None:
    """OpenSSL's message callback; ``conn`` is the SSLObject, which takes the attribute."""
    if content_type != _HANDSHAKE or msg_type != _CERTIFICATE or direction != "read":
        return
    leaf = leaf_from_certificate_message(bytes(data), version)
    if conn is not None:
        if leaf is not None:
            conn.peer_leaf_der = leaf
        stop_capturing(conn)  # the leaf was all it was for


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
