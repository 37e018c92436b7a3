"""Real Savant peers for tests: savant-rs message builders, and savant-rs ZeroMQ readers and
writers with a small synchronous API.

Messages must be built with savant-rs (not by hand): Savant readers drop messages whose protocol
version differs from their own. ``to_bytes`` is deterministic (a message keeps the ``seq_id`` it
was given when it was built), so the bytes of a message received by a savant-rs reader can be
compared with the bytes that were sent.

A :class:`SavantReader` runs savant-rs's ``BlockingReader`` on a thread and collects what it
receives; REP and ROUTER readers send their confirmations from that thread, so an asyncio test
can await its own writer while the reader works. A :class:`SavantWriter` wraps
``BlockingWriter``; its calls block until Savant's result is known (an ack can take the whole
receive timeout), so call them from ``asyncio.to_thread`` in an asyncio test.

Both are context managers and stop their threads and sockets on exit.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import savant_rs
from savant_rs.primitives import EndOfStream, UserData
from savant_rs.utils import gen_frame
from savant_rs.zmq import (
    BlockingReader,
    BlockingWriter,
    ReaderConfigBuilder,
    ReaderResultMessage,
    TopicPrefixSpec,
    WriterConfigBuilder,
    WriterResultAck,
    WriterResultAckTimeout,
    WriterResultSendTimeout,
    WriterResultSuccess,
)

_serialization = savant_rs.serialization_module
Message = _serialization.Message


# ---- messages -------------------------------------------------------------------------------

def video_frame(source_id: str = "cam-1") -> Message:
    """A video frame message (savant-rs's generated test frame) of ``source_id``."""
    frame = gen_frame()
    frame.source_id = source_id
    return Message.video_frame(frame)


def user_data(source_id: str = "cam-1") -> Message:
    return Message.user_data(UserData(source_id))


def end_of_stream(source_id: str = "cam-1") -> Message:
    return Message.end_of_stream(EndOfStream(source_id))


def to_bytes(message: Message) -> bytes:
    return _serialization.save_message_to_bytes(message)


def from_bytes(data: bytes | memoryview) -> Message:
    return _serialization.load_message_from_bytes(bytes(data))


def is_eos(data: bytes | memoryview) -> bool:
    """Whether serialized Savant message bytes are an end-of-stream (the reader's ``is_eos``)."""
    return from_bytes(data).is_end_of_stream()


def frames(topic: str, message: Message, *extra: bytes) -> list[bytes]:
    """The ZeroMQ frames a Savant writer sends for ``message``: ``[topic, message, *extra]``."""
    return [topic.encode(), to_bytes(message), *extra]


# ---- results --------------------------------------------------------------------------------

_RESULT_KINDS = (
    (WriterResultSuccess, "success"),
    (WriterResultAck, "ack"),
    (WriterResultSendTimeout, "send_timeout"),
    (WriterResultAckTimeout, "ack_timeout"),
)


def result_kind(result: object) -> str:
    """``success``, ``ack``, ``send_timeout`` or ``ack_timeout`` for a savant-rs writer result
    (the values of mgfast's ``WriteResult``)."""
    for cls, kind in _RESULT_KINDS:
        if isinstance(result, cls):
            return kind
    raise TypeError(f"not a savant-rs writer result: {result!r}")


@dataclass(frozen=True)
class Received:
    """One message as a savant-rs reader returned it, in bytes."""

    topic: bytes
    message: bytes  # the Savant message re-serialized by savant-rs (deterministic)
    extra: tuple[bytes, ...]
    routing_id: bytes | None
    eos: bool

    @property
    def frames(self) -> list[bytes]:
        """``[topic, message, *extra]``, as the writer put them on the wire."""
        return [self.topic, self.message, *self.extra]


def _to_bytes(value) -> bytes | None:
    if value is None:
        return None
    return value if isinstance(value, bytes) else bytes(value)


# ---- readers --------------------------------------------------------------------------------

def prefix_spec(kind: str = "none", value: str = "") -> TopicPrefixSpec:
    """savant-rs's TopicPrefixSpec from mgfast's (kind, value) terms."""
    if kind == "none":
        return TopicPrefixSpec.none()
    if kind == "source_id":
        return TopicPrefixSpec.source_id(value)
    if kind == "prefix":
        return TopicPrefixSpec.prefix(value)
    raise ValueError(f"unknown topic prefix spec kind {kind!r}")


class SavantReader:
    """A savant-rs ``BlockingReader`` on a thread; ``url`` is a Savant reader URL
    (``sub|router|rep+bind|connect:...``)."""

    def __init__(self, url: str, *, receive_timeout: float = 0.1,
                 topic_prefix: TopicPrefixSpec | None = None, receive_hwm: int | None = None,
                 fix_ipc_permissions: int | None = None):
        builder = ReaderConfigBuilder(url)
        builder.with_receive_timeout(int(receive_timeout * 1000))
        if topic_prefix is not None:
            builder.with_topic_prefix_spec(topic_prefix)
        if receive_hwm is not None:
            builder.with_receive_hwm(receive_hwm)
        if fix_ipc_permissions is not None:
            builder.with_fix_ipc_permissions(fix_ipc_permissions)
        self.url = url
        self._reader = BlockingReader(builder.build())
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._reading = threading.Event()  # cleared: a stalled consumer that reads nothing
        self._reading.set()
        self._lock = threading.Condition()
        self.messages: list[Received] = []  # what savant-rs delivered, in order
        self.other: list[object] = []  # other non-timeout results (prefix mismatch, ...)
        self.errors: list[BaseException] = []  # receive() raised; the thread stops on the first

    def start(self) -> "SavantReader":
        self._reader.start()
        self._thread = threading.Thread(target=self._run, name=f"savant reader {self.url}",
                                        daemon=True)
        self._thread.start()
        return self

    def pause(self) -> None:
        """Stop reading (the socket stays open): a consumer that stalls."""
        self._reading.clear()

    def resume(self) -> None:
        self._reading.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._reading.wait(0.05):
                continue
            try:
                result = self._reader.receive()
            except BaseException as exc:  # recorded for the test to see
                with self._lock:
                    self.errors.append(exc)
                    self._lock.notify_all()
                return
            if isinstance(result, ReaderResultMessage):
                message = result.message
                item = Received(
                    topic=_to_bytes(result.topic),
                    message=to_bytes(message),
                    extra=tuple(_to_bytes(result.data(i)) for i in range(result.data_len())),
                    routing_id=_to_bytes(result.routing_id),
                    eos=message.is_end_of_stream(),
                )
                with self._lock:
                    self.messages.append(item)
                    self._lock.notify_all()
            elif type(result).__name__ != "ReaderResultTimeout":
                with self._lock:
                    self.other.append(result)
                    self._lock.notify_all()

    def wait_for(self, count: int, *, timeout: float = 10.0,
                 where: Callable[[Received], bool] | None = None) -> list[Received]:
        """The first ``count`` received messages (those matching ``where``); fail the test if
        they do not arrive within ``timeout`` seconds or the reader failed."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                selected = [m for m in self.messages if where is None or where(m)]
                if len(selected) >= count:
                    return selected[:count]
                if self.errors:
                    raise AssertionError(f"savant reader {self.url} failed: {self.errors[0]!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"savant reader {self.url}: {len(selected)} of {count} messages within "
                        f"{timeout}s; other results: {self.other!r}"
                    )
                self._lock.wait(remaining)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._reader.is_started():
            self._reader.shutdown()

    def __enter__(self) -> "SavantReader":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()


# ---- writers --------------------------------------------------------------------------------

@dataclass
class SavantWriter:
    """A savant-rs ``BlockingWriter``; ``url`` is a Savant writer URL
    (``pub|dealer|req+bind|connect:...``). Durations in seconds."""

    url: str
    send_timeout: float = 1.0
    send_retries: int = 3
    receive_timeout: float = 1.0
    receive_retries: int = 3
    send_hwm: int | None = None
    receive_hwm: int | None = None
    _writer: BlockingWriter | None = field(default=None, init=False, repr=False)

    def start(self) -> "SavantWriter":
        builder = WriterConfigBuilder(self.url)
        builder.with_send_timeout(int(self.send_timeout * 1000))
        builder.with_send_retries(self.send_retries)
        builder.with_receive_timeout(int(self.receive_timeout * 1000))
        builder.with_receive_retries(self.receive_retries)
        if self.send_hwm is not None:
            builder.with_send_hwm(self.send_hwm)
        if self.receive_hwm is not None:
            builder.with_receive_hwm(self.receive_hwm)
        self._writer = BlockingWriter(builder.build())
        self._writer.start()
        return self

    def send(self, topic: str, message: Message, extra: bytes = b"") -> str:
        """Send ``[topic, message, extra]`` (savant-rs's Python writers always send exactly one
        extra frame, empty if ``extra`` is) and return the result kind."""
        return result_kind(self._writer.send_message(topic, message, extra))

    def send_eos(self, topic: str) -> str:
        """Send an end-of-stream as ``[topic, message]`` and return the result kind."""
        return result_kind(self._writer.send_eos(topic))

    def close(self) -> None:
        if self._writer is not None and self._writer.is_started():
            self._writer.shutdown()
        self._writer = None

    def __enter__(self) -> "SavantWriter":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()
