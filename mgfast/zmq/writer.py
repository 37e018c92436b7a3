"""The server's out_stream: a Savant ZeroMQ writer (pub, dealer or req) for asyncio.

One :class:`OutStreamWriter` owns the configured socket and is shared by every concurrent HTTP
request of the process. ``await writer.write([topic, message, *extra], eos=...)`` returns the
Savant writer result of that message.

Semantics (Savant's, see PROTOCOL.md section 2):

- **pub** never waits for a reply: ``SUCCESS`` (PUB drops at its high-water mark, it never blocks).
- **dealer** waits for a reply only after an end-of-stream: a reply whose last frame is ``OK``
  gives ``ACK``; replies received before the EOS is sent are stale (e.g. the late ack of an
  earlier EOS that timed out) and are discarded first, and a reply that is not ``OK`` is
  ignored, so only a real confirmation counts.
- **req** waits for a reply after every message: ``ACK``; for an EOS the reply must be ``OK``.
- No reply within ``receive_timeout * (receive_retries + 1)`` after the send gives
  ``ACK_TIMEOUT`` (Savant waits ``receive_timeout`` per attempt, ``receive_retries + 1``
  attempts).
- A message the socket does not accept (high-water mark reached, or no peer on a bound
  dealer/req) gives ``SEND_TIMEOUT`` once ``send_timeout * (send_retries + 1)`` has passed since
  ``write()`` was called (Savant's budget: ``send_retries + 1`` attempts of ``send_timeout``
  each). mgfast counts the budget from submission rather than from the moment the message
  reaches the head of the queue, so a request never waits longer than its own budget while the
  socket is blocked, instead of the budgets of every message queued before it adding up. A
  message is always offered to the socket once, however late.

REQ recovery: a REQ socket whose reply never came refuses to send again (EFSM). The socket is
opened with ``ZMQ_REQ_RELAXED`` (a new request may be sent without the previous reply) and
``ZMQ_REQ_CORRELATE`` (libzmq tags each request and discards replies to older ones), so after an
``ACK_TIMEOUT`` the next message goes out on the same socket and a late reply cannot be taken for
the ack of a later message. The alternative, closing and re-creating the socket, would drop the
connections of every peer on a bound endpoint and race the rebind; the relaxed REQ keeps them.
REQ_CORRELATE adds an envelope frame that the peer's REP socket strips and echoes, so a Savant
REP reader sees exactly ``[topic, message, *extra]``.

Ordering and speed: ``write()`` only appends to a queue; one writer task drains it, so messages
reach the wire and ``write()`` calls complete in submission order. While the socket accepts
(pub, dealer and non-EOS messages), the task sends queued messages back to back with
``NOBLOCK`` on a plain shadow of the socket, without an event-loop round trip per message; it
awaits the asyncio socket only when it must wait (a full socket, an ack), and yields to the loop
after :data:`FAST_SEND_BATCH` messages so a long queue cannot starve the HTTP side.

Buffers: parts of :data:`ZERO_COPY_MIN` bytes or more are handed to libzmq without copying, so
the caller must not modify a buffer passed to ``write()`` afterwards (``bytes`` and memoryviews of
buffers that are never reused are fine). Smaller parts are copied, which is faster for them.

Cancellation: a ``write()`` cancelled before its message reached the socket is skipped (nothing
goes on the wire); once sent, the message stays sent and only the result is discarded.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Sequence

import zmq
import zmq.asyncio

from mgfast.config.model import OutStreamConfig
from mgfast.zmq.sockets import (
    CONFIRMATION,
    NOBLOCK,
    NOBLOCK_MORE,
    StreamClosed,
    backend_send,
    open_socket,
    shadow,
)

log = logging.getLogger(__name__)

ZERO_COPY_MIN = 65536  # pyzmq's copy threshold: below it a zero-copy send copies anyway, slower
FAST_SEND_BATCH = 256  # queued messages sent back to back before yielding to the event loop


class WriteResult(enum.Enum):
    """Savant's writer results; the HTTP layer maps them to 200 / 504 / 502."""

    SUCCESS = "success"
    ACK = "ack"
    SEND_TIMEOUT = "send_timeout"
    ACK_TIMEOUT = "ack_timeout"
    NOT_ATTEMPTED = "not_attempted"  # an earlier message of its group failed: never sent


