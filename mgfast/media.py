"""The gateway envelope: ``Media`` bodies <-> ZeroMQ frames, without re-encoding.

The HTTP body of ``POST /`` is one protobuf (PROTOCOL.md section 4)::

    message Media      { savant.Message message = 1; bytes topic = 2; repeated bytes data = 3; }
    message MediaBatch { repeated Media items = 1; }   // mgfast-to-mgfast only

and on ZeroMQ the same message is the frames ``[topic, message, *data]``. The codec is compiled
(``ext/media.pyx`` -> ``mgfast._media``); this module holds the error class and re-exports it.

decode_media(body) -> (topic, message, data, kind)
    ``body`` is any C-contiguous buffer (bytes, bytearray, memoryview; TypeError otherwise).
    topic, message and each data part are memoryview slices of ``body``: no copies, so a
    bytearray body cannot be resized while they live. ``kind`` is the field number of the Savant
    message's ``content`` oneof (see :class:`Kind`), 5 to 11: a message without content is
    refused.
    What is checked, each failure raising :class:`MediaError`:

    - the Media is well-formed protobuf: varints of at most 10 bytes, tags that fit in 32 bits,
      field number not 0, wire types 0, 1, 2 or 5 (groups, 3 and 4, are refused; 6 and 7 are
      invalid), no payload running past the end. Unknown fields are skipped.
    - ``message`` (field 1) is present, exactly once, length-delimited. A repeated message field
      is refused: protobuf would merge the two messages, which needs re-encoding.
    - ``topic`` (field 2) and ``data`` (field 3) are length-delimited. A repeated topic: the last
      one wins, as in protobuf. At most ``MAX_DATA_PARTS`` data parts.
    - ``topic`` is valid UTF-8 (an absent topic is the empty topic).
    - the Savant message is one a Savant consumer can read: a savant-rs 0.3.0 reader decodes
      it with prost and converts it, and fails (an ``Unknown`` message with the error) or
      panics on anything below, so the codec refuses it first. All of it is checked, nested
      messages too, by the schema of savant-rs 0.3.0 (savant_protobuf 0.2.0):

      - decoding (prost): well-formed protobuf at every level (as above; also a ten-byte
        varint whose last byte is above 1); every known field with its schema's wire type
        (repeated numbers packed or not); strings UTF-8.
      - conversion (savant_core): ``content`` present (savant-rs panics "Unexpected absense of message content"); a
        video frame has ``uuid`` and ``previous_keyframe`` (if any) that parse as UUIDs
        (32 hex digits, hyphenated, braced or ``urn:uuid:``), content (internal, external or
        none), a valid ``transcoding_method``, every object's ``parent_id`` among the frame's
        object ids; an object has ``detection_box``; a transformation, an attribute value and
        the bounding box, point, polygon and intersection values have their member; an
        intersection's ``kind`` and a frame update's policies are valid enum values (prost
        reads them as int32: the low 32 bits); a polygon with tags has one per point; a batch
        entry has a frame; a frame update's object attributes and objects have theirs.
        Attributes of objects and of user data that are not ``is_persistent`` are dropped
        unconverted by savant-rs, so only their decoding is checked; likewise a batch entry
        replaced by a later one with the same key.

      An absent or empty ``protocol_version`` passes, as upstream's server lets it through
      (the consuming Savant reader checks the version and reports a mismatch).
      Stricter than savant-rs, on purpose (savant-rs never writes these): groups (wire types
      3 and 4) anywhere, and a repeated singular sub-message
      or oneof member is checked occurrence by occurrence where prost would merge them.
      Bytes fields (a frame's ``internal`` content, attribute blobs) are not read. The error
      says where, e.g. ``Savant message: video_frame.objects[1] has no detection_box``.

message_kind(message) -> int
    The same Savant-message check as above, by the same code, on a serialized Savant message
    (e.g. a ZeroMQ frame); returns ``kind``. ``Kind.END_OF_STREAM`` (9) marks end of stream.
    It costs about half a microsecond for savant-rs's ``gen_frame()`` message (500 bytes).

routing_labels(message) -> list[bytes]
    The ``routing_labels`` (field 2) of a serialized Savant message, in order, as bytes (what
    basic authentication's label rules are checked against). MediaError if its top level is
    not well-formed protobuf.

encode_media(topic, message, data) -> bytes
    A Media body from bytes-like ``topic`` and ``message`` and a sequence ``data`` of bytes-like
    parts. Fields in field-number order and an empty topic left out, so the output is
    byte-identical to what a protobuf serializer writes for the same fields. One output
    allocation. Nothing is validated beyond ``len(data) <= MAX_DATA_PARTS`` (MediaError).

encode_media_pieces(topic, message, data) -> (length, pieces)
    The same body as ``encode_media`` as a list of buffers to write one after another: each
    field's header (tag and length) as bytes, then the caller's own buffer for its value, so
    large frames reach the socket (or TLS) write without a copy. ``length`` is their total.

encode_media_batch(items) -> bytes / encode_media_batch_pieces(items) -> (length, pieces) /
decode_media_batch(body) -> list
    A MediaBatch of ``(topic, message, data)`` items, at most ``MAX_BATCH_ITEMS`` of them with at
    most ``MAX_BATCH_DATA_PARTS`` data parts in all. Decoding returns, per item, the
    ``decode_media`` tuple or the :class:`MediaError` for that item (so one bad item does not
    reject the others); it raises MediaError only when the batch as a whole is malformed or
    over those limits. The ``_pieces`` form is the same body as buffers to write in order,
    like ``encode_media_pieces``.
"""

from __future__ import annotations

from enum import IntEnum


class MediaError(ValueError):
    """A malformed Media, MediaBatch or Savant message; str() is a short reason for a 400 body."""


class Kind(IntEnum):
    """Field numbers of the Savant ``Message.content`` oneof, as returned in ``kind``."""

    NONE = 0  # no content: such a message is refused, so decoding never returns it
    VIDEO_FRAME = 5
    VIDEO_FRAME_BATCH = 6
    VIDEO_FRAME_UPDATE = 7
    USER_DATA = 8
    END_OF_STREAM = 9
    UNKNOWN = 10
    SHUTDOWN = 11


# Defined after MediaError: the compiled module looks MediaError up here when it first raises.
from mgfast._media import (  # noqa: E402
    MAX_BATCH_DATA_PARTS,
    MAX_BATCH_ITEMS,
    MAX_DATA_PARTS,
    MAX_VARINT_LEN,
    decode_media,
    decode_media_batch,
    encode_media,
    encode_media_batch,
    encode_media_batch_pieces,
    encode_media_pieces,
    message_kind,
    routing_labels,
)

__all__ = [
    "MAX_BATCH_DATA_PARTS",
    "MAX_BATCH_ITEMS",
    "MAX_DATA_PARTS",
    "MAX_VARINT_LEN",
    "Kind",
    "MediaError",
    "decode_media",
    "decode_media_batch",
    "encode_media",
    "encode_media_batch",
    "encode_media_batch_pieces",
    "encode_media_pieces",
    "message_kind",
    "routing_labels",
]
