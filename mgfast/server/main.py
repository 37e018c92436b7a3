"""``mgfast server``: load the config, start serving, stop cleanly on SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop

from mgfast.config.model import ServerConfig
from mgfast.server.worker import StartupError, check_port_free, serve
from mgfast.tls.context import server_context
from mgfast.tls.startup_checks import check_peers

log = logging.getLogger("mgfast.server")


def run(config: ServerConfig) -> int:
    """Serve until a signal asks to stop; return the process exit status."""
    if config.auth is not None:
        # Serving without the authentication the operator configured would be worse than not
        # serving at all.
        raise StartupError(
            f"{config.source}: auth: etcd basic authentication is not implemented in mgfast "
            f"yet. Fix: remove `auth` (and protect the server with client certificates, "
            f"tls.peers) or run the upstream server for this deployment")
    if config.tls is not None:
        server_context(config.tls)  # fail now, naming the file, rather than in a worker
        if config.tls.peers is not None:
            check_peers(config.tls.peers)
    check_port_free(config.ip, config.port)
    return uvloop.run(_main(config))


async def _main(config: ServerConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    scheme = "https" if config.tls else "http"

    def ready() -> None:
        log.info("listening", extra={
            "url": f"{scheme}://{config.ip}:{config.port}", "out_stream": str(config.out_stream.url),
            "config": config.source,
            "client_certificates": "required" if config.tls and config.tls.peers else "no"})

    await serve(config, stop, reload=reload, ready=ready)
    log.info("stopped")
    return 0
