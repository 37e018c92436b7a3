"""The cost of the Prometheus metrics: the same server load with ``metrics`` on and off.

Two ``mgfast server`` processes run side by side, identical (plain HTTP, ``workers`` at the
default, out_stream ``pub+bind`` over ipc with no subscriber, so ZeroMQ discards at once) but
for ``"metrics": {"ip": "127.0.0.1", "port": ...}`` on one of them. h2load sends the same
bounded load to each in turn: ``requests`` ``POST /`` of one ~200 B ``Media`` over 16 keep-alive
HTTP/1.1 connections, one request in flight each, alternating on/off/off/on/on/off... (``rounds``
runs of each, each after waiting for a quiet machine) so that drift of the machine falls on both
alike. The cost is 1 - (mean req/s with metrics) / (mean req/s without), and the same for the
server tree's CPU per request. During the first run with metrics, ``/metrics`` is scraped once
mid-load (and once after it) to show the counters are live.

    python -m bench.metrics_cost [--quick] [--rounds 6] [--requests 30000]   # prints JSON
    python -m bench --parts metrics          # the same, written into bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.common import (busy_cpu_seconds, cpu_seconds, ensure_tool, free_port, gateway,
                          process_tree, tool_version)
from bench.quiet import section_meta, wait_quiet
from bench.server_http import _duration_ms, _number, media_body

SHOWN_SERIES = ("mgfast_http_requests_total", "mgfast_messages_forwarded_total",
                "mgfast_request_duration_seconds_count", "mgfast_forwarded_bytes_total")
H2LOAD_TIMEOUT = 300
SCRAPE_AFTER_S = 2.0  # the mid-load scrape (counts reach the listener within a second)


@dataclass(frozen=True)
class Options:
    requests: int = 30_000
    connections: int = 16
    body: int = 200
    rounds: int = 6  # runs with metrics and runs without, each
    warmup: int = 2_000
    workers: int | None = None  # None: the server's default


QUICK = Options(requests=5_000, rounds=2, warmup=500)


def order(rounds: int) -> list[bool]:
    """on, off, off, on, on, off, ...: each pair swaps which goes first."""
    out: list[bool] = []
    for i in range(rounds):
        out += [True, False] if i % 2 == 0 else [False, True]
    return out


def scrape(port: int) -> tuple[str, dict[str, str]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    shown = {}
    for line in text.splitlines():
        if line.startswith(SHOWN_SERIES):
            name, _, value = line.rpartition(" ")
            shown[name] = value
    return text, shown


def h2load(binary: str, url: str, body: Path, requests: int, connections: int,
           during=None) -> dict:
    """One bounded h2load run; ``during()`` is called once, SCRAPE_AFTER_S after it starts."""
    args = [binary, "--h1", "-n", str(requests), "-c", str(connections), "-t", "1", "-m", "1",
            "-d", str(body), "-H", "content-type: application/protobuf", url]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    extra = None
    try:
        if during is not None:
            try:
                proc.wait(SCRAPE_AFTER_S)
            except subprocess.TimeoutExpired:
                extra = during()
        out, _ = proc.communicate(timeout=H2LOAD_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    if proc.returncode != 0 or "finished in" not in out:
        raise RuntimeError(f"h2load failed ({proc.returncode}):\n{out[-3000:]}")
    times = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    return {
        "command": shlex.join(args),
        "req_per_s": _number(r"finished in [\d.]+m?s, ([\d.]+) req/s", out),
        "status_2xx": int(_number(r"status codes: (\d+) 2xx", out, 0)),
        "mean_ms": _duration_ms(times.group(3)) if times else float("nan"),
        "during": extra,
    }


def run(opts: Options, work: Path, *, progress=print, argv: list[str] | None = None) -> dict:
    binary = ensure_tool("h2load", "nghttp2-client")
    work.mkdir(parents=True, exist_ok=True)
    body = media_body(opts.body)
    body_path = work / "body-metrics.bin"
    body_path.write_bytes(body)
    metrics_port = free_port()
    configs = {}
    for on in (True, False):
        config = {"ip": "127.0.0.1", "port": free_port(),
                  "out_stream": {"url": f"pub+bind:ipc://{work}/metrics-{int(on)}-out",
                                 "send_hwm": 1000}}
        if on:
            config["metrics"] = {"ip": "127.0.0.1", "port": metrics_port}
        if opts.workers is not None:
            config["workers"] = opts.workers
        configs[on] = config
    result = {
        "meta": section_meta("bench.metrics_cost", argv or [], opts == QUICK),
        "options": {**asdict(opts), "body_bytes": len(body)},
        "h2load": tool_version([binary, "--version"]),
        "runs": [],
    }
    progress(f"metrics_cost: {opts.requests} POSTs of {len(body)} B over {opts.connections} "
             f"keep-alive HTTP connections, {opts.rounds} runs with metrics and "
             f"{opts.rounds} without, alternating ...")
    servers = {}
    try:
        for on in (True, False):
            servers[on] = gateway("server", configs[on], work,
                                  name=f"server-metrics-{'on' if on else 'off'}")
        urls = {on: f"http://127.0.0.1:{configs[on]['port']}/" for on in servers}
        for on in (True, False):
            h2load(binary, urls[on], body_path, opts.warmup, opts.connections)
        scraped = False
        for i, on in enumerate(order(opts.rounds)):
            label = "on" if on else "off"
            background = wait_quiet(f"metrics {label}", progress)
            roots = [servers[on].pid]
            during = None
            if on and not scraped:
                during = lambda: scrape(metrics_port)[1]  # noqa: E731
            cpu0, busy0, t0 = cpu_seconds(roots), busy_cpu_seconds(), time.monotonic()
            load = h2load(binary, urls[on], body_path, opts.requests, opts.connections,
                          during=during)
            cpu1, busy1, t1 = cpu_seconds(roots), busy_cpu_seconds(), time.monotonic()
            if during is not None:
                time.sleep(1.5)  # counts reach the listener within a second
                result["scrape_during"] = load["during"]
                result["scrape_after_s"] = SCRAPE_AFTER_S
                text, result["scrape_after"] = scrape(metrics_port)
                result["scrape_series"] = sum(
                    1 for line in text.splitlines() if line and not line.startswith("#"))
                scraped = True
            ok = load["status_2xx"]
            row = {
                "metrics": label, "run": i + 1, "req_per_s": load["req_per_s"],
                "mean_ms": load["mean_ms"], "ok": ok, "not_ok": opts.requests - ok,
                "cpu_us_per_req": (cpu1 - cpu0) / ok * 1e6 if ok else None,
                "server_cpus": (cpu1 - cpu0) / (t1 - t0),
                "machine_busy_cpus": (busy1 - busy0) / (t1 - t0),
                "background": background,
            }
            result["runs"].append(row)
            result["command"] = load["command"].replace(str(work), "$WORK")
            progress(f"  metrics {label}: {row['req_per_s']:,.0f} req/s, "
                     f"{row['cpu_us_per_req']:.1f} us CPU/req, non-2xx {row['not_ok']}, "
                     f"background {background['busy_cpus']:.2f} CPUs")
        result["processes"] = {("on" if on else "off"): len(process_tree([s.pid]))
                               for on, s in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    summary = {}
    for label in ("on", "off"):
        rows = [r for r in result["runs"] if r["metrics"] == label]
        summary[label] = {
            "req_per_s_mean": statistics.mean(r["req_per_s"] for r in rows),
            "req_per_s_median": statistics.median(r["req_per_s"] for r in rows),
            "cpu_us_per_req_mean": statistics.mean(r["cpu_us_per_req"] for r in rows),
            "not_ok": sum(r["not_ok"] for r in rows),
        }
    summary["throughput_cost_pct"] = 100 * (1 - summary["on"]["req_per_s_mean"]
                                            / summary["off"]["req_per_s_mean"])
    summary["throughput_cost_median_pct"] = 100 * (1 - summary["on"]["req_per_s_median"]
                                                   / summary["off"]["req_per_s_median"])
    summary["cpu_cost_pct"] = 100 * (summary["on"]["cpu_us_per_req_mean"]
                                     / summary["off"]["cpu_us_per_req_mean"] - 1)
    result["summary"] = summary
    progress(f"  metrics cost: {summary['throughput_cost_pct']:+.1f}% req/s (mean), "
             f"{summary['throughput_cost_median_pct']:+.1f}% (median), "
             f"{summary['cpu_cost_pct']:+.1f}% CPU per request")
    return result


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5,000 requests, 2 rounds")
    parser.add_argument("--rounds", type=int, help="runs with and without metrics, each")
    parser.add_argument("--requests", type=int, help="requests per run (default 30,000)")
    parser.add_argument("--workers", type=int, help="server workers (default: its own)")
    args = parser.parse_args(argv)
    opts = QUICK if args.quick else Options()
    for field, value in (("rounds", args.rounds), ("requests", args.requests),
                         ("workers", args.workers)):
        if value is not None:
            opts = replace(opts, **{field: value})

    def progress(line: str) -> None:  # stdout is for the JSON
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="mgfast-bench-") as tmp:
        result = run(opts, Path(tmp), progress=progress, argv=argv)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
