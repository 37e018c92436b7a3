# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Per-message codec of the gateway envelope (DESIGN.md, "Hot path"; PROTOCOL.md section 4).

    Media      { savant.Message message = 1; bytes topic = 2; repeated bytes data = 3; }
    MediaBatch { repeated Media items = 1; }

Decoding never copies and never re-encodes: it checks the protobuf framing and returns
memoryview slices of the body, which become the ZeroMQ frames ``[topic, message, *data]``.
Encoding writes tag/length prefixes around the frames into one output ``bytes``.

Layout: tunables, wire constants and error codes; the C scanners (varint, field, UTF-8,
Savant message, Media, MediaBatch), which return error codes and never raise; the error texts;
the Python-facing functions. The error class, kind names and docs live in mgfast/media.py and
the stubs in mgfast/_media.pyi.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_IsContiguous, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.memoryview cimport PyMemoryView_Check, PyMemoryView_FromObject, PyMemoryView_GET_BUFFER
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_ITEM, PySequence_Fast_GET_SIZE


# ---- tunables -------------------------------------------------------------------------------

cdef enum:
    # A uint64 needs at most ten 7-bit groups; a longer varint is malformed (as in upb and prost).
    _MAX_VARINT_LEN = 10
    # Savant sends a handful of extra parts per message; an empty part costs 2 bytes on the wire
    # but ~200 bytes of Python objects, so this bounds what a hostile body can make us allocate.
    _MAX_DATA_PARTS = 1024
    # Messages per MediaBatch: plenty for one request, bounds the per-item result objects.
    _MAX_BATCH_ITEMS = 4096
    # Data parts over a whole MediaBatch: the same allocation bound as above, per request.
    _MAX_BATCH_DATA_PARTS = 16384

MAX_VARINT_LEN = _MAX_VARINT_LEN
MAX_DATA_PARTS = _MAX_DATA_PARTS
MAX_BATCH_ITEMS = _MAX_BATCH_ITEMS
MAX_BATCH_DATA_PARTS = _MAX_BATCH_DATA_PARTS


# ---- wire constants and error codes ---------------------------------------------------------

cdef enum:
    _WT_VARINT = 0
    _WT_I64 = 1
    _WT_LEN = 2
    _WT_SGROUP = 3
    _WT_EGROUP = 4
    _WT_I32 = 5

cdef enum:
    # tags written by the encoder: (field number << 3) | _WT_LEN
    _TAG_MESSAGE = 0x0A   # Media.message = 1, also MediaBatch.items = 1
    _TAG_TOPIC = 0x12     # Media.topic = 2
    _TAG_DATA = 0x1A      # Media.data = 3

cdef enum:
    _SAVANT_PROTOCOL_VERSION = 1
    _SAVANT_ROUTING_LABELS = 2
    _SAVANT_SEQ_ID = 4
    _SAVANT_CONTENT_FIRST = 5     # video_frame
    _SAVANT_CONTENT_LAST = 11     # shutdown

cdef enum:
    # protobuf well-formedness
    _E_VARINT_TRUNCATED = 1
    _E_VARINT_TOO_LONG
    _E_TAG_TOO_BIG
    _E_FIELD_ZERO
    _E_GROUP
    _E_WIRE_TYPE
    _E_LEN_TRUNCATED
    _E_FIXED_TRUNCATED
    # schema level
    _E_WRONG_WIRE
    _E_NO_MESSAGE
    _E_DUP_MESSAGE
    _E_TOPIC_UTF8
    _E_TOO_MANY_PARTS
    _E_NO_VERSION
    _E_VERSION_UTF8
    _E_TOO_MANY_ITEMS
    _E_TOO_MANY_BATCH_PARTS

cdef enum:
    _L_MEDIA = 0
    _L_MESSAGE = 1
    _L_BATCH = 2


cdef struct _Field:
    uint32_t number
    int wire
    Py_ssize_t start      # payload span (for a scalar: its encoded value)
    Py_ssize_t end

