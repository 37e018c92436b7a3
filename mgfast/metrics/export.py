"""Once a second, move each process's plain counts into its Prometheus metrics.

The hot paths only bump integers and append floats; this is where they become increments and
observations, so a request pays no metric-library call. A last export runs at shutdown.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Hashable

if TYPE_CHECKING:
    from mgfast.auth.runtime import AuthRuntime
    from mgfast.client.stats import ClientStats
    from mgfast.server.stats import WorkerStats
    from mgfast.tls.reloader import TlsReloader
    from mgfast.zmq.writer import OutStreamWriter

INTERVAL = 1.0  # seconds: the staleness a scrape may see


class Deltas:
    """Turns ever-growing counts into increments since the last export."""

    def __init__(self) -> None:
        self.last: dict[Hashable, float] = {}

    def __call__(self, key: Hashable, value: float) -> float:
        delta = value - self.last.get(key, 0)
        self.last[key] = value
        return delta


def observe_many(histogram: Any, values: list[float]) -> None:
    """``histogram.observe`` for many values at once: one increment per bucket instead of one
    per value (prometheus-client has no bulk call; its own observe does the same per value)."""
    if not values:
        return
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    if buckets is None or bounds is None:  # another prometheus-client layout: the slow way
        for value in values:
            histogram.observe(value)
        return
    histogram._sum.inc(sum(values))
    for index, count in Counter(bisect_left(bounds, value) for value in values).items():
        buckets[index].inc(count)


async def run(tick: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``tick`` every INTERVAL until ``stop``, then once more."""
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), INTERVAL)
            except asyncio.TimeoutError:
                pass
            tick()
    finally:
        tick()


def worker_tick(stats: WorkerStats, reloader: TlsReloader | None = None,
                auth: AuthRuntime | None = None) -> Callable[[], None]:
    from mgfast.metrics import catalog as m
    delta = Deltas()
    auth_tick = _auth_tick(auth, delta) if auth is not None else None

    def tick() -> None:
        for status, count in list(stats.statuses.items()):
            if d := delta(("status", status), count):
                m.HTTP_REQUESTS.labels(str(status)).inc(d)
        if d := delta("forwarded", stats.forwarded):
            m.MESSAGES_FORWARDED.inc(d)
        if d := delta("bytes", stats.forwarded_bytes):
            m.BYTES_FORWARDED.inc(d)
        latencies, stats.latencies = stats.latencies, []
        observe_many(m.REQUEST_SECONDS, latencies)
        for reason, count in list(stats.handshakes.items()):
            if d := delta(("handshake", reason), count):
                m.TLS_HANDSHAKES.labels("ok" if reason == "ok" else "rejected", reason).inc(d)
        durations, stats.handshake_seconds = stats.handshake_seconds, []
        observe_many(m.TLS_HANDSHAKE_SECONDS, durations)
        for issuer, count in list(stats.revoked_by_issuer.items()):
            if d := delta(("revoked", issuer), count):
                m.TLS_REVOKED.labels(issuer).inc(d)
        if reloader is not None:
            for reason, count in list(reloader.closed_by_reason.items()):
                if d := delta(("live", reason), count):
                    m.TLS_LIVE_CLOSED.labels(reason).inc(d)
        if auth_tick is not None:
            auth_tick()

    return tick


def _auth_tick(auth: AuthRuntime, delta: Deltas) -> Callable[[], None]:
    """Basic authentication's counts (an mgfast.auth.runtime.AuthRuntime)."""
    from mgfast.auth.guard import REASONS
    from mgfast.metrics import catalog as m
    for reason in REASONS:
        m.AUTH_CHECKS.labels(reason)
    for cache in auth.caches():
        m.AUTH_EVICTIONS.labels(cache.name)
    guard, store = auth.guard, auth.store
    synced = m.AUTH_STORE_SYNCED.labels(store.config.path)
    connected = m.AUTH_STORE_CONNECTED.labels(store.config.path)

    def tick() -> None:
        for reason, count in list(guard.outcomes.items()):
            if d := delta(("auth", reason), count):
                m.AUTH_CHECKS.labels(reason).inc(d)
        for cache in auth.caches():
            if d := delta(("evicted", cache.name), cache.evicted):
                m.AUTH_EVICTIONS.labels(cache.name).inc(d)
        if d := delta("resyncs", store.resyncs):
            m.AUTH_RESYNCS.inc(d)
        m.AUTH_QUARANTINED.set(guard.quarantine.count() if guard.quarantine is not None else 0)
        synced.set(1 if store.synced else 0)
        connected.set(0 if store.failing else 1)
        m.AUTH_USERS.set(len(store.raw))

    return tick


def egress_tick(writer: OutStreamWriter) -> Callable[[], None]:
    from mgfast.metrics import catalog as m
    delta = Deltas()

    def tick() -> None:
        for result, count in writer.results.items():
            if d := delta(result, count):  # NOT_ATTEMPTED is never counted: nothing was sent
                m.EGRESS_RESULTS.labels(result.value).inc(d)
        m.EGRESS_QUEUE.set(writer.queue_depth)

    return tick


def client_tick(stats: ClientStats) -> Callable[[], None]:
    from mgfast.metrics import client_catalog as m
    delta = Deltas()
    counters = ((m.CLIENT_READ, "read"), (m.CLIENT_FORWARDED, "forwarded"),
                (m.CLIENT_FORWARDED_BYTES, "forwarded_bytes"), (m.CLIENT_RETRIED, "retried"),
                (m.CLIENT_REJECTED, "rejected"))

    def tick() -> None:
        for metric, name in counters:
            if d := delta(name, getattr(stats, name)):
                metric.inc(d)
        m.CLIENT_IN_FLIGHT.set(stats.in_flight)

    return tick
