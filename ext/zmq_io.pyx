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
any zero-copy bookkeeping. Large frames need not be: ``recv_many`` can hand them over uncopied,
as read-only memoryviews of a small object that owns libzmq's message (``ZmqFrame``), and a
frame that is a view of a ``SendBuffer`` goes to libzmq by reference (``zmq_msg_init_data``).
"""

from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                             PyBytes_GET_SIZE)
from cpython.dict cimport PyDict_GetItem
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_FillInfo, PyBuffer_Release,
                             PyBUF_SIMPLE)
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.string cimport memcmp, memcpy
from libc.stdint cimport uintptr_t
from libc.errno cimport EAGAIN, EINTR

import zmq
import zmq.backend.cython._zmq as _pyzmq_backend

from mgfast._messages cimport NO_FRAMES, Message, new_message

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

cdef extern from *:
    """
    /* A SendBuffer's bytes and a count of their owners: the SendBuffer object and each libzmq
       message that refers to them. libzmq drops its reference from its I/O thread, without the
       GIL, hence the atomics; whoever drops the last one frees the block. */
    typedef struct { long refs; unsigned char data[]; } mg_shared_t;
    static long mg_shared_alive = 0;
    static mg_shared_t* mg_shared_new(size_t size) {
        mg_shared_t* s = (mg_shared_t*)malloc(sizeof(mg_shared_t) + size);
        if (s) { s->refs = 1; __atomic_add_fetch(&mg_shared_alive, 1, __ATOMIC_RELAXED); }
        return s;
    }
    static void mg_shared_acquire(mg_shared_t* s) {
        __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED);
    }
    static void mg_shared_release(void* data, void* hint) {
        mg_shared_t* s = (mg_shared_t*)hint;
        (void)data;
        if (__atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) == 0) {
            free(s);
            __atomic_sub_fetch(&mg_shared_alive, 1, __ATOMIC_RELAXED);
        }
    }
    static long mg_shared_count(void) { return __atomic_load_n(&mg_shared_alive, __ATOMIC_RELAXED); }
    """
    ctypedef struct mg_shared_t:
        long refs
        unsigned char data[1]
    mg_shared_t* mg_shared_new(size_t size) nogil
    void mg_shared_acquire(mg_shared_t* s) nogil
    void mg_shared_release(void* data, void* hint) noexcept nogil
    long mg_shared_count() nogil

cdef enum:
    ZMQ_DONTWAIT = 1
    ZMQ_SNDMORE = 2
    ZMQ_EVENTS = 15
    ZMQ_POLLIN = 1

cdef extern from "Python.h":
    bint PyMemoryView_Check(object)
    PyObject* PyMemoryView_GET_BASE(object)  # the exporter the memoryview was made from

cdef enum:
    # Parts whose buffers fit on the stack while a multipart is sent (Savant sends a few).
    _STACK_PARTS = 16

# A frame of at least this many bytes that is a view of a SendBuffer goes to libzmq by
# reference; below it, libzmq's own copy costs less than a reference's bookkeeping (a small
# allocation for libzmq's content record, two atomic operations and the release call from the
# I/O thread). Measured in bench/zero_copy.py.
cdef enum:
    _ZERO_COPY_MIN = 32 * 1024
ZERO_COPY_MIN = _ZERO_COPY_MIN

ctypedef int (*msg_init_t)(mg_zmq_msg_t*) noexcept nogil
ctypedef int (*msg_recv_t)(mg_zmq_msg_t*, void*, int) noexcept nogil
ctypedef void* (*msg_data_t)(mg_zmq_msg_t*) noexcept nogil
ctypedef size_t (*msg_size_t)(const mg_zmq_msg_t*) noexcept nogil
ctypedef int (*msg_more_t)(const mg_zmq_msg_t*) noexcept nogil
ctypedef int (*msg_close_t)(mg_zmq_msg_t*) noexcept nogil
ctypedef int (*msg_move_t)(mg_zmq_msg_t*, mg_zmq_msg_t*) noexcept nogil
ctypedef int (*send_t)(void*, const void*, size_t, int) noexcept nogil
ctypedef void (*free_fn_t)(void*, void*) noexcept nogil
ctypedef int (*msg_init_data_t)(mg_zmq_msg_t*, void*, size_t, free_fn_t, void*) noexcept nogil
ctypedef int (*msg_send_t)(mg_zmq_msg_t*, void*, int) noexcept nogil
ctypedef int (*errno_t)() noexcept nogil
ctypedef int (*getsockopt_t)(void*, int, void*, size_t*) noexcept nogil

cdef msg_init_t _msg_init
cdef msg_recv_t _msg_recv
cdef msg_data_t _msg_data
cdef msg_size_t _msg_size
cdef msg_more_t _msg_more
cdef msg_close_t _msg_close
cdef msg_move_t _msg_move
cdef send_t _send
cdef msg_init_data_t _msg_init_data
cdef msg_send_t _msg_send
cdef errno_t _errno
cdef getsockopt_t _getsockopt


cdef void* _symbol(void* lib, const char* name) except NULL:
    cdef void* address = dlsym(lib, name)
    if address == NULL:
        raise ImportError(f"mgfast._zmq_io: libzmq symbol {name.decode()} not found through "
                          f"pyzmq ({_pyzmq_backend.__file__}); reinstall pyzmq")
    return address


cdef _load():
    global _msg_init, _msg_recv, _msg_data, _msg_size, _msg_more, _msg_close, _msg_move
    global _send, _msg_init_data, _msg_send, _errno, _getsockopt
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
    _msg_init_data = <msg_init_data_t>_symbol(lib, b"zmq_msg_init_data")
    _msg_send = <msg_send_t>_symbol(lib, b"zmq_msg_send")
    _errno = <errno_t>_symbol(lib, b"zmq_errno")
    _getsockopt = <getsockopt_t>_symbol(lib, b"zmq_getsockopt")


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


cdef class SendBuffer:
    """Bytes that libzmq can send without copying: a fixed-size writable block, filled once
    (``append``, or ``unfilled`` + ``advance`` to read into it), whose large slices go to
    libzmq by reference. The block lives until this object and every message sent from it
    are gone, so nothing waits on libzmq and no Python object is touched off the GIL. Memory
    is taken without being zeroed: a block costs resident memory only as it is filled."""

    cdef mg_shared_t* shared
    cdef readonly Py_ssize_t size
    cdef readonly Py_ssize_t filled

    def __cinit__(self, Py_ssize_t size):
        if size < 0:
            raise ValueError(f"a SendBuffer cannot have a negative size ({size})")
        self.shared = mg_shared_new(<size_t>size)
        if self.shared == NULL:
            raise MemoryError()
        self.size = size

    def __dealloc__(self):
        if self.shared != NULL:
            mg_shared_release(NULL, self.shared)

    def __getbuffer__(self, Py_buffer* view, int flags):
        PyBuffer_FillInfo(view, self, self.shared.data, self.size, 0, flags)

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __len__(self):
        return self.size

    def append(self, data):
        """Copy ``data`` (any bytes-like) in after what was filled; ValueError past the end."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if view.len > self.size - self.filled:
                raise ValueError(f"{view.len} bytes do not fit in the {self.size - self.filled} "
                                 f"left of a SendBuffer")
            memcpy(self.shared.data + self.filled, view.buf, <size_t>view.len)
            self.filled += view.len
        finally:
            PyBuffer_Release(&view)

    def unfilled(self):
        """A writable memoryview of what is not filled yet, to read into (then ``advance``)."""
        return memoryview(self)[self.filled:]

    def advance(self, Py_ssize_t count):
        """Count ``count`` more bytes as filled (written through ``unfilled``)."""
        if count < 0 or count > self.size - self.filled:
            raise ValueError(f"cannot advance a SendBuffer by {count} bytes "
                             f"({self.size - self.filled} unfilled)")
        self.filled += count


