"""Requests whose head repeats, byte for byte, one the parser read, but for the body's length.

A pipelining client (mgfast's, any HTTP library) sends every request of a stream with the same
method, path and headers; only ``Content-Length`` changes. Once llhttp has read one such request
whole and alone in a read, a request at a request boundary that repeats its head exactly, with
another plain decimal length, means what that one meant with the new length: the protocol reads
it without a parser callback per header. Anything else (another head, a body too large for this
path, a request cut by the end of the read) goes to the parser as before.
"""

from __future__ import annotations

LENGTH_NAME = b"\r\ncontent-length: "  # as lower case; one space before the digits
MAX_DIGITS = 9  # lengths the fast path reads; longer ones (over the body limit anyway) parse


class RepeatedHead:
    """The learnt head, split around its length's digits."""

    __slots__ = ("prefix", "suffix")

    def __init__(self, prefix: bytes, suffix: bytes) -> None:
        self.prefix = prefix  # the head up to the length's first digit
        self.suffix = suffix  # after its last digit, to the blank line that ends the head

    @classmethod
    def learn(cls, data: bytes, body_length: int) -> RepeatedHead | None:
        """From ``data``, exactly one request the parser read whole (head, then a body of
        ``body_length`` bytes announced by Content-Length), the head to look for; None when
        its head is not one this path can repeat safely."""
        head = data[:len(data) - body_length]
        if not head.endswith(b"\r\n\r\n") or head.count(b"\r\n\r\n") != 1:
            return None
        lower = head.lower()
        if (lower.count(b"\r\ncontent-length:") != 1 or b"transfer-encoding" in lower
                or b"\r\nexpect:" in lower or b"\r\nupgrade:" in lower):
            return None
        digits = b"%d" % body_length
        name_at = lower.find(LENGTH_NAME)
        if name_at < 0:
            return None
        start = name_at + len(LENGTH_NAME)
        if not head.startswith(digits + b"\r\n", start):
            return None
        return cls(head[:start], head[start + len(digits):])

    def match(self, data: bytes, at: int, max_length: int) -> tuple[int, int] | None:
        """(body start, body end) of a request at ``at`` in ``data`` that repeats the head
        with a length of at most ``max_length``, whole in ``data``; else None."""
        if not data.startswith(self.prefix, at):
            return None
        start = at + len(self.prefix)
        end = data.find(b"\r", start, start + MAX_DIGITS + 1)
        if end <= start or not data.startswith(self.suffix, end):
            return None
        digits = data[start:end]
        if not digits.isdigit():
            return None
        length = int(digits)
        body = end + len(self.suffix)
        if length > max_length or body + length > len(data):
            return None
        return body, body + length
