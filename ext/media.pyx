# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Per-message codec of the gateway envelope (docs/design.md, "Hot path"; docs/protocol.md s. 2).

    Media      { savant.Message message = 1; bytes topic = 2; repeated bytes data = 3; }
    MediaBatch { repeated Media items = 1; }

Decoding never copies and never re-encodes: it checks the protobuf framing and returns
memoryview slices of the body, which become the ZeroMQ frames ``[topic, message, *data]``.
Encoding writes tag/length prefixes around the frames into one output ``bytes``.

The Savant message inside is checked whole, as a Savant consumer (savant-rs 0.3.0) will read
it: decoded with its schema (wire types, UTF-8, nested messages) and converted (content
present, required sub-messages, enum values, UUIDs, object parents, polygon tags), so a body
that passes cannot make a consumer fail or panic. One table (_SCHEMA) describes the messages;
one recursive nogil scanner (_scan) walks them by it. Bytes fields (a frame's ``internal``
content, attribute blobs) and the Media's data parts are never read.

Layout: tunables, wire constants and error codes; the C scanners (varint, field, UTF-8); the
Savant schema and its scanner; the envelope scanners (Media, MediaBatch), which return error
codes and never raise; the error texts; the Python-facing functions. The error class, kind
names and docs live in mgfast/media.py and the stubs in mgfast/_media.pyi.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport bsearch, free, malloc, qsort
from libc.string cimport memcmp, memcpy
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_IsContiguous, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.memoryview cimport PyMemoryView_Check, PyMemoryView_FromObject, PyMemoryView_GET_BUFFER
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_ITEM, PySequence_Fast_GET_SIZE

from mgfast._messages cimport Message
from mgfast._zmq_io cimport send_frame, socket_of


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
    # Nesting of Savant messages. The schema is acyclic and 11 deep at most, so this only
    # bounds the C stack and the error path if the table ever changes.
    _MAX_DEPTH = 16
    # Objects of one frame whose ids the parent check keeps as it scans them and searches
    # linearly (a typical frame); a frame with more is walked again, its ids sorted.
    _FEW_OBJECTS = 64
    # Object ids sorted on the stack in that walk; more are malloc'ed.
    _STACK_IDS = 256

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
    # Savant Message.routing_labels, read by basic authentication's label rules
    _SAVANT_ROUTING_LABELS = 2

cdef enum:
    # protobuf well-formedness
    _E_VARINT_TRUNCATED = 1
    _E_VARINT_TOO_LONG
    _E_VARINT_OVERFLOW
    _E_TAG_TOO_BIG
    _E_FIELD_ZERO
    _E_GROUP
    _E_WIRE_TYPE
    _E_LEN_TRUNCATED
    _E_FIXED_TRUNCATED
    _E_PACKED_TRUNCATED
    _E_TOO_DEEP
    # schema level: what prost's decoding refuses
    _E_WRONG_WIRE
    _E_UTF8
    _E_NO_MESSAGE
    _E_DUP_MESSAGE
    _E_TOPIC_UTF8
    _E_TOO_MANY_PARTS
    _E_TOO_MANY_ITEMS
    _E_TOO_MANY_BATCH_PARTS
    _E_NO_CONTENT
    _E_NO_MEMORY
    # conversion level: what savant-rs's TryFrom conversions refuse or panic on. Inside an
    # attribute that savant-rs drops unconverted (not is_persistent) these do not count.
    _E_REQUIRED
    _E_ENUM
    _E_UUID
    _E_PARENT
    _E_TAG_COUNT

cdef enum:
    _E_PROTOBUF_LAST = _E_TOO_DEEP
    _E_CONVERSION_FIRST = _E_REQUIRED

cdef enum:
    _L_MEDIA = 0
    _L_MESSAGE = 1
    _L_BATCH = 2


cdef struct _Field:
    uint32_t number
    int wire
    Py_ssize_t start      # payload span (for a scalar: its encoded value)
    Py_ssize_t end
    uint64_t value        # a varint's value

cdef struct _Err:
    int code
    int layer
    Py_ssize_t pos        # absolute offset of the offending tag, varint or payload
    Py_ssize_t base       # absolute offset where the layer starts; texts report pos - base
    uint32_t field
    int wire
    uint64_t value        # declared length, expected wire type, missing set, bad value
    Py_ssize_t remaining  # bytes left after a length prefix
    # where in a Savant message (layer _L_MESSAGE): the failing message is msgs[depth]; at
    # each level below it, the field taken (fields) and its occurrence index (index)
    int depth
    uint8_t msgs[_MAX_DEPTH]
    uint32_t fields[_MAX_DEPTH]
    Py_ssize_t index[_MAX_DEPTH]

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
        result |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            # a tenth byte above 1 overflows 64 bits: prost (Savant's and upstream's decoder)
            # refuses it, so it is malformed here too
            if k == _MAX_VARINT_LEN - 1 and b > 1:
                return _E_VARINT_OVERFLOW
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
        rc = _read_varint(p, pos, end, &f.value)
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
    cdef uint64_t word
    while i < n:
        if i + 8 <= n:  # ASCII eight bytes at a time: nearly every Savant string is ASCII
            memcpy(&word, s + i, 8)
            if not (word & 0x8080808080808080ULL):
                i += 8
                continue
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


# ---- the Savant schema ----------------------------------------------------------------------
#
# What savant-rs 0.3.0 decodes (its savant_protobuf 0.2.0 message.proto, read with prost) and
# then converts (savant_core's TryFrom impls), as one table: per message, per field number, the
# field's type and what savant-rs needs of it. One generic scanner (_scan) walks a message by
# this table, recursing into nested messages. The Python form below is the source; at import
# it fills the C array _MSGS that the nogil scanner reads, and keeps the names for error texts.

cdef enum:
    # field types (0: not in the schema, skipped as protobuf skips unknown fields)
    _T_VARINT = 1     # int32, int64, uint64, bool: any varint (prost truncates, bool is != 0)
    _T_ENUM           # varint whose low 32 bits, as int32, must be a listed value (0..max)
    _T_I32            # float
    _T_I64            # double
    _T_BYTES
    _T_STRING         # UTF-8
    _T_UUID           # UTF-8 string that savant-rs parses as a UUID
    _T_MSG            # embedded message
    _T_PACKED_VARINT  # repeated varint scalar: packed (wire 2) or one by one (wire 0)
    _T_PACKED_I64     # repeated double: packed (wire 2) or one by one (wire 1)

