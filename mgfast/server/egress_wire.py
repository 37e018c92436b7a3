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

from mgfast._zmq_io import ZERO_COPY_MIN, SendBuffer
from mgfast.zmq.writer import Buffer, WriteResult

_LEN = struct.Struct("<I")
_BATCH = struct.Struct("<IQI")  # record length, batch id, entries
_REPLY = struct.Struct("<IQ")  # record length, batch id
MAX_RECORD = 1 << 31  # a corrupt length is refused rather than buffered for
SCRATCH = 256 * 1024  # the block reads go into (short records are copied out of it)

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
    """Cuts a byte stream into records (their bodies, without the length), read the way of an
    ``asyncio.BufferedProtocol``: ``buffer()`` to read into, then ``filled(n)``. Reads land in
    one scratch block, and each short record is copied out of it; a record of ``ZERO_COPY_MIN``
    bytes or more (large frames) is read straight into a ``SendBuffer`` of its own, so the
    frames in it go on to libzmq by reference, not copied again."""

    def __init__(self) -> None:
        self.scratch = bytearray(SCRATCH)
        self.view = memoryview(self.scratch)
        self.start = 0  # the first byte of the scratch not yet cut into a record
        self.end = 0  # the end of what was read into the scratch
        self.large: SendBuffer | None = None  # the long record being read, if one is

    def buffer(self) -> memoryview:
        """Where the next read goes (never past the end of a long record)."""
        if self.large is not None:
            return self.large.unfilled()
        if self.end == len(self.scratch):  # a short record's start sits at the end: move it
            kept = self.end - self.start
            self.scratch[:kept] = self.scratch[self.start:self.end]
            self.start, self.end = 0, kept
        return self.view[self.end:]

    def filled(self, count: int) -> list[memoryview]:
        """``count`` bytes were read into ``buffer()``: the records they complete. ValueError
        on an impossible length."""
        large = self.large
        if large is not None:
            large.advance(count)
            if large.filled < large.size:
                return []
            self.large = None
            return [memoryview(large)]
        self.end += count
        view, at, end = self.view, self.start, self.end
        records: list[memoryview] = []
        while end - at >= 4:
            (length,) = _LEN.unpack_from(view, at)
            if length >= MAX_RECORD:
                raise ValueError(f"egress record of {length} bytes")
            if length >= ZERO_COPY_MIN:  # a block of its own; the rest of it is read into it
                block = SendBuffer(length)
                have = min(end - at - 4, length)
                block.append(view[at + 4:at + 4 + have])
                at += 4 + have
                if have < length:
                    self.large = block
                    break
                records.append(memoryview(block))
                continue
            if end - at - 4 < length:
                break
            records.append(memoryview(bytes(view[at + 4:at + 4 + length])))
            at += 4 + length
        if at == end:
            at = self.end = 0
        self.start = at
        return records
