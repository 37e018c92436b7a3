"""Entry points of the child processes the supervisor spawns: the egress and the workers.

Each child reports on its pipe once: ``("ready", None)`` or ``("error", message)``, so a start-up
failure (an out_stream that cannot bind, say) reaches the operator as one line and exit status 2.
Children ignore SIGINT (a terminal sends it to the whole group; the supervisor decides), stop
gracefully on SIGTERM, and workers reload TLS material on SIGHUP.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from multiprocessing.connection import Connection

import uvloop

from mgfast import logs
from mgfast.gc_tuning import tune_for_streaming
from mgfast.memory import HeapTrimmer, keep_freed_memory
from mgfast.config.model import ServerConfig
from mgfast.metrics.multiprocess import enabled as metrics_enabled

PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>

# How long a worker waits for the egress to answer a batch before answering 503: the writer's
# own worst case (send and ack budgets) plus a margin for the hop.
REPLY_MARGIN = 5.0


def _child_setup() -> None:
    _die_with_parent()
    keep_freed_memory()
    logs.setup()


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the supervisor dies, even by SIGKILL, so no child outlives it
    holding the port or the out_stream."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def egress_main(config: ServerConfig, endpoint: str, conn: Connection) -> None:
    _child_setup()
    uvloop.run(_egress(config, endpoint, conn))


async def _egress(config: ServerConfig, endpoint: str, conn: Connection) -> None:
    from mgfast.fps_log import FpsLog
    from mgfast.server.egress import Egress

    stop = _stop_event(reload=None)
    fps = FpsLog(config.statistics) if config.statistics is not None else None
    egress = Egress(config.out_stream, endpoint, fps)
    try:
        await egress.start()
    except Exception as exc:  # reported to the supervisor, which exits with status 2
        conn.send(("error", str(exc)))
        return
    conn.send(("ready", None))
    exporter = None
    if metrics_enabled():
        from mgfast.metrics import export
        exporter = asyncio.ensure_future(export.run(export.egress_tick(egress.writer), stop))
    fps_task = asyncio.ensure_future(fps.run(stop)) if fps is not None else None
    trimmer = HeapTrimmer()  # the egress holds every worker's frames for a moment
    trimmer.start()
    tune_for_streaming()
    try:
        await egress.run(stop)
    finally:
        trimmer.stop()
    if fps_task is not None:
        await fps_task
    if exporter is not None:
        await exporter


def worker_main(config: ServerConfig, index: int, endpoint: str | None, ticket_secret: bytes,
                conn: Connection) -> None:
    """A worker; with ``endpoint`` None it is the only one and owns the out_stream itself.
    ``ticket_secret`` is the same for all workers: their TLS session ticket keys derive from it."""
    _child_setup()
    uvloop.run(_worker(config, index, endpoint, ticket_secret, conn))


async def _worker(config: ServerConfig, index: int, endpoint: str | None, ticket_secret: bytes,
                  conn: Connection) -> None:
    from mgfast.fps_log import FpsLog
    from mgfast.server.egress_client import EgressClient
    from mgfast.server.inline_writer import InlineWriter
    from mgfast.server.listen import listen_socket
    from mgfast.server.stats import WorkerStats
    from mgfast.server.worker import serve

    reload = asyncio.Event()
    stop = _stop_event(reload=reload)
    out = config.out_stream
    budget = (out.send_timeout * (out.send_retries + 1)
              + out.receive_timeout * (out.receive_retries + 1) + REPLY_MARGIN)
    inline: InlineWriter | None = None  # this worker is also the egress
    writer: InlineWriter | EgressClient
    if endpoint is None:
        fps = FpsLog(config.statistics) if config.statistics is not None else None
        writer = inline = InlineWriter(out, fps)
    else:
        writer = EgressClient(endpoint, max_pending=out.inflight_ops, reply_timeout=budget,
                              confirm=out.url.socket_type != "pub")
    try:
        await writer.start()
        sock = listen_socket(config.ip, config.port)
    except Exception as exc:
        conn.send(("error", f"worker {index}: {exc}"))
        return
    stats = WorkerStats() if metrics_enabled() else None
    side_tasks: list[asyncio.Future[None]] = []
    if inline is not None:  # this worker is also the egress: its statistics and metrics
        if fps is not None:
            side_tasks.append(asyncio.ensure_future(fps.run(stop)))
        if stats is not None:
            from mgfast.metrics import export
            side_tasks.append(asyncio.ensure_future(
                export.run(export.egress_tick(inline.writer), stop)))
    try:
        await serve(config, stop, writer, sock=sock, reload=reload, stats=stats,
                    ready=lambda: conn.send(("ready", None)), ticket_secret=ticket_secret)
    finally:
        await writer.close()
        await asyncio.gather(*side_tasks)


def _stop_event(reload: asyncio.Event | None) -> asyncio.Event:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the supervisor
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload.set)
    else:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return stop
