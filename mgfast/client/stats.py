"""The client's counters: plain attributes on one object, read by logs and (later) metrics."""

from __future__ import annotations


class ClientStats:
    """Counts since start. A message is *in flight* from the moment it is read from the
    in_stream until the server accepted it or it was rejected; ``read = forwarded + rejected +
    in_flight`` holds at all times."""

    __slots__ = ("read", "read_bytes", "forwarded", "forwarded_bytes", "rejected", "retried",
                 "duplicates_possible", "in_flight", "requests", "batch_requests", "undelivered")

    def __init__(self) -> None:
        self.read = 0  # messages taken from the in_stream
        self.read_bytes = 0  # their frame bytes (topic, message and extra parts)
        self.forwarded = 0  # messages the server accepted (2xx)
        self.forwarded_bytes = 0
        self.rejected = 0  # messages skipped as permanently invalid (400, 413, unencodable)
        self.retried = 0  # message sends repeated after a transient failure
        self.duplicates_possible = 0  # of those, resends of a message the server may have got
        self.in_flight = 0  # read, not yet forwarded or rejected
        self.requests = 0  # POSTs answered by the server (any status)
        self.batch_requests = 0  # of those, mgfast batch POSTs
        self.undelivered = 0  # set on shutdown: read but neither forwarded nor rejected

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}
