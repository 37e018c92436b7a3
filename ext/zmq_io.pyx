# cython: language_level=3
"""Non-blocking multipart send and receive straight on libzmq, many messages per call.

pyzmq costs one Python call, one Frame or bytes object and one option read per frame; with
small Savant messages that was a third of the client's and a quarter of the worker's CPU
(py-spy, bench/RESULTS.md). These functions do the per-frame work in C and return to Python
once per message or per run of messages.

They act on the libzmq socket behind a pyzmq socket (``sock.underlying``), with the libzmq that
pyzmq itself loaded: its symbols are looked up through pyzmq's extension module at import, so
the socket handle and the functions always come from the same library. Every call is
non-blocking (ZMQ_DONTWAIT); waiting stays with the asyncio socket's poll. Frames are copied
(in: into ``bytes``; out: by libzmq into its message), which for small frames costs less than
any zero-copy bookkeeping; ``recv_many`` can hand large received frames over uncopied instead,
as read-only memoryviews of a small object that owns libzmq's message (``ZmqFrame``).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_FillInfo, PyBuffer_Release,
                             PyBUF_SIMPLE)
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uintptr_t
from libc.errno cimport EAGAIN, EINTR

import zmq
import zmq.backend.cython._zmq as _pyzmq_backend

cdef extern from "<dlfcn.h>" nogil:
    void* dlopen(const char* filename, int flag)
    void* dlsym(void* handle, const char* symbol)
    char* dlerror()
    int RTLD_NOW
    int RTLD_NOLOAD

cdef extern from *:
    """
    /* libzmq's zmq_msg_t: 64 opaque bytes, pointer-aligned (zmq.h, libzmq 4.x) */
    typedef union { unsigned char _[64]; void *p; double d; } mg_zmq_msg_t;
    """
    ctypedef struct mg_zmq_msg_t:
        pass

cdef enum:
    ZMQ_DONTWAIT = 1
    ZMQ_SNDMORE = 2

cdef enum:
    # Parts whose buffers fit on the stack while a multipart is sent (Savant sends a few).
    _STACK_PARTS = 16

ctypedef int (*msg_init_t)(mg_zmq_msg_t*) noexcept nogil
ctypedef int (*msg_recv_t)(mg_zmq_msg_t*, void*, int) noexcept nogil
ctypedef void* (*msg_data_t)(mg_zmq_msg_t*) noexcept nogil
ctypedef size_t (*msg_size_t)(const mg_zmq_msg_t*) noexcept nogil
ctypedef int (*msg_more_t)(const mg_zmq_msg_t*) noexcept nogil
ctypedef int (*msg_close_t)(mg_zmq_msg_t*) noexcept nogil
ctypedef int (*msg_move_t)(mg_zmq_msg_t*, mg_zmq_msg_t*) noexcept nogil
ctypedef int (*send_t)(void*, const void*, size_t, int) noexcept nogil
ctypedef int (*errno_t)() noexcept nogil

cdef msg_init_t _msg_init
cdef msg_recv_t _msg_recv
cdef msg_data_t _msg_data
cdef msg_size_t _msg_size
cdef msg_more_t _msg_more
cdef msg_close_t _msg_close
cdef msg_move_t _msg_move
cdef send_t _send
cdef errno_t _errno


cdef void* _symbol(void* lib, const char* name) except NULL:
    cdef void* address = dlsym(lib, name)
    if address == NULL:
        raise ImportError(f"mgfast._zmq_io: libzmq symbol {name.decode()} not found through "
                          f"pyzmq ({_pyzmq_backend.__file__}); reinstall pyzmq")
    return address


cdef _load():
    global _msg_init, _msg_recv, _msg_data, _msg_size, _msg_more, _msg_close, _msg_move
    global _send, _errno
    path = _pyzmq_backend.__file__.encode()
    cdef void* lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD)
    if lib == NULL:
        raise ImportError(f"mgfast._zmq_io: cannot open pyzmq's backend {path!r}: "
                          f"{(<bytes>dlerror()).decode(errors='replace')}")
    # dlsym on a handle searches that object and then its dependencies: pyzmq's libzmq
    _msg_init = <msg_init_t>_symbol(lib, b"zmq_msg_init")
    _msg_recv = <msg_recv_t>_symbol(lib, b"zmq_msg_recv")
    _msg_data = <msg_data_t>_symbol(lib, b"zmq_msg_data")
    _msg_size = <msg_size_t>_symbol(lib, b"zmq_msg_size")
    _msg_more = <msg_more_t>_symbol(lib, b"zmq_msg_more")
    _msg_close = <msg_close_t>_symbol(lib, b"zmq_msg_close")
    _msg_move = <msg_move_t>_symbol(lib, b"zmq_msg_move")
    _send = <send_t>_symbol(lib, b"zmq_send")
    _errno = <errno_t>_symbol(lib, b"zmq_errno")


_load()


cdef inline void* _socket(uintptr_t handle) except NULL:
    if handle == 0:
        raise zmq.ZMQError(zmq.ENOTSOCK)
    return <void*>handle


cdef class ZmqFrame:
    """A received frame that owns its libzmq message: its buffer is libzmq's (read-only)."""

    cdef mg_zmq_msg_t msg
    cdef Py_ssize_t size

    def __cinit__(self):
        _msg_init(&self.msg)

    def __dealloc__(self):
        _msg_close(&self.msg)

    def __getbuffer__(self, Py_buffer* view, int flags):
        PyBuffer_FillInfo(view, self, _msg_data(&self.msg), self.size, 1, flags)

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __len__(self):
        return self.size


