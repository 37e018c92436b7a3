"""The per-message work of mgfast's own code on each side, in one thread with nothing to wait
for: what the client does from libzmq's queue to a MediaBatch body, and what a worker does from
a MediaBatch body to libzmq's queue. A quick measurement, not part of the load benchmark:

    .venv/bin/python -m bench.hot_path [--count 100000] [--batch 64]

The pipeline benchmark cannot show a change of a tenth of a microsecond per message: on these
2-CPU machines its CPU per message moves by a quarter between runs, with the wakeups of six busy
threads. Here there are none: the sockets are ``inproc`` (no libzmq I/O thread, a message is a
pointer handed over), every queue is filled before the clock starts, and each figure is the best
of five rounds, in ns per message:

- client ``recv``: ``recv_messages`` on a ROUTER, as the client's reader takes its in_stream (a
  routing id, a topic, the message and one extra frame each; the end-of-stream test included);
- client ``lanes``: ``split_by_topic`` over 4 lanes, then per lane ``take_batch`` and
  ``encode_media_batch`` until the lane is empty (what a fill does), then ``settle``;
- server ``check``: ``check_media_batch``, a worker's whole-message check of a client's batch;
- server ``send``: ``send_media_batch`` into a DEALER, as the worker writes the out_stream.

For two messages: the pipeline's small one (savant-rs user data, 200 B with its extra frame)
and a savant-rs ``gen_frame`` video frame (about 500 B of metadata, no content).
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable

import savant_rs
import zmq

from mgfast._messages import Message, settle, split_by_topic, take_batch
from mgfast._zmq_io import recv_messages
from mgfast.gc_tuning import tune_for_streaming
from mgfast.media import (MAX_BATCH_DATA_PARTS, check_media_batch, encode_media_batch,
                          is_end_of_stream, send_media_batch)

ROUNDS = 5
LANES = 4
SOURCES = 8
CHUNK = 1000  # messages per read: the client reads up to inflight_ops (1,000 in the pipeline)
SMALL = 200  # the pipeline benchmark's small message: topic + Savant message + extra frame

sm = savant_rs.serialization_module


def _messages() -> dict[str, tuple[bytes, bytes]]:
    """name -> (Savant message, extra frame)."""
    user = sm.save_message_to_bytes(sm.Message.user_data(savant_rs.primitives.UserData("cam-0")))
    frame = sm.save_message_to_bytes(sm.Message.video_frame(savant_rs.utils.gen_frame()))
    return {"user data, 200 B": (user, b"x" * (SMALL - len(b"cam-0") - len(user))),
            f"gen_frame, {len(frame)} B": (frame, b"x" * 16)}


def _best(measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(ROUNDS))


def _pair(name: str) -> tuple[zmq.Context, zmq.Socket, zmq.Socket]:
    """A context with a DEALER connected to a ROUTER over inproc, neither with a high-water
    mark: a round's messages all fit in the queue."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.RCVHWM, 0)
    router.bind(f"inproc://hot-path-{name}")
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.SNDHWM, 0)
    dealer.connect(f"inproc://hot-path-{name}")
    return context, dealer, router


def client_side(message: bytes, extra: bytes, count: int, batch: int) -> tuple[float, float]:
    """(recv, lanes) in ns per message."""
    context, dealer, router = _pair("client")
    routes: dict[bytes, bytes] = {}

    def accept(parts: list[bytes]) -> Message | None:  # the first of each topic: its route
        routes[parts[1]] = parts[0]
        return Message(parts[1], parts[1:])

    topics = [b"cam-%d" % (i % SOURCES) for i in range(count)]

    def both() -> tuple[float, float]:
        """The queue is filled first; then it is read in the reader's chunks, each chunk going
        through the lanes at once, as in the client (the messages still in the cache)."""
        for topic in topics:
            dealer.send_multipart([topic, message, extra])
        in_recv = in_lanes = 0.0
        done = 0
        while done < count:
            started = time.perf_counter()
            taken, n = recv_messages(router.underlying, CHUNK, 65536, routes, is_end_of_stream,
                                     accept)
            split = time.perf_counter()
            per_lane, _ = split_by_topic(taken, LANES)
            for items in per_lane:
                unsent = collections.deque(items)
                sent: collections.deque[Message] = collections.deque()
                while unsent:
                    chunk, _ = take_batch(unsent, batch, MAX_BATCH_DATA_PARTS, 1 << 30)
                    sent.extend(chunk)
                    encode_media_batch(chunk)
                settle(sent, len(sent))
            del taken, per_lane  # the messages go, as settled ones do in the client
            in_recv += split - started
            in_lanes += time.perf_counter() - split
            done += n
        return in_recv / count * 1e9, in_lanes / count * 1e9

    try:
        rounds = [both() for _ in range(ROUNDS)]
        recv_ns = min(r[0] for r in rounds)
        lanes_ns = min(r[1] for r in rounds)
    finally:
        dealer.close(linger=0)
        router.close(linger=0)
        context.term()
    return recv_ns, lanes_ns


def server_side(message: bytes, extra: bytes, count: int, batch: int) -> tuple[float, float]:
    """(check, send) in ns per message."""
    bodies = [encode_media_batch([(b"cam-%d" % ((i + j) % SOURCES), message, [extra])
                                  for j in range(batch)])
              for i in range(0, count, batch)]
    messages = len(bodies) * batch
    context, out, sink = _pair("server")

    def check() -> float:
        started = time.perf_counter()
        for body in bodies:
            if check_media_batch(body) is None:
                raise AssertionError("a batch the benchmark made is not valid")
        return (time.perf_counter() - started) / messages * 1e9

    def send() -> float:
        started = time.perf_counter()
        for body in bodies:
            send_media_batch(out.underlying, body, False)
        spent = time.perf_counter() - started
        for _ in range(messages):  # drained off the clock
            sink.recv_multipart()
        return spent / messages * 1e9

    try:
        return _best(check), _best(send)
    finally:
        out.close(linger=0)
        sink.close(linger=0)
        context.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="messages per round")
    parser.add_argument("--batch", type=int, default=64, help="messages per MediaBatch")
    args = parser.parse_args(argv)
    tune_for_streaming()  # as the client and the server processes do once started
    print(f"ns per message, best of {ROUNDS} rounds of {args.count:,}, batch {args.batch}:")
    print(f"  {'message':24s} {'client recv':>11s} {'client lanes':>12s} "
          f"{'server check':>12s} {'server send':>11s}")
    for name, (message, extra) in _messages().items():
        recv_ns, lanes_ns = client_side(message, extra, args.count, args.batch)
        check_ns, send_ns = server_side(message, extra, args.count, args.batch)
        print(f"  {name:24s} {recv_ns:11.0f} {lanes_ns:12.0f} {check_ns:12.0f} {send_ns:11.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
