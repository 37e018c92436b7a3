# cython: language_level=3
"""The client's messages: one ``Message`` object per Savant message read from the in_stream,
made in C by the reader (``mgfast._zmq_io.recv_messages``), and what the client does per
message with them in C: pick their lane (``split_by_topic``), take a batch off a lane's queue
(``take_batch``, its items go to ``encode_media_batch`` as they are) and settle answered ones
(``settle``). Declared for the other modules in ``mgfast/_messages.pxd``.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

NO_FRAMES = ()


@cython.no_gc  # holds bytes, memoryviews and a tuple of them: never part of a cycle
cdef class Message:
    """A Savant message as read from an in_stream: its ``topic``, the ``message`` frame, the
    ``extra`` frames after it (a tuple) and ``size``, the bytes of all of them."""

    def __init__(self, bytes topic not None, frames):
        """``frames`` as sent: ``[topic, message, *extra]``."""
        if len(frames) < 2:
            raise ValueError("a Savant message has a topic frame and a message frame")
        self.topic = topic
        self.message = frames[1]
        self.extra = tuple(frames[2:])
        self.size = _frames_size(topic, self.message, self.extra)

    @property
    def frames(self):
        """``[topic, message, *extra]``, as the writer sent them."""
        return [self.topic, self.message, *self.extra]

    def __repr__(self):
        return (f"<Message {self.topic!r} {self.size} bytes, "
                f"{2 + len(self.extra)} frames>")


cdef Py_ssize_t _frames_size(bytes topic, object message, tuple extra) except -1:
    cdef Py_ssize_t size = len(topic) + len(message)
    for part in extra:
        size += len(part)
    return size


cdef Message new_message(bytes topic, object message, tuple extra):
    cdef Message m = Message.__new__(Message)
    m.topic = topic
    m.message = message
    m.extra = extra
    m.size = _frames_size(topic, message, extra)
    return m


# ---- lanes ----------------------------------------------------------------------------------

cdef unsigned int _CRC_TABLE[256]


cdef void _crc_init() noexcept:
    cdef unsigned int c
    cdef int n, k
    for n in range(256):
        c = <unsigned int>n
        for k in range(8):
            c = (0xEDB88320U ^ (c >> 1)) if c & 1 else (c >> 1)
        _CRC_TABLE[n] = c


_crc_init()


cdef unsigned int _crc32(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """zlib's CRC-32 (the lane of a topic is crc32(topic) % lanes, as documented)."""
    cdef unsigned int c = 0xFFFFFFFFU
    cdef Py_ssize_t i
    for i in range(n):
        c = _CRC_TABLE[(c ^ p[i]) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFFU


def split_by_topic(list messages, Py_ssize_t lanes):
    """Messages in ``lanes`` lists, each message in list ``crc32(topic) % lanes``, in order;
    also their total size: ``(lists, size)``."""
    if lanes < 1:
        raise ValueError("lanes must be at least 1")
    cdef list out = [[] for _ in range(lanes)]
    cdef Message m
    cdef Py_ssize_t size = 0
    for obj in messages:
        m = <Message?>obj
        size += m.size
        (<list>out[_crc32(<const unsigned char*>PyBytes_AS_STRING(m.topic),
                          PyBytes_GET_SIZE(m.topic)) % lanes]).append(m)
    return out, size


def take_batch(object unsent, Py_ssize_t max_items, Py_ssize_t max_parts, Py_ssize_t budget):
    """Pop the next batch off ``unsent`` (a deque of Messages, not empty): its first message,
    then those that follow while the batch stays within ``max_items`` messages, ``max_parts``
    extra frames and ``budget`` frame bytes. ``(messages, frame bytes)``."""
    popleft = unsent.popleft
    cdef Message m = <Message?>popleft()
    cdef list items = [m]
    cdef Py_ssize_t parts = len(m.extra)
    cdef Py_ssize_t size = m.size
    cdef Py_ssize_t n
    while unsent and len(items) < max_items:
        m = <Message?>unsent[0]
        n = len(m.extra)
        if parts + n > max_parts or size + m.size > budget:
            break
        popleft()
        items.append(m)
        parts += n
        size += m.size
    return items, size


def settle(object sent, Py_ssize_t count):
    """Pop ``count`` Messages off the deque ``sent``; their frame bytes."""
    popleft = sent.popleft
    cdef Py_ssize_t size = 0
    for _ in range(count):
        size += (<Message?>popleft()).size
    return size