cdef list _recv_one(void* sock, Py_ssize_t keep_from=0, Py_ssize_t first_kept=1):
    """One whole multipart, or None if none is queued. With ``keep_from`` > 0, frames from
    index ``first_kept`` on of at least ``keep_from`` bytes come as memoryviews of a ZmqFrame."""
    cdef mg_zmq_msg_t msg
    cdef list parts = None
    cdef int more = 1
    cdef int err
    cdef Py_ssize_t size
    cdef ZmqFrame frame
    while more:
        _msg_init(&msg)
        if _msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0:
            err = _errno()
            _msg_close(&msg)
            if parts is None and (err == EAGAIN or err == EINTR):
                return None  # EINTR: a signal; the caller's poll sees the message next
            raise zmq.ZMQError(err)
        size = <Py_ssize_t>_msg_size(&msg)
        more = _msg_more(&msg)
        if keep_from > 0 and size >= keep_from and parts is not None \
                and len(parts) >= first_kept:
            frame = ZmqFrame()
            _msg_move(&frame.msg, &msg)
            frame.size = size
            part = memoryview(frame)
        else:
            part = PyBytes_FromStringAndSize(<char*>_msg_data(&msg), size)
        _msg_close(&msg)
        if parts is None:
            parts = [part]
        else:
            parts.append(part)
    return parts


def recv_multipart(uintptr_t handle):
    """The next multipart as a list of bytes, or None when nothing is queued."""
    return _recv_one(_socket(handle))


def recv_many(uintptr_t handle, Py_ssize_t limit, Py_ssize_t keep_from=0,
              Py_ssize_t first_kept=1):
    """Up to ``limit`` queued multiparts (lists of bytes), oldest first; [] when none. With
    ``keep_from`` > 0, frames from index ``first_kept`` on of at least ``keep_from`` bytes are
    read-only memoryviews of libzmq's own buffer instead of copies."""
    if first_kept < 1:
        raise ValueError("first_kept must be at least 1: the first frame is always bytes")
    cdef void* sock = _socket(handle)
    cdef list out = []
    cdef list parts
    while len(out) < limit:
        parts = _recv_one(sock, keep_from, first_kept)
        if parts is None:
            break
        out.append(parts)
    return out


cdef int _send_view(void* sock, Py_buffer* view, int flags) except -2:
    """0 sent, -1 would block (EAGAIN); raises ZMQError on any other failure."""
    cdef int rc = _send(sock, view.buf, <size_t>view.len, flags)
    cdef int err
    if rc >= 0:
        return 0
    err = _errno()
    if err == EAGAIN or err == EINTR:
        return -1  # EINTR: a signal; the caller waits for POLLOUT and tries again
    raise zmq.ZMQError(err)


cdef bint _send_one(void* sock, object frames) except -1:
    """Sends a whole multipart; False if the socket would block on its first part (libzmq
    admits a multipart whole once its first part is accepted). Raises on anything else.

    Every part's buffer is taken before the first is sent: a part that is not bytes-like
    raises before anything is queued, instead of leaving half a multipart that libzmq would
    join to the next message."""
    cdef Py_ssize_t count = len(frames)
    cdef Py_ssize_t taken = 0
    cdef Py_ssize_t i
    cdef Py_buffer stack_views[_STACK_PARTS]
    cdef Py_buffer* views = stack_views
    cdef int more
    if count == 0:
        raise ValueError("a multipart needs at least one frame")
    if count > _STACK_PARTS:
        views = <Py_buffer*>PyMem_Malloc(count * sizeof(Py_buffer))
        if views == NULL:
            raise MemoryError()
    try:
        while taken < count:
            PyObject_GetBuffer(frames[taken], &views[taken], PyBUF_SIMPLE)
            taken += 1
        for i in range(count):
            more = ZMQ_SNDMORE if i < count - 1 else 0
            if _send_view(sock, &views[i], ZMQ_DONTWAIT | more) < 0:
                if i == 0:
                    return False
                raise zmq.ZMQError(EAGAIN, "the socket refused the rest of a multipart")
        return True
    finally:
        for i in range(taken):
            PyBuffer_Release(&views[i])
        if views != stack_views:
            PyMem_Free(views)


def send_multipart(uintptr_t handle, frames):
    """Send ``frames`` (a sequence of bytes-like) as one multipart; False if it would block."""
    return _send_one(_socket(handle), frames)


def send_many(uintptr_t handle, list messages, Py_ssize_t start, Py_ssize_t stop):
    """Send ``messages[start:stop]`` (each a sequence of frames) in order until one would
    block; returns the index of the first message not sent (``stop`` if all were)."""
    cdef void* sock = _socket(handle)
    cdef Py_ssize_t i = start
    while i < stop:
        if not _send_one(sock, messages[i]):
            break
        i += 1
    return i
