"""A lane: one keep-alive connection to the server and the FIFO of messages that use it.

    lane = Lane(index, target, batch=1, pipeline=16, retry=strategy, stats=stats,
                release=free_slots)
    task = asyncio.create_task(lane.run())    # connects, negotiates, backs off
    lane.submit_many([Message(topic, frames)])  # in read order
    lane.finish()                             # deliver what is held, then run() returns

Every topic maps to one lane (``forwarder``). A lane keeps its messages in order with up to
``pipeline`` requests in flight and calls ``release(n)`` when n messages left it (delivered or
rejected). ``held`` counts what it holds. Pipelining, which failures are transient or
permanent, at-least-once delivery, order against upstream's server and batch negotiation:
docs/design.md, "Client process model".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice

import orjson

from mgfast._messages import Message, settle, take_batch
from mgfast.batching import BATCH_HEADER, all_accepted
from mgfast.client.stats import ClientStats
from mgfast.client.target import ServerTarget
from mgfast.config.model import RetryStrategy
from mgfast.http.client_connection import (ClientResponse, ClosedByServer, ConnectionLost,
                                           HttpClientError)
from mgfast.fps_log import FpsLog
from mgfast.media import (MAX_BATCH_DATA_PARTS, MAX_BATCH_ITEMS, MAX_DATA_PARTS,
                          encode_media, encode_media_batch,
                          encode_media_batch_pieces, encode_media_pieces)

Buffer = bytes | bytearray | memoryview

log = logging.getLogger("mgfast.client")

MAX_BATCH_BYTES = 4 * 1024 * 1024  # frame bytes per batch: past this, bigger batches gain nothing
SMALL_WRITE = 64 * 1024  # body bytes of one write below which its requests are joined
# Body bytes after which a fill writes no more requests (it goes on once the transport drains):
# sixteen pipelined 4 MiB batches written at once made TLS encrypt 64 MiB into one buffer.
FILL_BYTES = 4 * 1024 * 1024
LARGE_MESSAGE = 32 * 1024  # frame bytes from which a message's frames are written uncopied
RETRY_LOG_INTERVAL = 10.0  # seconds between "still retrying" warnings of one lane
REJECTED = (400, 413)  # statuses that reject a message for good
# an mgfast server's 401 for routing labels the user may not send (mgfast.auth.guard)
DENIED_HEADER, DENIED_LABELS = b"x-mgfast-denied", b"routing-labels"
NOT_BATCH_CAPABLE = (400, 404, 405, 415)  # whole-batch answers of a server without batch framing
# Transient statuses after which the message may have reached the consumer anyway: 502 is
# upstream's AckTimeout (sent, unconfirmed), 500 an unknown failure.
MAYBE_DELIVERED = (500, 502)


class Lane:
    """Delivers its FIFO in order over one pipelining connection; see the module docs."""

    def __init__(self, index: int, target: ServerTarget, *, batch: int, pipeline: int,
                 retry: RetryStrategy, stats: ClientStats, release: Callable[[int], None],
                 fps: FpsLog | None = None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        # configuration
        self.index = index
        self.clock = clock  # for the retry log's interval
        self.target = target
        self.batch = min(batch, MAX_BATCH_ITEMS)
        self.pipeline = pipeline
        self.retry = retry
        self.stats = stats
        self.fps = fps  # upstream ``statistics``, when configured
        self._release = release  # frees in-flight slots of messages that left the lane
        self._post_head = b"POST %s HTTP/1.1\r\n%scontent-length: " % (
            target.post_path, target.media_headers)
        self._batch_head = b"POST %s HTTP/1.1\r\n%scontent-length: " % (
            target.post_path, target.batch_headers)
        # the FIFO: written and unanswered (oldest first), then not yet written
        self.sent: deque[Message] = deque()
        self.unsent: deque[Message] = deque()
        self.connection = target.connection()
        self.connection.on_response = self._on_response
        self.connection.on_failure = self._on_failure
        self.connection.on_writable = self._fill_later
        # state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None  # the coroutine sleeps on it
        self._ready = False  # connected (and negotiated): callbacks may write
        self._fill_soon = False  # a _fill is scheduled for this loop iteration
        self._closing = False
        self._generation = -1  # the connection the state below belongs to
        self._depth = 1  # requests allowed in flight now (grows to ``pipeline``)
        self._batch_ok = False
        self._batch_refused = False  # the server refused batch framing: never again
        self._batch_bytes = MAX_BATCH_BYTES
        # failures
        self._failure: str | None = None  # what failed; the coroutine backs off, then resends
        self._delays: Iterator[float] | None = None
        self._progress = False  # something was settled since the last backoff
        self._failures = 0  # retry streak, for logging
        self._warned_at = 0.0

    # -- interface -------------------------------------------------------------------------

    @property
    def held(self) -> int:
        """Messages the lane holds: read, neither delivered nor rejected."""
        return len(self.sent) + len(self.unsent)

    def submit_many(self, items: list[Message]) -> None:
        """Messages read in this order, for this lane."""
        unsent = self.unsent
        for item in items:
            if len(item.extra) > MAX_DATA_PARTS:
                self._rejected(item, f"more than {MAX_DATA_PARTS} extra parts", status=0)
            else:
                unsent.append(item)
        if not self._ready:
            self._wake()
        else:
            self._fill_later()

    def finish(self) -> None:
        """Deliver what is held, then make ``run`` return."""
        self._closing = True
        self._wake()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                if self._failure is not None:
                    await self._back_off()
                elif not self.sent and not self.unsent:
                    if self._closing:
                        return
                    await self._sleep()
                elif not self._ready:
                    try:
                        await self._open()
                    except HttpClientError as exc:
                        self._fail(str(exc))
                else:
                    self._fill()
                    await self._sleep()
        finally:
            self._ready = False
            self.connection.close()

    # -- the coroutine's part: connect, negotiate, back off --------------------------------

    async def _sleep(self) -> None:
        assert self._loop is not None  # set by run(), the only caller
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _open(self) -> None:
        connection = self.connection
        await connection.connect()
        if connection.connects != self._generation:
            self._generation = connection.connects
            self._depth = 1
            if self.batch > 1 and not self._batch_refused:
                response = await connection.request(b"GET", self.target.health_path,
                                                    self.target.health_headers)
                self._batch_ok = (response.status == 200 and response.headers.get(
                    BATCH_HEADER, b"").strip() == b"1")
                log.debug("batch negotiation", extra={"lane": self.index,
                                                      "batch": self._batch_ok})
                if not connection.connected:  # closed after answering: back off, not spin
                    raise ConnectionLost("the server closed the connection after GET /health")
        self._ready = connection.connected

    async def _back_off(self) -> None:
        delays, failure = self._delays, self._failure
        if self._progress or delays is None:
            delays = self._delays = self.retry.delays()
            self._progress = False
        delay = next(delays)
        assert failure is not None  # run() backs off only after a failure
        self._log_failure(failure, delay)
        self._failure = None
        await asyncio.sleep(delay)

    # -- writing ---------------------------------------------------------------------------

    def _fill_later(self) -> None:
        """One _fill per loop iteration, however many messages or answers came in it."""
        if not self._fill_soon:
            self._fill_soon = True
            assert self._loop is not None  # ready only while run() runs
            self._loop.call_soon(self._fill)

    def _fill(self) -> None:
        """Write as many requests as the pipeline has room for, in one write."""
        self._fill_soon = False
        connection = self.connection
        if not self._ready or self._failure is not None:
            return
        if not connection.in_flight and not connection.reusable():
            self._ready = False  # closed by the server, or idle too long to trust
            self._wake()
            return
        room = self._depth - connection.in_flight
        unsent = self.unsent
        if room <= 0 or not unsent or not connection.writable:
            return  # a response, or the transport's resume_writing, fills again
        entries: list[int] = []
        data: list[Buffer] = []
        size = 0
        sent = self.sent
        batching = self._batch_ok
        while room > 0 and unsent and size < FILL_BYTES:
            if batching and len(unsent) > 1:
                items, frame_bytes = take_batch(unsent, self.batch, MAX_BATCH_DATA_PARTS,
                                                self._batch_bytes)
                sent.extend(items)
                entries.append(len(items))
                if frame_bytes < LARGE_MESSAGE:
                    body = encode_media_batch(items)
                    data += (b"%s%d\r\n\r\n" % (self._batch_head, len(body)), body)
                    size += len(body)
                else:  # the frames go to the write as they are, uncopied
                    length, pieces = encode_media_batch_pieces(items)
                    data.append(b"%s%d\r\n\r\n" % (self._batch_head, length))
                    data += pieces
                    size += length
            else:
                item = unsent.popleft()
                sent.append(item)
                entries.append(1)
                if item.size < LARGE_MESSAGE:
                    body = encode_media(item.topic, item.message, item.extra)
                    data += (b"%s%d\r\n\r\n" % (self._post_head, len(body)), body)
                    size += len(body)
                else:  # the frames go to the write as they are, uncopied
                    length, pieces = encode_media_pieces(item.topic, item.message, item.extra)
                    data.append(b"%s%d\r\n\r\n" % (self._post_head, length))
                    data += pieces
                    size += length
            room -= 1
        connection.send(entries, [b"".join(data)] if size < SMALL_WRITE else _coalesce(data))
        if room > 0 and unsent:
            self._fill_later()  # stopped at FILL_BYTES: the rest once this is under way

    # -- responses -------------------------------------------------------------------------

    def _on_response(self, count: int, response: ClientResponse) -> None:
        """The answer to the oldest request in flight, which carried ``count`` messages."""
        stats = self.stats
        stats.requests += 1
        status = response.status
        if count == 1:
            if 200 <= status < 300:
                self._delivered(1)
            elif status in REJECTED or (
                    status == 401 and response.headers.get(DENIED_HEADER) == DENIED_LABELS):
                self._rejected(self.sent.popleft(), _reason(response.body), status)
            else:
                self._fail(f"HTTP {status}: {_reason(response.body)}", head=1,
                           maybe_delivered=status in MAYBE_DELIVERED)
                return
        else:
            stats.batch_requests += 1
            if status == 200:
                if response.body == all_accepted(count):
                    self._delivered(count)
                elif not self._batch_results(count, response.body):
                    return
            elif status == 413:
                # halve the budget (down to batches of one, which go out as single Media,
                # where a 413 rejects the message), then resend at once
                self._batch_bytes = min(self._batch_bytes,
                                        sum(i.size for i in islice(self.sent, count))) // 2
                log.warning("server refused a batch as too large; sending smaller batches",
                            extra={"lane": self.index, "batch_bytes": self._batch_bytes})
                self._restart()
                return
            elif status in NOT_BATCH_CAPABLE:
                self._batch_ok = False
                self._batch_refused = True
                log.warning("server refused batch framing; sending one message per request",
                            extra={"lane": self.index, "status": status,
                                   "reason": _reason(response.body)})
                self._restart()
                return
            else:
                self._fail(f"HTTP {status}: {_reason(response.body)}", head=count,
                           maybe_delivered=status in MAYBE_DELIVERED)
                return
        if self._failures:
            log.info("delivery recovered", extra={"lane": self.index,
                                                  "failed_attempts": self._failures})
            self._failures = 0
        if self._depth < self.pipeline:
            self._depth = min(self.pipeline, self._depth * 2)
        if self.unsent:
            self._fill_later()

    def _batch_results(self, count: int, body: bytes) -> bool:
        """Settle a batch from its results; False when that failed the lane."""
        try:
            results = orjson.loads(body)["results"]
            valid = (isinstance(results, list) and 0 < len(results) <= count
                     and all(type(s) is int for s in results))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            valid = False
        if not valid:
            # a 200 we cannot read: whether the items were written is unknown
            self._batch_ok = False
            self._batch_refused = True
            self._fail(f"unreadable batch answer {_reason(body)!r}; one per request now",
                       maybe_delivered=True)
            return False
        accepted = 0  # a run of 2xx items not yet taken off the FIFO
        for done, status in enumerate(results):
            if 200 <= status < 300:
                accepted += 1
                continue
            if accepted:
                self._delivered(accepted)
                accepted = 0
            if status in REJECTED or status == 401:  # 401 per item: routing labels denied
                self._rejected(self.sent.popleft(), "rejected in a batch", status)
            else:
                self._fail(f"HTTP {status} for batch item {done + 1} of {count}",
                           head=count - done, maybe_delivered=status in MAYBE_DELIVERED)
                return False
        if accepted:
            self._delivered(accepted)
        if len(results) < count:
            # the server stopped without saying why: resend the tail, and what follows it
            self._fail(f"batch answered for {len(results)} of {count} items",
                       head=count - len(results))
            return False
        return True

    def _on_failure(self, entries: list[object], error: HttpClientError) -> None:
        """The connection failed with ``entries`` (all of ``sent``) unanswered."""
        if isinstance(error, ClosedByServer):
            self._restart()  # not read by the server: resend now, on a new connection
        else:
            self._fail(str(error), head=len(self.sent), maybe_delivered=error.sent)

    # -- failure and bookkeeping -----------------------------------------------------------

    def _fail(self, reason: str, *, head: int = 0, maybe_delivered: bool = False) -> None:
        """A transient failure: back off, then resend everything unanswered, in order.

        ``head``: messages of the failed request itself, which reached the consumer only when
        ``maybe_delivered``; anything written after them may have been forwarded."""
        count = len(self.sent)
        self.stats.retried += count
        self.stats.duplicates_possible += count if maybe_delivered else count - head
        self._failure = reason
        self._requeue()

    def _restart(self) -> None:
        """Resend everything unanswered now, on a new connection (the server read none of it)."""
        self.stats.retried += len(self.sent)
        self._requeue()

    def _requeue(self) -> None:
        self._ready = False
        self.connection.close()
        self.unsent.extendleft(reversed(self.sent))
        self.sent.clear()
        self._wake()

    def _delivered(self, count: int) -> None:
        stats = self.stats
        size = settle(self.sent, count)
        if self.fps is not None:
            self.fps.add(count)
        stats.forwarded_bytes += size
        stats.forwarded += count
        self._settled(count)

    def _rejected(self, item: Message, reason: str, status: int) -> None:
        self.stats.rejected += 1
        log.warning("message rejected; skipped", extra={
            "topic": item.topic.decode("utf-8", "backslashreplace"), "size": item.size,
            "status": status or "not sent", "reason": reason})
        self._settled(1)

    def _settled(self, count: int) -> None:
        self._progress = True
        self._release(count)
        if self._closing and not self.sent and not self.unsent:
            self._wake()

    def _log_failure(self, failure: str, delay: float) -> None:
        self._failures += 1
        now = self.clock()
        if self._failures == 1 or now - self._warned_at >= RETRY_LOG_INTERVAL:
            self._warned_at = now
            log.warning("delivery failed; retrying", extra={
                "lane": self.index, "error": failure, "failed_attempts": self._failures,
                "queued": self.held, "retry_in": f"{delay:g}s"})


def _coalesce(pieces: list[Buffer]) -> list[Buffer]:
    """Join each run of small pieces (heads, field headers, small frames) into one buffer, so
    a TLS write makes one record of them rather than one each; large ones stay as they are."""
    out: list[Buffer] = []
    run: list[Buffer] = []
    for piece in pieces:
        if len(piece) < SMALL_WRITE:
            run.append(piece)
        else:
            if run:
                out.append(run[0] if len(run) == 1 else b"".join(run))
                run = []
            out.append(piece)
    if run:
        out.append(run[0] if len(run) == 1 else b"".join(run))
    return out


def _reason(body: bytes) -> str:
    return body[:200].decode("utf-8", "replace").strip()
