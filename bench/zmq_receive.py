"""What receiving a Savant writer's stream costs the receiving process, through libzmq as the
client reads its in_stream, and as raw bytes off the same kind of socket: the floor of a ZMTP
peer on the event loop (docs/design.md, "Where a message's CPU goes"). A quick measurement, not
part of the load benchmark:

    .venv/bin/python -m bench.zmq_receive [--count 300000]

A savant-rs writer (``dealer+connect``, its own process) sends ``count`` small messages (the
pipeline's: user data and one extra frame, 200 B) as fast as it can to an ipc endpoint, where

- ``libzmq``: a ROUTER is read with ``recv_messages`` (mgfast's in_stream read), waiting on
  ``zmq.poll`` when nothing is queued; libzmq's I/O thread does the socket reads;
- ``raw``: a Unix socket answers the ZMTP 3.0 greeting and READY itself, then only reads the
  bytes (``recv_into`` a 256 KiB buffer) until all messages are in, parsing nothing: what
  reading costs before any framing.

CPU is the receiving process's (all its threads), per message; best of 3 rounds each,
alternating.
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

import zmq

from mgfast._messages import Message
from mgfast._zmq_io import recv_messages
from mgfast.media import is_end_of_stream

SMALL = 200


def _writer(url: str, count: int, ready: multiprocessing.synchronize.Event) -> None:
    import savant_rs
    from savant_rs.zmq import BlockingWriter, WriterConfigBuilder
    message = savant_rs.serialization_module.Message.user_data(
        savant_rs.primitives.UserData("cam-0"))
    size = len(savant_rs.serialization_module.save_message_to_bytes(message))
    extra = b"x" * (SMALL - len(b"cam-0") - size)
    builder = WriterConfigBuilder(url)
    builder.with_send_hwm(1000)
    writer = BlockingWriter(builder.build())
    writer.start()
    ready.wait(30)
    for _ in range(count):
        writer.send_message("cam-0", message, extra)
    time.sleep(1)  # let libzmq flush before the process ends
    writer.shutdown()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_libzmq(path: str, count: int) -> float:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(f"ipc://{path}")
    ready = multiprocessing.Event()
    writer = multiprocessing.Process(target=_writer, args=(f"dealer+connect:ipc://{path}",
                                                          count, ready))
    writer.start()
    routes: dict[bytes, bytes] = {}

    def accept(parts: list[bytes]) -> Message | None:
        routes[parts[1]] = parts[0]
        return Message(parts[1], parts[1:])

    started = _cpu()
    ready.set()
    got = 0
    while got < count:
        messages, taken = recv_messages(router.underlying, 1000, 65536, routes,
                                        is_end_of_stream, accept)
        got += taken
        if not taken:
            zmq.select([router], [], [], 1.0)
    spent = _cpu() - started
    writer.join(30)
    router.close(linger=0)
    context.term()
    return spent / count * 1e6


def _read_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the writer closed during the handshake")
        data += chunk
    return data


def _ready_command(socket_type: bytes) -> bytes:
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return bytes([0x04, len(body)]) + body


def run_raw(path: str, count: int) -> float:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    ready = multiprocessing.Event()
    writer = multiprocessing.Process(target=_writer, args=(f"dealer+connect:ipc://{path}",
                                                          count, ready))
    writer.start()
    conn, _ = listener.accept()
    greeting = (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\x00" * 16
                + b"\x00" + b"\x00" * 31)
    conn.sendall(greeting)
    peer = _read_exact(conn, 64)
    assert peer[0] == 0xFF and peer[9] == 0x7F and peer[12:16] == b"NULL", peer
    conn.sendall(_ready_command(b"ROUTER"))
    flags, size = _read_exact(conn, 2)
    assert flags & 0x04, "expected the peer's READY command"
    _read_exact(conn, size)
    per_message = None
    buffer = bytearray(256 * 1024)
    started = _cpu()
    ready.set()
    received = 0
    first = b""
    while per_message is None or received < per_message * count:
        n = conn.recv_into(buffer)
        if not n:
            break
        if per_message is None:  # the first message tells its size on the wire
            first += bytes(buffer[:n])
            per_message = _wire_size(first)
        received += n
    spent = _cpu() - started
    if per_message is None or received < per_message * count:
        raise RuntimeError(f"the writer stopped after {received:,} bytes")
    conn.close()
    writer.join(30)
    listener.close()
    return spent / count * 1e6


def _wire_size(data: bytes) -> int | None:
    """Bytes of the first multipart (frames of up to 255 bytes), once it is all in ``data``."""
    pos = 0
    while pos + 2 <= len(data):
        flags, size = data[pos], data[pos + 1]
        assert not flags & 0x02, "a long frame: not the benchmark's small message"
        pos += 2 + size
        if not flags & 0x01:
            return pos if pos <= len(data) else None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zmq_receive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300_000)
    args = parser.parse_args(argv)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mgfast-zmq-receive-") as tmp:
        for round_ in range(3):
            for name, run in (("libzmq", run_libzmq), ("raw", run_raw)):
                path = os.path.join(tmp, f"{name}-{round_}")
                spent = run(path, args.count)
                best[name] = min(best.get(name, spent), spent)
    print(f"receiver CPU per message ({SMALL} B, {args.count:,} messages), best of 3:")
    for name, spent in best.items():
        print(f"  {name:7s} {spent:6.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