cdef enum:
    # field flags
    _F_REPEATED = 1     # error texts index it: objects[3]
    _F_PERSISTED = 2    # a list of Attribute that savant-rs converts only where is_persistent
    _F_PERSIST_FLAG = 4  # Attribute.is_persistent
    _F_KIND = 8         # Message.content member: the message's kind
    # 16: unused (was protocol_version, which upstream does not check)
    _F_OBJECTS = 32     # VideoFrame.objects: their parent_ids must be ids of the frame's objects
    _F_PARENT = 64      # VideoObject.parent_id
    _F_POINTS = 128     # PolygonalArea.points: if it has tags, one per point (else a panic)
    _F_TAGS = 256       # PolygonalArea.tags
    _F_TAG = 512        # PolygonalAreaTags.tags
    _F_MAP = 1024       # a map of messages: a later entry with the same key replaces one
    _F_OBJECT_ID = 2048  # VideoObject.id

cdef enum:
    _MAX_FIELD = 26     # the highest field number in the schema (VideoFrame.previous_keyframe)
    _MAX_MSGS = 48
    _M_MESSAGE = 0
    _N_OBJECTS_FIELD = 25    # VideoFrame.objects
    _N_OBJECT_ID = 1         # VideoObject.id
    _N_OBJECT_PARENT = 2     # VideoObject.parent_id

cdef struct _FieldSpec:
    uint8_t type
    uint8_t wire      # the wire type prost wants (packed lists also take _WT_LEN)
    uint16_t flags
    uint8_t req       # the message's required sets this field is a member of (bits)
    uint8_t sub       # _T_MSG: message index; _T_ENUM: the highest valid value

cdef struct _MsgSpec:
    uint8_t required  # bits of the sets of which at least one member must be present
    _FieldSpec fields[_MAX_FIELD + 1]

cdef _MsgSpec _MSGS[_MAX_MSGS]
cdef int _M_VIDEO_OBJECT = -1

