"""A lane: one keep-alive connection to the server and the FIFO of messages that use it.

Every topic maps to exactly one lane (see ``forwarder``), and a lane has at most one request in
flight, so the messages of one source reach the server in the order they were read.

Delivery of the queue's head
----------------------------
Messages stay at the head of the queue until the server has answered for them; only then are
they removed (and their in-flight slot released). A failed request is therefore resent, with
the configured exponential backoff, before anything queued after it:

- connection errors, TLS handshake failures, response timeouts and any status other than 2xx,
  400 and 413 (5xx, 502 AckTimeout, 504 SendTimeout, 503, and also 401 / 404, which are fixed
  on the server side) are *transient*: retried forever, without reordering;
- 400 and 413 are *permanent* for that message: logged with its topic and size, counted in
  ``rejected``, and skipped, so a poison message never blocks the stream.

At-least-once: when a connection breaks (or no response comes) after a request was written,
the server may already have forwarded it; the resend can then deliver it twice. The same holds
after a 502 (upstream's AckTimeout: the out_stream sent the message but its acknowledgement did
not come) and a 500. Such resends are counted in ``duplicates_possible``. Nothing that was read is dropped short of a permanent
rejection or the shutdown drain timeout.

Batching (mgfast peers only)
----------------------------
With ``batch`` > 1 the lane asks ``GET /health`` once per new connection and uses batch framing
only if the answer carries ``x-mgfast-batch: 1``. A batch request carries the messages queued
at that moment (up to ``batch``, ``MAX_BATCH_ITEMS``, ``MAX_BATCH_DATA_PARTS`` and
``MAX_BATCH_BYTES``; nothing waits to fill a batch: messages accumulate while the previous
request is in flight). The answer lists one status per attempted item; items answered 2xx or
400/413 leave the queue, and the first transient status (after which the server attempts
nothing) is retried with the items after it. A lone queued message is sent with the upstream
API. A whole-batch 413 halves the lane's batch byte budget (until the next connection); a whole-batch 400/404/405/415 (a
server behind the same URL that does not speak batch after all) turns batching off for the
connection. With ``batch`` = 1 every request is exactly upstream's: one Media per POST with
``Content-Type: application/protobuf``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from itertools import islice

import orjson

from mgfast.client.stats import ClientStats
from mgfast.client.target import BATCH_HEADER, ServerTarget
from mgfast.config.model import RetryStrategy
from mgfast.http.client_connection import HttpClientError
from mgfast.fps_log import FpsLog
from mgfast.media import (MAX_BATCH_DATA_PARTS, MAX_BATCH_ITEMS, MAX_DATA_PARTS, Kind,
                          MediaError, encode_media, encode_media_batch, message_kind)

log = logging.getLogger("mgfast.client")

MAX_BATCH_BYTES = 4 * 1024 * 1024  # frame bytes per batch: past this, bigger batches gain nothing
RETRY_LOG_INTERVAL = 10.0  # seconds between "still retrying" warnings of one lane
REJECTED = (400, 413)  # statuses that reject a message for good
NOT_BATCH_CAPABLE = (400, 404, 405, 415)  # whole-batch answers of a server without batch framing
# Transient statuses after which the message may have reached the consumer anyway: 502 is
# upstream's AckTimeout (sent, unconfirmed), 500 an unknown failure.
MAYBE_DELIVERED = (500, 502)


def _is_video_frame(message) -> bool:
    try:
        return message_kind(message) == Kind.VIDEO_FRAME
    except MediaError:
        return False


class Pending:
    """One message read from the in_stream: its frames and their total size."""

    __slots__ = ("topic", "message", "extra", "size")

    def __init__(self, topic: bytes, frames: list) -> None:
        self.topic = topic
        self.message = frames[1]
        self.extra = frames[2:]
        self.size = sum(map(len, frames))


class Lane:
    """Delivers its queue in order over one connection; see the module docs."""

    def __init__(self, index: int, target: ServerTarget, *, batch: int, retry: RetryStrategy,
                 stats: ClientStats, release: Callable[[int], None],
                 fps: FpsLog | None = None) -> None:
        # configuration
        self.index = index
        self.target = target
        self.batch = min(batch, MAX_BATCH_ITEMS)
        self.retry = retry
        self.stats = stats
        self.fps = fps  # upstream ``statistics``, when configured
        self._release = release  # frees in-flight slots of messages that left the lane
        # state
        self.queue: deque[Pending] = deque()
        self.connection = target.connection()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._negotiated = -1  # the connection generation batching was negotiated on
        self._batch_ok = False
        self._batch_bytes = MAX_BATCH_BYTES
        # retry streak, for logging
        self._failures = 0
        self._warned_at = 0.0

    # -- interface -------------------------------------------------------------------------

    def submit(self, item: Pending) -> None:
        self.queue.append(item)
        if len(self.queue) == 1:
            self._wakeup.set()

    def finish(self) -> None:
        """Deliver what is queued, then make ``run`` return."""
        self._closing = True
        self._wakeup.set()

    async def run(self) -> None:
        try:
            while True:
                if not self.queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._deliver_head()
        finally:
            self.connection.close()

    # -- delivery --------------------------------------------------------------------------

    async def _deliver_head(self) -> None:
        """Deliver (or reject) at least the head of the queue, retrying as long as it takes."""
        delays = None
        while True:
            try:
                progressed, failure = await self._attempt()
            except HttpClientError as exc:
                progressed, failure = False, str(exc)
            if failure is None:
                if self._failures:
                    log.info("delivery recovered", extra={
                        "lane": self.index, "failed_attempts": self._failures})
                    self._failures = 0
                return
            if progressed or delays is None:
                delays = self.retry.delays()
            delay = next(delays)
            self._log_failure(failure, delay)
            await asyncio.sleep(delay)

    async def _attempt(self) -> tuple[bool, str | None]:
        """One request; returns (whether messages left the queue, failure or None)."""
        if self.batch > 1 and self._negotiated != self.connection.connects:
            await self._negotiate()
        items = self._take()
        if not items:
            return True, None  # the head was unencodable and rejected
        if len(items) == 1:
            return await self._post_one(items[0])
        return await self._post_batch(items)

    async def _negotiate(self) -> None:
        connection = self.connection
        await connection.connect()
        response = await connection.request(b"GET", self.target.health_path,
                                            self.target.health_headers)
        self._batch_ok = (response.status == 200
                          and response.headers.get(BATCH_HEADER, b"").strip() == b"1")
        self._negotiated = connection.connects
        self._batch_bytes = MAX_BATCH_BYTES
        log.debug("batch negotiation", extra={"lane": self.index, "batch": self._batch_ok})

    def _take(self) -> list[Pending]:
        """The head items for the next request (not removed from the queue)."""
        queue = self.queue
        while queue and len(queue[0].extra) > MAX_DATA_PARTS:
            self._reject(f"more than {MAX_DATA_PARTS} extra parts", status=0)
        if not queue:
            return []
        if not self._batch_ok or len(queue) == 1:
            return [queue[0]]
        items: list[Pending] = []
        parts = size = 0
        for item in islice(queue, self.batch):
            n = len(item.extra)
            if items and (parts + n > MAX_BATCH_DATA_PARTS or size + item.size > self._batch_bytes
                          or n > MAX_DATA_PARTS):
                break
            items.append(item)
            parts += n
            size += item.size
        return items

    async def _post_one(self, item: Pending) -> tuple[bool, str | None]:
        try:
            body = encode_media(item.topic, item.message, item.extra)
        except MediaError as exc:
            self._reject(str(exc), status=0)
            return True, None
        try:
            response = await self.connection.request(b"POST", self.target.post_path,
                                                     self.target.media_headers, body)
        except HttpClientError as exc:
            self._count_resend(1, exc.sent)
            raise
        self.stats.requests += 1
        status = response.status
        if 200 <= status < 300:
            self._delivered(1)
            return True, None
        if status in REJECTED:
            self._reject(_reason(response.body), status)
            return True, None
        self._count_resend(1, status in MAYBE_DELIVERED)
        return False, f"HTTP {status}: {_reason(response.body)}"

    async def _post_batch(self, items: list[Pending]) -> tuple[bool, str | None]:
        n = len(items)
        body = encode_media_batch([(i.topic, i.message, i.extra) for i in items])
        try:
            response = await self.connection.request(b"POST", self.target.post_path,
                                                     self.target.batch_headers, body)
        except HttpClientError as exc:
            self._count_resend(n, exc.sent)
            raise
        self.stats.requests += 1
        self.stats.batch_requests += 1
        status = response.status
        if status == 200:
            return self._batch_results(items, response.body)
        if status == 413:
            # halve the budget (down to batches of one, which go out as single Media, where a
            # 413 rejects the message); restored on the next connection
            self._batch_bytes = min(self._batch_bytes, sum(i.size for i in items)) // 2
            log.warning("server refused a batch as too large; sending smaller batches",
                        extra={"lane": self.index, "batch_bytes": self._batch_bytes})
            return True, None  # retry now, smaller
        if status in NOT_BATCH_CAPABLE:
            self._batch_ok = False
            log.warning("server refused batch framing; sending one message per request",
                        extra={"lane": self.index, "status": status,
                               "reason": _reason(response.body)})
            return True, None  # retry now, one by one
        self._count_resend(n, status in MAYBE_DELIVERED)
        return False, f"HTTP {status}: {_reason(response.body)}"

    def _batch_results(self, items: list[Pending], body: bytes) -> tuple[bool, str | None]:
        n = len(items)
        try:
            results = orjson.loads(body)["results"]
            valid = (isinstance(results, list) and 0 < len(results) <= n
                     and all(type(s) is int for s in results))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            valid = False
        if not valid:
            # a 200 we cannot read: whether the items were written is unknown
            self._batch_ok = False
            self._count_resend(n, True)
            return False, f"unreadable batch answer {_reason(body)!r}; one per request now"
        done = accepted = 0  # accepted: a run of 2xx items not yet taken off the queue
        for status in results:
            if 200 <= status < 300:
                accepted += 1
            else:
                if accepted:
                    self._delivered(accepted)
                    accepted = 0
                if status in REJECTED:
                    self._reject("rejected in a batch", status)
                else:
                    self._count_resend(n - done, status in MAYBE_DELIVERED)
                    return done > 0, f"HTTP {status} for batch item {done + 1} of {n}"
            done += 1
        if accepted:
            self._delivered(accepted)
        return True, None  # everything attempted was settled; an unattempted tail goes next

    # -- bookkeeping -----------------------------------------------------------------------

    def _delivered(self, count: int) -> None:
        stats = self.stats
        popleft = self.queue.popleft
        size = frames = 0
        if self.fps is None:
            for _ in range(count):
                size += popleft().size
        else:
            for _ in range(count):
                item = popleft()
                size += item.size
                frames += _is_video_frame(item.message)
            self.fps.add(frames, count)
        stats.forwarded_bytes += size
        stats.forwarded += count
        self._release(count)

    def _reject(self, reason: str, status: int) -> None:
        item = self.queue.popleft()
        stats = self.stats
        stats.rejected += 1
        self._release(1)
        log.warning("message rejected; skipped", extra={
            "topic": item.topic.decode("utf-8", "backslashreplace"), "size": item.size,
            "status": status or "not sent", "reason": reason})

    def _count_resend(self, count: int, sent: bool) -> None:
        self.stats.retried += count
        if sent:
            self.stats.duplicates_possible += count

    def _log_failure(self, failure: str, delay: float) -> None:
        self._failures += 1
        now = asyncio.get_running_loop().time()
        if self._failures == 1 or now - self._warned_at >= RETRY_LOG_INTERVAL:
            self._warned_at = now
            log.warning("delivery failed; retrying", extra={
                "lane": self.index, "error": failure, "failed_attempts": self._failures,
                "queued": len(self.queue), "retry_in": f"{delay:g}s"})


def _reason(body: bytes) -> str:
    return body[:200].decode("utf-8", "replace").strip()
