"""The framing between worker processes and the egress process, over a ZeroMQ ipc socket.

A batch is one ZeroMQ multipart message, so many HTTP requests cost one send::

    worker -> egress   [header, frames of message 0..., frames of message 1..., ...]
    egress -> worker   [batch id (u64), one result code per message (u8 each)]

The header is the batch id (u64) followed by one u32 per message: its frame count and flags:
end-of-stream, video frame (for the FPS statistics), and group membership: a group is a run of
messages, the first marked GROUP_START, of which only a prefix may be written (the egress stops
the group at its first failure; see ``OutStreamWriter.submit_group``). The Savant frames themselves
travel untouched.
"""

from __future__ import annotations

import struct
from array import array
from typing import Any

from mgfast.zmq.writer import WriteResult

EOS_BIT = 0x8000_0000
FRAME_BIT = 0x4000_0000
GROUP_BIT = 0x2000_0000
GROUP_START_BIT = 0x1000_0000
COUNT_MASK = 0x0FFF_FFFF
_ID = struct.Struct("<Q")

# Result codes on the wire; ERROR = the writer raised (the worker answers 500).
RESULT_CODES = {WriteResult.SUCCESS: 0, WriteResult.ACK: 1, WriteResult.SEND_TIMEOUT: 2,
                WriteResult.ACK_TIMEOUT: 3, WriteResult.NOT_ATTEMPTED: 5}
ERROR = 4
RESULTS_BY_CODE: tuple[WriteResult | None, ...] = (WriteResult.SUCCESS, WriteResult.ACK, WriteResult.SEND_TIMEOUT,
                          WriteResult.ACK_TIMEOUT, None, WriteResult.NOT_ATTEMPTED)


def encode_header(batch_id: int, counts: array[int]) -> bytes:
    """``counts``: array('I') of frame counts, EOS_BIT or-ed in for end-of-stream messages."""
    return _ID.pack(batch_id) + counts.tobytes()


def decode_batch(parts: list[Any]) -> tuple[int, list[tuple[list[Any], int]]]:
    """Split a received batch into (batch id, [(frames, flags), ...]) where flags holds EOS_BIT
    and FRAME_BIT; ValueError if malformed."""
    header = parts[0]
    if len(header) < _ID.size or (len(header) - _ID.size) % 4:
        raise ValueError("malformed egress batch header")
    (batch_id,) = _ID.unpack_from(header)
    counts = array("I")
    counts.frombytes(bytes(header)[_ID.size:])
    messages = []
    pos = 1
    for count in counts:
        n = count & COUNT_MASK
        if n < 2 or pos + n > len(parts):
            raise ValueError("egress batch frame counts do not match its frames")
        messages.append((parts[pos:pos + n], count & ~COUNT_MASK))
        pos += n
    if pos != len(parts):
        raise ValueError("egress batch has frames beyond its header's counts")
    return batch_id, messages


def encode_results(batch_id: int, codes: bytes | bytearray) -> list[bytes]:
    return [_ID.pack(batch_id), bytes(codes)]


def decode_results(parts: list[Any]) -> tuple[int, bytes]:
    if len(parts) != 2 or len(parts[0]) != _ID.size:
        raise ValueError("malformed egress reply")
    return _ID.unpack(bytes(parts[0]))[0], bytes(parts[1])
