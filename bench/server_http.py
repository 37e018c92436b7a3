"""The server alone: requests/s and MB/s of ``POST /`` over keep-alive HTTPS.

h2load (Debian ``nghttp2-client``; installed with apt-get if missing) sends a bounded number of
requests over a fixed number of keep-alive HTTP/1.1 connections (``--h1``, one request in flight
per connection) to one ``mgfast server`` with a server certificate only (the seed guide's, for
IP 127.0.0.1; h2load does not verify it). Each body is one ``Media`` (the upstream API) holding
a savant-rs user-data message and one extra part, about 200 B or 100 KiB in all. The server's
out_stream is ``pub+bind`` over ipc with no subscriber, so ZeroMQ discards at once and only the
HTTP side is measured.

    python -m bench.server_http [--quick] [--plain] [--workers N] [--size small]
                                              # this part alone; python -m bench runs everything
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (Certs, cpu_seconds, ensure_tool, free_port, gateway, peak_rss_mib,
                          process_tree, tool_version)


@dataclass(frozen=True)
class HttpSize:
    name: str
    body_target: int  # about this many bytes of Media body
    requests: int
    quick_requests: int


HTTP_SIZES = (
    HttpSize("small", 200, 40_000, 4_000),
    HttpSize("large", 100 * 1024, 4_000, 500),
)
CONNECTIONS = 16  # h2load clients, one request in flight each
H2LOAD_TIMEOUT = 300  # seconds: the subprocess bound on top of the request count


def media_body(target: int) -> bytes:
    """A Media body of about ``target`` bytes: savant-rs user data plus one extra part."""
    import savant_rs
    from savant_rs.primitives import UserData

    from mgfast.media import encode_media

    ser = savant_rs.serialization_module
    message = ser.save_message_to_bytes(ser.Message.user_data(UserData("cam-0")))
    extra_len = max(0, target - len(encode_media(b"cam-0", message, [b""])))
    for _ in range(4):  # the data part's length prefix grows with it: converge on the target
        body = encode_media(b"cam-0", message, [b"\x00" * extra_len])
        if len(body) == target or extra_len == 0:
            break
        extra_len = max(0, extra_len + target - len(body))
    return body


def _number(pattern: str, text: str, default: float = float("nan")) -> float:
    match = re.search(pattern, text)
    return float(match.group(1)) if match else default


def _duration_ms(token: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", token)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value if unit == "ms" else value * 1000


def h2load(binary: str, url: str, body: Path, requests: int, connections: int) -> dict:
    args = [binary, "--h1", "-n", str(requests), "-c", str(connections), "-t", "1", "-m", "1",
            "-d", str(body), "-H", "content-type: application/protobuf", url]
    started = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, timeout=H2LOAD_TIMEOUT)
    wall = time.monotonic() - started
    text = out.stdout + out.stderr
    if out.returncode != 0 or "finished in" not in text:
        raise RuntimeError(f"h2load failed ({out.returncode}):\n{text[-3000:]}")
    times = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", text)
    return {
        "command": shlex.join(args),
        "wall_s": wall,
        "req_per_s": _number(r"finished in [\d.]+m?s, ([\d.]+) req/s", text),
        "succeeded": int(_number(r"(\d+) succeeded", text, 0)),
        "failed": int(_number(r"(\d+) failed", text, 0)),
        "errored": int(_number(r"(\d+) errored", text, 0)),
        "status_2xx": int(_number(r"status codes: (\d+) 2xx", text, 0)),
        "mean_ms": _duration_ms(times.group(3)) if times else float("nan"),
        "max_ms": _duration_ms(times.group(2)) if times else float("nan"),
        "tls": " ".join(re.findall(r"(?:TLS Protocol|Cipher): (\S+)", text)),
        "output": text,
    }


def run(quick: bool, work: Path, certs: Certs | None = None, *, workers: int | None = None,
        plain: bool = False, sizes: tuple[str, ...] | None = None, progress=print) -> list[dict]:
    binary = ensure_tool("h2load", "nghttp2-client")
    certs = certs or Certs.create(work / "pki")
    work.mkdir(parents=True, exist_ok=True)
    config = {
        "ip": "127.0.0.1",
        "port": free_port(),
        **({} if plain else {"tls": {"identity": {"certificate": str(certs.server_crt),
                                                  "key": str(certs.server_key)}}}),
        "out_stream": {"url": f"pub+bind:ipc://{work}/http-out", "send_hwm": 1000},
    }
    if workers is not None:
        config["workers"] = workers
    scheme = "http" if plain else "https"
    url = f"{scheme}://127.0.0.1:{config['port']}/"
    results = []
    for size in HTTP_SIZES:
        if sizes is not None and size.name not in sizes:
            continue
        body = media_body(size.body_target)
        body_path = work / f"body-{size.name}.bin"
        body_path.write_bytes(body)
        requests = size.quick_requests if quick else size.requests
        progress(f"server_http: {requests} POSTs of {len(body)} B over {CONNECTIONS} "
                 f"keep-alive {scheme.upper()} connections ...")
        server = gateway("server", config, work, name=f"server-http-{size.name}")
        try:
            roots = [server.pid]
            h2load(binary, url, body_path, min(requests // 10, 1000), CONNECTIONS)  # warm-up
            cpu0 = cpu_seconds(roots)
            run_ = h2load(binary, url, body_path, requests, CONNECTIONS)
            cpu1 = cpu_seconds(roots)
            rss = peak_rss_mib(roots)
            processes = len(process_tree(roots))
        finally:
            server.stop()
        ok = run_["status_2xx"]
        result = {
            "size": size.name, "scheme": scheme, "workers": workers, "body": len(body), "requests": requests,
            "connections": CONNECTIONS, "ok": ok,
            "not_ok": requests - ok,
            "req_per_s": run_["req_per_s"], "mb_per_s": run_["req_per_s"] * len(body) / 1e6,
            "mean_ms": run_["mean_ms"], "max_ms": run_["max_ms"],
            "cpu_us_per_req": (cpu1 - cpu0) / ok * 1e6 if ok else None,
            "peak_rss_mib": rss, "processes": processes, "tls": run_["tls"],
            "command": run_["command"].replace(str(work), "$WORK"),
            "h2load": tool_version([binary, "--version"]),
        }
        progress(f"  {result['req_per_s']:,.0f} req/s, {result['mb_per_s']:,.1f} MB/s, "
                 f"mean {result['mean_ms']:.2f} ms, {result['cpu_us_per_req']:.1f} us CPU/req, "
                 f"non-2xx {result['not_ok']}")
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_http", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    parser.add_argument("--workers", type=int, help="server `workers` (default: its own)")
    parser.add_argument("--plain", action="store_true", help="plain HTTP instead of HTTPS")
    parser.add_argument("--size", action="append", choices=[s.name for s in HTTP_SIZES],
                        help="only this body size (repeatable)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mgfast-bench-") as tmp:
        results = run(args.quick, Path(tmp), workers=args.workers, plain=args.plain,
                      sizes=tuple(args.size) if args.size else None)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
