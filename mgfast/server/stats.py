"""A worker's counts, kept in plain attributes on the hot path and exported once a second."""

from __future__ import annotations

from collections import Counter


class WorkerStats:
    __slots__ = ("statuses", "forwarded", "forwarded_bytes", "latencies", "handshakes",
                 "handshake_seconds", "revoked_by_issuer")

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()  # HTTP responses by status code
        self.forwarded = 0  # messages written to the out_stream (200)
        self.forwarded_bytes = 0
        self.latencies: list[float] = []  # POST / seconds since the last export
        self.handshakes: Counter[str] = Counter()  # by reason ("ok" included)
        self.handshake_seconds: list[float] = []
        self.revoked_by_issuer: Counter[str] = Counter()
