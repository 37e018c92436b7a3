"""Where metric values live, and the ``/metrics`` listener that serves them.

With several processes (the server's supervisor, egress and workers), prometheus-client's
multiprocess mode keeps every process's values in files under one directory, which the
listener in the supervisor aggregates at scrape time; a restarted worker's counters stay in
its predecessor's files, so totals never go backwards. ``prepare`` must run before anything
imports ``mgfast.metrics.catalog`` (prometheus-client picks the storage at import).
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # prometheus_client is imported only once the storage is chosen
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.registry import Collector

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare() -> str:
    """Create a fresh values directory for this process tree; children inherit it via env."""
    directory = tempfile.mkdtemp(prefix="mgfast-metrics-")
    os.environ[ENV] = directory
    return directory


def enabled() -> bool:
    return ENV in os.environ


def mark_dead(pid: int) -> None:
    """Drop a dead child's live gauges (its counters stay)."""
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # untyped upstream


def serve(ip: str, port: int, *extra_collectors: Collector) -> WSGIServer:
    """Start the plain-HTTP ``/metrics`` listener in a thread; returns the server."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client import REGISTRY
    if enabled():
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    for collector in extra_collectors:
        registry.register(collector)
    server, _thread = start_http_server(port, addr=ip, registry=registry)
    return server
