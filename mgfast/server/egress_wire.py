"""The framing between worker processes and the egress process, over a Unix stream socket.

Both sides are plain event-loop transports (no ZeroMQ I/O threads between them), so a batch
costs one write and one read per side. Every record is a u32 length and its body::

    worker -> egress   batch id (u64), message count m (u32), frame count f (u32),
                       m u32 (each message's frame count and flags), f u32 (frame lengths),
                       the frames
    egress -> worker   batch id (u64), one result code per message (u8 each)

A message's flags are end-of-stream and group membership: a group is a run of messages, the
first marked GROUP_START, of which only a prefix may be written (the egress stops the group at
its first failure; see ``OutStreamWriter.submit_group``). The Savant frames travel untouched.
"""

from __future__ import annotations

import struct
from array import array

from mgfast.zmq.writer import Buffer, WriteResult

EOS_BIT = 0x8000_0000
# 0x4000_0000: unused (once: video frame, when the statistics counted only frames)
GROUP_BIT = 0x2000_0000
GROUP_START_BIT = 0x1000_0000
COUNT_MASK = 0x0FFF_FFFF
_LEN = struct.Struct("<I")
_BATCH = struct.Struct("<IQII")  # record length, batch id, messages, frames
_REPLY = struct.Struct("<IQ")  # record length, batch id
MAX_RECORD = 1 << 31  # a corrupt length is refused rather than buffered for

# Result codes on the wire; ERROR = the writer raised (the worker answers 500).
RESULT_CODES = {WriteResult.SUCCESS: 0, WriteResult.ACK: 1, WriteResult.SEND_TIMEOUT: 2,
                WriteResult.ACK_TIMEOUT: 3, WriteResult.NOT_ATTEMPTED: 5}
ERROR = 4
RESULTS_BY_CODE: tuple[WriteResult | None, ...] = (WriteResult.SUCCESS, WriteResult.ACK, WriteResult.SEND_TIMEOUT,
                          WriteResult.ACK_TIMEOUT, None, WriteResult.NOT_ATTEMPTED)


def encode_batch(batch_id: int, counts: array[int], frames: list[Buffer]) -> list[Buffer]:
    """The pieces of one batch record, for ``transport.writelines`` (frames are not copied).
    ``counts``: array('I') of per-message frame counts with their flag bits."""
    lengths = array("I", map(len, frames))
    body = _BATCH.size - _LEN.size + 4 * (len(counts) + len(lengths)) + sum(lengths)
    head = _BATCH.pack(body, batch_id, len(counts), len(frames))
    return [head, counts.tobytes(), lengths.tobytes(), *frames]


def decode_batch(record: memoryview) -> tuple[int, list[tuple[list[memoryview], int]]]:
    """A batch record's body -> (batch id, [(frames, flags), ...]); frames are memoryviews of
    ``record``. ValueError if malformed."""
    at = _BATCH.size - _LEN.size
    if len(record) < at:
        raise ValueError("egress batch record too short")
    batch_id, n_messages, n_frames = struct.unpack_from("<QII", record)
    counts = array("I")
    lengths = array("I")
    end = at + 4 * (n_messages + n_frames)
    if end > len(record):
        raise ValueError("egress batch header runs past its record")
    counts.frombytes(record[at:at + 4 * n_messages])
    lengths.frombytes(record[at + 4 * n_messages:end])
    if end + sum(lengths) != len(record):
        raise ValueError("egress batch frame lengths do not match its record")
    frames: list[memoryview] = []
    at = end
    for length in lengths:
        frames.append(record[at:at + length])
        at += length
    messages = []
    pos = 0
    for count in counts:
        n = count & COUNT_MASK
        if n < 2 or pos + n > n_frames:
            raise ValueError("egress batch frame counts do not match its frames")
        messages.append((frames[pos:pos + n], count & ~COUNT_MASK))
        pos += n
    if pos != n_frames:
        raise ValueError("egress batch has frames beyond its messages")
    return batch_id, messages


def encode_results(batch_id: int, codes: bytes | bytearray) -> bytes:
    return _REPLY.pack(_REPLY.size - _LEN.size + len(codes), batch_id) + bytes(codes)


def decode_results(record: memoryview) -> tuple[int, bytes]:
    if len(record) < 8:
        raise ValueError("malformed egress reply")
    return struct.unpack_from("<Q", record)[0], bytes(record[8:])


class RecordReader:
    """Cuts a byte stream into records (their bodies, without the length)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[memoryview]:
        """The records completed by ``data``; ValueError on an impossible length."""
        buffer = self.buffer
        if buffer:
            buffer += data
            if len(buffer) >= 4 and _LEN.unpack_from(buffer)[0] >= MAX_RECORD:
                raise ValueError(f"egress record of {_LEN.unpack_from(buffer)[0]} bytes")
            if len(buffer) < 4 or len(buffer) - 4 < _LEN.unpack_from(buffer)[0]:
                return []  # the pending record is still incomplete: no copy yet
            view = memoryview(bytes(buffer))
            buffer.clear()
        else:
            view = memoryview(data)
        records = []
        at = 0
        size = len(view)
        while size - at >= 4:
            (length,) = _LEN.unpack_from(view, at)
            if length >= MAX_RECORD:
                raise ValueError(f"egress record of {length} bytes")
            if size - at - 4 < length:
                break
            records.append(view[at + 4:at + 4 + length])
            at += 4 + length
        if at < size:
            buffer += view[at:]
        return records