cdef struct _Err:
    int code
    int layer
    Py_ssize_t pos        # absolute offset of the offending tag, varint or payload
    Py_ssize_t base       # absolute offset where the layer starts; texts report pos - base
    uint32_t field
    int wire
    uint64_t value        # declared length, or the expected wire type
    Py_ssize_t remaining  # bytes left after a length prefix

cdef struct _Media:
    Py_ssize_t msg_start
    Py_ssize_t msg_end
    Py_ssize_t topic_start
    Py_ssize_t topic_end
    Py_ssize_t data_from  # offset of the first data tag, where building the data list starts
    Py_ssize_t n_data
    int kind


# ---- C scanners: return 0 or an error code filled into _Err, never raise ------------------

cdef inline int _fail(_Err* e, int code, Py_ssize_t pos) noexcept nogil:
    e.code = code
    e.pos = pos
    return code


cdef inline int _read_varint(const uint8_t* p, Py_ssize_t* pos, Py_ssize_t end,
                             uint64_t* out) noexcept nogil:
    cdef Py_ssize_t i = pos[0]
    cdef uint64_t result = 0
    cdef uint8_t b
    cdef int shift = 0
    cdef int k
    if i < end and p[i] < 0x80:  # one byte: nearly every tag and short length
        out[0] = p[i]
        pos[0] = i + 1
        return 0
    for k in range(_MAX_VARINT_LEN):
        if i >= end:
            return _E_VARINT_TRUNCATED
        b = p[i]
        i += 1
        # bits beyond 64 in the tenth byte are dropped, as upb and prost do
        result |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            out[0] = result
            pos[0] = i
            return 0
        shift += 7
    return _E_VARINT_TOO_LONG


cdef inline int _next_field(const uint8_t* p, Py_ssize_t* pos, Py_ssize_t end, _Field* f,
                            _Err* e) noexcept nogil:
    """Read one field at pos[0] and step over its payload."""
    cdef Py_ssize_t tag_at = pos[0]
    cdef Py_ssize_t at = tag_at
    cdef uint64_t v
    cdef int rc = _read_varint(p, pos, end, &v)
    if rc:
        return _fail(e, rc, at)
    if v >> 32:
        return _fail(e, _E_TAG_TOO_BIG, at)
    f.number = <uint32_t>(v >> 3)
    f.wire = <int>(v & 7)
    e.field = f.number
    e.wire = f.wire
    if f.number == 0:
        return _fail(e, _E_FIELD_ZERO, at)
    at = pos[0]
    if f.wire == _WT_LEN:
        rc = _read_varint(p, pos, end, &v)
        if rc:
            return _fail(e, rc, at)
        if v > <uint64_t>(end - pos[0]):
            e.value = v
            e.remaining = end - pos[0]
            return _fail(e, _E_LEN_TRUNCATED, at)
        f.start = pos[0]
        f.end = pos[0] + <Py_ssize_t>v
        pos[0] = f.end
    elif f.wire == _WT_VARINT:
        rc = _read_varint(p, pos, end, &v)
        if rc:
            return _fail(e, rc, at)
    elif f.wire == _WT_I64:
        if end - at < 8:
            return _fail(e, _E_FIXED_TRUNCATED, at)
        pos[0] = at + 8
    elif f.wire == _WT_I32:
        if end - at < 4:
            return _fail(e, _E_FIXED_TRUNCATED, at)
        pos[0] = at + 4
    elif f.wire == _WT_SGROUP or f.wire == _WT_EGROUP:
        return _fail(e, _E_GROUP, tag_at)
    else:
        return _fail(e, _E_WIRE_TYPE, tag_at)
    if f.wire != _WT_LEN:  # the span of a scalar is its encoded value
        f.start = at
        f.end = pos[0]
    return 0