class Group:
    """Messages that must reach the wire as a prefix: after the first failure, the rest of the
    group is not sent, so a sender can resend from there without reordering."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False


_WRITTEN = (WriteResult.SUCCESS, WriteResult.ACK)


class _Write:
    """One queued message and the future of its caller."""

    __slots__ = ("frames", "eos", "deadline", "future", "group")

    def __init__(self, frames, eos: bool, deadline: float, future: asyncio.Future,
                 group: Group | None = None):
        self.frames = frames
        self.eos = eos
        self.group = group
        self.deadline = deadline  # loop time after which a blocked send gives SEND_TIMEOUT
        self.future = future


class OutStreamWriter:
    """Savant writer semantics for one out_stream socket, shared by many concurrent callers."""

    def __init__(self, config: OutStreamConfig, context: zmq.asyncio.Context | None = None):
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
        self._sock: zmq.Socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        # the queue between write() and the writer task
        self._queue: deque[_Write] = deque()
        self._wake: asyncio.Future | None = None  # set while the task waits for work
        self._closing = False
        self._busy = False  # the task holds a message it took off the queue
        # counters, for metrics
        self.results: dict[WriteResult, int] = dict.fromkeys(WriteResult, 0)
        self.unexpected_replies = 0  # replies that were not the confirmation awaited
        self.stale_replies = 0  # replies that came unasked, discarded before an EOS

    @property
    def queue_depth(self) -> int:
        """Messages submitted and not yet finished (including the one being sent)."""
        return len(self._queue) + self._busy

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the socket (raises EndpointError naming the endpoint) and start the writer task."""
        if self._task is not None or self._closing:
            raise RuntimeError(f"writer for {self.config.url} was already started")
        if self._context is None:
            self._context = zmq.asyncio.Context()
        options = {zmq.REQ_RELAXED: 1, zmq.REQ_CORRELATE: 1} if self._ack_every else None
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
        self._sock = shadow(self._asock)
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"out_stream {self.config.url}")

    async def write(self, frames: Sequence[bytes | memoryview], *, eos: bool) -> WriteResult:
        """Send ``[topic, message, *extra]``; ``eos`` says whether the message is an EOS."""
        return await self.submit(frames, eos)

    def submit(self, frames: Sequence[bytes | memoryview], eos: bool,
               group: Group | None = None) -> asyncio.Future:
        """Queue a message now and return the future of its WriteResult (no coroutine per
        message: the egress process submits whole batches this way, in order)."""
        if self._task is None or self._closing:
            raise StreamClosed(f"writer for {self.config.url} is not running")
        if len(frames) < 2:
            raise ValueError("a Savant message needs at least the frames [topic, message]")
        loop = self._loop
        future = loop.create_future()
        self._queue.append(_Write(frames, eos, loop.time() + self._send_budget, future, group))
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
            self._asock.close()  # LINGER (100 ms) lets what was sent leave
            self._asock = self._sock = None
        await self._release_context()

    async def _release_context(self) -> None:
        if self._owns_context and self._context is not None:
            context, self._context = self._context, None
            # term() waits for the lingering messages of closed sockets: not on the loop
            await asyncio.to_thread(context.term)

    def _fail_queued(self) -> None:
        while self._queue:
            future = self._queue.popleft().future
            if not future.done():
                future.set_exception(StreamClosed(f"writer for {self.config.url} was closed"))

    # ---- the writer task -------------------------------------------------------------------

    async def _run(self) -> None:
        queue = self._queue
        loop = self._loop
        item: _Write | None = None
        try:
            while True:
                if not queue:
                    if self._closing:
                        return
                    self._wake = loop.create_future()
                    await self._wake
                    continue
                for _ in range(FAST_SEND_BATCH):
                    if not queue:
                        break
                    item = queue.popleft()
                    future = item.future
                    if future.done():  # the caller gave up before it was sent
                        continue
                    group = item.group
                    if group is not None and group.failed:
                        future.set_result(WriteResult.NOT_ATTEMPTED)
                        continue
                    self._busy = True
                    try:
                        result = await self._write_one(item)
                    except Exception as exc:
                        if group is not None:
                            group.failed = True
                        if not future.done():
                            future.set_exception(exc)
                        continue
                    finally:
                        self._busy = False
                    if result is not None:
                        self.results[result] += 1
                        if group is not None and result not in _WRITTEN:
                            group.failed = True
                        if not future.done():
                            future.set_result(result)
                else:
                    await asyncio.sleep(0)  # let the HTTP side run between long batches
        finally:
            # cancelled by close(): the message in hand and the queued ones fail
            if item is not None and not item.future.done():
                item.future.set_exception(StreamClosed(f"writer for {self.config.url} was closed"))
            self._wake = None
            self._fail_queued()

    async def _write_one(self, item: _Write) -> WriteResult | None:
        """Send one message and, if Savant waits for it, its ack. Returns None if abandoned."""
        if item.eos and self._drain_stale:
            self._discard_replies()
        if not self._send_nowait(item.frames):
            if not await self._send_waiting(item):
                return None if item.future.done() else WriteResult.SEND_TIMEOUT
        if self._ack_every or (item.eos and self._ack_eos):
            return await self._await_ack(item.eos)
        return WriteResult.SUCCESS

    def _send_nowait(self, frames: Sequence[bytes | memoryview]) -> bool:
        """Hand the whole multipart to libzmq without blocking; False if it would block."""
        sock = self._sock
        last = len(frames) - 1
        part = frames[0]
        try:
            backend_send(sock, part, NOBLOCK_MORE, len(part) < ZERO_COPY_MIN)
        except zmq.Again:
            return False
        # libzmq admits a multipart as a whole once its first part is accepted
        try:
            for i in range(1, last):
                part = frames[i]
                backend_send(sock, part, NOBLOCK_MORE, len(part) < ZERO_COPY_MIN)
            part = frames[last]
            backend_send(sock, part, NOBLOCK, len(part) < ZERO_COPY_MIN)
        except zmq.ZMQError as exc:
            raise RuntimeError(
                f"{self.config.url}: the peer went away in the middle of a message ({exc})"
            ) from exc
        return True

    async def _send_waiting(self, item: _Write) -> bool:
        """Wait for the socket to accept the message until its deadline; True once sent."""
        loop = self._loop
        while True:
            remaining = item.deadline - loop.time()
            if remaining <= 0:
                return False
            events = await self._asock.poll(remaining * 1000.0, zmq.POLLOUT)
            if item.future.done():
                return False
            if events & zmq.POLLOUT and self._send_nowait(item.frames):
                return True

    async def _await_ack(self, eos: bool) -> WriteResult:
        loop = self._loop
        deadline = loop.time() + self._ack_budget
        recv = self._sock.recv_multipart
        while True:
            try:
                reply = recv(NOBLOCK)
            except zmq.Again:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return WriteResult.ACK_TIMEOUT
                await self._asock.poll(remaining * 1000.0, zmq.POLLIN)
                continue
            if (self._ack_every and not eos) or (reply and reply[-1] == CONFIRMATION):
                return WriteResult.ACK
            self.unexpected_replies += 1
            log.warning("%s: ignoring a reply that is not %r: %r", self.config.url, CONFIRMATION,
                        [bytes(p[:32]) for p in reply])

    def _discard_replies(self) -> None:
        """Drop replies that arrived unasked (late acks of earlier EOS) before sending an EOS."""
        recv = self._sock.recv_multipart
        while True:
            try:
                recv(NOBLOCK)
            except zmq.Again:
                return
            self.stale_replies += 1
