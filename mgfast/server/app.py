"""The gateway's HTTP API: upstream 0.2.0's ``POST /`` with one Media and ``GET /health``,
plus mgfast's batch framing between mgfast peers.

Batch framing: ``POST /`` with ``Content-Type: application/x-mgfast-batch`` and a MediaBatch
body. Items are written in order; the first item whose write fails ends the batch, so what
follows it is not attempted and the client can resend from there without reordering. The
answer is 200 with ``{"results": [status, ...]}``, one upstream status per item attempted (400
for an item that is malformed on its own, skipped like a 400 in single mode). The server
advertises the framing with the ``x-mgfast-batch: 1`` header on ``GET /health``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import lru_cache, partial
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Protocol as TypingProtocol, Sequence,
                    TypeVar)

from mgfast._zmq_io import SendBuffer
from mgfast.batching import (BATCH_HEADER, BATCH_TYPE, MEDIA_TYPE, MEDIA_TYPES, all_accepted,
                             batch_answer)
from mgfast.http import responses
from mgfast.http.responses import Response
from mgfast.http.server_protocol import Request
from mgfast.media import (Kind, MediaError, batch_writes, decode_media, decode_media_batch,
                          routing_labels)
from mgfast.zmq.sockets import StreamClosed
from mgfast.zmq.writer import Buffer, Frames, WriteResult

if TYPE_CHECKING:
    from mgfast._media import DecodedMedia
    from mgfast.auth.guard import Guard
    from mgfast.auth.records import UserRecord
    from mgfast.auth.rules import Rule
    from mgfast.server.stats import WorkerStats


log = logging.getLogger("mgfast.server")

T = TypeVar("T")  # an answer
W = TypeVar("W")  # a writer's result

HEALTHY = Response(200, responses.HEALTHY_BODY, b"application/json",
                   headers=((BATCH_HEADER, b"1"),))

_EOS = int(Kind.END_OF_STREAM)

# Writer result -> HTTP status, as upstream maps them. A failed write closes the connection
# (here and below): a pipelining client resends the message and all it wrote after it, so
# nothing read behind the failure may be forwarded before that resend.
_RESULT_RESPONSES = {
    WriteResult.SUCCESS: responses.OK_EMPTY,
    WriteResult.ACK: responses.OK_EMPTY,
    WriteResult.SEND_TIMEOUT: responses.text(504, "out_stream send timeout", close=True),
    WriteResult.ACK_TIMEOUT: responses.text(502, "out_stream acknowledgement timeout",
                                            close=True),
}


class Writer(TypingProtocol):
    def submit(self, frames: Sequence[Buffer], *, eos: bool) -> asyncio.Future[WriteResult]: ...

    def submit_group(self, messages: list[Frames], eos: list[bool] | None
                     ) -> asyncio.Future[list[WriteResult]]: ...

    def submit_batch(self, body: Buffer | SendBuffer
                     ) -> tuple[int, int, asyncio.Future[list[WriteResult]]] | None: ...


class GatewayApp:
    def __init__(self, writer: Writer, stats: WorkerStats | None = None,
                 guard: Guard | None = None) -> None:
        self.writer = writer
        self.stats = stats  # a WorkerStats when metrics are on
        # an mgfast.auth.guard.Guard with basic authentication on; then requests carry .peer
        self.guard = guard

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        path = request.path.partition(b"?")[0]
        if path == b"/":
            if request.method != b"POST":
                return Response(405, b"use POST\n", headers=((b"allow", b"POST"),))
            if self.guard is not None:
                return self._guarded(request)
            return self._media(request)
        if path == b"/health":
            if request.method not in (b"GET", b"HEAD"):
                return Response(405, b"use GET\n", headers=((b"allow", b"GET"),))
            return HEALTHY
        return responses.text(404, f"no such path {responses.quote(path)}; "
                                   f"use POST / or GET /health")

    # -- pipelined upstream requests, written as one group ----------------------------------

    @staticmethod
    def groupable(request: Request) -> bool:
        """An upstream ``POST /`` with one Media: pipelined ones are handled together."""
        content_type = request.content_type
        return (request.keep_alive and request.method == b"POST" and request.path == b"/"
                and (content_type == MEDIA_TYPE  # as clients send it: no normalising
                     or content_type.partition(b";")[0].strip().lower() in MEDIA_TYPES))

    def handle_group(self, requests: list[Request]
                     ) -> list[Response] | Awaitable[list[Response]]:
        """The answers to pipelined requests of one connection, in order. Their messages go to
        the writer as one group, which stops at the first failed write: the protocol closes
        the connection after answering that one, so nothing behind it is forwarded first."""
        if self.guard is not None:
            return self._guarded_group(requests)
        answers: list[Response | None] = [None] * len(requests)
        messages: list[Frames] = []
        eos: list[bool] = []
        where = []  # the request index of each message
        for i, request in enumerate(requests):
            try:
                topic, message, data, kind = decode_media(request.body)
            except MediaError as exc:
                answers[i] = responses.text(400, str(exc))
                continue
            messages.append([topic, message, *data])
            eos.append(kind == _EOS)
            where.append(i)
        return self._submit_group(answers, messages, eos, where)

    def _submit_group(self, answers: list[Response | None], messages: list[Frames],
                      eos: list[bool], where: list[int]
                      ) -> list[Response] | asyncio.Future[list[Response]]:
        if not messages:
            return answers  # type: ignore[return-value]  # every one answered: no None left
        started = time.perf_counter()
        try:
            written = self.writer.submit_group(messages, eos)
        except StreamClosed as exc:
            return [a or _unavailable(exc) for a in answers]
        return _answer(written, partial(self._group_written, answers, messages, where, started))

    def _group_written(self, answers: list[Response | None], messages: list[Frames],
                       where: list[int], started: float,
                       written: asyncio.Future[list[WriteResult]]) -> list[Response]:
        failure = _write_failure(written)
        if failure is not None:
            return [a or failure for a in answers]
        for frames, i, result in zip(messages, where, written.result()):
            if result is WriteResult.NOT_ATTEMPTED:
                answers[i] = _NOT_ATTEMPTED
            else:
                answers[i] = response = _RESULT_RESPONSES[result]
                self._count(started, response.status, frames)
        return answers  # type: ignore[return-value]  # every one answered: no None left

    # -- one request -----------------------------------------------------------------------

    def _media(self, request: Request) -> Response | Awaitable[Response]:
        content_type = request.content_type.partition(b";")[0].strip().lower()
        if content_type == BATCH_TYPE:
            return self._batch(request)
        if content_type not in MEDIA_TYPES:
            return responses.text(
                400, f"Content-Type must be application/protobuf, "
                     f"not {responses.quote(request.content_type)}")
        try:
            topic, message, data, kind = decode_media(request.body)
        except MediaError as exc:
            return responses.text(400, str(exc))
        return self._write([topic, message, *data], kind)

    def _write(self, frames: list[Buffer], kind: int) -> Response | asyncio.Future[Response]:
        """Hand the message to the writer; the answer follows from its result by callback (no
        coroutine or task per request)."""
        started = time.perf_counter()
        try:
            written = self.writer.submit(frames, eos=kind == _EOS)
        except StreamClosed as exc:
            return _unavailable(exc)
        return _answer(written, partial(self._written, started, frames))

    def _written(self, started: float, frames: list[Buffer],
                 written: asyncio.Future[WriteResult]) -> Response:
        response = _write_failure(written)
        if response is None:
            response = _RESULT_RESPONSES[written.result()]
            self._count(started, response.status, frames)
        return response

    def _count(self, started: float, status: int, frames: Frames) -> None:
        stats = self.stats
        if stats is not None:
            stats.latencies.append(time.perf_counter() - started)
            if status == 200:
                stats.forwarded += 1
                stats.forwarded_bytes += sum(map(len, frames))

    def _batch(self, request: Request, rule: Rule | None = None
               ) -> Response | Awaitable[Response]:
        body = request.body
        if rule is None:  # the usual case: a whole valid batch goes to the writer unopened
            started = time.perf_counter()
            try:
                done = self.writer.submit_batch(body)
            except (StreamClosed, RuntimeError) as exc:
                return _failure_response(exc)
            if done is not None:
                count, size, written = done
                return _answer(written, partial(self._whole_batch_written, body, count, size,
                                                started))
        try:
            items = decode_media_batch(body)
        except MediaError as exc:
            return responses.text(400, str(exc))
        if rule is not None:  # basic auth: items whose labels the user may not send get 401
            for i, item in enumerate(items):
                if item.__class__ is tuple and not _labels_ok(rule, item[1]):
                    self.guard.labels_denied()  # type: ignore[union-attr]
                    items[i] = _DENIED  # type: ignore[call-overload]
        return self._write_batch(items)

    # -- basic authentication (only with auth.basic; the path above pays one attribute test) --

    def _guarded(self, request: Request) -> Response | Awaitable[Response]:
        verdict = self.guard.check(request.authorization, request.peer)  # type: ignore[union-attr]
        if verdict.__class__ is Response:
            return verdict
        if isinstance(verdict, asyncio.Future):
            return self._guarded_later(request, verdict)
        return self._authorized(request, verdict)  # type: ignore[arg-type]

    async def _guarded_later(self, request: Request,
                             verdict: asyncio.Future[Response | UserRecord]) -> Response:
        record = await verdict
        if record.__class__ is Response:
            return record
        result = self._authorized(request, record)  # type: ignore[arg-type]
        return result if result.__class__ is Response else await result  # type: ignore[misc]

    def _authorized(self, request: Request, record: UserRecord
                    ) -> Response | Awaitable[Response]:
        """An authenticated request: the plain path, plus the user's routing-label rule."""
        rule = record.rule
        if rule is None:
            return self._media(request)
        content_type = request.content_type.partition(b";")[0].strip().lower()
        if content_type == BATCH_TYPE:
            return self._batch(request, rule)
        if content_type != MEDIA_TYPE:
            return self._media(request)  # answers the 400
        try:
            topic, message, data, kind = decode_media(request.body)
        except MediaError as exc:
            return responses.text(400, str(exc))
        if not _labels_ok(rule, message):
            return self.guard.labels_denied()  # type: ignore[union-attr]
        return self._write([topic, message, *data], kind)

    async def _guarded_group(self, requests: list[Request]) -> list[Response]:
        """Pipelined requests with basic auth: each is checked (the same credentials share one
        verification), then the allowed ones are written as one group, as without auth."""
        guard = self.guard
        verdicts = [guard.check(r.authorization, r.peer) for r in requests]  # type: ignore[union-attr]
        for i, verdict in enumerate(verdicts):
            if isinstance(verdict, asyncio.Future):
                verdicts[i] = await verdict
        answers: list[Response | None] = [None] * len(requests)
        messages: list[Frames] = []
        eos: list[bool] = []
        where = []
        for i, (request, record) in enumerate(zip(requests, verdicts)):
            if record.__class__ is Response:
                answers[i] = record
                continue
            try:
                topic, message, data, kind = decode_media(request.body)
            except MediaError as exc:
                answers[i] = responses.text(400, str(exc))
                continue
            if record.rule is not None and not _labels_ok(record.rule, message):  # type: ignore[union-attr]
                answers[i] = guard.labels_denied()  # type: ignore[union-attr]
                continue
            messages.append([topic, message, *data])
            eos.append(kind == _EOS)
            where.append(i)
        result = self._submit_group(answers, messages, eos, where)
        return result if isinstance(result, list) else await result

    def _write_batch(self, items: Sequence[DecodedMedia | MediaError | object]
                     ) -> Response | asyncio.Future[Response]:
        """All valid items go to the writer at once as one group; the answer lists a status per
        item up to and including the first failed write (later ones were not sent)."""
        started = time.perf_counter()
        messages, eos, size = batch_writes(items)  # type: ignore[arg-type]
        answer = partial(self._batch_written, items, messages, size, started)
        if not messages:
            return answer(None)
        try:
            written = self.writer.submit_group(messages, eos)
        except StreamClosed as exc:
            return _unavailable(exc)
        return _answer(written, answer)

    def _whole_batch_written(self, body: Buffer | SendBuffer, count: int, size: int,
                             started: float, written: asyncio.Future[list[WriteResult]]
                             ) -> Response:
        """The answer to a batch whose items were all valid and went to the writer unopened."""
        if not written.cancelled() and written.exception() is None:
            results = written.result()
            if not results or results[-1] is WriteResult.SUCCESS:  # all written (a prefix)
                self._count_batch(started, count, size)
                return _all_accepted(count)
        items = decode_media_batch(body)  # a failed write: the statuses name each item
        messages, _, size = batch_writes(items)
        return self._batch_written(items, messages, size, started, written)

    def _batch_written(self, items: Sequence[DecodedMedia | MediaError | object],
                       messages: list[Frames], size: int, started: float,
                       written: asyncio.Future[list[WriteResult]] | None) -> Response:
        results: list[WriteResult] = []
        if written is not None:
            failure = _write_failure(written)
            if failure is not None:
                return failure
            results = written.result()
        if len(messages) == len(items) and (not results or results[-1] is WriteResult.SUCCESS):
            # every item valid and written (pub, dealer: the usual case)
            answer, forwarded = _all_accepted(len(items)), len(messages)
        else:
            statuses, done = self._batch_statuses(items, messages, results)
            answer = Response(200, batch_answer(statuses), b"application/json",
                              close=statuses[-1] >= 500 if statuses else False)
            forwarded = len(done)
            size = sum([sum(map(len, frames)) for frames in done])
        self._count_batch(started, forwarded, size)
        return answer

    def _count_batch(self, started: float, forwarded: int, size: int) -> None:
        stats = self.stats
        if stats is not None:
            stats.latencies.append(time.perf_counter() - started)  # one POST
            stats.forwarded += forwarded
            stats.forwarded_bytes += size

    @staticmethod
    def _batch_statuses(items: Sequence[DecodedMedia | MediaError | object],
                        messages: list[Frames], results: list[WriteResult]
                        ) -> tuple[list[int], list[Frames]]:
        """Statuses up to the first item not attempted, and the messages answered 200."""
        statuses: list[int] = []
        written = []
        outcomes = iter(zip(messages, results))
        for item in items:
            if item.__class__ is not tuple:  # a MediaError: that item alone is malformed
                statuses.append(401 if item is _DENIED else 400)
                continue
            frames, result = next(outcomes)
            if result is WriteResult.NOT_ATTEMPTED:
                break
            status = _RESULT_RESPONSES[result].status
            statuses.append(status)
            if status == 200:
                written.append(frames)
        return statuses, written

