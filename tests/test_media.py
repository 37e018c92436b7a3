"""The envelope codec (mgfast.media) against an independent oracle (the protobuf runtime, see
tests/savant_proto.py) and against real Savant messages made by savant-rs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mgfast.media import (
    MAX_BATCH_DATA_PARTS,
    MAX_BATCH_ITEMS,
    MAX_DATA_PARTS,
    Kind,
    MediaError,
    batch_writes,
    check_media_batch,
    decode_media,
    decode_media_batch,
    encode_media,
    encode_media_pieces,
    encode_media_batch,
    encode_frames_batch_pieces,
    encode_media_batch_pieces,
    is_end_of_stream,
    message_kind,
)
from tests import savant_proto as pb
from tests.savant_proto import ld, tag, varint

try:  # the second oracle, for the tests marked needs_savant_rs; the rest use savant_proto
    import savant_rs
    sm = savant_rs.serialization_module
    prim = savant_rs.primitives
except ImportError:  # no savant-rs wheel for this Python (3.13): those tests skip
    savant_rs = sm = prim = None
needs_savant_rs = pytest.mark.skipif(savant_rs is None,
                                     reason="savant-rs 0.3.0 has no wheel for this Python")

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BODY_TYPES = (bytes, bytearray, memoryview)
EOS = pb.serialize(pb.savant_message(kind=9))          # a valid Savant message: end of stream


# ---- helpers --------------------------------------------------------------------------------


def as_bytes(decoded):
    topic, message, data, kind = decoded
    return bytes(topic), bytes(message), [bytes(d) for d in data], kind


def decode_all_types(body: bytes):
    """decode_media on bytes, bytearray and memoryview of body; all must agree."""
    results = [as_bytes(decode_media(t(body))) for t in BODY_TYPES]
    assert results[0] == results[1] == results[2]
    return results[0]


def reject_all_types(body: bytes, reason: str) -> str:
    texts = set()
    for t in BODY_TYPES:
        with pytest.raises(MediaError) as info:
            decode_media(t(body))
        texts.add(str(info.value))
    assert len(texts) == 1
    text = texts.pop()
    assert reason in text, text
    assert len(text) < 200
    return text


def media(message: bytes = EOS, topic: bytes = b"cam-1", data=()) -> bytes:
    return ld(1, message) + (ld(2, topic) if topic else b"") + b"".join(ld(3, d) for d in data)


# ---- strategies -----------------------------------------------------------------------------

kinds = st.sampled_from([*pb.CONTENT])  # a Savant message without content is refused
short_text = st.text(max_size=16)


@st.composite
def oracle_messages(draw):
    return pb.savant_message(
        protocol_version=draw(st.text(min_size=1, max_size=12)),
        kind=draw(kinds),
        labels=draw(st.lists(short_text, max_size=3)),
        context=draw(st.dictionaries(short_text, short_text, max_size=3)),
        seq_id=draw(st.integers(0, 2**64 - 1)),
        source_id=draw(short_text),
    )


topics = st.text(max_size=24).map(str.encode)
datas = st.lists(st.binary(max_size=48), max_size=5)
buffer_types = st.sampled_from(BODY_TYPES)


@st.composite
def valid_bodies(draw):
    msg = draw(oracle_messages())
    return pb.serialize(pb.Media(message=msg, topic=draw(topics), data=draw(datas)))


# ---- round trips against the oracle ---------------------------------------------------------

@FAST
@given(msg=oracle_messages(), topic=topics, data=datas)
def test_decode_matches_oracle(msg, topic, data):
    body = pb.serialize(pb.Media(message=msg, topic=topic, data=data))
    got_topic, got_message, got_data, kind = decode_all_types(body)
    assert got_topic == topic
    assert got_message == pb.serialize(msg)
    assert got_data == data
    content = msg.WhichOneof("content")
    expected_kind = next(n for n, (name, _) in pb.CONTENT.items() if name == content)
    assert kind == expected_kind
    assert message_kind(got_message) == kind


@FAST
@given(msg=oracle_messages(), topic=topics, data=datas, t1=buffer_types, t2=buffer_types,
       t3=buffer_types)
def test_encode_matches_oracle(msg, topic, data, t1, t2, t3):
    message = pb.serialize(msg)
    body = encode_media(t1(topic), t2(message), [t3(d) for d in data])
    assert type(body) is bytes
    parsed = pb.Media.FromString(body)
    assert parsed.topic == topic
    assert list(parsed.data) == data
    assert pb.serialize(parsed.message) == message
    assert body == pb.serialize(pb.Media(message=msg, topic=topic, data=data))
    assert decode_all_types(body)[:3] == (topic, message, data)


@FAST
@given(msg=oracle_messages(), topic=topics, data=datas, t1=buffer_types, t2=buffer_types,
       t3=buffer_types)
def test_encode_pieces_join_to_the_same_body_and_pass_buffers_through(msg, topic, data, t1,
                                                                      t2, t3):
    message, parts = t2(pb.serialize(msg)), [t3(d) for d in data]
    length, pieces = encode_media_pieces(t1(topic), message, parts)
    joined = b"".join(pieces)
    assert joined == encode_media(topic, bytes(message), data) and length == len(joined)
    assert any(p is message for p in pieces)  # the caller's buffers themselves, uncopied
    assert all(any(p is part for p in pieces) for part in parts)


def test_encode_pieces_refuses_what_encode_refuses():
    with pytest.raises(MediaError):
        encode_media_pieces(b"t", EOS, [b""] * (MAX_DATA_PARTS + 1))
    with pytest.raises(TypeError):
        encode_media_pieces(b"t", EOS, [1])


@FAST
@given(body=valid_bodies())
def test_decode_then_encode_is_identity(body):
    topic, message, data, _ = decode_media(body)
    assert encode_media(topic, message, data) == body


def test_empty_topic_is_omitted_and_decodes_empty():
    body = encode_media(b"", EOS, [])
    assert body == ld(1, EOS) == pb.serialize(pb.Media(message=pb.savant_message(kind=9)))
    assert decode_all_types(body) == (b"", EOS, [], 9)


def test_large_data_parts_and_lengths():
    big = bytes(range(256)) * 4096  # 1 MiB: a three-byte length varint
    body = encode_media(b"cam-1", EOS, [big, b"", big[:300]])
    assert pb.Media.FromString(body).data == [big, b"", big[:300]]
    assert decode_all_types(body) == (b"cam-1", EOS, [big, b"", big[:300]], 9)


# ---- zero copy ------------------------------------------------------------------------------

def test_results_are_views_of_the_body():
    body = media(data=[b"payload"])
    topic, message, data, _ = decode_media(body)
    for view in (topic, message, *data):
        assert isinstance(view, memoryview)
        assert view.obj is body
        assert view.format == "B" and view.readonly


def test_bytearray_body_is_not_copied():
    body = bytearray(media(data=[b"payload"]))
    topic, _, data, _ = decode_media(body)
    body[body.index(b"payload")] = ord("P")
    assert bytes(data[0]) == b"Payload"
    assert bytes(topic) == b"cam-1"
    with pytest.raises(BufferError):  # the views pin the bytearray
        body.extend(b"x")


def test_other_buffer_shapes():
    import array

    body = media()
    assert as_bytes(decode_media(memoryview(array.array("B", body)))) == decode_all_types(body)
    signed = memoryview(body).cast("b")
    assert as_bytes(decode_media(signed))[:3] == (b"cam-1", EOS, [])
    assert decode_media(signed)[0].format == "B"
    with pytest.raises(TypeError):  # not contiguous: a caller error, not a bad body
        decode_media(memoryview(body + body)[::2])
    with pytest.raises(TypeError):
        decode_media("not bytes")


# ---- real Savant messages (savant-rs) -------------------------------------------------------

REAL = [
    ("video_frame", lambda: sm.Message.video_frame(savant_rs.utils.gen_frame()),
     Kind.VIDEO_FRAME, "is_video_frame"),
    ("user_data", lambda: sm.Message.user_data(prim.UserData("cam-1")), Kind.USER_DATA,
     "is_user_data"),
    ("end_of_stream", lambda: sm.Message.end_of_stream(prim.EndOfStream("cam-1")),
     Kind.END_OF_STREAM, "is_end_of_stream"),
    ("shutdown", lambda: sm.Message.shutdown(prim.Shutdown("secret")), Kind.SHUTDOWN,
     "is_shutdown"),
    ("unknown", lambda: sm.Message.unknown("text"), Kind.UNKNOWN, "is_unknown"),
]


@needs_savant_rs
@pytest.mark.parametrize("make,kind,check", [r[1:] for r in REAL], ids=[r[0] for r in REAL])
def test_real_savant_messages(make, kind, check):
    msg = make()
    msg.labels = ["edge", "gpu"]
    raw = sm.save_message_to_bytes(msg)
    assert message_kind(raw) == kind
    body = encode_media(b"cam-1", raw, [b"\x00" * 1000])
    assert pb.Media.FromString(body).message.WhichOneof("content") == pb.CONTENT[kind][0]
    for t in BODY_TYPES:
        topic, message, data, got_kind = decode_media(t(body))
        assert got_kind == kind and bytes(topic) == b"cam-1" and bytes(message) == raw
        loaded = sm.load_message_from_bytes(bytes(message))
        assert getattr(loaded, check)()
        assert loaded.labels == ["edge", "gpu"]
        assert [bytes(d) for d in data] == [b"\x00" * 1000]
    assert is_end_of_stream(raw) == (kind == Kind.END_OF_STREAM)


def test_end_of_stream_is_told_from_the_top_level_alone():
    """The client's reader asks it of every message; the server checks the whole message. A
    top level that cannot be read is a MediaError; what is broken below it is the server's to
    refuse, and the kind is still told (the last content member, as protobuf's oneof)."""
    eos, user_data = ld(9, b""), ld(8, b"")
    assert is_end_of_stream(ld(1, b"0.2.0") + eos)
    assert not is_end_of_stream(ld(1, b"0.2.0") + user_data)
    assert not is_end_of_stream(ld(1, b"0.2.0"))  # no content: not an end of stream
    broken_inside = ld(1, b"0.2.0") + ld(9, b"\xff")  # a truncated varint inside
    with pytest.raises(MediaError, match="truncated varint"):
        message_kind(broken_inside)
    assert is_end_of_stream(broken_inside)
    assert is_end_of_stream(user_data + eos) and not is_end_of_stream(eos + user_data)
    for top_level_broken, why in ((b"\xff", "truncated varint at byte 0"),
                                  (ld(1, b"0.2.0")[:-1], "truncated length"),
                                  (tag(9, 3), "group wire type")):
        with pytest.raises(MediaError, match=why):
            is_end_of_stream(top_level_broken)


@needs_savant_rs
def test_real_video_frame_fields_survive():
    frame = savant_rs.utils.gen_frame()
    raw = sm.save_message_to_bytes(sm.Message.video_frame(frame))
    _, message, _, kind = decode_media(encode_media(b"test", raw, []))
    assert kind == 5
    back = sm.load_message_from_bytes(bytes(message)).as_video_frame()
    assert back.source_id == frame.source_id and back.uuid == frame.uuid


# ---- protobuf details the oracle agrees on --------------------------------------------------

UNKNOWN_FIELDS = [
    tag(100, 0) + varint(2**64 - 1),                      # varint, ten bytes
    tag(101, 1) + b"\x01" * 8,                            # i64
    ld(102, b"\x00\xff" * 10),                            # len
    tag(103, 5) + b"\x02" * 4,                            # i32
    tag(2**29 - 1, 2) + varint(0),                        # largest field number
    tag(4, 0) + b"\x81\x80\x80\x00",                      # overlong but valid varint
]


def test_unknown_fields_are_skipped_everywhere():
    noise = b"".join(UNKNOWN_FIELDS)
    message = EOS + noise
    body = noise + ld(1, message) + noise + ld(2, b"cam-1") + noise + ld(3, b"x") + noise
    assert decode_all_types(body) == (b"cam-1", message, [b"x"], 9)
    parsed = pb.Media.FromString(body)
    assert parsed.topic == b"cam-1" and parsed.data == [b"x"]
    assert message_kind(message) == 9
    batch = noise + ld(1, body) + noise
    assert [as_bytes(r) for r in decode_media_batch(batch)] == [(b"cam-1", message, [b"x"], 9)]


def test_repeated_topic_last_one_wins():
    body = ld(2, b"first") + ld(1, EOS) + ld(2, b"second")
    assert pb.Media.FromString(body).topic == b"second"
    assert decode_all_types(body)[0] == b"second"


def test_repeated_protocol_version_and_content_last_one_wins():
    frame = ld(3, pb.FRAME_UUID.encode()) + ld(19, b"")
    message = ld(1, b"9.9") + ld(9, b"") + ld(1, b"0.2.0") + ld(5, frame)
    oracle = pb.Message.FromString(message)
    assert oracle.protocol_version == "0.2.0" and oracle.WhichOneof("content") == "video_frame"
    assert message_kind(message) == 5


@pytest.mark.parametrize("message", [ld(9, b""), ld(1, b"") + ld(9, b""),
                                     ld(1, b"0.2.0") + ld(1, b"") + ld(9, b"")],
                         ids=["absent", "empty", "last_one_empty"])
def test_missing_or_empty_protocol_version_passes_as_upstream(message):
    assert message_kind(message) == 9
    assert decode_all_types(b"\x0a" + varint(len(message)) + message)[1] == message


@needs_savant_rs
def test_overlong_varints_are_accepted():
    # a length written in three bytes, a tag in two, a ten-byte varint (2**64 - 1)
    message = (b"\x8a\x00" + b"\x85\x80\x00" + b"0.2.0" + b"\x20" + b"\xff" * 9 + b"\x01"
               + ld(9, b""))
    body = b"\x0a" + varint(len(message)) + message
    assert pb.Message.FromString(message).protocol_version == "0.2.0"
    assert decode_all_types(body) == (b"", message, [], 9)
    assert sm.load_message_from_bytes(message).is_end_of_stream()


@needs_savant_rs
def test_tenth_varint_byte_above_one_is_refused_as_prost_does():
    # upb drops the bits beyond 64; prost (savant-rs, upstream) refuses them
    message = ld(1, b"0.2.0") + b"\x20" + b"\xff" * 9 + b"\x02" + ld(9, b"")
    assert "invalid varint" in sm.load_message_from_bytes(message).as_unknown()
    reject_all_types(media(message), "varint overflows 64 bits at byte 8")
    reject_all_types(tag(4, 0) + b"\xff" * 9 + b"\x7f" + media(), "Media body is not valid "
                     "protobuf: varint overflows 64 bits at byte 1")


def test_message_without_content_is_refused():
    raw = pb.serialize(pb.savant_message(kind=0, seq_id=7))
    with pytest.raises(MediaError, match="Savant message has no content"):
        message_kind(raw)
    reject_all_types(media(raw), "Savant message has no content")


# ---- bad input: one test per case -----------------------------------------------------------

BAD = [
    ("varint_too_long", b"\x80" * 10 + b"\x01", "varint longer than 10 bytes at byte 0"),
    ("truncated_varint", ld(1, EOS) + b"\x1a\x80", "truncated varint at byte"),
    ("truncated_tag", ld(1, EOS) + b"\xff", "truncated varint"),
    ("truncated_length", b"\x0a\x05ab", "truncated length: field 1 declares 5 bytes but 2 remain"),
    ("huge_length", ld(1, EOS) + b"\x1a" + varint(2**63), "truncated length"),
    ("invalid_wire_type_6", ld(1, EOS) + tag(7, 6), "field 7 has invalid wire type 6"),
    ("invalid_wire_type_7", tag(7, 7) + ld(1, EOS), "field 7 has invalid wire type 7 at byte 0"),
    ("start_group", ld(1, EOS) + tag(8, 3) + tag(8, 4), "group wire type 3"),
    ("end_group", tag(8, 4) + ld(1, EOS), "group wire type 4"),
    ("field_number_zero", ld(1, EOS) + tag(0, 2) + b"\x00", "field number 0"),
    ("tag_over_32_bits", varint(1 << 35 | 2) + b"\x00" + ld(1, EOS), "does not fit in 32 bits"),
    ("truncated_fixed64", ld(1, EOS) + tag(9, 1) + b"\x00" * 7, "truncated 64-bit field 9"),
    ("truncated_fixed32", ld(1, EOS) + tag(9, 5) + b"\x00" * 3, "truncated 32-bit field 9"),
    ("missing_message", ld(2, b"cam-1") + ld(3, b"x"), "Media has no message field"),
    ("empty_body", b"", "Media has no message field"),
    ("duplicated_message", ld(1, EOS) + ld(1, EOS), "more than one message field"),
    ("message_wrong_wire_type", tag(1, 0) + b"\x01" + ld(1, EOS),
     "Media field 1 (message) has wire type 0, expected 2"),
    ("topic_wrong_wire_type", ld(1, EOS) + tag(2, 5) + b"abcd",
     "Media field 2 (topic) has wire type 5, expected 2"),
    ("data_wrong_wire_type", ld(1, EOS) + tag(3, 1) + b"\x00" * 8,
     "Media field 3 (data) has wire type 1, expected 2"),
    ("topic_not_utf8", media(topic=b"cam-\xff"), "topic is not valid UTF-8"),
    ("topic_overlong_utf8", media(topic=b"\xc0\xaf"), "topic is not valid UTF-8"),
    ("topic_surrogate", media(topic=b"\xed\xa0\x80"), "topic is not valid UTF-8"),
    ("topic_above_unicode", media(topic=b"\xf4\x90\x80\x80"), "topic is not valid UTF-8"),
    ("topic_truncated_utf8", media(topic=b"cam-\xe2\x82"), "topic is not valid UTF-8"),
    ("savant_truncated_length", media(EOS[:-1]),
     "Savant message is not valid protobuf: truncated length: field 9"),
    ("savant_group", media(EOS + tag(20, 3)), "Savant message is not valid protobuf: field 20"),
    ("savant_field_zero", media(b"\x00\x00" + EOS), "Savant message is not valid protobuf"),
    ("savant_version_wrong_wire_type", media(tag(1, 0) + b"\x05"),
     "Savant message field 1 (protocol_version) has wire type 0"),
    ("savant_seq_id_wrong_wire_type", media(EOS + ld(4, b"")),
     "Savant message field 4 (seq_id) has wire type 2, expected 0"),
    ("savant_content_wrong_wire_type", media(ld(1, b"0.2.0") + tag(9, 0) + b"\x00"),
     "Savant message field 9 (end_of_stream) has wire type 0"),
    ("empty_message", media(b""), "Savant message has no content"),
    ("protocol_version_not_utf8", media(ld(1, b"0.2.\xff") + ld(9, b"")),
     "protocol_version is not valid UTF-8"),
    ("too_many_data_parts", media(data=[b""] * (MAX_DATA_PARTS + 1)),
     f"more than {MAX_DATA_PARTS} data parts"),
]


@pytest.mark.parametrize("body,reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_media(body, reason):
    reject_all_types(body, reason)


def test_error_text_counts_bytes_from_the_start_of_its_layer():
    text = reject_all_types(b"\x0a\x05ab", "truncated length")
    assert text == ("Media body is not valid protobuf: truncated length: field 1 declares 5 bytes"
                    " but 2 remain at byte 1")
    # inside the Savant message offsets count from the message's first byte
    text = reject_all_types(ld(2, b"c") + ld(1, b"\x0a\x09abc"), "Savant message")
    assert text.endswith("at byte 1")


def test_max_data_parts_is_accepted():
    assert len(decode_media(media(data=[b""] * MAX_DATA_PARTS))[2]) == MAX_DATA_PARTS


def test_media_error_is_a_value_error():
    assert issubclass(MediaError, ValueError)


def test_message_kind_rejects_what_decode_rejects():
    for message, reason in [(EOS[:-1], "truncated length"), (ld(1, b"\xff"), "not valid UTF-8"),
                            (tag(1, 0) + b"\x01", "wire type 0"), (b"\x80", "truncated varint")]:
        for t in BODY_TYPES:
            with pytest.raises(MediaError, match=reason):
                message_kind(t(message))


def test_compiled_module_alone_raises_media_error():
    code = ("import mgfast._media as m\n"
            "try:\n    m.decode_media(b'')\nexcept Exception as e:\n"
            "    import mgfast.media\n    assert type(e) is mgfast.media.MediaError, type(e)\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Media has no message field"


# ---- never anything but a result or MediaError ----------------------------------------------

def decode_or_media_error(body):
    for t in BODY_TYPES:
        try:
            topic, message, data, kind = decode_media(t(body))
        except MediaError:
            continue
        # whatever decodes re-encodes to a body that decodes the same
        again = as_bytes(decode_media(encode_media(topic, message, data)))
        assert again == as_bytes((topic, message, data, kind))
        assert kind == 0 or 5 <= kind <= 11
    for fn in (message_kind, decode_media_batch):
        try:
            fn(body)
        except MediaError:
            pass


@FAST
@given(st.binary(max_size=256))
def test_random_bytes(body):
    decode_or_media_error(body)


@FAST
@given(valid_bodies())
def test_every_truncated_prefix(body):
    for end in range(len(body)):
        decode_or_media_error(body[:end])


@FAST
@given(valid_bodies(), st.data())
def test_mutated_bodies(body, data):
    body = bytearray(body)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    decode_or_media_error(bytes(body))


@st.composite
def protobuf_shaped(draw, depth=1):
    """Mostly well-formed fields with any number and wire type, sometimes broken, so the fuzz
    reaches the schema checks of both layers and not just the first bad tag."""
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        number = draw(st.sampled_from([0, 1, 1, 2, 3, 3, 4, 5, 9, 11, 12, 2**29 - 1]))
        wire = draw(st.sampled_from([0, 1, 2, 2, 2, 3, 5, 6]))
        out += tag(number, wire)
        if wire == 0:
            out += varint(draw(st.integers(0, 2**64 - 1)))
        elif wire == 1:
            out += draw(st.binary(min_size=8, max_size=8))
        elif wire == 5:
            out += draw(st.binary(min_size=4, max_size=4))
        elif wire == 2:
            inner = (draw(protobuf_shaped(depth - 1)) if depth > 0 and draw(st.booleans())
                     else draw(st.one_of(st.binary(max_size=12), topics)))
            out += varint(len(inner)) + inner
    if draw(st.integers(0, 9)) == 0:
        out = out[:draw(st.integers(0, len(out)))]
    return out


@settings(max_examples=200, deadline=None)
@given(protobuf_shaped())
def test_protobuf_shaped_fuzz(body):
    decode_or_media_error(body)
    decode_or_media_error(ld(1, body))  # as a batch item / as a Savant message


# UTF-8 edge pieces: boundaries of every multi-byte range, lone continuation bytes, truncations
UTF8_PIECES = st.sampled_from([
    b"a", b"\x7f", b"\x80", b"\xbf", b"\xc0", b"\xc1", b"\xc2", b"\xdf", b"\xe0", b"\xe1",
    b"\xec", b"\xed", b"\xee", b"\xef", b"\xf0", b"\xf1", b"\xf3", b"\xf4", b"\xf5", b"\xff",
    b"\x9f", b"\xa0", b"\x8f", b"\x90", "é".encode(), "€".encode(), "\U0010ffff".encode(),
    "\ud7ff".encode(), "\ue000".encode(), "\U00010000".encode(),
])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.lists(UTF8_PIECES, max_size=6).map(b"".join), st.binary(max_size=8),
                 st.text(max_size=8).map(str.encode)))
def test_topic_utf8_check_matches_python(topic):
    try:
        topic.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    body = media(topic=topic)
    if valid:
        assert decode_media(body)[0] == topic
    else:
        reject_all_types(body, "topic is not valid UTF-8")
    pv = ld(1, topic) + ld(9, b"")
    if valid:  # an empty protocol_version passes too, as upstream
        assert message_kind(pv) == 9
    else:
        with pytest.raises(MediaError):
            message_kind(pv)


# ---- encoding -------------------------------------------------------------------------------

def test_encode_accepts_any_sequence_and_buffers():
    expected = encode_media(b"t", EOS, [b"a", b"b"])
    assert encode_media(bytearray(b"t"), memoryview(EOS), (b"a", bytearray(b"b"))) == expected
    assert encode_media(b"t", EOS, (x for x in [b"a", b"b"])) == expected
    parts = decode_media(expected)[2]
    assert encode_media(b"t", EOS, parts) == expected


def test_encode_rejects_non_buffers():
    with pytest.raises(TypeError):
        encode_media("t", EOS, [])
    with pytest.raises(TypeError):
        encode_media(b"t", EOS, b"ab")  # data is a sequence of parts, not one part
    with pytest.raises(TypeError):
        encode_media(b"t", EOS, 5)


def test_encode_too_many_data_parts():
    with pytest.raises(MediaError, match="more than"):
        encode_media(b"t", EOS, [b""] * (MAX_DATA_PARTS + 1))


# ---- batches --------------------------------------------------------------------------------

@st.composite
def batch_items(draw):
    return [(draw(topics), pb.serialize(draw(oracle_messages())), draw(datas))
            for _ in range(draw(st.integers(0, 5)))]


@settings(max_examples=80, deadline=None)
@given(batch_items())
def test_batch_round_trip_against_oracle(items):
    body = encode_media_batch(items)
    oracle = pb.MediaBatch(items=[pb.Media(message=pb.Message.FromString(m), topic=t, data=d)
                                  for t, m, d in items])
    assert body == pb.serialize(oracle)
    for t in BODY_TYPES:
        decoded = decode_media_batch(t(body))
        assert [as_bytes(r)[:3] for r in decoded] == [(t_, m, d) for t_, m, d in items]
        assert [r[3] for r in decoded] == [message_kind(m) for _, m, _ in items]


@settings(max_examples=80, deadline=None)
@given(batch_items())
def test_batch_pieces_join_to_the_same_body(items):
    length, pieces = encode_media_batch_pieces(items)
    joined = b"".join(pieces)
    assert joined == encode_media_batch(items) and length == len(joined)
    assert all(any(p is part for p in pieces) for _, _, data in items for part in data)


def test_batch_pieces_refuse_what_the_batch_encoder_refuses():
    with pytest.raises(MediaError):
        encode_media_batch_pieces([(b"t", EOS, [])] * (MAX_BATCH_ITEMS + 1))
    with pytest.raises(MediaError):
        encode_media_batch_pieces([(b"t", EOS, [b""] * MAX_DATA_PARTS)] * (
            MAX_BATCH_DATA_PARTS // MAX_DATA_PARTS + 1))


@needs_savant_rs
def test_batch_of_real_messages():
    raws = [sm.save_message_to_bytes(sm.Message.video_frame(savant_rs.utils.gen_frame())),
            sm.save_message_to_bytes(sm.Message.end_of_stream(prim.EndOfStream("cam-1")))]
    body = encode_media_batch([(b"cam-1", raws[0], [b"\x01" * 5000]), (b"cam-1", raws[1], [])])
    (_, m0, d0, k0), (_, m1, d1, k1) = decode_media_batch(body)
    assert (k0, k1) == (5, 9) and bytes(m0) == raws[0] and bytes(m1) == raws[1]
    assert [bytes(d) for d in d0] == [b"\x01" * 5000] and d1 == []
    assert decode_media_batch(body)[0][0].obj is body


def test_batch_with_one_corrupt_item():
    good = media(data=[b"x"])
    items = [good, media(topic=b"\xff"), good, b"\x0a\x09abc", ld(2, b"no message"), good]
    body = b"".join(ld(1, i) for i in items)
    results = decode_media_batch(body)
    assert len(results) == 6
    for i in (0, 2, 5):
        assert as_bytes(results[i]) == (b"cam-1", EOS, [b"x"], 9)
    assert isinstance(results[1], MediaError) and str(results[1]) == "topic is not valid UTF-8"
    assert isinstance(results[3], MediaError) and "truncated length" in str(results[3])
    assert str(results[4]) == "Media has no message field"


def test_batch_writes_are_the_decoded_items_as_a_writer_takes_them():
    user = pb.serialize(pb.savant_message(kind=8))
    items = [media(user, data=[b"x", b"yz"]), media(topic=b"\xff"), media(EOS), media(user)]
    decoded = decode_media_batch(b"".join(ld(1, i) for i in items))
    messages, eos, size = batch_writes(decoded)
    assert [[bytes(f) for f in m] for m in messages] == [
        [b"cam-1", user, b"x", b"yz"], [b"cam-1", EOS], [b"cam-1", user]]
    assert eos == [False, True, False]
    assert size == sum(len(f) for m in messages for f in m)
    assert messages[0][0].obj is decoded[0][0].obj  # views of the body: nothing copied
    assert batch_writes(decoded[:1] + decoded[3:]) == (
        [list(decoded[0][:2]) + decoded[0][2], list(decoded[3][:2])], None,
        5 + 2 * len(user) + 3 + 5)
    assert batch_writes([]) == ([], None, 0)


def test_batch_empty():
    assert encode_media_batch([]) == b""
    assert decode_media_batch(b"") == []


@pytest.mark.parametrize("body,reason", [
    (ld(1, media())[:-1], "MediaBatch body is not valid protobuf: truncated length"),
    (ld(1, media()) + tag(1, 0) + b"\x00", "MediaBatch field 1 (items) has wire type 0"),
    (tag(5, 3) + ld(1, media()), "MediaBatch body is not valid protobuf: field 5 uses group"),
    (ld(1, media()) + b"\x80", "MediaBatch body is not valid protobuf: truncated varint"),
], ids=["truncated_item", "item_wrong_wire_type", "group", "truncated_tag"])
def test_batch_broken_outer_framing(body, reason):
    for t in BODY_TYPES:
        with pytest.raises(MediaError, match=re.escape(reason)):
            decode_media_batch(t(body))


def test_batch_limits():
    item = (b"t", EOS, [])
    assert len(decode_media_batch(encode_media_batch([item] * MAX_BATCH_ITEMS))) == MAX_BATCH_ITEMS
    with pytest.raises(MediaError, match=f"more than {MAX_BATCH_ITEMS} items"):
        encode_media_batch([item] * (MAX_BATCH_ITEMS + 1))
    with pytest.raises(MediaError, match=f"more than {MAX_BATCH_ITEMS} items"):
        decode_media_batch(ld(1, media()) * (MAX_BATCH_ITEMS + 1))
    per_item = MAX_DATA_PARTS
    n = MAX_BATCH_DATA_PARTS // per_item + 1
    heavy = (b"t", EOS, [b""] * per_item)
    with pytest.raises(MediaError, match="data parts in total"):
        encode_media_batch([heavy] * n)
    with pytest.raises(MediaError, match="data parts in total"):
        decode_media_batch(ld(1, media(data=[b""] * per_item)) * n)
    # an item over the per-Media limit is that item's error only
    results = decode_media_batch(ld(1, media(data=[b""] * (per_item + 1))) + ld(1, media()))
    assert isinstance(results[0], MediaError) and not isinstance(results[1], MediaError)


@settings(max_examples=80, deadline=None)
@given(batch_items())
def test_check_media_batch_counts_what_decoding_accepts(items):
    body = encode_media_batch(items)
    for t in BODY_TYPES:
        assert check_media_batch(t(body)) == (len(items), batch_writes(decode_media_batch(body))[2])


def test_check_media_batch_refuses_a_batch_with_any_bad_item_or_over_the_limits():
    good = media(data=[b"x"])
    assert check_media_batch(ld(1, good) * 2) == (2, 2 * (5 + len(EOS) + 1))
    assert check_media_batch(ld(1, good) + ld(1, media(topic=b"\xff"))) is None
    assert check_media_batch(ld(1, good)[:-1]) is None  # broken framing
    assert check_media_batch(ld(1, media()) * (MAX_BATCH_ITEMS + 1)) is None
    heavy = ld(1, media(data=[b""] * MAX_DATA_PARTS))
    assert check_media_batch(heavy * (MAX_BATCH_DATA_PARTS // MAX_DATA_PARTS + 1)) is None


@settings(max_examples=80, deadline=None)
@given(batch_items())
def test_frames_batch_pieces_make_the_batch_of_the_writers_messages(items):
    """How a worker hands the messages it decoded to the egress: the MediaBatch of them, with
    the frames passed through uncopied."""
    messages = [[t, m, *d] for t, m, d in items]
    length, pieces = encode_frames_batch_pieces(messages)
    joined = b"".join(pieces)
    assert joined == encode_media_batch(items) and length == len(joined)
    assert all(any(p is part for p in pieces) for _, _, data in items for part in data)


def test_a_checked_batch_is_read_again_without_limits_and_for_its_kinds_only():
    """``check=False`` (the egress reading what a worker checked): a hand-off may hold more
    items than a client may send, and the Savant messages are read only for their kinds."""
    n = MAX_BATCH_ITEMS + 1
    length, pieces = encode_frames_batch_pieces([[b"t", EOS]] * n)
    body = b"".join(pieces)
    with pytest.raises(MediaError, match="items"):
        decode_media_batch(body)
    unchecked = decode_media_batch(body, check=False)
    assert len(unchecked) == n and {item[3] for item in unchecked} == {Kind.END_OF_STREAM}
    user = pb.serialize(pb.savant_message(kind=8))
    mixed = b"".join(encode_frames_batch_pieces([[b"a", user], [b"b", EOS]])[1])
    assert [item[3] for item in decode_media_batch(mixed, check=False)] == [8, 9]


def test_batch_items_must_be_triples():
    with pytest.raises((TypeError, ValueError)):
        encode_media_batch([(b"t", EOS)])
    with pytest.raises(TypeError):
        encode_media_batch(5)
