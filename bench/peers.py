"""The Savant producer and consumer of the pipeline benchmark: savant-rs writer and reader, each
in its own process (``multiprocessing`` spawn), driven over a pipe.

Every message is ``[topic, user_data message, extra]`` built with savant-rs (so Savant readers
accept its protocol version). The extra part starts with a 24-byte header::

    <I phase> <I source> <Q seq> <q send time, CLOCK_MONOTONIC ns>

followed by padding up to the requested size. CLOCK_MONOTONIC is one clock for all processes
of the machine, so the reader's ``monotonic_ns() - send time`` is the end-to-end latency. ``seq``
counts per source, so the reader also sees duplicates, gaps and reordering per source.

Writer commands: ``("run", phase, max_count, max_seconds, rate)`` -> ``(sent, failed, first_ns,
last_ns)``; ``rate`` 0 = as fast as the path takes them (a DEALER blocks at its high-water
mark, so the writer is paced by back-pressure), otherwise that many messages per second.
Reader commands: ``("wait", phase, expected, timeout)`` -> a stats dict once ``expected``
messages of ``phase`` arrived or ``timeout`` seconds passed.
"""

from __future__ import annotations

import struct
import time
from array import array

HEADER = struct.Struct("<IIQq")
TOPIC_PREFIX = "cam-"


def topics(sources: int) -> list[str]:
    return [f"{TOPIC_PREFIX}{i}" for i in range(sources)]


def message_overhead(source: str) -> int:
    """Bytes of ``[topic, message]`` for ``source``: the extra is sized to fill the rest."""
    import savant_rs
    from savant_rs.primitives import UserData

    ser = savant_rs.serialization_module
    message = ser.Message.user_data(UserData(source))
    return len(source.encode()) + len(ser.save_message_to_bytes(message))


def writer_main(conn, url: str, sources: int, size: int) -> None:
    """Writer process: ``size`` = bytes of topic + message + extra per message."""
    import savant_rs
    from savant_rs.primitives import UserData
    from savant_rs.zmq import BlockingWriter, WriterConfigBuilder, WriterResultSuccess

    ser = savant_rs.serialization_module
    names = topics(sources)
    messages = [ser.Message.user_data(UserData(name)) for name in names]
    pads = [b"\x00" * max(0, size - message_overhead(name) - HEADER.size) for name in names]
    builder = WriterConfigBuilder(url)
    builder.with_send_timeout(5000)
    builder.with_send_retries(3)
    writer = BlockingWriter(builder.build())
    writer.start()
    pack = HEADER.pack
    now = time.monotonic_ns
    send = writer.send_message
    conn.send("ready")
    while True:
        command = conn.recv()
        if command[0] == "stop":
            break
        _, phase, max_count, max_seconds, rate = command
        seqs = [0] * sources  # per phase: the reader keeps its order checks per phase
        sent = failed = 0
        start = now()
        end = start + int(max_seconds * 1e9)
        interval = int(1e9 / rate) if rate else 0
        first = last = 0
        while sent < max_count:
            if interval:
                due = start + sent * interval
                t = now()
                if t < due:
                    if due - t > 200_000:
                        time.sleep((due - t - 100_000) / 1e9)
                    while now() < due:
                        pass
            if now() > end:
                break
            s = sent % sources
            t = now()
            result = send(names[s], messages[s], pack(phase, s, seqs[s], t) + pads[s])
            if not isinstance(result, WriterResultSuccess):
                failed += 1
                if failed >= 3:  # the path is stuck (each failure took the whole send timeout)
                    break
            seqs[s] += 1
            sent += 1
            if not first:
                first = t
            last = t
        conn.send((sent, failed, first, last))
    writer.shutdown()
    conn.send("stopped")


class _Phase:
    __slots__ = ("count", "first", "last", "latencies", "next_seq", "duplicates", "gaps")

    def __init__(self, sources: int) -> None:
        self.count = 0
        self.first = 0
        self.last = 0
        self.latencies = array("q")
        self.next_seq = [0] * sources
        self.duplicates = 0  # seq at or below one already seen: a duplicate or a late one
        self.gaps = 0  # seq above the next expected: something before it is missing (so far)

    def stats(self) -> dict:
        from bench.common import percentile

        lat = sorted(self.latencies)
        return {
            "received": self.count,
            "unique": self.count - self.duplicates,
            "duplicates": self.duplicates,
            "gaps": self.gaps,
            "first_ns": self.first,
            "last_ns": self.last,
            "p50_ms": percentile(lat, 50) / 1e6,
            "p99_ms": percentile(lat, 99) / 1e6,
            "max_ms": (lat[-1] / 1e6) if lat else float("nan"),
        }


def reader_main(conn, url: str, sources: int) -> None:
    """Reader process: counts, latencies and per-source order of what savant-rs delivers."""
    from savant_rs.zmq import BlockingReader, ReaderConfigBuilder, ReaderResultMessage

    builder = ReaderConfigBuilder(url)
    builder.with_receive_timeout(50)
    reader = BlockingReader(builder.build())
    reader.start()
    phases: dict[int, _Phase] = {}
    unpack = HEADER.unpack_from
    now = time.monotonic_ns
    pending = None  # (phase, expected, deadline_ns)
    other = 0
    conn.send("ready")
    since_check = 0
    while True:
        result = reader.receive()
        if isinstance(result, ReaderResultMessage):
            t = now()
            extra = result.data(0)
            phase, source, seq, sent_ns = unpack(extra)
            state = phases.get(phase)
            if state is None:
                state = phases[phase] = _Phase(sources)
            state.count += 1
            if not state.first:
                state.first = t
            state.last = t
            state.latencies.append(t - sent_ns)
            expected_seq = state.next_seq[source]
            if seq == expected_seq:
                state.next_seq[source] = seq + 1
            elif seq > expected_seq:
                state.gaps += 1
                state.next_seq[source] = seq + 1
            else:
                state.duplicates += 1
            since_check += 1
            if since_check < 256 and pending is None:
                continue
        elif type(result).__name__ != "ReaderResultTimeout":
            other += 1
        since_check = 0
        if pending is None and conn.poll():
            command = conn.recv()
            if command[0] == "stop":
                break
            _, phase, expected, timeout = command
            pending = (phase, expected, now() + int(timeout * 1e9))
        if pending is not None:
            phase, expected, deadline = pending
            state = phases.get(phase) or _Phase(sources)
            if state.count - state.duplicates >= expected or now() > deadline:
                stats = state.stats()
                stats["other_results"] = other
                conn.send(stats)
                phases.pop(phase, None)  # free the latencies
                pending = None
    reader.shutdown()
    conn.send("stopped")


class PeerProcess:
    """One peer process and its pipe."""

    def __init__(self, target, *args) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child, *args), daemon=True)
        self.process.start()
        child.close()
        self._expect("ready", 30)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _expect(self, what: str, timeout: float):
        if not self.conn.poll(timeout):
            raise RuntimeError(f"peer process did not answer {what!r} within {timeout}s")
        reply = self.conn.recv()
        if reply != what and isinstance(reply, str):
            raise RuntimeError(f"peer process: expected {what!r}, got {reply!r}")
        return reply

    def call(self, command: tuple, timeout: float):
        self.conn.send(command)
        if not self.conn.poll(timeout):
            raise RuntimeError(f"peer process: no answer to {command[0]!r} within {timeout:g}s")
        return self.conn.recv()

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(("stop",))
                if self.conn.poll(10):
                    self.conn.recv()
            except (BrokenPipeError, EOFError, OSError):
                pass
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        self.conn.close()
