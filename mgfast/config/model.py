"""Typed, validated configuration objects built by ``mgfast.config.loader``.

Durations are seconds as floats. Relative paths are resolved against the working directory,
as upstream does.
Keys marked "mgfast" are extensions; everything else mirrors upstream 0.2.0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mgfast.auth.config import BasicAuthConfig
from mgfast.zmq.settings import InStreamConfig, OutStreamConfig

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, kw_only=True, slots=True)
class Identity:
    certificate: Path
    key: Path


@dataclass(frozen=True, kw_only=True, slots=True)
class Peers:
    lookup_hash_directory: Path
    crl_enabled: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionTickets:
    """mgfast: TLS session resumption by tickets. Off by default: a ticket costs server CPU on
    every full handshake and saves it only for clients that reconnect with it."""

    enabled: bool = False
    rotate_interval: float = 3600.0  # a new ticket key for all workers every so often


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerTls:
    identity: Identity
    peers: Peers | None = None
    # mgfast: how long a TLS handshake may take, and how soon a live connection whose client
    # certificate was revoked in the hash directory is closed.
    handshake_timeout: float = 10.0
    recheck_interval: float = 5.0
    session_tickets: SessionTickets = field(default_factory=SessionTickets)  # mgfast


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientTls:
    root_certificate: Path | None = None
    identity: Identity | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Statistics:
    frame_period: int | None = None
    timestamp_period: float | None = None
    history_size: int | None = None  # appears in upstream samples: how many periods to keep


@dataclass(frozen=True, kw_only=True, slots=True)
class Listen:
    ip: str
    port: int


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpLimits:
    """mgfast: the ``http`` object. Upstream caps bodies at 256 KiB; video frames need more."""

    max_body_size: int = 32 * MiB
    max_line_size: int = 8 * KiB  # the request line, and each header line (as nginx)
    max_header_size: int = 32 * KiB  # the whole header block (as nginx)
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    idle_timeout: float = 75.0
    linger_time: float = 2.0  # a closing connection's input is read and dropped this long at most
    linger_timeout: float = 0.5  # ... and stops being read after this long without any


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerConfig:
    ip: str
    port: int
    out_stream: OutStreamConfig
    tls: ServerTls | None = None
    auth: BasicAuthConfig | None = None  # auth.basic
    statistics: Statistics | None = None
    http: HttpLimits = field(default_factory=HttpLimits)
    workers: int | None = None  # mgfast: None means server.main.default_workers()
    metrics: Listen | None = None  # mgfast
    source: str = "<embedded default>"  # the file it came from, for messages


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryStrategy:
    initial_delay: float = 0.001
    maximum_delay: float = 1.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        """Yield the successive backoff delays, forever."""
        delay = self.initial_delay
        while True:
            yield delay
            delay = min(delay * self.multiplier, self.maximum_delay)


@dataclass(frozen=True, kw_only=True, slots=True)
class WaitStrategy:
    kind: Literal["yield", "sleep"] = "sleep"
    sleep: float = 0.001


@dataclass(frozen=True, kw_only=True, slots=True)
class BasicAuth:
    username: str
    password: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ClientConfig:
    ip: str
    port: int
    url: str
    in_stream: InStreamConfig
    retry_strategy: RetryStrategy = field(default_factory=RetryStrategy)
    wait_strategy: WaitStrategy = field(default_factory=WaitStrategy)
    tls: ClientTls | None = None
    auth: BasicAuth | None = None
    statistics: Statistics | None = None
    http: HttpLimits = field(default_factory=HttpLimits)
    connections: int = 4  # mgfast: keep-alive connections to the server
    batch: int = 1  # mgfast: messages per POST between mgfast peers; 1 = upstream API
    pipeline: int = 16  # mgfast: requests in flight per connection (HTTP/1.1 pipelining)
    drain_timeout: float = 10.0  # mgfast: on SIGTERM, how long to deliver what was read
    metrics: Listen | None = None  # mgfast
    source: str = "<embedded default>"
