"""Bounded memory when the consumer stops reading.

One ``mgfast server`` (plain HTTP) writes to ``dealer+connect`` over ipc, ``send_hwm`` 10,
``send_timeout`` 200 ms, ``send_retries`` 1 (Savant's budget: 2 x 200 ms per message). The
consumer is a raw pyzmq ROUTER bound on that endpoint with ``RCVHWM`` 1 and a 64 KiB kernel
receive buffer, in its own process: it reads (and discards) for the first ``read_s`` seconds,
then stops calling ``recv`` but keeps the socket open, so everything between the server's
writer and the consumer fills up and stays full.

The load: ``connections`` keep-alive HTTP/1.1 connections from one asyncio process (uvloop),
each sending ``POST /`` with a ~100 KiB ``Media`` body (the upstream API), one request in
flight per connection, for ``load_s`` seconds; then the requests in flight are answered and
the server idles for a few seconds. Every 0.5 s the harness samples the resident set of the
server's whole process tree (sum of ``VmRSS``), and every response's status is counted in the
0.5 s slot in which it arrived. Expected: 200 while the consumer reads, then 504 (send
timeout), and a resident set that levels off instead of growing with the requests sent.

It runs for ``workers`` 2 (plus the egress process) and for ``workers`` 1 (the worker owns the
out_stream), and draws ``backpressure.png``.

    python -m bench.backpressure [--quick] [--chart PATH]    # prints JSON
    python -m bench --parts backpressure     # the same, written into bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import multiprocessing
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.common import busy_cpu_seconds, cpu_seconds, free_port, gateway, peak_rss_mib, \
    percentile, process_tree
from bench.quiet import rss_mib, section_meta, wait_quiet

SAMPLE_S = 0.5
RESPONSE_TIMEOUT = 30.0
SEND_HWM = 10
SEND_TIMEOUT_MS = 200
SEND_RETRIES = 1


@dataclass(frozen=True)
class Options:
    connections: int = 64
    body: int = 100 * 1024
    read_s: float = 3.0  # the consumer reads this long after the load starts, then stops
    load_s: float = 15.0  # new requests are sent this long
    after_s: float = 3.0  # sampling goes on this long after the last response
    configs: tuple = (2, 1)  # server `workers`: with the egress, and without


QUICK = Options(read_s=1.5, load_s=5.0, after_s=1.0)


# ---- consumer: a ROUTER that stops reading -------------------------------------------------------

def consumer_main(conn, url: str) -> None:
    """``("stop",)`` -> stop reading (socket stays open); ``("exit",)`` -> report and close."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.RCVBUF, 65536)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(url)
    conn.send("ready")
    received = 0
    reading = True
    while True:
        if conn.poll(0 if reading else 0.2):
            command = conn.recv()
            if command[0] == "stop":
                reading = False
            elif command[0] == "exit":
                break
        if reading and sock.poll(50, zmq.POLLIN):
            while True:
                try:
                    sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                received += 1
    conn.send({"received": received})
    sock.close(0)
    ctx.term()


# ---- load: keep-alive POSTs from one asyncio process ---------------------------------------------

def load_main(conn, port: int, body_path: str, connections: int) -> None:
    """``("run", t0, t_end)`` -> ``{"responses": [[t_done - t0, status, latency_ms]], ...}``;
    status -1 = the connection failed or closed, -2 = no response in RESPONSE_TIMEOUT."""
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    body = Path(body_path).read_bytes()
    head = (f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/protobuf\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    conn.send("ready")
    _, t0, t_end = conn.recv()
    responses: list[list[float]] = []
    errors: dict[str, int] = {}
    now = time.monotonic

    async def read_response(reader) -> tuple[int, bool]:
        header = await reader.readuntil(b"\r\n\r\n")
        lines = header.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if length:
            await reader.readexactly(length)
        return status, close

    async def one_connection() -> None:
        writer = None
        while now() < t_end:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                started = now()
                writer.write(head)
                writer.write(body)
                await writer.drain()
                status, close = await asyncio.wait_for(read_response(reader), RESPONSE_TIMEOUT)
                done = now()
                responses.append([done - t0, status, (done - started) * 1000])
                if close:
                    writer.close()
                    writer = None
            except asyncio.TimeoutError:
                responses.append([now() - t0, -2, RESPONSE_TIMEOUT * 1000])
                errors["timeout"] = errors.get("timeout", 0) + 1
                writer.close()
                writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError, IndexError) as exc:
                responses.append([now() - t0, -1, 0.0])
                kind = type(exc).__name__
                errors[kind] = errors.get(kind, 0) + 1
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.05)
        if writer is not None:
            writer.close()

    async def main() -> None:
        await asyncio.sleep(max(0.0, t0 - now()))
        await asyncio.gather(*(one_connection() for _ in range(connections)))

    asyncio.run(main())
    conn.send({"responses": responses, "errors": errors})


# ---- one configuration ---------------------------------------------------------------------------