cdef bint _utf8_ok(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    """Strict UTF-8, as bytes.decode('utf-8') accepts it: no overlongs, surrogates or > U+10FFFF."""
    cdef Py_ssize_t i = 0
    cdef uint8_t c, lo, hi
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        if c < 0xE0:
            if i + 1 >= n or (s[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
            continue
        lo = 0x80
        hi = 0xBF
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
        elif c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
        if c < 0xF0:
            if i + 2 >= n or s[i + 1] < lo or s[i + 1] > hi or (s[i + 2] & 0xC0) != 0x80:
                return False
            i += 3
        else:
            if (i + 3 >= n or s[i + 1] < lo or s[i + 1] > hi or (s[i + 2] & 0xC0) != 0x80
                    or (s[i + 3] & 0xC0) != 0x80):
                return False
            i += 4
    return True


cdef int _scan_message(const uint8_t* p, Py_ssize_t start, Py_ssize_t end, int* kind,
                       _Err* e) noexcept nogil:
    """Check the top level of a Savant Message; store its content field number (0 if none)."""
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t at
    cdef Py_ssize_t pv_start = -1
    cdef Py_ssize_t pv_end = -1
    cdef _Field f
    cdef int rc
    cdef int expect
    e.layer = _L_MESSAGE
    e.base = start
    kind[0] = 0
    while pos < end:
        at = pos
        rc = _next_field(p, &pos, end, &f, e)
        if rc:
            return rc
        if f.number <= _SAVANT_CONTENT_LAST:
            # Savant decodes with prost, which rejects a known field with the wrong wire type.
            expect = _WT_VARINT if f.number == _SAVANT_SEQ_ID else _WT_LEN
            if f.wire != expect:
                e.value = <uint64_t>expect
                return _fail(e, _E_WRONG_WIRE, at)
            if f.number == _SAVANT_PROTOCOL_VERSION:
                pv_start = f.start  # a repeated scalar: the last one wins
                pv_end = f.end
            elif f.number >= _SAVANT_CONTENT_FIRST:
                kind[0] = <int>f.number  # oneof: the last member wins
    if pv_start < 0 or pv_end == pv_start:
        return _fail(e, _E_NO_VERSION, start)
    if not _utf8_ok(p + pv_start, pv_end - pv_start):
        return _fail(e, _E_VERSION_UTF8, pv_start)
    return 0


cdef int _scan_media(const uint8_t* p, Py_ssize_t start, Py_ssize_t end, _Media* m,
                     _Err* e) noexcept nogil:
    """Check one Media in p[start:end] and find its parts (offsets are absolute)."""
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t at
    cdef _Field f
    cdef int rc
    e.layer = _L_MEDIA
    e.base = start
    m.msg_start = -1
    m.msg_end = -1
    m.topic_start = start
    m.topic_end = start
    m.data_from = end
    m.n_data = 0
    m.kind = 0
    while pos < end:
        at = pos
        rc = _next_field(p, &pos, end, &f, e)
        if rc:
            return rc
        if f.number > 3:
            continue
        if f.wire != _WT_LEN:
            e.value = _WT_LEN
            return _fail(e, _E_WRONG_WIRE, at)
        if f.number == 1:
            if m.msg_start >= 0:  # protobuf would merge the two; that needs re-encoding
                return _fail(e, _E_DUP_MESSAGE, at)
            m.msg_start = f.start
            m.msg_end = f.end
        elif f.number == 2:
            m.topic_start = f.start  # proto3 scalar: the last one wins
            m.topic_end = f.end
        else:
            if m.n_data == 0:
                m.data_from = at
            m.n_data += 1
            if m.n_data > _MAX_DATA_PARTS:
                return _fail(e, _E_TOO_MANY_PARTS, at)
    if m.msg_start < 0:
        return _fail(e, _E_NO_MESSAGE, start)
    if not _utf8_ok(p + m.topic_start, m.topic_end - m.topic_start):
        return _fail(e, _E_TOPIC_UTF8, m.topic_start)
    return _scan_message(p, m.msg_start, m.msg_end, &m.kind, e)


cdef int _scan_batch(const uint8_t* p, Py_ssize_t end, _Err* e) noexcept nogil:
    """Check the outer framing of a MediaBatch (not the items)."""
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t at
    cdef Py_ssize_t count = 0
    cdef _Field f
    cdef int rc
    e.layer = _L_BATCH
    e.base = 0
    while pos < end:
        at = pos
        rc = _next_field(p, &pos, end, &f, e)
        if rc:
            return rc
        if f.number != 1:
            continue
        if f.wire != _WT_LEN:
            e.value = _WT_LEN
            return _fail(e, _E_WRONG_WIRE, at)
        count += 1
        if count > _MAX_BATCH_ITEMS:
            return _fail(e, _E_TOO_MANY_ITEMS, at)
    return 0


# ---- error texts (error path only) ----------------------------------------------------------

cdef object _MediaError = None

cdef tuple _LAYER_BODY = ("Media body", "Savant message", "MediaBatch body")
cdef tuple _LAYER_NAME = ("Media", "Savant message", "MediaBatch")
cdef tuple _FIELD_NAMES = (
    {1: "message", 2: "topic", 3: "data"},
    {1: "protocol_version", 2: "routing_labels", 3: "propagated_context", 4: "seq_id",
     5: "video_frame", 6: "video_frame_batch", 7: "video_frame_update", 8: "user_data",
     9: "end_of_stream", 10: "unknown", 11: "shutdown"},
    {1: "items"},
)


cdef str _describe(_Err* e):
    cdef Py_ssize_t at = e.pos - e.base
    cdef int code = e.code
    cdef str what
    if code <= _E_FIXED_TRUNCATED:
        if code == _E_VARINT_TRUNCATED:
            what = "truncated varint"
        elif code == _E_VARINT_TOO_LONG:
            what = f"varint longer than {_MAX_VARINT_LEN} bytes"
        elif code == _E_TAG_TOO_BIG:
            what = "field tag does not fit in 32 bits"
        elif code == _E_FIELD_ZERO:
            what = "field number 0"
        elif code == _E_GROUP:
            what = f"field {e.field} uses group wire type {e.wire}, which is not supported"
        elif code == _E_WIRE_TYPE:
            what = f"field {e.field} has invalid wire type {e.wire}"
        elif code == _E_LEN_TRUNCATED:
            what = (f"truncated length: field {e.field} declares {e.value} bytes "
                    f"but {e.remaining} remain")
        else:
            what = f"truncated {64 if e.wire == _WT_I64 else 32}-bit field {e.field}"
        return f"{_LAYER_BODY[e.layer]} is not valid protobuf: {what} at byte {at}"
    if code == _E_WRONG_WIRE:
        name = _FIELD_NAMES[e.layer].get(e.field, "")
        return (f"{_LAYER_NAME[e.layer]} field {e.field} ({name}) has wire type {e.wire}, "
                f"expected {e.value}")
    if code == _E_NO_MESSAGE:
        return "Media has no message field"
    if code == _E_DUP_MESSAGE:
        return f"Media has more than one message field (another at byte {at})"
    if code == _E_TOPIC_UTF8:
        return "topic is not valid UTF-8"
    if code == _E_TOO_MANY_PARTS:
        return f"Media has more than {_MAX_DATA_PARTS} data parts"
    if code == _E_NO_VERSION:
        return "Savant message has no protocol_version"
    if code == _E_VERSION_UTF8:
        return "Savant message protocol_version is not valid UTF-8"
    if code == _E_TOO_MANY_ITEMS:
        return f"MediaBatch has more than {_MAX_BATCH_ITEMS} items"
    if code == _E_TOO_MANY_BATCH_PARTS:
        return f"MediaBatch has more than {_MAX_BATCH_DATA_PARTS} data parts in total"
    return f"malformed {_LAYER_NAME[e.layer]} (error {code})"


cdef object _error(_Err* e):
    """A MediaError for e. Imported on first use: mgfast.media imports this module."""
    global _MediaError
    if _MediaError is None:
        from mgfast.media import MediaError
        _MediaError = MediaError
    return _MediaError(_describe(e))


cdef object _limit_error(int code, int layer):
    cdef _Err e
    e.code = code
    e.layer = layer
    e.pos = 0
    e.base = 0
    return _error(&e)


# ---- decoding -------------------------------------------------------------------------------

cdef object _byte_view(object body):
    """A flat unsigned-byte memoryview of body (TypeError if it is not a contiguous buffer).
    A memoryview that already is one is used as it is: making a view costs as much as parsing."""
    cdef object mv = body if PyMemoryView_Check(body) else PyMemoryView_FromObject(body)
    cdef Py_buffer* v = PyMemoryView_GET_BUFFER(mv)
    if (v.ndim != 1 or v.itemsize != 1 or not PyBuffer_IsContiguous(v, b'C')
            or v.format == NULL or v.format[0] != b'B' or v.format[1] != 0):
        mv = mv.cast('B')
    return mv


cdef tuple _media_tuple(object mv, const uint8_t* p, Py_ssize_t end, _Media* m):
    """Slices for a Media that _scan_media accepted (so the rescan below cannot fail)."""
    cdef list data = []
    cdef Py_ssize_t pos = m.data_from
    cdef Py_ssize_t left = m.n_data
    cdef _Field f
    cdef _Err e
    while left:
        if _next_field(p, &pos, end, &f, &e):
            break  # unreachable: _scan_media accepted these bytes
        if f.number == 3:
            data.append(mv[f.start:f.end])
            left -= 1
    return (mv[m.topic_start:m.topic_end], mv[m.msg_start:m.msg_end], data, m.kind)


def decode_media(body):
    """Media body -> (topic, message, data, kind) as views of body; MediaError if malformed."""
    cdef object mv = _byte_view(body)
    cdef Py_buffer* v = PyMemoryView_GET_BUFFER(mv)
    cdef const uint8_t* p = <const uint8_t*>v.buf
    cdef _Media m
    cdef _Err e
    if _scan_media(p, 0, v.len, &m, &e):
        raise _error(&e)
    return _media_tuple(mv, p, v.len, &m)


def message_kind(message):
    """Content field number (5..11, 0 if none) of a Savant message; MediaError if malformed."""
    cdef Py_buffer v
    cdef int kind
    cdef int rc
    cdef _Err e
    PyObject_GetBuffer(message, &v, PyBUF_SIMPLE)
    rc = _scan_message(<const uint8_t*>v.buf, 0, v.len, &kind, &e)
    PyBuffer_Release(&v)
    if rc:
        raise _error(&e)
    return kind


def routing_labels(message):
    """A Savant message's routing_labels (field 2, in order) as bytes; MediaError if malformed.
    Only basic authentication with a label rule asks for them, so decode_media does not."""
    cdef Py_buffer v
    cdef Py_ssize_t pos = 0
    cdef const uint8_t* p
    cdef list labels = []
    cdef _Field f
    cdef _Err e
    cdef int rc = 0
    PyObject_GetBuffer(message, &v, PyBUF_SIMPLE)
    p = <const uint8_t*>v.buf
    e.layer = _L_MESSAGE
    e.base = 0
    while pos < v.len:
        rc = _next_field(p, &pos, v.len, &f, &e)
        if rc:
            break
        if f.number == _SAVANT_ROUTING_LABELS and f.wire == _WT_LEN:
            labels.append(PyBytes_FromStringAndSize(<const char*>p + f.start, f.end - f.start))
    PyBuffer_Release(&v)
    if rc:
        raise _error(&e)
    return labels


def decode_media_batch(body):
    """MediaBatch body -> per item a decode_media tuple or its MediaError."""
    cdef object mv = _byte_view(body)
    cdef Py_buffer* v = PyMemoryView_GET_BUFFER(mv)
    cdef const uint8_t* p = <const uint8_t*>v.buf
    cdef Py_ssize_t end = v.len
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t parts = 0
    cdef list results = []
    cdef _Field f
    cdef _Media m
    cdef _Err e
    if _scan_batch(p, end, &e):
        raise _error(&e)
    while pos < end:
        if _next_field(p, &pos, end, &f, &e):
            break  # unreachable: _scan_batch accepted the framing
        if f.number != 1:
            continue
        if _scan_media(p, f.start, f.end, &m, &e):
            results.append(_error(&e))
            continue
        parts += m.n_data
        if parts > _MAX_BATCH_DATA_PARTS:
            raise _limit_error(_E_TOO_MANY_BATCH_PARTS, _L_BATCH)
        results.append(_media_tuple(mv, p, f.end, &m))
    return results


# ---- encoding -------------------------------------------------------------------------------

cdef inline Py_ssize_t _varint_size(uint64_t v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline uint8_t* _put_varint(uint8_t* o, uint64_t v) noexcept nogil:
    while v >= 0x80:
        o[0] = <uint8_t>(v | 0x80)
        o += 1
        v >>= 7
    o[0] = <uint8_t>v
    return o + 1


cdef inline Py_ssize_t _field_size(Py_ssize_t n) noexcept nogil:
    """A length-delimited field with a one-byte tag (field numbers 1 to 15)."""
    return 1 + _varint_size(<uint64_t>n) + n


cdef Py_ssize_t _buf_len(object o) except -1:
    cdef Py_buffer v
    cdef Py_ssize_t n
    if PyBytes_CheckExact(o):
        return PyBytes_GET_SIZE(o)
    PyObject_GetBuffer(o, &v, PyBUF_SIMPLE)
    n = v.len
    PyBuffer_Release(&v)
    return n


cdef uint8_t* _put_field(uint8_t* o, uint8_t* limit, uint8_t tag, object src,
                         bint omit_empty) except NULL:
    """Write tag, length and the bytes of src at o, never past limit."""
    cdef Py_buffer v
    cdef const char* data
    cdef Py_ssize_t n
    cdef bint release = False
    if PyBytes_CheckExact(src):
        data = PyBytes_AS_STRING(src)
        n = PyBytes_GET_SIZE(src)
    else:
        PyObject_GetBuffer(src, &v, PyBUF_SIMPLE)
        data = <const char*>v.buf
        n = v.len
        release = True
    try:
        if n == 0 and omit_empty:
            return o
        if _field_size(n) > limit - o:
            raise RuntimeError("a buffer grew while it was being encoded")
        o[0] = tag
        o = _put_varint(o + 1, <uint64_t>n)
        memcpy(o, data, n)
        return o + n
    finally:
        if release:
            PyBuffer_Release(&v)


cdef Py_ssize_t _media_size(object topic, object message, object parts) except -1:
    cdef Py_ssize_t size = _field_size(_buf_len(message))
    cdef Py_ssize_t t = _buf_len(topic)
    cdef Py_ssize_t i
    if t:  # proto3 leaves an empty bytes field out
        size += _field_size(t)
    for i in range(PySequence_Fast_GET_SIZE(parts)):
        size += _field_size(_buf_len(<object>PySequence_Fast_GET_ITEM(parts, i)))
    return size


cdef uint8_t* _write_media(uint8_t* o, uint8_t* limit, object topic, object message,
                           object parts) except NULL:
    """Fields in field-number order, as protobuf serializers write them."""
    cdef Py_ssize_t i
    o = _put_field(o, limit, _TAG_MESSAGE, message, False)
    o = _put_field(o, limit, _TAG_TOPIC, topic, True)
    for i in range(PySequence_Fast_GET_SIZE(parts)):
        o = _put_field(o, limit, _TAG_DATA, <object>PySequence_Fast_GET_ITEM(parts, i), False)
    return o


cdef object _data_parts(object data):
    cdef object parts = PySequence_Fast(data, "data must be a sequence of bytes-like objects")
    if PySequence_Fast_GET_SIZE(parts) > _MAX_DATA_PARTS:
        raise _limit_error(_E_TOO_MANY_PARTS, _L_MEDIA)
    return parts


cdef inline void _check_filled(uint8_t* o, uint8_t* limit) except *:
    if o != limit:
        raise RuntimeError("a buffer shrank while it was being encoded")


def encode_media(topic, message, data):
    """(topic, message, data parts) -> Media body, in one allocation."""
    cdef object parts = _data_parts(data)
    cdef Py_ssize_t size = _media_size(topic, message, parts)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef uint8_t* o = <uint8_t*>PyBytes_AS_STRING(out)
    _check_filled(_write_media(o, o + size, topic, message, parts), o + size)
    return out


cdef bytes _field_header(uint8_t tag, Py_ssize_t n):
    cdef uint8_t header[11]
    header[0] = tag
    cdef uint8_t* end = _put_varint(header + 1, <uint64_t>n)
    return PyBytes_FromStringAndSize(<char*>header, end - header)


cdef Py_ssize_t _media_pieces(list pieces, object topic, object message,
                              object parts) except -1:
    """Append a Media's field headers and the buffers themselves to ``pieces``; its size."""
    cdef Py_ssize_t total = 0
    cdef Py_ssize_t n
    cdef Py_ssize_t i
    n = _buf_len(message)
    pieces += (_field_header(_TAG_MESSAGE, n), message)
    total += _field_size(n)
    n = _buf_len(topic)
    if n:  # proto3 leaves an empty bytes field out
        pieces += (_field_header(_TAG_TOPIC, n), topic)
        total += _field_size(n)
    for i in range(PySequence_Fast_GET_SIZE(parts)):
        part = <object>PySequence_Fast_GET_ITEM(parts, i)
        n = _buf_len(part)
        pieces += (_field_header(_TAG_DATA, n), part)
        total += _field_size(n)
    return total


def encode_media_pieces(topic, message, data):
    """(topic, message, data parts) -> (body length, pieces): the Media body of encode_media
    as field headers and the caller's own buffers, uncopied, for a gathering write."""
    cdef list pieces = []
    cdef Py_ssize_t total = _media_pieces(pieces, topic, message, _data_parts(data))
    return total, pieces


cdef tuple _prepare_batch(object items):
    """The batch's items with their data parts checked against the limits, and its size."""
    cdef object seq = PySequence_Fast(items, "items must be a sequence of (topic, message, data)")
    cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(seq)
    cdef Py_ssize_t i
    cdef Py_ssize_t size = 0
    cdef Py_ssize_t parts_total = 0
    cdef list prepared = []
    if n > _MAX_BATCH_ITEMS:
        raise _limit_error(_E_TOO_MANY_ITEMS, _L_BATCH)
    for i in range(n):
        topic, message, data = <object>PySequence_Fast_GET_ITEM(seq, i)
        parts = _data_parts(data)
        parts_total += PySequence_Fast_GET_SIZE(parts)
        if parts_total > _MAX_BATCH_DATA_PARTS:
            raise _limit_error(_E_TOO_MANY_BATCH_PARTS, _L_BATCH)
        size += _field_size(_media_size(topic, message, parts))
        prepared.append((topic, message, parts))
    return prepared, size


def encode_media_batch_pieces(items):
    """encode_media_batch as (body length, pieces), with the buffers uncopied."""
    cdef list prepared
    cdef Py_ssize_t size
    cdef list pieces = []
    cdef list inner
    cdef tuple item
    prepared, size = _prepare_batch(items)
    for item in prepared:
        inner = []
        length = _media_pieces(inner, item[0], item[1], item[2])
        pieces.append(_field_header(_TAG_MESSAGE, length))
        pieces += inner
    return size, pieces


def encode_media_batch(items):
    """[(topic, message, data parts), ...] -> MediaBatch body, in one allocation."""
    cdef list prepared
    cdef Py_ssize_t size
    cdef Py_ssize_t inner
    cdef tuple item
    cdef bytes out
    cdef uint8_t* o
    cdef uint8_t* limit
    prepared, size = _prepare_batch(items)
    out = PyBytes_FromStringAndSize(NULL, size)
    o = <uint8_t*>PyBytes_AS_STRING(out)
    limit = o + size
    for item in prepared:
        inner = _media_size(item[0], item[1], item[2])
        if _field_size(inner) > limit - o:
            raise RuntimeError("a buffer grew while it was being encoded")
        o[0] = _TAG_MESSAGE
        o = _put_varint(o + 1, <uint64_t>inner)
        _check_filled(_write_media(o, o + inner, item[0], item[1], item[2]), o + inner)
        o += inner
    _check_filled(o, limit)
    return out
