"""Log each rejected handshake once, with who it was, without letting a flood flood the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mgfast.tls.outcome import HandshakeOutcome

log = logging.getLogger("mgfast.tls")

# One line per (reason, client IP, certificate serial) per window; the rest are counted.
WINDOW = 60.0
MAX_KEYS = 10_000  # bounds the memory a scan from many addresses can take


class RejectionLog:
    def __init__(self, window: float = WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self.last: dict[tuple[str, str, str], tuple[float, int]] = {}

    def __call__(self, outcome: HandshakeOutcome) -> None:
        if outcome.ok:
            return
        key = (outcome.reason, outcome.peer.rpartition(":")[0], outcome.serial)
        now = self.clock()
        seen = self.last.get(key)
        if seen is not None and now - seen[0] < self.window:
            self.last[key] = (seen[0], seen[1] + 1)
            return
        if len(self.last) >= MAX_KEYS:
            self.last.clear()
        suppressed = seen[1] if seen is not None else 0
        self.last[key] = (now, 0)
        log.warning("TLS handshake rejected", extra={
            "reason": outcome.reason, "peer": outcome.peer, "subject": outcome.subject,
            "issuer": outcome.issuer, "serial": outcome.serial, "detail": outcome.detail,
            "similar_since_last": suppressed})
