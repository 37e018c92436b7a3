"""The client's in_stream: a Savant ZeroMQ reader (sub, router or rep) for asyncio.

    reader = InStreamReader(config, is_eos)
    await reader.start()                      # EndpointError names the endpoint
    messages = await reader.recv_many(limit)  # 1 to limit of Message(topic, message, extra)
    await reader.close()                      # pending calls raise StreamClosed

A :class:`Message` holds the frames as the Savant writer sent them (a ROUTER's routing id
removed): bytes, except frames after the topic of at least :data:`ZERO_COPY_FROM` bytes, which
are read-only memoryviews of libzmq's buffer. Without a topic filter, a SUB or ROUTER reads and
checks each message in C (``recv_messages``), by the same rules as ``_accept``. Counters:
``received``, ``filtered``, ``stale``, ``dropped``. Cancellation-safe.
Replies, topic filtering, stale routing ids and what is dropped: docs/protocol.md section 1,
"Reader semantics".
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import zmq
import zmq.asyncio

from mgfast._messages import Message
from mgfast._zmq_io import readable, recv_many, recv_messages, recv_multipart, send_multipart
from mgfast.zmq.settings import InStreamConfig
from mgfast.zmq.sockets import CONFIRMATION, StreamClosed, open_socket

ZERO_COPY_FROM = 64 * 1024  # frame bytes from which a received frame is not copied

log = logging.getLogger(__name__)

SKIPPED_BEFORE_YIELD = 64  # unwanted messages read back to back before yielding to the loop
TERM_TIMEOUT = 2.0  # seconds close() waits for the ZeroMQ context to terminate

# A multipart as read: [routing id (ROUTER),] topic, message, *extra. The routing id and the
# topic are bytes, the rest bytes or memoryviews: more than a list's type can say.
Parts = list[Any]


class InStreamReader:
    """Savant reader semantics for one in_stream socket; one consumer calls ``recv``."""

    def __init__(self, config: InStreamConfig, is_eos: Callable[[bytes | memoryview], bool],
                 context: zmq.asyncio.Context | None = None):
        # configuration
        self.config = config
        socket_type = config.url.socket_type
        if socket_type not in ("sub", "router", "rep"):
            raise ValueError(f"{config.url} is not a reader socket (sub, router or rep)")
        self._is_eos = is_eos
        self._router = socket_type == "router"
        self._rep = socket_type == "rep"
        self._head = 1 if self._router else 0  # frames before the topic
        self._spec = config.topic_prefix_spec
        self._filtering = config.topic_prefix_spec.kind != "none"
        # resources, created by start()
        self._context = context
        self._owns_context = context is None
        self._asock: zmq.asyncio.Socket | None = None
        self._handle = 0  # the libzmq socket, for mgfast._zmq_io; 0 when closed
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1  # the socket's ZMQ_FD, watched by the loop while the socket is open
        self._waiter: asyncio.Future[None] | None = None  # recv_many waits on it for a message
        # ROUTER: current routing id per topic, and the retired (topic, routing id) pairs
        self._routes: dict[bytes, bytes] = {}
        self._retired: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
        self._retired_max = max(1, config.source_cache_size)
        # counters, for metrics
        self.received = 0  # messages returned by recv
        self.dropped = 0  # malformed multiparts
        self.filtered = 0  # topic did not match topic_prefix_spec
        self.stale = 0  # ROUTER: topic came from a routing id that was replaced
        self.reply_failures = 0  # an OK reply libzmq did not take

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the socket; raises EndpointError naming the endpoint."""
        if self._asock is not None or self._closed:
            raise RuntimeError(f"reader for {self.config.url} was already started")
        if self._context is None:
            self._context = zmq.asyncio.Context()
        spec = self._spec
        try:
            self._asock = open_socket(
                self._context,
                self.config.url,
                receive_hwm=self.config.receive_hwm,
                fix_ipc_permissions=self.config.fix_ipc_permissions,
                subscribe=spec.value if spec.kind != "none" else b"",
            )
        except BaseException:
            await self._release_context()
            raise
        self._handle = self._asock.underlying
        self._loop = asyncio.get_running_loop()
        fd = self._asock.getsockopt(zmq.FD)
        assert isinstance(fd, int)  # an int option (pyzmq types every option as int | bytes)
        self._fd = fd
        self._loop.add_reader(self._fd, self._on_fd)

    async def recv(self) -> Message:
        """The next accepted message."""
        return (await self.recv_many(1))[0]

    async def recv_many(self, limit: int) -> list[Message]:
        """Between 1 and ``limit`` accepted messages, oldest first."""
        skipped = 0
        while True:
            if self._handle == 0:
                raise StreamClosed(f"reader for {self.config.url} is not running")
            messages, taken = self._take(limit)
            if not taken:
                if not readable(self._handle):
                    await self._readable()
                continue
            if messages:
                self.received += len(messages)
                return messages
            skipped += taken
            if skipped >= SKIPPED_BEFORE_YIELD:
                skipped = 0
                await asyncio.sleep(0)

    async def close(self) -> None:
        """Close the socket (pending ``recv`` calls raise StreamClosed)."""
        if self._closed:
            return
        self._closed = True
        if self._asock is not None:
            sock, self._asock, self._handle = self._asock, None, 0
            assert self._loop is not None  # set with the socket
            self._loop.remove_reader(self._fd)
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(StreamClosed(f"reader for {self.config.url} was closed"))
            sock.close(linger=0)  # stopping: replies still queued would only delay the exit
        await self._release_context()

    async def _release_context(self) -> None:
        if self._owns_context and self._context is not None:
            context, self._context = self._context, None
            try:  # term() waits for every socket; never let it hold a shutdown
                await asyncio.wait_for(asyncio.shield(asyncio.to_thread(context.term)),
                                       TERM_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("ZeroMQ context did not terminate in time",
                            extra={"endpoint": str(self.config.url)})

    # ---- waiting ---------------------------------------------------------------------------

    async def _readable(self) -> None:
        """Until a message is queued. ZMQ_FD only says that something changed: ``_on_fd``
        asks libzmq, which also clears it (no pyzmq poller, future or getpid per wait)."""
        waiter = self._waiter
        if waiter is None or waiter.done():
            assert self._loop is not None  # set with the socket
            waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    def _on_fd(self) -> None:
        if self._handle and readable(self._handle):
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    # ---- receiving -------------------------------------------------------------------------

    def _take(self, limit: int) -> tuple[list[Message], int]:
        """Up to ``limit`` queued multiparts through ``_accept``'s rules: the messages
        delivered, and how many multiparts were taken. A REP socket must reply before it can
        receive again: one at a time."""
        if not self._filtering and not self._rep:
            return recv_messages(self._handle, limit, ZERO_COPY_FROM,
                                 self._routes if self._router else None, self._is_eos,
                                 self._accept)
        messages: list[Message] = []
        taken = 0
        for parts in self._multiparts(limit):
            taken += 1
            accepted = self._accept(parts)  # a REP socket replies here, before its next read
            if accepted is not None:
                messages.append(accepted)
        return messages, taken

    def _multiparts(self, limit: int) -> Iterator[Parts]:
        if not self._rep:
            yield from recv_many(self._handle, limit, ZERO_COPY_FROM, 2 if self._router else 1)
            return
        for _ in range(limit):
            parts = recv_multipart(self._handle)
            if parts is None:
                return
            yield parts

    def _accept(self, parts: Parts) -> Message | None:
        """Reply as Savant does and decide whether the multipart is delivered."""
        if self._rep:
            self._reply(CONFIRMATION)
        head = self._head
        if len(parts) < head + 2:
            self.dropped += 1
            log.debug("%s: dropped a multipart of %d frames", self.config.url, len(parts))
            return None
        frames = parts[head:] if head else parts
        topic = frames[0]
        accepted = not self._filtering or self._spec.accepts(topic)
        if self._router or not accepted:
            try:
                eos = bool(self._is_eos(frames[1]))
            except Exception as exc:
                self.dropped += 1
                log.debug("%s: dropped a message that is not a Savant message: %s",
                          self.config.url, exc)
                return None
            if eos:
                if self._router:
                    self._reply(parts[0], CONFIRMATION)
                return Message(topic, frames)
            if not accepted:
                self.filtered += 1
                return None
            if self._router and not self._route_allows(topic, parts[0]):
                self.stale += 1
                return None
        return Message(topic, frames)

    def _reply(self, *frames: bytes) -> None:
        try:
            sent = send_multipart(self._handle, frames)
        except zmq.ZMQError as exc:
            sent, exc_text = False, str(exc)
        else:
            exc_text = "the socket would block"
        if not sent:
            self.reply_failures += 1
            log.warning("%s: could not send the confirmation: %s", self.config.url, exc_text)

    def _route_allows(self, topic: bytes, routing_id: bytes) -> bool:
        current = self._routes.get(topic)
        if current is None:
            self._routes[topic] = routing_id
            return True
        if current == routing_id:
            return True
        if (topic, routing_id) in self._retired:
            return False  # a writer that was replaced for this topic
        retired = self._retired
        retired[(topic, current)] = None
        if len(retired) > self._retired_max:
            retired.popitem(last=False)
        self._routes[topic] = routing_id
        return True