def send_buffers_alive():
    """SendBuffer blocks not freed yet: held by a SendBuffer or by a message in libzmq."""
    return mg_shared_count()


cdef mg_shared_t* _shared_of(object frame, Py_buffer* view):
    """The SendBuffer block a large frame's bytes lie in, or NULL (then libzmq copies it)."""
    cdef object base
    cdef SendBuffer owner
    if view.len < _ZERO_COPY_MIN:
        return NULL
    if PyMemoryView_Check(frame):
        base = <object>PyMemoryView_GET_BASE(frame)
    else:
        base = frame
    if type(base) is not SendBuffer:
        return NULL
    owner = <SendBuffer>base
    return owner.shared


cdef object _frame(mg_zmq_msg_t* msg, bint keep):
    """A received frame as bytes, or with ``keep`` as a memoryview of a ZmqFrame that takes
    libzmq's message over (``msg`` is left empty either way, ready to close)."""
    cdef Py_ssize_t size = <Py_ssize_t>_msg_size(msg)
    cdef ZmqFrame frame
    if keep:
        frame = ZmqFrame()
        _msg_move(&frame.msg, msg)
        frame.size = size
        return memoryview(frame)
    return PyBytes_FromStringAndSize(<char*>_msg_data(msg), size)


cdef inline object _later_frame(mg_zmq_msg_t* msg, Py_ssize_t keep_from):
    """A frame after the topic: a memoryview from ``keep_from`` bytes on (0: always bytes)."""
    return _frame(msg, keep_from > 0 and <Py_ssize_t>_msg_size(msg) >= keep_from)


