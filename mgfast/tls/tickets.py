"""TLS session tickets: off by default, or one key shared by every worker and rotated.

A TLS 1.3 server sends session tickets after each full handshake (Python's default is 2). Each
costs the server CPU, and with a random key per worker process (OpenSSL's default) a client that
reconnects to another worker cannot use it. So ``server_context`` sets ``num_tickets = 0``, and
``session_tickets.enabled`` turns resumption on with a key that every worker derives by itself:

    key(period) = HMAC-SHA256(secret, label || period), period = floor(unix time / rotate_interval)

The supervisor makes the 32-byte ``secret`` once and hands it to every worker it spawns (also to
a restarted one), so all workers hold the same key and change it at the same moment, without any
messages between them. A ticket made under an older key no longer decrypts: the client simply does
a full handshake (with certificate verification) and gets a new ticket. A ticket therefore lives
at most one ``rotate_interval``, which also becomes the ticket lifetime the server announces.

Python's ``ssl`` module cannot set ticket keys, so this calls OpenSSL's ``SSL_CTX_ctrl`` with
``SSL_CTRL_SET_TLSEXT_TICKET_KEYS`` on the context's own ``SSL_CTX``, reached as in
``mgfast.tls.ciphersuites``, and reads the key back to confirm it. Where that is unavailable the
server logs it once and runs without resumption: never a worker with a key of its own.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import logging
import math
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mgfast.tls import libssl

if TYPE_CHECKING:
    from _ctypes import CFuncPtr

log = logging.getLogger("mgfast.tls")

SECRET_BYTES = 32
# OpenSSL 3: 16-byte key name, 32-byte HMAC key, 32-byte AES key, in that order
KEY_BYTES = 80
_SET_KEYS, _GET_KEYS = 59, 58  # SSL_CTRL_SET_TLSEXT_TICKET_KEYS, SSL_CTRL_GET_TLSEXT_TICKET_KEYS
# One ticket per full handshake: clients use a ticket once (RFC 8446 C.4) and get a new one on
# every resumption. Each ticket costs about 0.17 ms of server CPU (server side of a full mTLS
# handshake on memory BIOs: 0.95 ms with none, 1.13 ms with one, 1.30 ms with two); a second
# one would only serve a second parallel connection, which few clients open.
TICKETS_PER_HANDSHAKE = 1


def _functions() -> tuple[CFuncPtr, CFuncPtr] | None:
    ctrl = libssl.function("SSL_CTX_ctrl", (ctypes.c_void_p, ctypes.c_int, ctypes.c_long,
                                            ctypes.c_void_p), ctypes.c_long)
    set_timeout = libssl.function("SSL_CTX_set_timeout", (ctypes.c_void_p, ctypes.c_long),
                                  ctypes.c_long)
    return (ctrl, set_timeout) if ctrl is not None and set_timeout is not None else None


_FUNCTIONS = _functions()
_warned = False


def new_secret() -> bytes:
    """The secret the supervisor hands to every worker."""
    import secrets
    return secrets.token_bytes(SECRET_BYTES)


class TicketKeys:
    """The ticket key of each period, the same in every process that holds ``secret``."""

    def __init__(self, secret: bytes, rotate_interval: float,
                 clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 16:
            raise ValueError("the ticket secret must be at least 16 bytes")
        self.secret, self.rotate_interval, self.clock = secret, rotate_interval, clock

    def period(self) -> int:
        """The current period: wall-clock time, so all workers agree on it."""
        return math.floor(self.clock() / self.rotate_interval)

    def seconds_to_next_period(self) -> float:
        return (self.period() + 1) * self.rotate_interval - self.clock()

    def key(self, period: int) -> bytes:
        """80 bytes for OpenSSL: key name, HMAC key, AES key, each its own derivation."""
        def part(label: bytes, size: int) -> bytes:
            data = b"mgfast session ticket " + label + period.to_bytes(8, "big", signed=True)
            return hmac.new(self.secret, data, hashlib.sha256).digest()[:size]
        return part(b"name", 16) + part(b"hmac", 32) + part(b"aes", 32)


def disable(context: ssl.SSLContext) -> None:
    """No tickets: nothing would use them, and each costs CPU on every full handshake.
    ``num_tickets`` governs TLS 1.3; ``OP_NO_TICKET`` the TLS 1.2 ticket extension."""
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET


def enable(context: ssl.SSLContext, key: bytes, lifetime: float) -> bool:
    """Issue tickets under ``key``, valid ``lifetime`` seconds; False (and no tickets) if OpenSSL
    cannot be reached, logged once per process."""
    if not install_key(context, key):
        _warn_once()
        disable(context)
        return False
    assert _FUNCTIONS is not None  # install_key succeeded
    _FUNCTIONS[1](libssl.ssl_ctx(context), max(1, math.ceil(lifetime)))
    context.options &= ~ssl.OP_NO_TICKET  # TLS 1.2 clients get one under the same key
    context.num_tickets = TICKETS_PER_HANDSHAKE
    return True


def install_key(context: ssl.SSLContext, key: bytes) -> bool:
    """Make ``key`` the context's ticket key; True once read back unchanged."""
    if _FUNCTIONS is None or len(key) != KEY_BYTES:
        return False
    ctrl = _FUNCTIONS[0]
    ctx = libssl.ssl_ctx(context)
    if not ctx:
        return False
    if ctrl(ctx, _SET_KEYS, KEY_BYTES, ctypes.create_string_buffer(key, KEY_BYTES)) != 1:
        return False
    back = ctypes.create_string_buffer(KEY_BYTES)
    return bool(ctrl(ctx, _GET_KEYS, KEY_BYTES, back) == 1 and back.raw == key)


def _warn_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("TLS session tickets are on in the config, but OpenSSL's ticket keys cannot "
                    "be set from this Python; running without session resumption")
