"""A worker process: one uvloop loop with its own SO_REUSEPORT listener, TLS and connections.

``serve`` runs until ``stop`` is set, then drains: close the listener, let each connection finish
the request in flight (bounded by ``DRAIN_TIMEOUT``), then close the rest. Messages go to the
egress process through an ``EgressClient``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Callable

from mgfast.config.model import ServerConfig
from mgfast.gc_tuning import tune_for_streaming
from mgfast.http.server_protocol import AddressedHttpServerProtocol, HttpServerProtocol
from mgfast.memory import HeapTrimmer
from mgfast.server.app import GatewayApp, Writer
from mgfast.metrics import export
from mgfast.server.listen import listen_socket
from mgfast.server.stats import WorkerStats
from mgfast.tls.outcome import HandshakeOutcome
from mgfast.tls.rejection_log import RejectionLog
from mgfast.tls.reloader import TlsReloader
from mgfast.tls.server_protocol import TlsServerProtocol

log = logging.getLogger("mgfast.server")

DRAIN_TIMEOUT = 10.0  # seconds a graceful stop waits for requests in flight


class StartupError(Exception):
    """The server cannot start; the message says which setting to fix."""


def check_port_free(ip: str, port: int, source: str, field: str = "port") -> None:
    """Fail early if anything listens on ip:port: SO_REUSEPORT would otherwise share it silently.
    ``source`` (the config file) and ``field`` say where to change it."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of a previous run in TIME_WAIT are no reason to refuse
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"{source}: {field}: {ip}:{port} is already in use. Fix: stop the other "
                    f"process or change `{field}` in {source}") from None
            raise StartupError(f"{source}: {field}: cannot listen on {ip}:{port}: "
                               f"{exc.strerror}. Fix: check `{field}` in {source}") from None


async def serve(config: ServerConfig, stop: asyncio.Event, writer: Writer, *,
                sock: socket.socket | None = None, stats: WorkerStats | None = None,
                reload: asyncio.Event | None = None,
                ready: Callable[[], None] | None = None,
                ticket_secret: bytes | None = None) -> None:
    """Serve until ``stop`` is set; setting ``reload`` re-reads the TLS material at once.
    With ``stats`` (metrics on), counts go there and are exported once a second.
    ``ticket_secret``: the supervisor's, so that all workers share session ticket keys."""
    auth = None
    protocol_class = HttpServerProtocol
    if config.auth is not None:
        from mgfast.auth.runtime import AuthRuntime  # grpc and argon2 load only when used
        auth = AuthRuntime(config.auth)
        auth.start()
        protocol_class = AddressedHttpServerProtocol  # the quarantine keys by client address
    app = GatewayApp(writer, stats, auth.guard if auth is not None else None)
    connections: set[HttpServerProtocol] = set()
    limits = config.http
    statuses = stats.statuses if stats is not None else None

    def http_protocol() -> HttpServerProtocol:
        return protocol_class(app, limits, connections, statuses)

    reloader: TlsReloader | None = None
    if config.tls is None:
        factory: Callable[[], asyncio.Protocol] = http_protocol
    else:
        reloader = TlsReloader(config.tls, ticket_secret)
        reloader.start()
        # a resumed session skipped certificate verification: check it against the store now
        # (by ticket with session_tickets; a TLS 1.2 client may also resume by session ID
        # on the worker that made the session, tickets or not)
        recheck = reloader.resumed_verdict if config.tls.peers is not None else None
        rejections = RejectionLog()
        handshake_timeout = config.tls.handshake_timeout

        def on_handshake(outcome: HandshakeOutcome, protocol: TlsServerProtocol) -> None:
            if outcome.ok:
                reloader.track(protocol)
            else:
                rejections(outcome)
            if stats is not None:
                stats.handshakes[outcome.reason] += 1
                stats.handshake_seconds.append(outcome.duration)
                if outcome.reason == "revoked":
                    stats.revoked_by_issuer[outcome.issuer] += 1

        def factory() -> asyncio.Protocol:
            return TlsServerProtocol(reloader.context, http_protocol(),
                                     handshake_timeout=handshake_timeout,
                                     on_handshake=on_handshake, limits=limits,
                                     recheck_resumed=recheck)

        if reload is not None:
            async def reload_on_request() -> None:
                while True:
                    await reload.wait()
                    reload.clear()
                    reloader.reload(force=True)
            reload_task = asyncio.get_running_loop().create_task(reload_on_request())

    loop = asyncio.get_running_loop()
    if sock is None:
        sock = listen_socket(config.ip, config.port)
    server = await loop.create_server(factory, sock=sock)
    trimmer = HeapTrimmer()
    trimmer.start()
    tune_for_streaming()  # the young generation: every 20k allocations, not 700
    exporter = None
    if stats is not None:
        exporter = loop.create_task(export.run(export.worker_tick(stats, reloader, auth), stop))
    if ready is not None:
        ready()
    try:
        await stop.wait()
    finally:
        trimmer.stop()
        if reloader is not None:
            reloader.stop()
            if reload is not None:
                reload_task.cancel()
        server.close()
        for connection in list(connections):
            connection.shutdown()
        deadline = loop.time() + DRAIN_TIMEOUT
        while connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(connections):
            connection.abort()
        if exporter is not None:
            await exporter
        if auth is not None:
            await auth.stop()
