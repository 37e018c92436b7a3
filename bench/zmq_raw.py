"""What moving a Savant stream through libzmq costs the gateway's process at each end, against
the same ZMTP bytes read or written raw on the socket: the floor of a ZMTP peer on the event
loop (docs/design.md, "Where a message's CPU goes"). A quick measurement, not part of the load
benchmark:

    .venv/bin/python -m bench.zmq_raw [--count 300000]

Small messages (the pipeline's: user data and one extra frame, 200 B) over ipc:

- receive, as the client reads its in_stream: the pipeline benchmark's savant-rs writer
  (``bench.peers``, ``dealer+connect``, its own process) sends ``count`` messages as fast as it
  can. ``libzmq``: a ROUTER read with
  ``recv_messages``, waiting in ``zmq.select`` when nothing is queued (libzmq's I/O thread does
  the socket reads). ``raw``: a Unix socket that answers the ZMTP 3.0 greeting and READY itself,
  then only reads the bytes into a 256 KiB buffer, parsing nothing;
- send, as a worker writes its out_stream: the pipeline benchmark's savant-rs reader
  (``router+bind``) takes ``count`` messages and checks that each arrived once, in order. ``libzmq``: a DEALER written with ``send_media_batch`` from
  MediaBatch bodies of 64 (no high-water mark, the items not checked: the transport alone).
  ``raw``: a Unix socket that does the ZMTP 3.0 handshake as a DEALER, then writes each 64
  messages' frames, made beforehand, in one ``sendall``.

CPU is the measured process's (all its threads) per message; best of 3 rounds each,
alternating. ``raw`` leaves out the framing a native peer would do in C (tens of ns).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import struct
import tempfile
import time
from collections.abc import Callable

import zmq

from bench.peers import HEADER, PeerProcess, message_overhead, reader_main, topics, writer_main
from mgfast._messages import Message
from mgfast._zmq_io import recv_messages
from mgfast.media import encode_media_batch, is_end_of_stream, send_media_batch

SMALL = 200  # bytes of topic + Savant message + extra, as the pipeline's small messages
BATCH = 64
WIRE = 3 * 2 + SMALL  # a message on the wire: three short frames, a 2-byte header each
TIMEOUT = 120.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _read_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the peer closed during the handshake")
        data += chunk
    return data


def _handshake(conn: socket.socket, socket_type: bytes) -> None:
    """ZMTP 3.0 with the NULL mechanism: greetings both ways, then READY both ways."""
    conn.sendall(b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\x00" * 16
                 + b"\x00" + b"\x00" * 31)
    peer = _read_exact(conn, 64)
    assert peer[0] == 0xFF and peer[9] == 0x7F and peer[12:16] == b"NULL", peer
    body = (b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type))
            + socket_type)
    conn.sendall(bytes([0x04, len(body)]) + body)
    flags, size = _read_exact(conn, 2)
    assert flags & 0x04, "expected the peer's READY command"
    _read_exact(conn, size)


# ---- receive --------------------------------------------------------------------------------

def _receiving(url: str, count: int, receive: Callable[[], None]) -> float:
    """The writer sends ``count`` messages to ``url`` while ``receive`` takes them; CPU per
    message of this process."""
    writer = PeerProcess(writer_main, url, 1, SMALL)
    try:
        started = _cpu()
        writer.conn.send(("run", 0, count, TIMEOUT, 0))  # as fast as the path takes them
        receive()
        spent = _cpu() - started
        sent, failed, _, _ = writer.conn.recv()
        if (sent, failed) != (count, 0):
            raise RuntimeError(f"the writer sent {sent:,} of {count:,} ({failed} failed)")
    finally:
        writer.stop()
    return spent / count * 1e6


def receive_libzmq(path: str, count: int) -> float:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(f"ipc://{path}")
    routes: dict[bytes, bytes] = {}

    def accept(parts: list[bytes]) -> Message | None:
        routes[parts[1]] = parts[0]
        return Message(parts[1], parts[1:])

    def receive() -> None:
        got = 0
        while got < count:
            _, taken = recv_messages(router.underlying, 1000, 65536, routes, is_end_of_stream,
                                     accept)
            got += taken
            if not taken:
                zmq.select([router], [], [], 1.0)

    try:
        return _receiving(f"dealer+connect:ipc://{path}", count, receive)
    finally:
        router.close(linger=0)
        context.term()


def receive_raw(path: str, count: int) -> float:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    buffer = bytearray(256 * 1024)

    def receive() -> None:
        conn, _ = listener.accept()
        _handshake(conn, b"ROUTER")
        received = 0
        while received < WIRE * count:
            n = conn.recv_into(buffer)
            if not n:
                raise RuntimeError(f"the writer stopped after {received:,} bytes")
            received += n
        conn.close()

    try:
        return _receiving(f"dealer+connect:ipc://{path}", count, receive)
    finally:
        listener.close()


# ---- send -----------------------------------------------------------------------------------

def _batches(count: int) -> list[list[tuple[bytes, bytes, bytes]]]:
    """``count`` messages (topic, Savant message, extra) as the pipeline's writer makes them,
    with sequence numbers the reader checks, in batches of BATCH."""
    import savant_rs
    source = topics(1)[0]
    ser = savant_rs.serialization_module
    message = ser.save_message_to_bytes(
        ser.Message.user_data(savant_rs.primitives.UserData(source)))
    pad = b"\x00" * (SMALL - message_overhead(source) - HEADER.size)
    items = [(source.encode(), message, HEADER.pack(0, 0, seq, 0) + pad)
             for seq in range(count // BATCH * BATCH)]
    return [items[i:i + BATCH] for i in range(0, len(items), BATCH)]


def _sending(url: str, count: int, send: Callable[[], None]) -> float:
    """``send`` writes ``count`` messages while the reader at ``url`` takes them; CPU per
    message of this process, until the reader has them all, once each and in order."""
    reader = PeerProcess(reader_main, url, 1)
    try:
        started = _cpu()
        send()
        stats = reader.call(("wait", 0, count, TIMEOUT), TIMEOUT + 10)
        spent = _cpu() - started
    finally:
        reader.stop()
    if (stats["unique"], stats["duplicates"], stats["gaps"]) != (count, 0, 0):
        raise RuntimeError(f"the reader got {stats}")
    return spent / count * 1e6


def send_libzmq(path: str, count: int) -> float:
    bodies = [encode_media_batch([(t, m, [e]) for t, m, e in batch]) for batch in _batches(count)]
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.SNDHWM, 0)

    def send() -> None:
        dealer.connect(f"ipc://{path}")
        for body in bodies:
            send_media_batch(dealer.underlying, body, False, False)

    try:
        return _sending(f"router+bind:ipc://{path}", len(bodies) * BATCH, send)
    finally:
        dealer.close(linger=0)
        context.term()


def send_raw(path: str, count: int) -> float:
    wires = [b"".join(bytes([flags, len(frame)]) + frame
                      for item in batch for flags, frame in zip((1, 1, 0), item))
             for batch in _batches(count)]
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def send() -> None:
        conn.connect(path)
        _handshake(conn, b"DEALER")
        for wire in wires:
            conn.sendall(wire)

    try:
        return _sending(f"router+bind:ipc://{path}", len(wires) * BATCH, send)
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zmq_raw", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300_000)
    args = parser.parse_args(argv)
    runs = {"receive, libzmq": receive_libzmq, "receive, raw": receive_raw,
            "send, libzmq": send_libzmq, "send, raw": send_raw}
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mgfast-zmq-raw-") as tmp:
        for round_ in range(3):
            for name, run in runs.items():
                path = os.path.join(tmp, f"{name.replace(', ', '-')}-{round_}")
                spent = run(path, args.count)
                best[name] = min(best.get(name, spent), spent)
    print(f"CPU per message of the measured process ({SMALL} B, {args.count:,} messages), "
          "best of 3:")
    for name, spent in best.items():
        print(f"  {name:16s} {spent:6.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