# An earlier message of its group failed: it was not sent (its connection closes before this
# is written; answered only for completeness).
_NOT_ATTEMPTED = responses.text(503, "not attempted after an earlier failure; retry", close=True)


# A batch item whose routing labels the authenticated user may not send.
_DENIED = object()


@lru_cache(maxsize=None)  # one per item count: encoded once (``Response.encode``)
def _all_accepted(count: int) -> Response:
    return Response(200, all_accepted(count), b"application/json")


def _labels_ok(rule: Rule, message: Buffer) -> bool:
    try:
        return rule.allows(routing_labels(message))
    except MediaError:
        return False  # unreachable: decode_media checked the message's framing


def _answer(written: asyncio.Future[W], answer: Callable[[asyncio.Future[W]], T]
            ) -> T | asyncio.Future[T]:
    """``answer(written)`` now if the writer took the message at once (the protocol then
    answers inside its ``data_received``), else a future of it: one callback, no task."""
    if written.done():
        return answer(written)
    future: asyncio.Future[T] = written.get_loop().create_future()

    def settle(done: asyncio.Future[W]) -> None:
        if not future.done():  # else the connection went away (cancelled)
            future.set_result(answer(done))

    written.add_done_callback(settle)
    return future


def _unavailable(exc: BaseException) -> Response:
    return responses.text(503, f"out_stream unavailable ({exc}); retry", close=True)


def _write_failure(written: asyncio.Future[Any]) -> Response | None:
    """The answer for a writer future that was cancelled or failed; None if it has a result."""
    if written.cancelled():
        return responses.text(503, "server is shutting down", close=True)
    exc = written.exception()
    if exc is None:
        return None
    return _failure_response(exc)


def _failure_response(exc: BaseException) -> Response:
    if isinstance(exc, StreamClosed):
        return _unavailable(exc)
    log.error("out_stream write failed", exc_info=exc)
    return responses.text(500, "out_stream write failed", close=True)
