"""``mgfast server``: check the config, then run the supervisor with its egress and workers."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import tempfile

from mgfast.config.model import ServerConfig
from mgfast.metrics import multiprocess as metrics
from mgfast.server.supervisor import ChildStartError, Supervisor
from mgfast.server.worker import StartupError, check_port_free
from mgfast.tls.context import server_context
from mgfast.tls.startup_checks import check_peers

log = logging.getLogger("mgfast.server")


def _reserve_port(config: ServerConfig) -> tuple[socket.socket, ServerConfig]:
    """``"port": 0``: let the kernel pick a port once, hold it (bound, not listening, with
    SO_REUSEPORT so the workers can bind it too) and give every worker that port."""
    family = socket.AF_INET6 if ":" in config.ip else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((config.ip, 0))
    except OSError as exc:
        holder.close()
        raise StartupError(f"{config.source}: ip: cannot listen on {config.ip}: {exc.strerror}. "
                           f"Fix: check `ip` in {config.source}") from None
    return holder, dataclasses.replace(config, port=holder.getsockname()[1])


def default_workers(cpus: int | None = None) -> int:
    """One process per usable CPU, the egress included: ``cpus - 1`` workers, at least 1.

    With one worker there is no egress and no hop. With N workers the egress is one more busy
    process, so N workers on N CPUs would leave the egress no CPU of its own; on a 2-CPU host
    2 workers served fewer requests than 1 at twice the CPU per request (README, "The
    server's processes")."""
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))  # what this process may run on (taskset, cpuset)
        except AttributeError:  # not Linux
            cpus = os.cpu_count() or 1
    return max(1, cpus - 1)


def run(config: ServerConfig, workers: int | None = None) -> int:
    """Serve until a signal asks to stop; return the process exit status."""
    if config.tls is not None:
        server_context(config.tls)  # fail now, naming the file, rather than in every worker
        if config.tls.peers is not None:
            check_peers(config.tls.peers)
    if config.auth is not None:
        from mgfast.auth.etcd import check_tls
        try:
            check_tls(config.auth.etcd)
        except ValueError as exc:
            raise StartupError(f"{config.source}: {exc}") from None
    reserved = None
    if config.port == 0:  # upstream binds port 0 too; every worker must get the same one
        reserved, config = _reserve_port(config)
    else:
        check_port_free(config.ip, config.port, config.source)
    if config.metrics is not None:
        try:
            check_port_free(config.metrics.ip, config.metrics.port, config.source,
                            "metrics.port")
        except StartupError:
            if reserved is not None:
                reserved.close()
            raise
        values_dir = metrics.prepare()  # before any process imports the metric catalog
    count = workers or config.workers or default_workers()
    peers_dir = None
    if config.auth is not None and config.auth.quarantine is not None and count > 1:
        # the workers share failed attempts through sockets here (mgfast.auth.peers)
        peers_dir = tempfile.mkdtemp(prefix="mgfast-auth-")
        os.environ["MGFAST_AUTH_PEERS_DIR"] = peers_dir
    scheme = "https" if config.tls else "http"

    def ready() -> None:
        log.info("listening", extra={
            "url": f"{scheme}://{config.ip}:{config.port}", "workers": count,
            "out_stream": str(config.out_stream.url), "config": config.source,
            "client_certificates": "required" if config.tls and config.tls.peers else "no",
            "session_tickets": ("on" if config.tls and config.tls.session_tickets.enabled
                                else "off"),
            "basic_auth": ("etcd " + ",".join(config.auth.etcd.endpoints)) if config.auth
            else "no"})

    try:
        status = Supervisor(config, count).run(ready)
    except ChildStartError as exc:
        raise StartupError(str(exc)) from None
    finally:
        if reserved is not None:
            reserved.close()
        if config.metrics is not None:
            shutil.rmtree(values_dir, ignore_errors=True)
        if peers_dir is not None:
            os.environ.pop("MGFAST_AUTH_PEERS_DIR", None)
            shutil.rmtree(peers_dir, ignore_errors=True)
    log.info("stopped")
    return status