# field: (number, name, type, flags, required-set bits, message name or (enum name, max))
_EMPTY = ()
_SCHEMA = {
    "Message": ({}, (
        (1, "protocol_version", _T_STRING, 0, 0, None),
        (2, "routing_labels", _T_STRING, _F_REPEATED, 0, None),
        (3, "propagated_context", _T_MSG, _F_REPEATED, 0, "StringEntry"),
        (4, "seq_id", _T_VARINT, 0, 0, None),
        (5, "video_frame", _T_MSG, _F_KIND, 0, "VideoFrame"),
        (6, "video_frame_batch", _T_MSG, _F_KIND, 0, "VideoFrameBatch"),
        (7, "video_frame_update", _T_MSG, _F_KIND, 0, "VideoFrameUpdate"),
        (8, "user_data", _T_MSG, _F_KIND, 0, "UserData"),
        (9, "end_of_stream", _T_MSG, _F_KIND, 0, "EndOfStream"),
        (10, "unknown", _T_MSG, _F_KIND, 0, "Unknown"),
        (11, "shutdown", _T_MSG, _F_KIND, 0, "Shutdown"),
    )),
    "StringEntry": ({}, ((1, "key", _T_STRING, 0, 0, None), (2, "value", _T_STRING, 0, 0, None))),
    "VideoFrameBatch": ({}, ((1, "batch", _T_MSG, _F_REPEATED | _F_MAP, 0, "FrameEntry"),)),
    # a map entry without a value is a default VideoFrame, which savant-rs cannot convert
    "FrameEntry": ({1: "value"}, (
        (1, "key", _T_VARINT, 0, 0, None), (2, "value", _T_MSG, 0, 1, "VideoFrame"))),
    "VideoFrame": ({1: "content (internal, external or none)", 2: "uuid"}, (
        (1, "previous_frame_seq_id", _T_VARINT, 0, 0, None),
        (2, "source_id", _T_STRING, 0, 0, None),
        (3, "uuid", _T_UUID, 0, 2, None),
        (4, "creation_timestamp_ns_high", _T_VARINT, 0, 0, None),
        (5, "creation_timestamp_ns_low", _T_VARINT, 0, 0, None),
        (6, "framerate", _T_STRING, 0, 0, None),
        (7, "width", _T_VARINT, 0, 0, None),
        (8, "height", _T_VARINT, 0, 0, None),
        (9, "transcoding_method", _T_ENUM, 0, 0, ("VideoFrameTranscodingMethod", 1)),
        (10, "codec", _T_STRING, 0, 0, None),
        (11, "keyframe", _T_VARINT, 0, 0, None),
        (12, "time_base_numerator", _T_VARINT, 0, 0, None),
        (13, "time_base_denominator", _T_VARINT, 0, 0, None),
        (14, "pts", _T_VARINT, 0, 0, None),
        (15, "dts", _T_VARINT, 0, 0, None),
        (16, "duration", _T_VARINT, 0, 0, None),
        (17, "internal", _T_BYTES, 0, 1, None),   # not scanned: it may be the whole frame
        (18, "external", _T_MSG, 0, 1, "ExternalFrame"),
        (19, "none", _T_MSG, 0, 1, "Empty"),
        (23, "transformations", _T_MSG, _F_REPEATED, 0, "VideoFrameTransformation"),
        (24, "attributes", _T_MSG, _F_REPEATED, 0, "Attribute"),
        (25, "objects", _T_MSG, _F_REPEATED | _F_OBJECTS, 0, "VideoObject"),
        (26, "previous_keyframe", _T_UUID, 0, 0, None),
    )),
    "ExternalFrame": ({}, (
        (1, "method", _T_STRING, 0, 0, None), (2, "location", _T_STRING, 0, 0, None))),
    "Empty": ({}, _EMPTY),
    "VideoFrameTransformation": (
        {1: "transformation (initial_size, scale, padding or resulting_size)"}, (
            (1, "initial_size", _T_MSG, 0, 1, "Size"),
            (2, "scale", _T_MSG, 0, 1, "Size"),
            (3, "padding", _T_MSG, 0, 1, "Padding"),
            (4, "resulting_size", _T_MSG, 0, 1, "Size"),
        )),
    "Size": ({}, ((1, "width", _T_VARINT, 0, 0, None), (2, "height", _T_VARINT, 0, 0, None))),
    "Padding": ({}, tuple((n, name, _T_VARINT, 0, 0, None) for n, name in enumerate(
        ("padding_left", "padding_top", "padding_right", "padding_bottom"), 1))),
    "Attribute": ({}, (
        (1, "namespace", _T_STRING, 0, 0, None),
        (2, "name", _T_STRING, 0, 0, None),
        (3, "values", _T_MSG, _F_REPEATED, 0, "AttributeValue"),
        (4, "hint", _T_STRING, 0, 0, None),
        (5, "is_persistent", _T_VARINT, _F_PERSIST_FLAG, 0, None),
        (6, "is_hidden", _T_VARINT, 0, 0, None),
    )),
    "AttributeValue": ({1: "value"}, (
        (1, "confidence", _T_I32, 0, 0, None),
        (2, "bytes", _T_MSG, 0, 1, "BytesValue"),
        (3, "string", _T_MSG, 0, 1, "StringValue"),
        (4, "string_vector", _T_MSG, 0, 1, "StringVectorValue"),
        (5, "integer", _T_MSG, 0, 1, "VarintValue"),
        (6, "integer_vector", _T_MSG, 0, 1, "VarintVectorValue"),
        (7, "float", _T_MSG, 0, 1, "DoubleValue"),
        (8, "float_vector", _T_MSG, 0, 1, "DoubleVectorValue"),
        (9, "boolean", _T_MSG, 0, 1, "VarintValue"),
        (10, "boolean_vector", _T_MSG, 0, 1, "VarintVectorValue"),
        (11, "bounding_box", _T_MSG, 0, 1, "BoundingBoxValue"),
        (12, "bounding_box_vector", _T_MSG, 0, 1, "BoundingBoxVectorValue"),
        (13, "point", _T_MSG, 0, 1, "PointValue"),
        (14, "point_vector", _T_MSG, 0, 1, "PointVectorValue"),
        (15, "polygon", _T_MSG, 0, 1, "PolygonValue"),
        (16, "polygon_vector", _T_MSG, 0, 1, "PolygonVectorValue"),
        (17, "intersection", _T_MSG, 0, 1, "IntersectionValue"),
        (18, "none", _T_MSG, 0, 1, "Empty"),
        (19, "temporary", _T_MSG, 0, 1, "Empty"),
    )),
    "BytesValue": ({}, (
        (1, "dims", _T_PACKED_VARINT, _F_REPEATED, 0, None), (2, "data", _T_BYTES, 0, 0, None))),
    "StringValue": ({}, ((1, "data", _T_STRING, 0, 0, None),)),
    "StringVectorValue": ({}, ((1, "data", _T_STRING, _F_REPEATED, 0, None),)),
    "VarintValue": ({}, ((1, "data", _T_VARINT, 0, 0, None),)),
    "VarintVectorValue": ({}, ((1, "data", _T_PACKED_VARINT, _F_REPEATED, 0, None),)),
    "DoubleValue": ({}, ((1, "data", _T_I64, 0, 0, None),)),
    "DoubleVectorValue": ({}, ((1, "data", _T_PACKED_I64, _F_REPEATED, 0, None),)),
    "BoundingBoxValue": ({1: "data"}, ((1, "data", _T_MSG, 0, 1, "BoundingBox"),)),
    "BoundingBoxVectorValue": ({}, ((1, "data", _T_MSG, _F_REPEATED, 0, "BoundingBox"),)),
    "BoundingBox": ({}, tuple((n, name, _T_I32, 0, 0, None) for n, name in enumerate(
        ("xc", "yc", "width", "height", "angle"), 1))),
    "Point": ({}, ((1, "x", _T_I32, 0, 0, None), (2, "y", _T_I32, 0, 0, None))),
    "PointValue": ({1: "data"}, ((1, "data", _T_MSG, 0, 1, "Point"),)),
    "PointVectorValue": ({}, ((1, "data", _T_MSG, _F_REPEATED, 0, "Point"),)),
    "PolygonalArea": ({}, (
        (1, "points", _T_MSG, _F_REPEATED | _F_POINTS, 0, "Point"),
        (2, "tags", _T_MSG, _F_TAGS, 0, "AreaTags"),
    )),
    "AreaTags": ({}, ((1, "tags", _T_MSG, _F_REPEATED | _F_TAG, 0, "AreaTag"),)),
    "AreaTag": ({}, ((1, "tag", _T_STRING, 0, 0, None),)),
    "PolygonValue": ({1: "data"}, ((1, "data", _T_MSG, 0, 1, "PolygonalArea"),)),
    "PolygonVectorValue": ({}, ((1, "data", _T_MSG, _F_REPEATED, 0, "PolygonalArea"),)),
    "Intersection": ({}, (
        (1, "kind", _T_ENUM, 0, 0, ("IntersectionKind", 4)),
        (2, "edges", _T_MSG, _F_REPEATED, 0, "IntersectionEdge"),
    )),
    "IntersectionEdge": ({}, ((1, "id", _T_VARINT, 0, 0, None), (2, "tag", _T_STRING, 0, 0, None))),
    "IntersectionValue": ({1: "data"}, ((1, "data", _T_MSG, 0, 1, "Intersection"),)),
    "UserData": ({}, (
        (1, "source_id", _T_STRING, 0, 0, None),
        (2, "attributes", _T_MSG, _F_REPEATED | _F_PERSISTED, 0, "Attribute"),
    )),
    "VideoObject": ({1: "detection_box"}, (
        (1, "id", _T_VARINT, _F_OBJECT_ID, 0, None),
        (2, "parent_id", _T_VARINT, _F_PARENT, 0, None),
        (3, "namespace", _T_STRING, 0, 0, None),
        (4, "label", _T_STRING, 0, 0, None),
        (5, "draw_label", _T_STRING, 0, 0, None),
        (6, "detection_box", _T_MSG, 0, 1, "BoundingBox"),
        (7, "attributes", _T_MSG, _F_REPEATED | _F_PERSISTED, 0, "Attribute"),
        (8, "confidence", _T_I32, 0, 0, None),
        (9, "track_box", _T_MSG, 0, 0, "BoundingBox"),
        (10, "track_id", _T_VARINT, 0, 0, None),
    )),
    "ObjectAttribute": ({1: "attribute"}, (
        (1, "object_id", _T_VARINT, 0, 0, None), (2, "attribute", _T_MSG, 0, 1, "Attribute"))),
    "ForeignObject": ({1: "object"}, (
        (1, "object", _T_MSG, 0, 1, "VideoObject"), (2, "parent_id", _T_VARINT, 0, 0, None))),
    "VideoFrameUpdate": ({}, (
        (1, "frame_attributes", _T_MSG, _F_REPEATED, 0, "Attribute"),
        (2, "object_attributes", _T_MSG, _F_REPEATED, 0, "ObjectAttribute"),
        (3, "objects", _T_MSG, _F_REPEATED, 0, "ForeignObject"),
        (4, "frame_attribute_policy", _T_ENUM, 0, 0, ("AttributeUpdatePolicy", 2)),
        (5, "object_attribute_policy", _T_ENUM, 0, 0, ("AttributeUpdatePolicy", 2)),
        (6, "object_policy", _T_ENUM, 0, 0, ("ObjectUpdatePolicy", 2)),
    )),
    "EndOfStream": ({}, ((1, "source_id", _T_STRING, 0, 0, None),)),
    "Unknown": ({}, ((1, "message", _T_STRING, 0, 0, None),)),
    "Shutdown": ({}, ((1, "auth", _T_STRING, 0, 0, None),)),
}

