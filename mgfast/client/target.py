"""The server the client forwards to: its URL, TLS context and the request heads, built once.

The client POSTs to the path of the configured ``url`` (``/`` when it has none, as upstream's
``http://host:port``) and negotiates batching with ``GET <path>health`` (``/health`` for ``/``).

TLS material is re-read when its files change: every new connection first compares the files'
modification times, so a client whose certificate was revoked and re-issued in place reconnects
with the new one, without a restart and without losing what it holds.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
from urllib.parse import urlsplit

from mgfast import __version__
from mgfast.batching import BATCH_TYPE, MEDIA_TYPE
from mgfast.config.model import BasicAuth, ClientTls
from mgfast.http.client_connection import HttpClientConnection
from mgfast.tls.context import TlsSetupError, client_context

log = logging.getLogger("mgfast.client")


class ServerTarget:
    """Where and how to send: host, port, paths, pre-encoded header blocks, SSL context."""

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None = None,
                 auth: BasicAuth | None = None, tls: ClientTls | None = None) -> None:
        parts = urlsplit(url)
        self.url = url
        self.https = parts.scheme.lower() == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.ssl_context = ssl_context if self.https else None
        self.tls = tls if self.https else None
        self.tls_signature = _signature(self.tls)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self.post_path = path.encode()
        base = (parts.path or "/").rstrip("/")
        self.health_path = (base + "/health").encode()
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if self.https else 80
        authority = host if self.port == default_port else f"{host}:{self.port}"
        common = b"host: %s\r\nuser-agent: mgfast/%s\r\n" % (authority.encode(),
                                                              __version__.encode())
        if auth is not None:
            token = base64.b64encode(f"{auth.username}:{auth.password}".encode())
            common += b"authorization: Basic " + token + b"\r\n"
        self.health_headers = common
        self.media_headers = common + b"content-type: " + MEDIA_TYPE + b"\r\n"
        self.batch_headers = common + b"content-type: " + BATCH_TYPE + b"\r\n"

    def connection(self) -> HttpClientConnection:
        return HttpClientConnection(self.host, self.port, ssl_context=self.ssl_context,
                                    refresh_tls=self.current_tls if self.tls else None)

    def current_tls(self) -> ssl.SSLContext | None:
        """The SSL context for a new connection, rebuilt first if its files changed."""
        signature = _signature(self.tls)
        if signature != self.tls_signature:
            self.tls_signature = signature
            try:
                self.ssl_context = client_context(self.tls)
                log.info("TLS material reloaded for new connections")
            except TlsSetupError as exc:
                log.error("TLS reload failed; still using the previous certificates",
                          extra={"error": str(exc)})
        return self.ssl_context


def _signature(tls: ClientTls | None) -> tuple[tuple[int, int, int] | None, ...]:
    if tls is None:
        return ()
    paths = [tls.root_certificate]
    if tls.identity is not None:
        paths += [tls.identity.certificate, tls.identity.key]
    signature: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path) if path is not None else None
            signature.append((st.st_mtime_ns, st.st_size, st.st_ino) if st else None)
        except OSError:
            signature.append(None)
    return tuple(signature)
