"""The master process: start the egress and the workers, watch them, restart the dead, stop all.

Signals only enqueue (through the wakeup fd); one loop dispatches them:

- SIGTERM / SIGINT: drain. Workers get SIGTERM (close the listener, answer requests in flight,
  at most ``worker DRAIN_TIMEOUT``), then the egress (flush the out_stream). A second signal
  kills what is left, except a SIGTERM within ``REPEAT_WINDOW`` of the first: ``timeout(1)``
  sends SIGTERM to the process and then to its whole group, which must not skip the drain.
- During start-up, SIGTERM / SIGINT stop the start (the children started so far are stopped)
  and the exit status is 0: a stop, not a crash. Children are born with SIGINT blocked and
  then ignore it, so a Ctrl-C in the terminal (sent to the whole group) reaches only the
  supervisor.
- SIGHUP: forwarded to every worker, which reloads its TLS material.

A child that dies is restarted after a backoff that doubles per quick death (0.5 s up to 30 s)
while the others keep serving; workers reconnect to a restarted egress by themselves.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from typing import TYPE_CHECKING, Any

from mgfast.config.model import Listen, ServerConfig
from mgfast.metrics import multiprocess as metrics
from mgfast.server import processes
from mgfast.server.worker import DRAIN_TIMEOUT
from mgfast.tls.tickets import new_secret

if TYPE_CHECKING:
    from multiprocessing.connection import _ConnectionBase  # what wait() returns

    from prometheus_client.registry import Collector

log = logging.getLogger("mgfast.server")

START_TIMEOUT = 30.0  # seconds a child may take to report ready
EGRESS_STOP_TIMEOUT = 30.0  # after the workers: the writer's budgets to flush what is queued
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
REPEAT_WINDOW = 1.0  # seconds in which a repeated SIGTERM is the same request (timeout(1))
STABLE_AFTER = 30.0  # a child that lived this long restarts without backoff


class ChildStartError(Exception):
    """A child process could not start; the message is the child's own explanation."""


class StoppedDuringStartup(Exception):
    """SIGTERM or SIGINT arrived before every child was ready."""


@dataclass
class Child:
    name: str
    target: Callable[..., None]
    args: tuple[Any, ...]
    process: SpawnProcess | None = None
    started: float = 0.0  # clock time of the latest start
    failures: int = 0  # quick deaths in a row
    restart_at: float | None = None
    restarts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def died(self, now: float) -> float:
        """Count a death at ``now`` and schedule the restart: returns the backoff, which
        doubles per quick death (BACKOFF_FIRST up to BACKOFF_MAX) and starts over after a
        child lived STABLE_AFTER seconds."""
        lived = now - self.started
        self.failures = 0 if lived > STABLE_AFTER else self.failures + 1
        delay: float = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(0, self.failures - 1))
        self.restart_at = now + delay
        return delay