# for error texts: per message index, its name, {number: (name, flags, enum name)}, required
cdef list _MSG_NAMES = []
cdef list _MSG_FIELDS = []
cdef list _MSG_REQUIRED = []


cdef void _load_schema() except *:
    """Fill _MSGS from _SCHEMA (once, at import)."""
    global _M_VIDEO_OBJECT
    cdef dict index = {name: i for i, name in enumerate(_SCHEMA)}
    cdef _MsgSpec* m
    cdef _FieldSpec* fs
    if len(index) > _MAX_MSGS or index["Message"] != _M_MESSAGE:
        raise RuntimeError("the Savant schema table does not fit")
    for name, (required, fields) in _SCHEMA.items():
        m = &_MSGS[index[name]]
        m.required = 0
        for bit in required:
            m.required |= <uint8_t>bit
        for n in range(_MAX_FIELD + 1):
            m.fields[n].type = 0
        names = {}
        for number, fname, ftype, flags, req, target in fields:
            if not 0 < number <= _MAX_FIELD:
                raise RuntimeError(f"{name}.{fname}: field number {number} over _MAX_FIELD")
            fs = &m.fields[number]
            fs.type = ftype
            fs.wire = (_WT_VARINT if ftype in (_T_VARINT, _T_ENUM, _T_PACKED_VARINT) else
                       _WT_I32 if ftype == _T_I32 else
                       _WT_I64 if ftype in (_T_I64, _T_PACKED_I64) else _WT_LEN)
            fs.flags = flags
            fs.req = req
            fs.sub = index[target] if ftype == _T_MSG else (target[1] if ftype == _T_ENUM else 0)
            names[number] = (fname, flags, target[0] if ftype == _T_ENUM else None)
        _MSG_NAMES.append(name)
        _MSG_FIELDS.append(names)
        _MSG_REQUIRED.append(required)
    _M_VIDEO_OBJECT = index["VideoObject"]


_load_schema()


cdef struct _Ctx:
    bint semantic          # check what the conversion checks (off inside unconverted attributes)
    int kind               # Message: the last content member's field number
    bint persistent        # Attribute: its last is_persistent
    bint has_parent        # VideoObject: it has a parent_id
    int64_t object_id      # VideoObject: its id (the last one; 0 if none)
    int64_t parent_id      # VideoObject: its parent_id (the last one)
    int64_t ids[_FEW_OBJECTS]      # VideoFrame: its first objects' ids
    int64_t parents[_FEW_OBJECTS]  # VideoFrame: their parent_ids
    Py_ssize_t n_tags      # PolygonalAreaTags: how many tags (counted on)


cdef inline bint _hex(uint8_t c) noexcept nogil:
    return (48 <= c <= 57) or (97 <= c <= 102) or (65 <= c <= 70)