def measure(workers: int | None, opts: Options, work: Path, body_path: Path,
            progress) -> dict:
    label = f"workers={workers}" if workers else "workers=default"
    work = work / label.replace("=", "-")
    work.mkdir(parents=True, exist_ok=True)
    url = f"ipc://{work}/consumer"
    config = {
        "ip": "127.0.0.1",
        "port": free_port(),
        "out_stream": {"url": f"dealer+connect:{url}", "send_hwm": SEND_HWM,
                       "send_timeout": {"secs": 0, "nanos": SEND_TIMEOUT_MS * 1_000_000},
                       "send_retries": SEND_RETRIES},
    }
    if workers:
        config["workers"] = workers
    ctx = multiprocessing.get_context("spawn")
    consumer_end, child = ctx.Pipe()
    consumer = ctx.Process(target=consumer_main, args=(child, url), name="bp-consumer",
                           daemon=True)
    load_end, child = ctx.Pipe()
    load = ctx.Process(target=load_main, name="bp-load", daemon=True,
                       args=(child, config["port"], str(body_path), opts.connections))
    server = None
    samples: list[dict] = []
    try:
        consumer.start()
        if not consumer_end.poll(30):
            raise RuntimeError("the consumer did not start")
        consumer_end.recv()
        server = gateway("server", config, work, name="server-backpressure")
        roots = [server.pid]
        load.start()
        if not load_end.poll(30):
            raise RuntimeError("the load process did not start")
        load_end.recv()
        background = wait_quiet(f"backpressure {label}", progress)
        t0 = time.monotonic() + 1.0  # one idle sample first
        stall_at, load_end_at = opts.read_s, opts.load_s
        load_end.send(("run", t0, t0 + opts.load_s))
        busy0, cpu0 = busy_cpu_seconds(), cpu_seconds(roots)
        tick = -2
        stopped = False
        report = None
        deadline = t0 + opts.load_s + RESPONSE_TIMEOUT + 10
        last_response_at = None
        while True:
            target = t0 + tick * SAMPLE_S
            time.sleep(max(0.0, target - time.monotonic()))
            t = time.monotonic() - t0
            total, per_pid = rss_mib(roots)
            samples.append({"t": round(t, 2), "rss_mib": round(total, 1),
                            "max_process_mib": round(max(per_pid.values(), default=0), 1),
                            "processes": len(per_pid)})
            server.check_alive()
            if not stopped and t >= stall_at:
                consumer_end.send(("stop",))
                stopped = True
            if report is None and load_end.poll(0):
                report = load_end.recv()
                last_response_at = t
            if report is not None and t >= last_response_at + opts.after_s:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the load did not finish in time")
            tick += 1
        busy1, cpu1 = busy_cpu_seconds(), cpu_seconds(roots)
        wall = time.monotonic() - t0 + 1.0
        hwm = peak_rss_mib(roots)
        processes = len(process_tree(roots))
        consumer_end.send(("exit",))
        consumed = consumer_end.recv()["received"] if consumer_end.poll(10) else None
    finally:
        if server is not None:
            server.stop()
        for p in (load, consumer):
            if p.is_alive() or p.exitcode is None:
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
    responses = report["responses"]
    statuses: dict[str, int] = {}
    for _, status, _ in responses:
        key = {-1: "conn error", -2: "timeout"}.get(int(status), str(int(status)))
        statuses[key] = statuses.get(key, 0) + 1
    # responses per 0.5 s slot, by status, for the table and the chart
    for sample in samples:
        sample["statuses"] = {}
    times = [s["t"] for s in samples]
    for t_done, status, _ in responses:  # the slot of the first sample taken after it
        slot = min(bisect.bisect_left(times, t_done), len(samples) - 1)
        key = {-1: "err", -2: "timeout"}.get(int(status), str(int(status)))
        samples[slot]["statuses"][key] = samples[slot]["statuses"].get(key, 0) + 1
    baseline = samples[0]["rss_mib"]
    reading = [s["rss_mib"] for s in samples if 0 <= s["t"] <= stall_at]
    stall = [s for s in samples if stall_at < s["t"] <= load_end_at]
    # growth over the second half of the stall: least-squares slope, MiB per second
    tail = stall[len(stall) // 2:]
    slope = None
    if len(tail) >= 3:
        mt = statistics.mean(s["t"] for s in tail)
        mr = statistics.mean(s["rss_mib"] for s in tail)
        den = sum((s["t"] - mt) ** 2 for s in tail)
        slope = sum((s["t"] - mt) * (s["rss_mib"] - mr) for s in tail) / den if den else None
    stalled_latency = sorted(lat for t_done, status, lat in responses
                             if status == 504 and t_done > stall_at)
    result = {
        "label": label, "workers": workers, "processes": processes,
        "background": background,
        "requests": len(responses), "statuses": statuses, "load_errors": report["errors"],
        "consumed": consumed,
        "baseline_rss_mib": baseline,
        "reading_max_rss_mib": max(reading, default=None),
        "stall_max_rss_mib": max((s["rss_mib"] for s in stall), default=None),
        "peak_rss_mib": max(s["rss_mib"] for s in samples),
        "peak_hwm_mib": hwm,
        "end_rss_mib": samples[-1]["rss_mib"],
        "stall_slope_mib_per_s": slope,
        "stall_504_p50_ms": percentile(stalled_latency, 50),
        "stall_504_p99_ms": percentile(stalled_latency, 99),
        "server_cpus": (cpu1 - cpu0) / wall,
        "machine_busy_cpus": (busy1 - busy0) / wall,
        "stall_at_s": stall_at, "load_end_s": load_end_at,
        "samples": samples,
    }
    progress(f"  {label}: {len(responses)} responses {statuses}, RSS {baseline:.0f} MiB idle, "
             f"peak {result['peak_rss_mib']:.0f} MiB, end {result['end_rss_mib']:.0f} MiB, "
             f"stall slope {slope if slope is not None else float('nan'):+.2f} MiB/s, "
             f"consumer read {consumed}")
    return result


def run(opts: Options, work: Path, *, chart: Path | None = None, progress=print,
        argv: list[str] | None = None) -> dict:
    from bench.server_http import media_body

    work.mkdir(parents=True, exist_ok=True)
    body = media_body(opts.body)
    body_path = work / "body-backpressure.bin"
    body_path.write_bytes(body)
    progress(f"backpressure: {opts.connections} connections POSTing {len(body):,} B, consumer "
             f"stops reading at {opts.read_s:g} s, load for {opts.load_s:g} s ...")
    result = {
        "meta": section_meta("bench.backpressure", argv or [], opts == QUICK),
        "options": {**asdict(opts), "body_bytes": len(body), "send_hwm": SEND_HWM,
                    "send_timeout_ms": SEND_TIMEOUT_MS, "send_retries": SEND_RETRIES,
                    "sample_s": SAMPLE_S},
        "runs": [],
    }
    for workers in opts.configs:
        try:
            result["runs"].append(measure(workers, opts, work, body_path, progress))
        except Exception as exc:  # noqa: BLE001 - reported in the table, the others still run
            label = f"workers={workers}" if workers else "workers=default"
            progress(f"  {label}: failed: {exc}")
            result["runs"].append({"label": label, "workers": workers,
                                   "error": str(exc)[:2000]})
    if chart is not None:
        try:
            draw(result, chart)
            result["chart"] = chart.name
        except ImportError:
            progress("  no matplotlib: no chart")
    return result


def draw(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if "error" not in r]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    colors = ["#c44e52", "#4c72b0", "#55a868", "#8172b2"]
    for run_, color in zip(runs, colors):
        ts = [s["t"] for s in run_["samples"]]
        top.plot(ts, [s["rss_mib"] for s in run_["samples"]], color=color, marker=".",
                 label=f"{run_['label']} ({run_['processes']} processes)")
        for key, style in (("200", "-"), ("504", "--"), ("502", ":")):
            counts = [s["statuses"].get(key, 0) / SAMPLE_S for s in run_["samples"]]
            if any(counts):
                bottom.plot(ts, counts, color=color, linestyle=style,
                            label=f"{run_['label']} {key}")
    if runs:
        for ax in (top, bottom):
            ax.axvline(runs[0]["stall_at_s"], color="#777777", linewidth=0.8)
            ax.axvline(runs[0]["load_end_s"], color="#777777", linewidth=0.8, linestyle="--")
        top.annotate("consumer stops reading", (runs[0]["stall_at_s"], 0),
                     xycoords=("data", "axes fraction"), xytext=(3, 5),
                     textcoords="offset points", fontsize=8)
        top.annotate("load stops", (runs[0]["load_end_s"], 0),
                     xycoords=("data", "axes fraction"), xytext=(3, 5),
                     textcoords="offset points", fontsize=8)
    opts = result["options"]
    top.set_ylabel("server tree RSS, MiB (sum of VmRSS)")
    top.set_ylim(bottom=0)
    top.legend(fontsize=8, loc="lower center")
    top.set_title(f"mgfast server, out_stream dealer+connect (send_hwm {opts['send_hwm']}, "
                  f"send_timeout {opts['send_timeout_ms']} ms x {opts['send_retries'] + 1}); "
                  f"{opts['connections']} connections POSTing {opts['body_bytes'] // 1024} KiB",
                  fontsize=10)
    bottom.set_ylabel("responses/s")
    bottom.set_xlabel("seconds since the load started")
    bottom.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.backpressure", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 5 s load instead of 15 s")
    parser.add_argument("--connections", type=int, help="HTTP connections (default 64)")
    parser.add_argument("--chart", help="write the PNG here (default: none)")
    args = parser.parse_args(argv)
    opts = QUICK if args.quick else Options()
    if args.connections:
        opts = replace(opts, connections=args.connections)
    def progress(line: str) -> None:  # stdout is for the JSON
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="mgfast-bench-") as tmp:
        result = run(opts, Path(tmp), progress=progress,
                     chart=Path(args.chart) if args.chart else None, argv=argv)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
