"""The independent oracle for the envelope codec: the gateway and Savant schemas, built at run
time with the ``protobuf`` runtime (no protoc), in a private descriptor pool.

    savant.Message (excerpt of docs/protocol.md section 2, content members as opaque messages,
                    a video frame with just what savant-rs needs: uuid and content none)
    mgfast_test.Media { savant.Message message = 1; bytes topic = 2; repeated bytes data = 3; }
    mgfast_test.MediaBatch { repeated Media items = 1; }
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto

# content oneof members: field number -> (field name, message type name)
CONTENT = {
    5: ("video_frame", "VideoFrame"),
    6: ("video_frame_batch", "VideoFrameBatch"),
    7: ("video_frame_update", "VideoFrameUpdate"),
    8: ("user_data", "UserData"),
    9: ("end_of_stream", "EndOfStream"),
    10: ("unknown", "Unknown"),
    11: ("shutdown", "Shutdown"),
}


def _field(msg, name, number, ftype, label=F.LABEL_OPTIONAL, type_name=None, oneof=None):
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof
    return f


def _savant_file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="mgfast_test/savant.proto", package="savant",
                                            syntax="proto3")
    fd.message_type.add(name="NoneFrame")
    for number, (_, type_name) in CONTENT.items():
        m = fd.message_type.add(name=type_name)
        if number in (8, 9, 11):  # user_data, end_of_stream: source_id; shutdown: auth
            _field(m, "source_id" if number != 11 else "auth", 1, F.TYPE_STRING)
        if number == 5:  # what a video frame needs to be readable by savant-rs: uuid, content
            _field(m, "uuid", 3, F.TYPE_STRING)
            _field(m, "none", 19, F.TYPE_MESSAGE, type_name=".savant.NoneFrame")
    msg = fd.message_type.add(name="Message")
    _field(msg, "protocol_version", 1, F.TYPE_STRING)
    _field(msg, "routing_labels", 2, F.TYPE_STRING, F.LABEL_REPEATED)
    entry = msg.nested_type.add(name="PropagatedContextEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, F.TYPE_STRING)
    _field(entry, "value", 2, F.TYPE_STRING)
    _field(msg, "propagated_context", 3, F.TYPE_MESSAGE, F.LABEL_REPEATED,
           ".savant.Message.PropagatedContextEntry")
    _field(msg, "seq_id", 4, F.TYPE_UINT64)
    msg.oneof_decl.add(name="content")
    for number, (name, type_name) in CONTENT.items():
        _field(msg, name, number, F.TYPE_MESSAGE, type_name=f".savant.{type_name}", oneof=0)
    return fd


def _media_file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(name="mgfast_test/media.proto", package="mgfast_test",
                                            syntax="proto3", dependency=["mgfast_test/savant.proto"])
    media = fd.message_type.add(name="Media")
    _field(media, "message", 1, F.TYPE_MESSAGE, type_name=".savant.Message")
    _field(media, "topic", 2, F.TYPE_BYTES)
    _field(media, "data", 3, F.TYPE_BYTES, F.LABEL_REPEATED)
    batch = fd.message_type.add(name="MediaBatch")
    _field(batch, "items", 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".mgfast_test.Media")
    return fd


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_savant_file())
_pool.Add(_media_file())

Message = message_factory.GetMessageClass(_pool.FindMessageTypeByName("savant.Message"))
Media = message_factory.GetMessageClass(_pool.FindMessageTypeByName("mgfast_test.Media"))
MediaBatch = message_factory.GetMessageClass(_pool.FindMessageTypeByName("mgfast_test.MediaBatch"))


FRAME_UUID = "01a23712-cf7e-70ca-8e44-e285c6e249d0"


def savant_message(protocol_version: str = "0.2.0", kind: int = 9, *, labels=(), context=None,
                   seq_id: int = 0, source_id: str = "cam-1"):
    """An oracle Savant Message with the given content member (0 = none), filled so that
    savant-rs can read it (kind 0 it cannot: a Savant message needs content)."""
    m = Message(protocol_version=protocol_version, seq_id=seq_id)
    m.routing_labels.extend(labels)
    m.propagated_context.update(context or {})
    if kind:
        member = getattr(m, CONTENT[kind][0])
        member.SetInParent()
        if kind in (8, 9):
            member.source_id = source_id
        elif kind == 5:
            member.uuid = FRAME_UUID
            member.none.SetInParent()
    return m


def serialize(msg) -> bytes:
    return msg.SerializeToString(deterministic=True)


# ---- hand-written protobuf, for bodies the runtime would not produce -----------------------

def varint(n: int) -> bytes:
    n &= 2**64 - 1  # negative int32/int64 are ten-byte two's complement
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag(field, 2) + varint(len(payload)) + payload