cdef bint _uuid_ok(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    """The forms savant-rs's UUID parser takes: 32 hex digits, 8-4-4-4-12 with hyphens, that
    in braces, or that after urn:uuid: (lower case). Hex digits in either case."""
    cdef Py_ssize_t i
    if n == 32:
        for i in range(32):
            if not _hex(s[i]):
                return False
        return True
    if n == 38:
        if s[0] != 123 or s[37] != 125:  # { }
            return False
        s += 1
    elif n == 45:
        if memcmp(s, b"urn:uuid:", 9) != 0:
            return False
        s += 9
    elif n != 36:
        return False
    for i in range(36):
        if i == 8 or i == 13 or i == 18 or i == 23:
            if s[i] != 45:  # -
                return False
        elif not _hex(s[i]):
            return False
    return True


cdef Py_ssize_t _occurrence(const uint8_t* p, Py_ssize_t start, Py_ssize_t at,
                            uint32_t number) noexcept nogil:
    """How many fields `number` precede offset at (error path: texts say objects[3])."""
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t n = 0
    cdef _Field f
    cdef _Err scratch
    while pos < at:
        if _next_field(p, &pos, at, &f, &scratch):
            break
        if f.number == number:
            n += 1
    return n


cdef inline int _fail_in(_Err* e, int code, Py_ssize_t pos, int mi, int depth) noexcept nogil:
    """An error found in message mi at depth; the callers add the levels above it."""
    e.code = code
    e.pos = pos
    e.depth = depth
    e.msgs[depth] = <uint8_t>mi
    return code


cdef int _cmp_i64(const void* a, const void* b) noexcept nogil:
    cdef int64_t x = (<const int64_t*>a)[0]
    cdef int64_t y = (<const int64_t*>b)[0]
    return (x > y) - (x < y)


cdef int _check_parents(const uint8_t* p, Py_ssize_t start, Py_ssize_t end, Py_ssize_t n,
                        int mi, int depth, _Err* e) noexcept nogil:
    """savant-rs refuses a frame with an object whose parent_id is not the id of one of the
    frame's n objects. The frame was scanned already, so the walks below cannot fail."""
    cdef int64_t stack_ids[_STACK_IDS]
    cdef int64_t* ids = stack_ids
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t k = 0
    cdef Py_ssize_t opos
    cdef Py_ssize_t at
    cdef int64_t key
    cdef int64_t oid
    cdef int64_t parent
    cdef bint has_parent
    cdef int rc = 0
    cdef _Field f
    cdef _Field g
    cdef _Err scratch
    if n > _STACK_IDS:
        ids = <int64_t*>malloc(<size_t>n * sizeof(int64_t))
        if ids == NULL:
            return _fail_in(e, _E_NO_MEMORY, start, mi, depth)
    for phase in range(2):
        pos = start
        k = 0
        while pos < end and k < n:
            at = pos
            if _next_field(p, &pos, end, &f, &scratch):
                break
            if f.number != _N_OBJECTS_FIELD:
                continue
            opos = f.start
            oid = 0
            parent = 0
            has_parent = False
            while opos < f.end:  # the last id and parent_id win, as in protobuf
                if _next_field(p, &opos, f.end, &g, &scratch):
                    break
                if g.wire == _WT_VARINT and g.number == _N_OBJECT_ID:
                    oid = <int64_t>g.value
                elif g.wire == _WT_VARINT and g.number == _N_OBJECT_PARENT:
                    parent = <int64_t>g.value
                    has_parent = True
            if phase == 0:
                ids[k] = oid
            elif has_parent:
                key = parent
                if bsearch(&key, ids, <size_t>n, sizeof(int64_t), _cmp_i64) == NULL:
                    e.value = <uint64_t>parent
                    e.fields[depth] = _N_OBJECTS_FIELD
                    e.index[depth] = k
                    e.field = _N_OBJECT_PARENT
                    rc = _fail_in(e, _E_PARENT, at, _M_VIDEO_OBJECT, depth + 1)
                    e.msgs[depth] = <uint8_t>mi
                    break
            k += 1
        if rc:
            break
        if phase == 0:
            qsort(ids, <size_t>k, sizeof(int64_t), _cmp_i64)
            n = k
    if ids != stack_ids:
        free(ids)
    return rc


cdef int _scan(const uint8_t* p, Py_ssize_t start, Py_ssize_t end, int mi, int depth,
               _Ctx* c, _Err* e) noexcept nogil:
    """Check p[start:end] as message mi of the schema, recursively; 0 or an error code."""
    cdef const _MsgSpec* m = &_MSGS[mi]
    cdef const _FieldSpec* fs
    cdef Py_ssize_t pos = start
    cdef Py_ssize_t at
    cdef Py_ssize_t q
    cdef Py_ssize_t n_objects = 0
    cdef Py_ssize_t n_parents = 0
    cdef Py_ssize_t n_points = 0
    cdef Py_ssize_t n_tags = -1     # PolygonalArea: -1 while it has no tags
    cdef Py_ssize_t tags_before = 0
    cdef uint64_t v
    cdef uint8_t seen = 0
    cdef int t
    cdef int rc
    cdef int32_t ev
    cdef _Field f
    while pos < end:
        at = pos
        rc = _next_field(p, &pos, end, &f, e)
        if rc:
            return _fail_in(e, rc, e.pos, mi, depth)
        if f.number > _MAX_FIELD:
            continue
        fs = &m.fields[f.number]
        t = fs.type
        if t == 0:
            continue
        seen |= fs.req
        # prost refuses a known field with another wire type (packed lists take both)
        if f.wire != fs.wire and not (t >= _T_PACKED_VARINT and f.wire == _WT_LEN):
            e.value = fs.wire
            return _fail_in(e, _E_WRONG_WIRE, at, mi, depth)
        if t == _T_MSG:
            if depth + 1 >= _MAX_DEPTH:
                return _fail_in(e, _E_TOO_DEEP, at, mi, depth)
            if fs.flags & _F_OBJECTS:
                c.has_parent = False  # set by the object's parent_id, wherever it is
                c.object_id = 0
            tags_before = c.n_tags
            rc = _scan(p, f.start, f.end, fs.sub, depth + 1, c, e)
            if rc >= _E_CONVERSION_FIRST and fs.flags & (_F_PERSISTED | _F_MAP):
                rc = (_unless_dropped(p, f.start, f.end, fs.sub, depth + 1, c, e, rc)
                      if fs.flags & _F_PERSISTED else
                      _unless_replaced(p, f.start, f.end, pos, end, f.number, fs.sub, depth + 1,
                                       c, e, rc))
            if rc:
                e.msgs[depth] = <uint8_t>mi
                e.fields[depth] = f.number
                e.index[depth] = (_occurrence(p, start, at, f.number)
                                  if fs.flags & _F_REPEATED else 0)
                return rc
            if not fs.flags:
                pass
            elif fs.flags & _F_OBJECTS:  # frames do not nest: c.ids is this frame's
                if n_objects < _FEW_OBJECTS:
                    c.ids[n_objects] = c.object_id
                    if c.has_parent:
                        c.parents[n_parents] = c.parent_id
                n_objects += 1
                n_parents += c.has_parent
            elif fs.flags & _F_KIND:
                c.kind = <int>f.number  # oneof: the last member wins
            elif fs.flags & _F_POINTS:
                n_points += 1
            elif fs.flags & _F_TAGS:  # repeated occurrences merge: their tags add up
                n_tags = (0 if n_tags < 0 else n_tags) + c.n_tags - tags_before
            elif fs.flags & _F_TAG:
                c.n_tags += 1
        elif t == _T_STRING or t == _T_UUID:
            if not _utf8_ok(p + f.start, f.end - f.start):
                return _fail_in(e, _E_UTF8, f.start, mi, depth)
            if t == _T_UUID and c.semantic and not _uuid_ok(p + f.start, f.end - f.start):
                return _fail_in(e, _E_UUID, f.start, mi, depth)
        elif t == _T_VARINT:
            if not fs.flags:
                pass
            elif fs.flags & _F_PERSIST_FLAG:
                c.persistent = f.value != 0
            elif fs.flags & _F_PARENT:
                c.has_parent = True
                c.parent_id = <int64_t>f.value
            elif fs.flags & _F_OBJECT_ID:
                c.object_id = <int64_t>f.value
        elif t == _T_ENUM:
            ev = <int32_t>f.value  # prost reads an enum as int32: the low 32 bits
            if c.semantic and (ev < 0 or ev > fs.sub):
                e.value = f.value
                return _fail_in(e, _E_ENUM, at, mi, depth)
        elif t >= _T_PACKED_VARINT and f.wire == _WT_LEN:  # a packed list
            if t == _T_PACKED_I64:
                if (f.end - f.start) % 8:
                    return _fail_in(e, _E_PACKED_TRUNCATED, f.start, mi, depth)
            else:
                q = f.start
                while q < f.end:
                    rc = _read_varint(p, &q, f.end, &v)
                    if rc:
                        return _fail_in(e, rc, q, mi, depth)
    if c.semantic:
        if (seen & m.required) != m.required:
            e.value = m.required & ~seen
            e.field = 0
            return _fail_in(e, _E_REQUIRED, start, mi, depth)
        if n_tags >= 0 and n_tags != n_points:
            e.value = <uint64_t>n_points
            e.remaining = n_tags
            return _fail_in(e, _E_TAG_COUNT, start, mi, depth)
        if n_parents and not _parents_found(c, n_objects, n_parents):
            return _check_parents(p, start, end, n_objects, mi, depth, e)
    return 0


cdef bint _parents_found(_Ctx* c, Py_ssize_t n_objects, Py_ssize_t n_parents) noexcept nogil:
    """Whether every parent_id of a frame with few objects is one of their ids (False also
    when it has too many to tell: _check_parents tells then, and says which one is not)."""
    cdef Py_ssize_t i
    cdef Py_ssize_t j
    if n_objects > _FEW_OBJECTS:
        return False
    for i in range(n_parents):
        for j in range(n_objects):
            if c.ids[j] == c.parents[i]:
                break
        else:
            return False
    return True


cdef int _unless_dropped(const uint8_t* p, Py_ssize_t start, Py_ssize_t end, int mi, int depth,
                         _Ctx* c, _Err* e, int rc) noexcept nogil:
    """rc, a conversion-level failure in an Attribute that savant-rs converts only if it is
    persistent: 0 if it is not (it must still decode as protobuf), else rc as it was."""
    cdef int again
    cdef bint semantic = c.semantic
    cdef _Err first = e[0]
    c.semantic = False
    c.persistent = False
    again = _scan(p, start, end, mi, depth, c, e)
    c.semantic = semantic
    if again:
        return again
    if not c.persistent:
        return 0
    e[0] = first
    return rc


cdef int64_t _entry_key(const uint8_t* p, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    """The key of a map entry with a varint key (the last one; 0 if none)."""
    cdef Py_ssize_t pos = start
    cdef int64_t key = 0
    cdef _Field f
    cdef _Err scratch
    while pos < end:
        if _next_field(p, &pos, end, &f, &scratch):
            break
        if f.number == 1 and f.wire == _WT_VARINT:
            key = <int64_t>f.value
    return key


cdef int _unless_replaced(const uint8_t* p, Py_ssize_t start, Py_ssize_t end,
                          Py_ssize_t rest, Py_ssize_t rest_end, uint32_t number, int mi,
                          int depth, _Ctx* c, _Err* e, int rc) noexcept nogil:
    """rc, a conversion-level failure in a map entry p[start:end]: 0 if a later entry (in
    p[rest:rest_end]) has the same key, since savant-rs converts only the last one; the entry
    must still decode as protobuf."""
    cdef int again
    cdef int64_t key
    cdef bint semantic = c.semantic
    cdef _Err first = e[0]
    cdef _Field f
    cdef _Err scratch
    c.semantic = False
    again = _scan(p, start, end, mi, depth, c, e)
    c.semantic = semantic
    if again:
        return again
    key = _entry_key(p, start, end)
    while rest < rest_end:
        if _next_field(p, &rest, rest_end, &f, &scratch):
            break  # the scan that goes on from here reports it
        if f.number == number and f.wire == _WT_LEN and _entry_key(p, f.start, f.end) == key:
            return 0
    e[0] = first
    return rc


cdef int _scan_message(const uint8_t* p, Py_ssize_t start, Py_ssize_t end, int* kind,
                       _Err* e) noexcept nogil:
    """Check a Savant Message as savant-rs reads it; store its content field number."""
    cdef _Ctx c
    cdef int rc
    c.semantic = True
    c.kind = 0
    c.persistent = False
    c.has_parent = False
    c.n_tags = 0
    e.layer = _L_MESSAGE
    e.base = start
    e.depth = 0
    e.msgs[0] = _M_MESSAGE
    kind[0] = 0
    rc = _scan(p, start, end, _M_MESSAGE, 0, &c, e)
    if rc:
        return rc
    # An absent or empty protocol_version passes, as upstream's server lets it through (the
    # consuming Savant reader is the one that checks the version); bad UTF-8 does not.
    if c.kind == 0:  # savant-rs panics: "Unexpected absense of message content"
        return _fail_in(e, _E_NO_CONTENT, start, _M_MESSAGE, 0)
    kind[0] = c.kind
    return 0


cdef int _top_kind(const uint8_t* p, Py_ssize_t start, Py_ssize_t end, int* kind,
                   _Err* e) noexcept nogil:
    """A Savant Message's kind (its last content member's field number, 0 if none) from the
    top-level fields alone, nothing below them checked; non-zero if those cannot be read."""
    cdef Py_ssize_t pos = start
    cdef _Field f
    cdef int rc
    e.layer = _L_MESSAGE
    e.base = start
    e.depth = 0
    e.msgs[0] = _M_MESSAGE
    kind[0] = 0
    while pos < end:
        rc = _next_field(p, &pos, end, &f, e)
        if rc:
            return rc
        if f.number <= _MAX_FIELD and _MSGS[_M_MESSAGE].fields[f.number].flags & _F_KIND:
            kind[0] = <int>f.number
    return 0


cdef int _content_kind(const uint8_t* p, Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    """The kind of a Savant Message that _scan_message accepted before."""
    cdef int kind
    cdef _Err e
    _top_kind(p, start, end, &kind, &e)
    return kind


# ---- C scanners of the envelope ------------------------------------------------------------

cdef int _scan_media(const uint8_t* p, Py_ssize_t start, Py_ssize_t end, _Media* m,
                     _Err* e, bint check=True) noexcept nogil:
    """Check one Media in p[start:end] and find its parts (offsets are absolute). Without
    ``check`` the Savant message is not checked, only its kind read (_content_kind)."""
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
    if not check:
        m.kind = _content_kind(p, m.msg_start, m.msg_end)
        return 0
    return _scan_message(p, m.msg_start, m.msg_end, &m.kind, e)


cdef int _scan_batch(const uint8_t* p, Py_ssize_t end, _Err* e, bint limit) noexcept nogil:
    """Check the outer framing of a MediaBatch (not the items), and with ``limit`` its item
    count."""
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
        if count > _MAX_BATCH_ITEMS and limit:
            return _fail(e, _E_TOO_MANY_ITEMS, at)
    return 0


# ---- error texts (error path only) ----------------------------------------------------------

cdef object _MediaError = None

cdef tuple _LAYER_BODY = ("Media body", "Savant message", "MediaBatch body")
cdef tuple _LAYER_NAME = ("Media", "Savant message", "MediaBatch")
cdef tuple _FIELD_NAMES = ({1: "message", 2: "topic", 3: "data"}, None, {1: "items"})


cdef str _savant_path(_Err* e, int upto):
    """Where in the Savant message: the fields taken down to level upto, e.g.
    video_frame.objects[3].detection_box ("" at the top)."""
    cdef list parts = []
    cdef int i
    for i in range(upto):
        name, flags, _ = _MSG_FIELDS[e.msgs[i]][e.fields[i]]
        parts.append(f"{name}[{e.index[i]}]" if flags & _F_REPEATED else name)
    return ".".join(parts)


cdef str _savant_field(_Err* e):
    """The failing field's full name, e.g. video_frame.uuid."""
    cdef str path = _savant_path(e, e.depth)
    cdef tuple info = _MSG_FIELDS[e.msgs[e.depth]].get(e.field, ("field", 0, None))
    return f"{path}.{info[0]}" if path else info[0]


cdef str _protobuf_what(_Err* e):
    cdef int code = e.code
    if code == _E_VARINT_TRUNCATED:
        return "truncated varint"
    if code == _E_VARINT_TOO_LONG:
        return f"varint longer than {_MAX_VARINT_LEN} bytes"
    if code == _E_VARINT_OVERFLOW:
        return "varint overflows 64 bits"
    if code == _E_TAG_TOO_BIG:
        return "field tag does not fit in 32 bits"
    if code == _E_FIELD_ZERO:
        return "field number 0"
    if code == _E_GROUP:
        return f"field {e.field} uses group wire type {e.wire}, which is not supported"
    if code == _E_WIRE_TYPE:
        return f"field {e.field} has invalid wire type {e.wire}"
    if code == _E_LEN_TRUNCATED:
        return (f"truncated length: field {e.field} declares {e.value} bytes "
                f"but {e.remaining} remain")
    if code == _E_FIXED_TRUNCATED:
        return f"truncated {64 if e.wire == _WT_I64 else 32}-bit field {e.field}"
    if code == _E_PACKED_TRUNCATED:
        return f"packed doubles of field {e.field} are not a multiple of 8 bytes"
    return f"nested more than {_MAX_DEPTH} deep"


cdef str _describe_savant(_Err* e, Py_ssize_t at):
    """Texts for the Savant-message layer: they name the field by its path."""
    cdef int code = e.code
    cdef str path
    cdef int32_t ev
    if code <= _E_PROTOBUF_LAST:
        path = _savant_path(e, e.depth)
        return (f"Savant message is not valid protobuf: {_protobuf_what(e)} at byte {at}"
                + (f" (in {path})" if path else ""))
    if code == _E_WRONG_WIRE:
        packed = _MSGS[e.msgs[e.depth]].fields[e.field].type >= _T_PACKED_VARINT
        return (f"Savant message field {e.field} ({_savant_field(e)}) has wire type {e.wire}, "
                f"expected {e.value}{' or 2' if packed else ''}")
    if code == _E_NO_CONTENT:
        return ("Savant message has no content (video_frame, video_frame_batch, "
                "video_frame_update, user_data, end_of_stream, unknown or shutdown)")
    if code == _E_UTF8:
        return f"Savant message: {_savant_field(e)} is not valid UTF-8"
    if code == _E_UUID:
        return f"Savant message: {_savant_field(e)} is not a UUID"
    if code == _E_ENUM:
        ev = <int32_t>e.value
        enum = _MSG_FIELDS[e.msgs[e.depth]][e.field][2]
        return f"Savant message: {_savant_field(e)} is {ev}, not a valid {enum}"
    if code == _E_REQUIRED:
        required = _MSG_REQUIRED[e.msgs[e.depth]]
        missing = " and no ".join(text for bit, text in required.items() if e.value & bit)
        return f"Savant message: {_savant_path(e, e.depth)} has no {missing}"
    if code == _E_PARENT:
        return (f"Savant message: {_savant_field(e)} {<int64_t>e.value} is not the id of an "
                f"object of the frame")
    if code == _E_TAG_COUNT:
        return (f"Savant message: {_savant_path(e, e.depth)} has {e.value} points but "
                f"{e.remaining} tags")
    if code == _E_NO_MEMORY:
        return "Savant message: out of memory while checking it"
    return f"malformed Savant message (error {code})"


cdef str _describe(_Err* e):
    cdef Py_ssize_t at = e.pos - e.base
    cdef int code = e.code
    if e.layer == _L_MESSAGE:
        return _describe_savant(e, at)
    if code <= _E_PROTOBUF_LAST:
        return f"{_LAYER_BODY[e.layer]} is not valid protobuf: {_protobuf_what(e)} at byte {at}"
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
    e.depth = 0
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


cdef int _kind_of(object message, bint whole=True) except -1:
    """The message's kind after checking all of it, or without ``whole`` its top level only."""
    cdef Py_buffer v
    cdef int kind
    cdef int rc
    cdef _Err e
    PyObject_GetBuffer(message, &v, PyBUF_SIMPLE)
    if whole:
        rc = _scan_message(<const uint8_t*>v.buf, 0, v.len, &kind, &e)
    else:
        rc = _top_kind(<const uint8_t*>v.buf, 0, v.len, &kind, &e)
    PyBuffer_Release(&v)
    if rc:
        raise _error(&e)
    return kind


def message_kind(message):
    """Content field number (5..11, 0 if none) of a Savant message; MediaError if malformed."""
    return _kind_of(message)


def is_end_of_stream(message):
    """Whether a Savant message is an end of stream (message_kind 9), for the client's reader,
    which asks it of every message: from the top-level fields alone, a MediaError only if those
    cannot be read. Checking the whole message here cost the client 0.6 us per 500 B frame,
    and the server checks every message it is sent anyway (400 for a malformed one)."""
    return _kind_of(message, False) == 9  # Kind.END_OF_STREAM


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
    e.depth = 0  # _describe reads the Savant path (msgs[0..depth]); unset it was stack garbage
    e.msgs[0] = _M_MESSAGE
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


def decode_media_batch(body, bint check=True):
    """MediaBatch body -> per item a decode_media tuple or its MediaError. ``check=False``:
    a batch checked already (check_media_batch), read for its parts and kinds only, with no
    limits (a worker's hand-off to the egress may group more than a client may send)."""
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
    if _scan_batch(p, end, &e, check):
        raise _error(&e)
    while pos < end:
        if _next_field(p, &pos, end, &f, &e):
            break  # unreachable: _scan_batch accepted the framing
        if f.number != 1:
            continue
        if _scan_media(p, f.start, f.end, &m, &e, check):
            results.append(_error(&e))
            continue
        parts += m.n_data
        if parts > _MAX_BATCH_DATA_PARTS and check:
            raise _limit_error(_E_TOO_MANY_BATCH_PARTS, _L_BATCH)
        results.append(_media_tuple(mv, p, f.end, &m))
    return results


cdef Py_ssize_t _send_media(void* sock, const uint8_t* p, Py_ssize_t end, _Media* m) except -2:
    """Send a Media that _scan_media accepted as ``[topic, message, *data]``: its frame bytes,
    or -1 when the socket would not take its first frame (nothing queued)."""
    cdef Py_ssize_t pos = m.data_from
    cdef Py_ssize_t left = m.n_data
    cdef Py_ssize_t size = (m.topic_end - m.topic_start) + (m.msg_end - m.msg_start)
    cdef _Field f
    cdef _Err e
    if send_frame(sock, p + m.topic_start, m.topic_end - m.topic_start, True, True) < 0:
        return -1
    send_frame(sock, p + m.msg_start, m.msg_end - m.msg_start, False, left > 0)
    while left:
        if _next_field(p, &pos, end, &f, &e):
            break  # unreachable: _scan_media accepted these bytes
        if f.number == 3:
            left -= 1
            size += f.end - f.start
            send_frame(sock, p + f.start, f.end - f.start, False, left > 0)
    return size


cdef Py_ssize_t _batch_table(const uint8_t* p, Py_ssize_t end, bint check, _Media** media,
                             Py_ssize_t** ends) except -2:
    """Scan a MediaBatch's items into ``media`` and ``ends`` (malloc'ed, the caller frees
    them): the item count, or -1 when the batch is not all valid. Without ``check`` (a body
    a worker checked already) each Savant message is read only for its kind, and the batch
    limits do not apply."""
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t parts = 0
    cdef Py_ssize_t i = 0
    cdef _Field f
    cdef _Err e
    if _scan_batch(p, end, &e, check):
        return -1
    while pos < end:  # items, to size the table
        if _next_field(p, &pos, end, &f, &e):
            return -1  # unreachable: _scan_batch accepted the framing
        count += f.number == 1
    media[0] = <_Media*>malloc(count * sizeof(_Media) + 1)
    ends[0] = <Py_ssize_t*>malloc(count * sizeof(Py_ssize_t) + 1)
    if media[0] == NULL or ends[0] == NULL:
        raise MemoryError()
    pos = 0
    while pos < end:
        if _next_field(p, &pos, end, &f, &e):
            return -1  # unreachable, as above
        if f.number != 1:
            continue
        if _scan_media(p, f.start, f.end, &media[0][i], &e, check):
            return -1
        parts += media[0][i].n_data
        if parts > _MAX_BATCH_DATA_PARTS and check:
            return -1
        ends[0][i] = f.end
        i += 1
    return count


cdef Py_ssize_t _frame_bytes(const uint8_t* p, Py_ssize_t end, _Media* m) noexcept nogil:
    """The size of a scanned Media's frames ``[topic, message, *data]``."""
    cdef Py_ssize_t pos = m.data_from
    cdef Py_ssize_t left = m.n_data
    cdef Py_ssize_t size = (m.topic_end - m.topic_start) + (m.msg_end - m.msg_start)
    cdef _Field f
    cdef _Err e
    while left:
        if _next_field(p, &pos, end, &f, &e):
            break  # unreachable: _scan_media accepted these bytes
        if f.number == 3:
            left -= 1
            size += f.end - f.start
    return size


def check_media_batch(body):
    """(items, frame bytes) of a MediaBatch whose every item is valid, else None (then
    decode_media_batch gives each item's answer): what a worker checks before it hands the
    body on unopened."""
    cdef Py_buffer v
    cdef _Media* media = NULL
    cdef Py_ssize_t* ends = NULL
    cdef Py_ssize_t count
    cdef Py_ssize_t size = 0
    cdef Py_ssize_t i
    PyObject_GetBuffer(body, &v, PyBUF_SIMPLE)
    try:
        count = _batch_table(<const uint8_t*>v.buf, v.len, True, &media, &ends)
        if count < 0:
            return None
        for i in range(count):
            size += _frame_bytes(<const uint8_t*>v.buf, ends[i], &media[i])
        return count, size
    finally:
        free(media)
        free(ends)
        PyBuffer_Release(&v)


def send_media_batch(uintptr_t handle, body, bint stop_at_eos, bint check=True):
    """Write a MediaBatch's items to a libzmq socket straight from ``body``, each as
    ``[topic, message, *data]`` copied by libzmq: no Python object per item. Stops before
    the first item the socket would not take and, with ``stop_at_eos``, before the first end
    of stream (its write waits for an acknowledgement). Returns (items, sent, frame bytes
    sent), or None without sending anything when the batch is not all valid: decode_media_batch
    then gives each item's answer. ``check=False``: the items were checked already (by
    check_media_batch in a worker), so only the envelope and each message's kind are read."""
    cdef Py_buffer v
    cdef const uint8_t* p
    cdef Py_ssize_t count
    cdef Py_ssize_t sent = 0
    cdef Py_ssize_t size = 0
    cdef Py_ssize_t written
    cdef _Media* media = NULL
    cdef Py_ssize_t* ends = NULL
    cdef void* sock = socket_of(handle)
    PyObject_GetBuffer(body, &v, PyBUF_SIMPLE)
    p = <const uint8_t*>v.buf
    try:
        count = _batch_table(p, v.len, check, &media, &ends)
        if count < 0:
            return None
        while sent < count:
            if stop_at_eos and media[sent].kind == 9:  # Kind.END_OF_STREAM
                break
            written = _send_media(sock, p, ends[sent], &media[sent])
            if written < 0:
                break
            size += written
            sent += 1
        return count, sent, size
    finally:
        free(media)
        free(ends)
        PyBuffer_Release(&v)


def batch_writes(list items):
    """decode_media_batch's items -> (messages, eos, frame_bytes) of the decoded ones, as a
    writer takes them: each message's frames ``[topic, message, *data]``, their EOS flags
    (None when none is an end of stream) and the frames' total size. MediaErrors are skipped;
    the caller maps them back by position."""
    cdef list messages = []
    cdef list eos = []
    cdef bint any_eos = False
    cdef Py_ssize_t size = 0
    cdef list frames
    cdef tuple item
    for obj in items:
        if type(obj) is not tuple:
            continue
        item = <tuple>obj
        frames = [item[0], item[1]]
        frames.extend(<list>item[2])
        for frame in frames:
            size += len(frame)
        messages.append(frames)
        if <int>item[3] == 9:  # Kind.END_OF_STREAM
            any_eos = True
            eos.append(True)
        else:
            eos.append(False)
    return messages, eos if any_eos else None, size


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
    cdef Message m
    for i in range(n):
        item = <object>PySequence_Fast_GET_ITEM(seq, i)
        if type(item) is Message:  # the client's own: its fields, no tuple per message
            m = <Message>item
            topic, message, data = m.topic, m.message, m.extra
        else:
            topic, message, data = item
        parts = _data_parts(data)
        parts_total += PySequence_Fast_GET_SIZE(parts)
        if parts_total > _MAX_BATCH_DATA_PARTS:
            raise _limit_error(_E_TOO_MANY_BATCH_PARTS, _L_BATCH)
        size += _field_size(_media_size(topic, message, parts))
        prepared.append((topic, message, parts))
    return prepared, size


cdef Py_ssize_t _item_pieces(list pieces, object topic, object message,
                             object parts) except -1:
    """Append one MediaBatch item (its field header, then the Media's pieces) to ``pieces``;
    its size in the batch."""
    cdef list inner = []
    cdef Py_ssize_t length = _media_pieces(inner, topic, message, parts)
    pieces.append(_field_header(_TAG_MESSAGE, length))
    pieces += inner
    return _field_size(length)


def encode_media_batch_pieces(items):
    """encode_media_batch as (body length, pieces), with the buffers uncopied."""
    cdef list prepared
    cdef Py_ssize_t size
    cdef list pieces = []
    cdef tuple item
    prepared, size = _prepare_batch(items)
    for item in prepared:
        _item_pieces(pieces, item[0], item[1], item[2])
    return size, pieces


def encode_frames_batch_pieces(list messages):
    """Writer messages ``[topic, message, *data]`` -> (body length, pieces): a MediaBatch of
    them as field headers and the buffers themselves, uncopied, with no batch limits (how a
    worker hands messages it decoded to the egress)."""
    cdef list pieces = []
    cdef Py_ssize_t size = 0
    for frames in messages:
        size += _item_pieces(pieces, frames[0], frames[1],
                             PySequence_Fast(frames[2:], "data parts must be a sequence"))
    return size, pieces


def encode_media_batch(items):
    """[(topic, message, data parts) or Message, ...] -> MediaBatch body, in one allocation."""
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
