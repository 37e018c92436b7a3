"""``mgfast client``: read the in_stream, forward to the server, stop cleanly on a signal.

One uvloop process (see ``forwarder`` for the data path and ``lane`` for order, retries,
duplicates and batching). Start-up: the TLS context (``TlsSetupError`` goes to the CLI), the
``GET /health`` listener on ``ip:port``, the in_stream; then one ``msg=listening`` line.

With ``metrics`` set, a plain-HTTP ``/metrics`` listener serves the counters of
``ClientStats`` (``mgfast.metrics.client_catalog``), exported once a second.

SIGTERM / SIGINT: stop reading from ZeroMQ (the in_stream is closed), deliver everything
already read for at most ``drain_timeout`` (mgfast key, default 10 s; retries of transient
failures go on during the drain), close, log the counters, exit 0. If messages could not be
delivered in time, a warning says how many (``undelivered``). A second signal ends the drain
at once. Start-up failures (the health or metrics port in use, the in_stream endpoint not
bindable or connectable) print one line naming the setting and exit with status 2.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from wsgiref.simple_server import WSGIServer

import uvloop

from mgfast.client.forwarder import Forwarder
from mgfast.client.health import HealthApp
from mgfast.client.stats import ClientStats
from mgfast.config.model import ClientConfig
from mgfast.gc_tuning import tune_for_streaming
from mgfast.http.server_protocol import HttpServerProtocol
from mgfast.memory import CLIENT_MAX_FREE, CLIENT_TRIM_PERIOD, HeapTrimmer
from mgfast.tls.context import client_context
from mgfast.zmq.sockets import EndpointError

log = logging.getLogger("mgfast.client")

EXIT_STARTUP = 2  # as mgfast.cli: a start-up failure


class StartupError(Exception):
    """The client cannot start; the message says which setting to fix."""


def run(config: ClientConfig) -> int:
    """Forward until a signal asks to stop; return the process exit status."""
    context = client_context(config.tls) if config.url.lower().startswith("https:") else None
    try:
        return uvloop.run(_main(config, context))
    except StartupError as exc:
        print(f"mgfast client: {exc}", file=sys.stderr)
        return EXIT_STARTUP


async def _main(config: ClientConfig, context: ssl.SSLContext | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    force = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            force.set()
        else:
            log.info("stopping", extra={"signal": signal.Signals(signum).name,
                                        "drain_timeout": f"{config.drain_timeout:g}s"})
            stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    stats = ClientStats()
    connections: set[HttpServerProtocol] = set()
    app = HealthApp()
    try:
        health = await loop.create_server(
            lambda: HttpServerProtocol(app, config.http, connections), config.ip, config.port,
            reuse_address=True)
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.ip}:{config.port}: "
                           f"{exc.strerror or exc}; check `ip` and `port` in {config.source}"
                           ) from None
    exporter: asyncio.Task[None] | None = None
    metrics_server: WSGIServer | None = None
    exporter_stop = asyncio.Event()
    if config.metrics is not None:
        from mgfast.metrics import export, multiprocess as metrics
        try:
            metrics_server = metrics.serve(config.metrics.ip, config.metrics.port)
        except OSError as exc:
            health.close()
            raise StartupError(f"cannot listen on {config.metrics.ip}:{config.metrics.port}: "
                               f"{exc.strerror or exc}; check `metrics` in {config.source}"
                               ) from None
        exporter = asyncio.create_task(export.run(export.client_tick(stats), exporter_stop))

    forwarder = Forwarder(config, context, stats)
    fps_task = (asyncio.create_task(forwarder.fps.run(exporter_stop))
                if forwarder.fps is not None else None)

    def on_failure(exc: BaseException) -> None:
        log.error("forwarding failed; stopping", exc_info=exc)
        stop.set()

    try:
        await forwarder.start(on_failure)
    except EndpointError as exc:
        health.close()
        if exporter is not None:
            exporter.cancel()
        if metrics_server is not None:
            metrics_server.shutdown()
        raise StartupError(f"{exc}; check `in_stream.url` in {config.source}") from None

    port = health.sockets[0].getsockname()[1]  # the kernel's choice when the config says 0
    log.info("listening", extra={
        "health": f"http://{config.ip}:{port}/health", "in_stream": str(config.in_stream.url),
        "server": config.url, "connections": config.connections, "batch": config.batch,
        "inflight_ops": config.in_stream.inflight_ops, "config": config.source,
        "metrics": (f"http://{config.metrics.ip}:{config.metrics.port}/metrics"
                    if config.metrics else "off")})
    # what a burst of frames left free goes back once the stream is quiet
    trimmer = HeapTrimmer(CLIENT_TRIM_PERIOD, max_free=CLIENT_MAX_FREE)
    trimmer.start()
    tune_for_streaming()  # the young generation: every 20k allocations, not 700
    await stop.wait()

    undelivered = await forwarder.stop(config.drain_timeout, force)
    trimmer.stop()
    health.close()
    for connection in list(connections):
        connection.shutdown()
    exporter_stop.set()
    if fps_task is not None:
        await fps_task
    if exporter is not None:
        await exporter  # a last export, so the final counts are scraped too
    if metrics_server is not None:
        metrics_server.shutdown()
    counters = {**stats.as_dict(), "dropped": forwarder.reader.dropped,
                "filtered": forwarder.reader.filtered, "stale": forwarder.reader.stale}
    if undelivered:
        log.warning("messages not delivered", extra={
            "undelivered": undelivered,
            "hint": "raise drain_timeout or make sure the server is reachable when stopping"})
    log.info("stopped", extra=counters)
    return 0 if forwarder.failure is None else 1
