"""The framing between worker processes and the egress process, over a Unix stream socket.

Both sides are plain event-loop transports (no ZeroMQ I/O threads between them), so a batch
costs one write and one read per side. Every record is a u32 length and its body::

    worker -> egress   batch id (u64), entry count n (u32), n times (item count, body length)
                       as u32 pairs, then the n bodies
    egress -> worker   batch id (u64), one result code per item (u8 each), entry after entry

Each entry is a MediaBatch body whose items the worker has checked, written by the egress as
one group: in order, stopping at the first failure, so what was written is a prefix (see
``OutStreamWriter.submit_group``). A client's batch travels as it came; other messages are
framed as a MediaBatch around their Media fields. The egress reads only the envelope and
each message's kind, and sends the frames to libzmq straight from the record.
"""

from __future__ import annotations

import struct
from array import array

from mgfast.zmq.writer import Buffer, WriteResult

_LEN = struct.Struct("<I")
_BATCH = struct.Struct("<IQI")  # record length, batch id, entries
_REPLY = struct.Struct("<IQ")  # record length, batch id
MAX_RECORD = 1 << 31  # a corrupt length is refused rather than buffered for

# Result codes on the wire; ERROR = the writer raised (the worker answers 500).
RESULT_CODES = {WriteResult.SUCCESS: 0, WriteResult.ACK: 1, WriteResult.SEND_TIMEOUT: 2,
                WriteResult.ACK_TIMEOUT: 3, WriteResult.NOT_ATTEMPTED: 5}
ERROR = 4
RESULTS_BY_CODE: tuple[WriteResult | None, ...] = (WriteResult.SUCCESS, WriteResult.ACK, WriteResult.SEND_TIMEOUT,
                          WriteResult.ACK_TIMEOUT, None, WriteResult.NOT_ATTEMPTED)


def encode_batch(batch_id: int, entries: array[int], pieces: list[Buffer]) -> list[Buffer]:
    """The pieces of one batch record, for ``transport.writelines`` (bodies are not copied).
    ``entries``: array('I') of (item count, body length) pairs; ``pieces``: the bodies, in
    as many buffers as convenient."""
    size = _BATCH.size - _LEN.size + 4 * len(entries) + sum(entries[1::2])
    return [_BATCH.pack(size, batch_id, len(entries) // 2), entries.tobytes(), *pieces]


def decode_batch(record: memoryview) -> tuple[int, list[tuple[int, memoryview]]]:
    """A batch record's body -> (batch id, [(item count, MediaBatch body), ...]); the bodies
    are memoryviews of ``record``. ValueError if malformed."""
    at = _BATCH.size - _LEN.size
    if len(record) < at:
        raise ValueError("egress batch record too short")
    batch_id, n_entries = struct.unpack_from("<QI", record)
    end = at + 8 * n_entries
    if end > len(record):
        raise ValueError("egress batch header runs past its record")
    pairs = array("I")
    pairs.frombytes(record[at:end])
    if end + sum(pairs[1::2]) != len(record):
        raise ValueError("egress batch body lengths do not match its record")
    entries = []
    for i in range(0, len(pairs), 2):
        length = pairs[i + 1]
        entries.append((pairs[i], record[end:end + length]))
        end += length
    return batch_id, entries


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
