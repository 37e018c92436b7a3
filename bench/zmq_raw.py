"""What moving a Savant stream through libzmq costs the gateway's process at each end, against
the same ZMTP bytes read or written raw on the socket: the floor of a ZMTP peer on the event
loop (docs/design.md, "Where a message's CPU goes"). A quick measurement, not part of the load
benchmark:

    .venv/bin/python -m bench.zmq_raw [--count 300000]

Small messages (the pipeline's: user data and one extra frame, 200 B) over ipc:

- receive, as the client reads its in_stream: a savant-rs writer (``dealer+connect``, its own
  process) sends ``count`` messages as fast as it can. ``libzmq``: a ROUTER read with
  ``recv_messages``, waiting in ``zmq.select`` when nothing is queued (libzmq's I/O thread does
  the socket reads). ``raw``: a Unix socket that answers the ZMTP 3.0 greeting and READY itself,
  then only reads the bytes into a 256 KiB buffer, parsing nothing;
- send, as a worker writes its out_stream: a savant-rs reader (``router+bind``, its own process)
  takes ``count`` messages. ``libzmq``: a DEALER written with ``send_media_batch`` from
  MediaBatch bodies of 64 (no high-water mark, the items not checked: the transport alone).
  ``raw``: a Unix socket that does the ZMTP 3.0 handshake as a DEALER, then writes each 64
  messages' frames, made beforehand, in one ``sendall``.

CPU is the measured process's (all its threads) per message; best of 3 rounds each,
alternating. ``raw`` leaves out the framing a native peer would do in C (tens of ns).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import socket
import struct
import tempfile
import time
from collections.abc import Callable

import zmq

from mgfast._messages import Message
from mgfast._zmq_io import recv_messages
from mgfast.media import encode_media_batch, is_end_of_stream, send_media_batch

SMALL = 200
BATCH = 64
TOPIC = b"cam-0"


def _savant_message() -> tuple[object, bytes, bytes]:
    """(savant-rs message, its bytes, the extra frame that makes the whole 200 B)."""
    import savant_rs
    message = savant_rs.serialization_module.Message.user_data(
        savant_rs.primitives.UserData(TOPIC.decode()))
    raw = savant_rs.serialization_module.save_message_to_bytes(message)
    return message, raw, b"x" * (SMALL - len(TOPIC) - len(raw))


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

def _writer(url: str, count: int, go: multiprocessing.synchronize.Event) -> None:
    from savant_rs.zmq import BlockingWriter, WriterConfigBuilder
    message, _, extra = _savant_message()
    builder = WriterConfigBuilder(url)
    builder.with_send_hwm(1000)
    writer = BlockingWriter(builder.build())
    writer.start()
    go.wait(30)
    for _ in range(count):
        writer.send_message(TOPIC.decode(), message, extra)
    time.sleep(1)  # let libzmq flush before the process ends
    writer.shutdown()


def receive_libzmq(path: str, count: int) -> float:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(f"ipc://{path}")
    go = multiprocessing.Event()
    writer = multiprocessing.Process(target=_writer,
                                     args=(f"dealer+connect:ipc://{path}", count, go))
    writer.start()
    routes: dict[bytes, bytes] = {}

    def accept(parts: list[bytes]) -> Message | None:
        routes[parts[1]] = parts[0]
        return Message(parts[1], parts[1:])

    started = _cpu()
    go.set()
    got = 0
    while got < count:
        _, taken = recv_messages(router.underlying, 1000, 65536, routes, is_end_of_stream,
                                 accept)
        got += taken
        if not taken:
            zmq.select([router], [], [], 1.0)
    spent = _cpu() - started
    writer.join(30)
    router.close(linger=0)
    context.term()
    return spent / count * 1e6


def receive_raw(path: str, count: int) -> float:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    go = multiprocessing.Event()
    writer = multiprocessing.Process(target=_writer,
                                     args=(f"dealer+connect:ipc://{path}", count, go))
    writer.start()
    conn, _ = listener.accept()
    _handshake(conn, b"ROUTER")
    per_message = 3 * 2 + SMALL  # three short frames, a 2-byte header each
    buffer = bytearray(256 * 1024)
    started = _cpu()
    go.set()
    received = 0
    while received < per_message * count:
        n = conn.recv_into(buffer)
        if not n:
            raise RuntimeError(f"the writer stopped after {received:,} bytes")
        received += n
    spent = _cpu() - started
    conn.close()
    writer.join(30)
    listener.close()
    return spent / count * 1e6


# ---- send -----------------------------------------------------------------------------------

def _reader(url: str, count: int, done: multiprocessing.synchronize.Event) -> None:
    from savant_rs.zmq import BlockingReader, ReaderConfigBuilder, ReaderResultMessage
    builder = ReaderConfigBuilder(url)
    builder.with_receive_timeout(100)
    reader = BlockingReader(builder.build())
    reader.start()
    got = 0
    while got < count:
        if isinstance(reader.receive(), ReaderResultMessage):
            got += 1
    done.set()
    reader.shutdown()


def _with_reader(path: str, count: int, send: Callable[[str], None]) -> float:
    done = multiprocessing.Event()
    reader = multiprocessing.Process(target=_reader,
                                     args=(f"router+bind:ipc://{path}", count, done))
    reader.start()
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    started = _cpu()
    send(path)
    if not done.wait(120):
        raise RuntimeError("the reader did not get every message")
    spent = _cpu() - started
    reader.join(30)
    return spent / count * 1e6


def send_libzmq(path: str, count: int) -> float:
    _, raw, extra = _savant_message()
    body = encode_media_batch([(TOPIC, raw, [extra])] * BATCH)
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.SNDHWM, 0)

    def send(path: str) -> None:
        dealer.connect(f"ipc://{path}")
        for _ in range(count // BATCH):
            send_media_batch(dealer.underlying, body, False, False)

    try:
        return _with_reader(path, count // BATCH * BATCH, send)
    finally:
        dealer.close(linger=0)
        context.term()


def send_raw(path: str, count: int) -> float:
    _, raw, extra = _savant_message()
    wire = b"".join(bytes([flags, len(frame)]) + frame
                    for _ in range(BATCH)
                    for flags, frame in ((1, TOPIC), (1, raw), (0, extra)))
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def send(path: str) -> None:
        conn.connect(path)
        _handshake(conn, b"DEALER")
        for _ in range(count // BATCH):
            conn.sendall(wire)

    try:
        return _with_reader(path, count // BATCH * BATCH, send)
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