cdef int _recv_frame(void* sock, mg_zmq_msg_t* msg, bint first) except -2:
    """Receive one frame into ``msg`` (initialised here): 1 if more frames follow, 0 if it was
    the last, -1 if nothing was queued (only possible for a multipart's first frame)."""
    cdef int err
    _msg_init(msg)
    if _msg_recv(msg, sock, ZMQ_DONTWAIT) < 0:
        err = _errno()
        _msg_close(msg)
        if first and (err == EAGAIN or err == EINTR):
            return -1  # EINTR: a signal; the caller's poll sees the message next
        raise zmq.ZMQError(err)
    return 1 if _msg_more(msg) else 0


cdef list _recv_one(void* sock, Py_ssize_t keep_from=0, Py_ssize_t first_kept=1):
    """One whole multipart, or None if none is queued. With ``keep_from`` > 0, frames from
    index ``first_kept`` on of at least ``keep_from`` bytes come as memoryviews of a ZmqFrame."""
    cdef mg_zmq_msg_t msg
    cdef list parts = []
    cdef int more = 1
    while more:
        more = _recv_frame(sock, &msg, not parts)
        if more < 0:
            return None
        parts.append(_later_frame(&msg, keep_from if len(parts) >= first_kept else 0))
        _msg_close(&msg)
    return parts


def readable(uintptr_t handle):
    """Whether a message is queued (ZMQ_EVENTS has POLLIN). Reading ZMQ_EVENTS also lets libzmq
    take in what its I/O thread signalled, which is what clears the socket's ZMQ_FD: a reader
    waiting on that fd calls this on every wake-up."""
    cdef int events = 0
    cdef size_t size = sizeof(int)
    if _getsockopt(_socket(handle), ZMQ_EVENTS, &events, &size) != 0:
        raise zmq.ZMQError(_errno())
    return (events & ZMQ_POLLIN) != 0


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


# ---- messages -------------------------------------------------------------------------------

def recv_messages(uintptr_t handle, Py_ssize_t limit, Py_ssize_t keep_from, object routes,
                  object is_eos, object accept):
    """Up to ``limit`` queued multiparts as Messages, oldest first, and how many multiparts
    were taken (those not delivered are not in the list): ``(messages, taken)``.

    ``routes`` None is a SUB socket without a topic filter: every multipart of two frames or
    more is a message. ``routes`` a dict is a ROUTER without a topic filter (a routing id
    first): a message from the routing id that ``routes`` has for its topic, and that is not
    an end of stream (``is_eos(message)``), is one. Every other multipart goes to
    ``accept(parts) -> Message | None``, the reader's own rules. The message frame and
    extra frames of ``keep_from`` bytes or more come as memoryviews of libzmq's buffer."""
    cdef void* sock = _socket(handle)
    cdef bint routed = routes is not None
    cdef dict route_of = routes if routed else None
    cdef list out = []
    cdef list parts
    cdef list extra_list
    cdef tuple extra
    cdef Py_ssize_t taken = 0
    cdef Py_ssize_t rid_size
    cdef mg_zmq_msg_t rid
    cdef mg_zmq_msg_t msg
    cdef int more
    cdef bint have_rid = False
    cdef bint fast
    cdef PyObject* owner
    cdef bytes topic
    while taken < limit:
        if routed:
            more = _recv_frame(sock, &rid, True)
            if more < 0:
                break
            have_rid = True
        try:
            topic = None
            message = None
            extra_list = None
            if routed:
                if more:
                    more = _recv_frame(sock, &msg, False)
                    topic = _frame(&msg, False)
                    _msg_close(&msg)
            else:
                more = _recv_frame(sock, &msg, True)
                if more < 0:
                    break
                topic = _frame(&msg, False)
                _msg_close(&msg)
            taken += 1
            if more:
                more = _recv_frame(sock, &msg, False)
                message = _later_frame(&msg, keep_from)
                _msg_close(&msg)
            while more:
                more = _recv_frame(sock, &msg, False)
                part = _later_frame(&msg, keep_from)
                _msg_close(&msg)
                if extra_list is None:
                    extra_list = [part]
                else:
                    extra_list.append(part)
            extra = NO_FRAMES if extra_list is None else tuple(extra_list)
            fast = message is not None
            if fast and routed:
                owner = PyDict_GetItem(route_of, topic)
                rid_size = <Py_ssize_t>_msg_size(&rid)
                fast = (owner != NULL and PyBytes_CheckExact(<object>owner)
                        and PyBytes_GET_SIZE(<object>owner) == rid_size
                        and memcmp(PyBytes_AS_STRING(<object>owner), _msg_data(&rid),
                                   rid_size) == 0)
                if fast:
                    try:
                        fast = not is_eos(message)
                    except Exception:
                        fast = False  # accept counts and logs it
            if fast:
                out.append(new_message(topic, message, extra))
                continue
            parts = []
            if routed:
                parts.append(_frame(&rid, False))
            for part in (topic, message):
                if part is not None:
                    parts.append(part)
            if extra_list is not None:
                parts.extend(extra_list)
            m = accept(parts)
            if m is not None:
                out.append(<Message?>m)
        finally:
            if have_rid:
                _msg_close(&rid)
                have_rid = False
    return out, taken


