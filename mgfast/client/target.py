"""The server the client forwards to: its URL, TLS context and the request heads, built once.

The client POSTs to the path of the configured ``url`` (``/`` when it has none, as upstream's
``http://host:port``) and negotiates batching with ``GET <path>health`` (``/health`` for ``/``).
"""

from __future__ import annotations

import base64
import ssl
from urllib.parse import urlsplit

from mgfast import __version__
from mgfast.config.model import BasicAuth
from mgfast.http.client_connection import HttpClientConnection

MEDIA_TYPE = b"application/protobuf"
BATCH_TYPE = b"application/x-mgfast-batch"
BATCH_HEADER = b"x-mgfast-batch"


class ServerTarget:
    """Where and how to send: host, port, paths, pre-encoded header blocks, SSL context."""

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None = None,
                 auth: BasicAuth | None = None) -> None:
        parts = urlsplit(url)
        self.url = url
        self.https = parts.scheme.lower() == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.https else 80)
        self.ssl_context = ssl_context if self.https else None
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
        return HttpClientConnection(self.host, self.port, ssl_context=self.ssl_context)
