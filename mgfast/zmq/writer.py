"""The server's out_stream: a Savant ZeroMQ writer (pub, dealer or req) for asyncio.

    writer = OutStreamWriter(config)
    await writer.start()                      # EndpointError names the endpoint
    result = await writer.write([topic, message, *extra], eos=False)   # a WriteResult
    future = writer.submit(frames, eos)       # the same without a coroutine
    future = writer.submit_group(messages, eos_flags)   # stops at its first failed write
    count, size, future = writer.submit_batch(body)   # a MediaBatch body's items as a group
    await writer.close()                      # flushes, then fails what is left (StreamClosed)

One writer owns the socket and serves every concurrent request of the process; messages reach
the wire, and their futures complete, in submission order. A buffer need only stay unchanged
until its write completes. Savant's semantics per socket type, the send and ack budgets, REQ
recovery and the batching into libzmq: docs/protocol.md section 1, "Writer semantics".
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import zmq
import zmq.asyncio

from mgfast._zmq_io import ZERO_COPY_MIN, SendBuffer, recv_multipart, send_many, send_multipart
from mgfast.media import MediaError, batch_writes, decode_media_batch, send_media_batch
from mgfast.zmq.settings import OutStreamConfig
from mgfast.zmq.sockets import CONFIRMATION, StreamClosed, open_socket

log = logging.getLogger(__name__)

Buffer = bytes | bytearray | memoryview
Frames = Sequence[Buffer]  # one message: [topic, message, *extra]

FAST_SEND_BATCH = 256  # queued messages sent back to back before yielding to the event loop


class WriteResult(enum.Enum):
    """Savant's writer results; the HTTP layer maps them to 200 / 504 / 502."""

    SUCCESS = "success"
    ACK = "ack"
    SEND_TIMEOUT = "send_timeout"
    ACK_TIMEOUT = "ack_timeout"
    NOT_ATTEMPTED = "not_attempted"  # an earlier message of its group failed: never sent


_WRITTEN = (WriteResult.SUCCESS, WriteResult.ACK)


class _Run:
    """Messages queued together and answered with one future: a lone ``submit`` (``single``:
    the future's result is its WriteResult) or a ``submit_group`` (a list of them)."""

    __slots__ = ("messages", "eos", "deadline", "future", "single", "start")

    # the future's result: a WriteResult (single) or a list of them

    def __init__(self, messages: list[Frames], eos: list[bool] | None, deadline: float,
                 future: asyncio.Future[Any], single: bool, start: int = 0) -> None:
        self.messages = messages  # frame sequences
        self.eos = eos  # per message, or None when none is an EOS
        self.deadline = deadline  # loop time after which a blocked send gives SEND_TIMEOUT
        self.future = future
        self.single = single
        self.start = start  # messages sent already, by the caller's fast path


def _by_reference(body: Buffer | SendBuffer) -> bool:
    """Whether a body lies in a SendBuffer and is large enough to hold frames that libzmq
    takes by reference: then it goes as frame lists (``send_many``), not copied by the C fast
    path."""
    owner = body.obj if body.__class__ is memoryview else body
    return owner.__class__ is SendBuffer and len(body) >= ZERO_COPY_MIN


