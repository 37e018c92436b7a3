"""Where handing libzmq a frame by reference (a SendBuffer view) beats letting it copy: the
sender's CPU per message, its I/O thread included, for each frame size, over ipc to a reader
in another process. A quick measurement, not part of the load benchmark:

    .venv/bin/python -m bench.zero_copy [--count 20000]

It sets ``ZERO_COPY_MIN`` in ext/zmq_io.pyx. Each size alternates copy and reference runs
three times and keeps each mode's best, the least disturbed by other load.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import zmq

from mgfast._zmq_io import SendBuffer, recv_many, send_multipart

SIZES = (4096, 16384, 32768, 65536, 131072, 1048576)


def _reader(url: str, count: int, ready: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.bind(url)
    ready.set()
    got = 0
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while got < count:
        poller.poll(1000)
        got += len(recv_many(sock.underlying, 1000, 1, 1))  # large frames uncopied
    sock.close(linger=0)
    context.term()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread: libzmq's I/O thread too
    return usage.ru_utime + usage.ru_stime


def run(size: int, count: int, by_reference: bool, work: Path) -> float:
    """The sender's CPU in us per message."""
    url = f"ipc://{work}/zc-{size}-{int(by_reference)}"
    ready = multiprocessing.Event()
    reader = multiprocessing.Process(target=_reader, args=(url, count, ready))
    reader.start()
    ready.wait(10)
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.sndhwm = 1000
    sock.connect(url)
    payload = b"x" * size
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLOUT)
    start = _cpu()
    for _ in range(count):
        # either way the body is first copied in, as a request body is, then sent
        if by_reference:
            block = SendBuffer(size)
            block.append(payload)
            frame: object = memoryview(block)
        else:
            frame = bytearray(payload)  # libzmq copies it again
        while not send_multipart(sock.underlying, [b"topic", frame]):
            poller.poll(1000)
    reader.join(60)
    spent = _cpu() - start
    sock.close(linger=0)
    context.term()
    return spent / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'frame bytes':>12} {'copied us/msg':>14} {'by reference us/msg':>20}")
        for size in SIZES:
            count = max(2000, args.count * 4096 // max(size, 4096) // 4) if size > 65536 \
                else args.count
            copied = min(run(size, count, False, Path(tmp)) for _ in range(3))
            shared = min(run(size, count, True, Path(tmp)) for _ in range(3))
            print(f"{size:>12,} {copied:>14.2f} {shared:>20.2f}")


if __name__ == "__main__":
    main()