class Supervisor:
    def __init__(self, config: ServerConfig, workers: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.mp = multiprocessing.get_context("spawn")
        self.tmpdir = tempfile.mkdtemp(prefix="mgfast-")
        # A Savant consumer must see one ZeroMQ peer per server: a ROUTER reader drops a source
        # whose messages start to come from another peer, and a connection can move to another
        # worker at any time. So several workers always hand their messages to one egress
        # process, which owns the out_stream (bound or connecting); a single worker writes itself.
        needs_egress = workers > 1
        endpoint = f"ipc://{self.tmpdir}/egress" if needs_egress else None
        self.egress = (Child("egress", processes.egress_main, (config, endpoint))
                       if endpoint else None)
        # one secret for all workers, also those restarted: they derive the same TLS session
        # ticket keys from it (mgfast.tls.tickets), so a ticket resumes on any worker
        ticket_secret = new_secret()
        self.workers = [Child(f"worker-{i}", processes.worker_main,
                              (config, i, endpoint, ticket_secret)) for i in range(workers)]
        self.stopping = False
        self.stop_signal_at: float | None = None  # monotonic time of the first stop signal
        self.wake_r, self.wake_w = socket.socketpair()

    @property
    def children(self) -> list[Child]:
        return [self.egress, *self.workers] if self.egress else list(self.workers)

    def run(self, ready: Callable[[], None] | None = None) -> int:
        """Start everything, supervise until told to stop; return the exit status."""
        self._install_signals()
        try:
            for child in self.children:  # in parallel: workers need no ready egress to start
                self._start(child, wait_ready=False)
            for child in self.children:
                self._await_ready(child)
            if self.config.metrics is not None:
                self._serve_metrics(self.config.metrics)
            if ready is not None:
                ready()
            self._supervise()
            return 0
        except StoppedDuringStartup:
            log.info("stopping during start-up")
            return 0
        finally:
            self._stop_all()
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def _start(self, child: Child, *, wait_ready: bool = True) -> None:
        parent_end, child_end = self.mp.Pipe(duplex=False)
        child.extra["conn"] = parent_end
        process = child.process = self.mp.Process(
            target=child.target, args=(*child.args, child_end), name=f"mgfast {child.name}",
            daemon=False)
        # The signal mask survives exec: the child is born with SIGINT blocked (so a Ctrl-C
        # during its imports prints no traceback) until it ignores SIGINT for good. Blocking,
        # not ignoring, here keeps a SIGINT that arrives meanwhile pending for the supervisor.
        # multiprocessing starts its resource tracker on the first spawn and unblocks SIGINT
        # on its way out, which would undo the block below for that child: start it first.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        child_end.close()
        child.started = self.clock()
        log.info("started", extra={"child": child.name, "pid": process.pid})
        if wait_ready:
            self._await_ready(child)

    def _await_ready(self, child: Child) -> None:
        conn: Connection = child.extra["conn"]
        process = child.process
        assert process is not None  # _start() made it
        deadline = self.clock() + START_TIMEOUT
        while not conn.poll(0):
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise ChildStartError(f"{child.name} did not start within {START_TIMEOUT:.0f}s")
            if self.wake_r in wait([conn, self.wake_r], remaining):
                self._stop_requested()
        try:
            status, message = conn.recv()
        except EOFError:
            self._stop_requested()  # killed by the same SIGTERM as we were: not a crash
            process.join(5)
            raise ChildStartError(f"{child.name} exited during start-up "
                                  f"(status {process.exitcode})") from None
        if status != "ready":
            process.join(5)
            raise ChildStartError(message)

    def _supervise(self) -> None:
        while not self.stopping:
            now = self.clock()
            due = [c.restart_at for c in self.children if c.restart_at is not None]
            timeout = max(0.0, min(due) - now) if due else None
            sentinels: dict[_ConnectionBase[Any, Any] | socket.socket | int, Child] = {
                c.process.sentinel: c for c in self.children
                if c.process is not None and c.restart_at is None}
            ready = wait([*sentinels, self.wake_r], timeout)
            if self.wake_r in ready:
                self._dispatch_signals()
            for sentinel in ready:
                child = sentinels.get(sentinel)
                if child is not None and not self.stopping:
                    self._schedule_restart(child)
            now = self.clock()
            for child in self.children:
                if child.restart_at is not None and child.restart_at <= now and not self.stopping:
                    child.restart_at = None
                    child.restarts += 1
                    try:
                        log.info("restarting", extra={"child": child.name,
                                                       "restarts": child.restarts})
                        self._start(child)
                    except ChildStartError as exc:
                        log.error("restart failed", extra={"child": child.name, "error": str(exc)})
                        self._schedule_restart(child)

    def _serve_metrics(self, listen: Listen) -> None:
        from mgfast.metrics import catalog
        catalog.create_known_series()
        collectors: list[Collector] = []
        if self.config.tls is not None and self.config.tls.peers is not None:
            from mgfast.metrics.store import StoreCollector
            collectors.append(StoreCollector(self.config.tls.peers.lookup_hash_directory))
        metrics.serve(listen.ip, listen.port, *collectors)
        log.info("metrics", extra={"url": f"http://{listen.ip}:{listen.port}/metrics"})

    def _schedule_restart(self, child: Child) -> None:
        process = child.process
        assert process is not None  # its sentinel fired or its start failed
        process.join(1)
        if metrics.enabled() and process.pid is not None:
            from mgfast.metrics import catalog
            metrics.mark_dead(process.pid)
            catalog.RESTARTS.labels(child.name.partition("-")[0]).inc()
        delay = child.died(self.clock())
        log.error("child process died; restarting", extra={
            "child": child.name, "exitcode": process.exitcode, "after_seconds": delay})

    def _stop_all(self) -> None:
        self.stopping = True
        workers = [w.process for w in self.workers if w.process is not None]
        self._terminate(workers, DRAIN_TIMEOUT + 5)
        if self.egress is not None and self.egress.process is not None:
            self._terminate([self.egress.process], EGRESS_STOP_TIMEOUT)

    def _terminate(self, procs: list[SpawnProcess], timeout: float) -> None:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        deadline = self.clock() + timeout
        for proc in procs:
            while proc.is_alive() and self.clock() < deadline:
                if self._second_signal():
                    break
                proc.join(0.1)
            if proc.is_alive():
                log.warning("killing a child that did not stop in time", extra={
                    "child": proc.name})
                proc.kill()
                proc.join(5)

    # -- signals -------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: None)  # the wakeup fd carries the number

    def _read_signals(self) -> list[int]:
        try:
            return list(self.wake_r.recv(64))
        except BlockingIOError:
            return []

    def _dispatch_signals(self) -> None:
        for signum in self._read_signals():
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.stop_signal_at is None:
                    log.info("stopping", extra={"signal": signal.Signals(signum).name})
                    self.stop_signal_at = self.clock()
                self.stopping = True
            elif signum == signal.SIGHUP:
                log.info("reloading TLS material in every worker")
                for worker in self.workers:
                    process = worker.process
                    if process is not None and process.pid is not None and process.is_alive():
                        os.kill(process.pid, signal.SIGHUP)

    def _stop_requested(self) -> None:
        """During start-up: raise StoppedDuringStartup if a stop signal is pending."""
        if wait([self.wake_r], 0):
            self._dispatch_signals()
        if self.stopping:
            raise StoppedDuringStartup()

    def _second_signal(self) -> bool:
        """A stop signal after the first one, other than timeout(1)'s immediate repeat."""
        first = self.stop_signal_at
        repeat_ok = first is not None and self.clock() - first < REPEAT_WINDOW
        for signum in self._read_signals():
            if signum == signal.SIGINT or (signum == signal.SIGTERM and not repeat_ok):
                return True
        return False
