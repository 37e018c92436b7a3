"""OpenSSL calls that Python's ``ssl`` module does not offer, on the very libssl it uses.

Functions are looked up through ``_ssl``'s own shared object, so they come from the library
that made the contexts. An ``ssl.SSLContext``'s ``SSL_CTX`` is the first field after the object
header of CPython's ``PySSLContext``. Where a function cannot be found the callers keep
OpenSSL's defaults, which work the same, only slower or without the extra.
"""

from __future__ import annotations

import ctypes
import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _ctypes import CFuncPtr  # a foreign function, as CDLL's attributes are

_CTX_OFFSET = object.__basicsize__


def function(name: str, argtypes: tuple[Any, ...], restype: Any) -> CFuncPtr | None:
    """libssl's ``name`` with its C signature, or None if this Python cannot reach it."""
    try:  # typeshed has no ssl._ssl: the compiled module, CPython's private API
        found: CFuncPtr = getattr(ctypes.CDLL(ssl._ssl.__file__), name)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return None
    found.argtypes = argtypes
    found.restype = restype
    return found


def ssl_ctx(context: ssl.SSLContext) -> int | None:
    """The address of the context's ``SSL_CTX``."""
    return ctypes.c_void_p.from_address(id(context) + _CTX_OFFSET).value
