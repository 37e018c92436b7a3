"""The gateway envelope: ``Media`` bodies <-> ZeroMQ frames ``[topic, message, *data]``, without
re-encoding. The codec is compiled (``ext/media.pyx`` -> ``mgfast._media``, stubs in
``_media.pyi``); this module holds its error class and kinds and re-exports it. The schema and
everything the Savant-message check covers: docs/protocol.md section 2.

decode_media(body) -> (topic, message, data, kind)
    ``body`` is any C-contiguous buffer (TypeError otherwise). topic, message and each data part
    are memoryview slices of ``body`` (a bytearray body cannot be resized while they live).
    ``kind`` is the Savant message's ``content`` field number (:class:`Kind`, 5 to 11).
    :class:`MediaError` for a malformed Media or a Savant message a savant-rs 0.3.0 consumer
    would fail on; its text names the field, for a 400 body.

message_kind(message) -> int
    The same Savant-message check on a serialized Savant message (a ZeroMQ frame); its kind.

routing_labels(message) -> list[bytes]
    The ``routing_labels`` of a serialized Savant message, in order; MediaError if its top level
    is not well-formed protobuf.

encode_media(topic, message, data) -> bytes
    A Media body, byte-identical to a protobuf serializer's (fields in order, an empty topic
    left out); MediaError only for more than ``MAX_DATA_PARTS`` parts.

encode_media_pieces(topic, message, data) -> (length, pieces)
    The same body as buffers to write in order: field headers as bytes, values as the caller's
    own buffers (no copy of large frames).

encode_media_batch(items) -> bytes / encode_media_batch_pieces(items) -> (length, pieces) /
decode_media_batch(body) -> list
    A MediaBatch of ``(topic, message, data)`` items or the client's ``Message`` objects (at
    most ``MAX_BATCH_ITEMS`` items and ``MAX_BATCH_DATA_PARTS`` parts). Decoding returns per
    item the ``decode_media`` tuple or that item's MediaError; it raises only when the batch as
    a whole is malformed or over the limits.

batch_writes(items) -> (messages, eos, frame_bytes)
    The decoded items of a batch as a writer takes them (``OutStreamWriter.submit_group``):
    their frame lists, EOS flags (None if none is an EOS) and total frame size, in one C loop.

check_media_batch(body) -> (items, frame_bytes) | None
    Whether every item of a batch is valid, with no Python object per item: a worker checks a
    client's batch so, then hands it to the egress unopened.

send_media_batch(handle, body, stop_at_eos, check=True) -> (items, sent, frame_bytes) | None
    The writer's fast path for a whole valid batch (``OutStreamWriter.submit_batch``): the
    items go from the body to a libzmq socket with no Python object per item, until the socket
    would block (or, if asked, an end of stream comes). None, with nothing sent, when any item
    is malformed: decode_media_batch then answers each one. With ``check=False`` (a batch
    checked already; so also for ``decode_media_batch``) only the envelope and each message's
    kind are read, and the batch limits do not apply.

encode_frames_batch_pieces(messages) -> (length, pieces)
    Writer messages ``[topic, message, *data]`` as a MediaBatch, uncopied and without batch
    limits: how a worker hands the messages it decoded to the egress.
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
    batch_writes,
    check_media_batch,
    decode_media,
    decode_media_batch,
    encode_media,
    encode_media_batch,
    encode_frames_batch_pieces,
    encode_media_batch_pieces,
    encode_media_pieces,
    is_end_of_stream,
    message_kind,
    routing_labels,
    send_media_batch,
)

__all__ = [
    "MAX_BATCH_DATA_PARTS",
    "MAX_BATCH_ITEMS",
    "MAX_DATA_PARTS",
    "MAX_VARINT_LEN",
    "Kind",
    "MediaError",
    "batch_writes",
    "check_media_batch",
    "decode_media",
    "decode_media_batch",
    "encode_media",
    "encode_media_batch",
    "encode_frames_batch_pieces",
    "encode_media_batch_pieces",
    "encode_media_pieces",
    "is_end_of_stream",
    "message_kind",
    "routing_labels",
    "send_media_batch",
]