class OutStreamWriter:
    """Savant writer semantics for one out_stream socket, shared by many concurrent callers."""

    def __init__(self, config: OutStreamConfig,
                 context: zmq.asyncio.Context | None = None) -> None:
        # configuration
        self.config = config
        socket_type = config.url.socket_type
        if socket_type not in ("pub", "dealer", "req"):
            raise ValueError(f"{config.url} is not a writer socket (pub, dealer or req)")
        self._ack_every = socket_type == "req"
        self._ack_eos = socket_type in ("dealer", "req")
        self._drain_stale = socket_type == "dealer"
        self._send_budget = config.send_timeout * (config.send_retries + 1)
        self._ack_budget = config.receive_timeout * (config.receive_retries + 1)
        # resources, created by start()
        self._context = context
        self._owns_context = context is None
        self._asock: zmq.asyncio.Socket | None = None
        self._handle = 0  # the libzmq socket, for mgfast._zmq_io; 0 when closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # the queue between write() and the writer task
        self._queue: deque[_Run] = deque()
        self._wake: asyncio.Future[None] | None = None  # set while the task waits for work
        self._busy = False  # the task is writing a run
        self._closing = False
        self._unfinished = 0  # messages submitted whose run has no result yet
        # counters, for metrics
        self.results: dict[WriteResult, int] = dict.fromkeys(WriteResult, 0)
        self.unexpected_replies = 0  # replies that were not the confirmation awaited
        self.stale_replies = 0  # replies that came unasked, discarded before an EOS

    @property
    def queue_depth(self) -> int:
        """Messages submitted and not yet finished (including the one being sent)."""
        return self._unfinished

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the socket (raises EndpointError naming the endpoint) and start the writer task."""
        if self._task is not None or self._closing:
            raise RuntimeError(f"writer for {self.config.url} was already started")
        if self._context is None:
            self._context = zmq.asyncio.Context()
        options: dict[int, int] | None = (
            {zmq.REQ_RELAXED: 1, zmq.REQ_CORRELATE: 1} if self._ack_every else None)
        try:
            self._asock = open_socket(
                self._context,
                self.config.url,
                send_hwm=self.config.send_hwm,
                receive_hwm=self.config.receive_hwm,
                fix_ipc_permissions=self.config.fix_ipc_permissions,
                options=options,
            )
        except BaseException:
            await self._release_context()
            raise
        self._handle = self._asock.underlying
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"out_stream {self.config.url}")

    async def write(self, frames: Sequence[bytes | memoryview], *, eos: bool) -> WriteResult:
        """Send ``[topic, message, *extra]``; ``eos`` says whether the message is an EOS."""
        result: WriteResult = await self.submit(frames, eos)
        return result

    def submit(self, frames: Frames, eos: bool) -> asyncio.Future[WriteResult]:
        """Queue a message now and return the future of its WriteResult (no coroutine per
        message)."""
        return self._enqueue([frames], [True] if eos else None, True)

    def submit_group(self, messages: list[Frames],
                     eos: list[bool] | None = None) -> asyncio.Future[list[WriteResult]]:
        """Queue messages that must reach the wire as a prefix: after the first one that is not
        written, the rest are not sent (WriteResult.NOT_ATTEMPTED), so a sender can resend from
        there without reordering. ``eos``: per message, or None if none is an EOS. The future's
        result lists a WriteResult per message."""
        if eos is not None and len(eos) != len(messages):
            raise ValueError("submit_group needs one eos flag per message")
        return self._enqueue(messages, eos if eos is not None and True in eos else None, False)

    def submit_batch(self, body: Buffer | SendBuffer, *, check: bool = True
                     ) -> tuple[int, int, asyncio.Future[list[WriteResult]]] | None:
        """A MediaBatch body's items as one group (as ``submit_group``): (items, frame bytes,
        the group's future). While the writer is idle and nothing waits for an ack, the items
        go to libzmq straight from the body, with no Python object per item; what would block
        (or an EOS that waits for its ack) and everything else is queued in order as usual.
        None, with nothing written, when an item is malformed: then decode_media_batch gives
        each item's answer. ``check=False``: the items were checked already (check_media_batch
        in a worker), so only the envelope and each message's kind are read."""
        loop = self._running_loop()
        sent = 0
        if self._idle() and not _by_reference(body):
            try:
                done = send_media_batch(self._handle, body, self._ack_eos, check)
            except zmq.ZMQError as exc:
                raise self._broken(exc) from exc
            if done is None:
                return None
            count, sent, size = done
            self.results[WriteResult.SUCCESS] += sent
            if sent == count:  # the usual case
                future = loop.create_future()
                future.set_result([WriteResult.SUCCESS] * count)
                return count, size, future
        try:
            items = decode_media_batch(body, check)
        except MediaError:
            return None
        messages, eos, size = batch_writes(items)
        if len(messages) != len(items):
            return None
        return len(messages), size, self._enqueue(messages, eos, False, sent)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The writer's loop; StreamClosed unless it was started and is not closing."""
        loop = self._loop
        if self._task is None or self._closing or loop is None:
            raise StreamClosed(f"writer for {self.config.url} is not running")
        return loop

    def _idle(self) -> bool:
        """The writer task has nothing queued or in hand, and the socket is not REQ (which
        awaits a reply to each message): a caller may send now, in its own turn."""
        return not self._queue and not self._busy and not self._ack_every

    def _enqueue(self, messages: list[Frames], eos: list[bool] | None, single: bool,
                 start: int = 0) -> asyncio.Future[Any]:
        """Queue messages as one run; ``start``: how many of them were sent already."""
        loop = self._running_loop()
        for frames in messages:
            if len(frames) < 2:
                raise ValueError("a Savant message needs at least the frames [topic, message]")
        future = loop.create_future()
        if not start and self._idle() and (eos is None or not self._ack_eos):
            # The writer task is idle and nothing waits for an acknowledgement: send now, in
            # the caller's turn (no task step, and the future is done when it is returned);
            # only what would block goes to the task.
            try:
                start = send_many(self._handle, messages, 0, len(messages))
            except zmq.ZMQError as exc:
                future.set_exception(self._broken(exc))
                return future
            self.results[WriteResult.SUCCESS] += start
            if start == len(messages):
                future.set_result(WriteResult.SUCCESS if single else [WriteResult.SUCCESS] * start)
                return future
        self._queue.append(_Run(messages, eos, loop.time() + self._send_budget, future, single,
                                start))
        self._unfinished += len(messages)
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)
        return future

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting writes, let queued ones finish (up to ``timeout`` seconds; default: one
        send budget plus one ack budget), fail the rest with StreamClosed, close the socket."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)
            if timeout is None:
                timeout = self._send_budget + self._ack_budget
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
        self._fail_queued()
        if self._asock is not None:
            # What was answered as written gets as long to leave as a send had (Savant's
            # 100 ms linger would drop it when the consumer is slow or reconnecting).
            self._asock.close(linger=int(self._send_budget * 1000))
            self._asock, self._handle = None, 0
        await self._release_context()

    async def _release_context(self) -> None:
        if self._owns_context and self._context is not None:
            context, self._context = self._context, None
            # term() waits for the lingering messages of closed sockets: not on the loop
            await asyncio.to_thread(context.term)

    def _fail_queued(self) -> None:
        while self._queue:
            self._finish(self._queue.popleft(), StreamClosed(
                f"writer for {self.config.url} was closed"))

    def _finish(self, run: _Run, outcome: list[WriteResult] | BaseException) -> None:
        self._unfinished -= len(run.messages)
        future = run.future
        if future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome[0] if run.single else outcome)

    # ---- the writer task -------------------------------------------------------------------

    async def _run(self) -> None:
        queue = self._queue
        loop = self._loop
        assert loop is not None  # set by start(), which creates this task
        run: _Run | None = None
        sent = 0  # messages handled since the task last yielded to the loop
        try:
            while True:
                if not queue:
                    if self._closing:
                        return
                    self._wake = loop.create_future()
                    await self._wake
                    sent = 0
                    continue
                run = queue.popleft()
                outcome: list[WriteResult] | Exception
                self._busy = True
                try:
                    outcome = await self._write_run(run)
                except Exception as exc:
                    outcome = exc
                finally:
                    self._busy = False
                self._finish(run, outcome)
                sent += len(run.messages)
                run = None
                if sent >= FAST_SEND_BATCH:
                    sent = 0
                    await asyncio.sleep(0)  # let the HTTP side run between long stretches
        finally:
            # cancelled by close(): the run in hand and the queued ones fail
            if run is not None:
                self._finish(run, StreamClosed(f"writer for {self.config.url} was closed"))
            self._wake = None
            self._fail_queued()

    async def _write_run(self, run: _Run) -> list[WriteResult]:
        """Write a run's messages in order, stopping at the first one not written. Stretches
        that need no ack go to libzmq in one call; the rest go one by one through
        ``_write_one``. Messages not reached are NOT_ATTEMPTED."""
        messages, eos, future = run.messages, run.eos, run.future
        count = len(messages)
        i = run.start
        results: list[WriteResult] = [WriteResult.SUCCESS] * i
        while i < count and not future.done():  # done: the caller gave up, send no more
            if not self._ack_every:
                stop = count
                if eos is not None and self._ack_eos:
                    try:
                        stop = eos.index(True, i)
                    except ValueError:
                        pass
                if stop > i:
                    try:
                        sent = send_many(self._handle, messages, i, stop)
                    except zmq.ZMQError as exc:
                        raise self._broken(exc) from exc
                    if sent > i:
                        results += [WriteResult.SUCCESS] * (sent - i)
                        self.results[WriteResult.SUCCESS] += sent - i
                        i = sent
                    if i == stop:
                        continue
            result = await self._write_one(messages[i], eos is not None and eos[i],
                                            run.deadline, future)
            if result is None:
                break  # abandoned by its caller
            self.results[result] += 1
            results.append(result)
            i += 1
            if result not in _WRITTEN:
                break
        if len(results) < count:
            results += [WriteResult.NOT_ATTEMPTED] * (count - len(results))
        return results

    async def _write_one(self, frames: Frames, eos: bool, deadline: float,
                         future: asyncio.Future[Any]) -> WriteResult | None:
        """Send one message and, if Savant waits for it, its ack. Returns None if abandoned."""
        if eos and self._drain_stale:
            self._discard_replies()
        if not self._send_nowait(frames):
            if not await self._send_waiting(frames, deadline, future):
                return None if future.done() else WriteResult.SEND_TIMEOUT
        if self._ack_every or (eos and self._ack_eos):
            return await self._await_ack(eos)
        return WriteResult.SUCCESS

    def _send_nowait(self, frames: Frames) -> bool:
        """Hand the whole multipart to libzmq without blocking; False if it would block."""
        try:
            return send_multipart(self._handle, frames)
        except zmq.ZMQError as exc:
            raise self._broken(exc) from exc

    def _broken(self, exc: zmq.ZMQError) -> RuntimeError:
        return RuntimeError(f"{self.config.url}: sending failed ({exc})")

    async def _send_waiting(self, frames: Frames, deadline: float,
                            future: asyncio.Future[Any]) -> bool:
        """Wait for the socket to accept the message until its deadline; True once sent."""
        loop, asock = self._loop, self._asock
        assert loop is not None and asock is not None  # the writer task runs after start()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            # pyzmq types the asyncio socket's poll() as its Poller's poll(timeout) -> list
            events: int = await asock.poll(  # type: ignore[call-arg, assignment]
                remaining * 1000.0, zmq.POLLOUT)
            if future.done():
                return False
            if events & zmq.POLLOUT and self._send_nowait(frames):
                return True

    async def _await_ack(self, eos: bool) -> WriteResult:
        loop, asock = self._loop, self._asock
        assert loop is not None and asock is not None  # the writer task runs after start()
        deadline = loop.time() + self._ack_budget
        while True:
            reply = recv_multipart(self._handle)
            if reply is None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return WriteResult.ACK_TIMEOUT
                await asock.poll(remaining * 1000.0, zmq.POLLIN)  # type: ignore[call-arg]
                continue
            if (self._ack_every and not eos) or (reply and reply[-1] == CONFIRMATION):
                return WriteResult.ACK
            self.unexpected_replies += 1
            log.warning("%s: ignoring a reply that is not %r: %r", self.config.url, CONFIRMATION,
                        [bytes(p[:32]) for p in reply])

    def _discard_replies(self) -> None:
        """Drop replies that arrived unasked (late acks of earlier EOS) before sending an EOS."""
        while recv_multipart(self._handle) is not None:
            self.stale_replies += 1