cdef void* socket_of(uintptr_t handle) except NULL:
    """The libzmq socket of a handle (``sock.underlying``), for the other extension modules."""
    return _socket(handle)


cdef int _refused(int err, bint first) except -2:
    """A frame libzmq did not take (``err``): -1 when it would block on a multipart's first
    frame (nothing is queued; EINTR, a signal, too: the caller waits for POLLOUT and tries
    again). Anything else raises: libzmq admits a multipart whole once it took the first."""
    if err == EAGAIN or err == EINTR:
        if first:
            return -1
        raise zmq.ZMQError(EAGAIN, "the socket refused the rest of a multipart")
    raise zmq.ZMQError(err)


cdef int send_frame(void* sock, const void* data, size_t size, bint first, bint more
                    ) except -2:
    """One frame of a multipart, copied by libzmq: 0 sent, -1 would block on the first frame
    (``_refused``). Also for the codec, which sends frames straight from a request body."""
    if _send(sock, data, size, ZMQ_DONTWAIT | (ZMQ_SNDMORE if more else 0)) >= 0:
        return 0
    return _refused(_errno(), first)


cdef int _send_ref(void* sock, Py_buffer* view, mg_shared_t* shared, bint first, bint more
                   ) except -2:
    """As send_frame, handing libzmq a reference to the SendBuffer block instead of a copy."""
    cdef mg_zmq_msg_t msg
    cdef int err
    mg_shared_acquire(shared)
    if _msg_init_data(&msg, view.buf, <size_t>view.len, mg_shared_release, shared) != 0:
        mg_shared_release(NULL, shared)
        raise zmq.ZMQError(_errno())
    if _msg_send(&msg, sock, ZMQ_DONTWAIT | (ZMQ_SNDMORE if more else 0)) >= 0:
        return 0  # libzmq owns the message, and with it our reference
    err = _errno()
    _msg_close(&msg)  # still ours after a failed send: closing it drops the reference
    return _refused(err, first)


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
    cdef mg_shared_t* stack_shared[_STACK_PARTS]
    cdef mg_shared_t** shared = stack_shared
    cdef bint more
    cdef int rc
    if count == 0:
        raise ValueError("a multipart needs at least one frame")
    if count > _STACK_PARTS:
        views = <Py_buffer*>PyMem_Malloc(count * sizeof(Py_buffer))
        shared = <mg_shared_t**>PyMem_Malloc(count * sizeof(mg_shared_t*))
        if views == NULL or shared == NULL:
            PyMem_Free(views)
            PyMem_Free(shared)
            raise MemoryError()
    try:
        while taken < count:
            frame = frames[taken]
            PyObject_GetBuffer(frame, &views[taken], PyBUF_SIMPLE)
            taken += 1
            shared[taken - 1] = _shared_of(frame, &views[taken - 1])
        for i in range(count):
            more = i < count - 1
            if shared[i] != NULL:
                rc = _send_ref(sock, &views[i], shared[i], i == 0, more)
            else:
                rc = send_frame(sock, views[i].buf, <size_t>views[i].len, i == 0, more)
            if rc < 0:
                return False  # the first frame: nothing queued
        return True
    finally:
        for i in range(taken):
            PyBuffer_Release(&views[i])
        if views != stack_views:
            PyMem_Free(views)
            PyMem_Free(shared)


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
