"""Mutual-TLS handshakes per second: mgfast server against nginx, a new connection each time;
and, reported apart, mgfast with session resumption on and clients that reuse their session.

Both servers get the seed guide's certificates (tests.seed_ca: server certificate for IP
127.0.0.1, RSA 2048) and require and verify a client certificate with the CA's CRL:

- ``mgfast server`` with ``tls.identity`` and ``tls.peers`` {``lookup_hash_directory``,
  ``crl_enabled: true``} and ``workers`` N;
- Debian's nginx (``nginx-light``, installed with apt-get if missing), run in the foreground
  from a generated config in the work directory: ``ssl_verify_client on``,
  ``ssl_client_certificate`` = the CA certificate, ``ssl_crl`` = the CA's CRL,
  ``worker_processes`` N and ``location /health { return 200 '{"status":"healthy"}'; }``,
  and no session tickets, like mgfast by default (each ticket costs the server CPU on every full
  handshake): ``ssl_session_tickets off`` plus ``ssl_conf_command NumTickets 0``, since with
  the first alone nginx still sends TLS 1.3 tickets (stateful ones; counted: one per exchange);
- a second ``mgfast server`` as the first plus ``tls.session_tickets`` {``enabled: true``}, for
  the resumed-handshake measurement.

A second client certificate is issued and revoked before either server starts, so both load a
CRL with one entry; each server must refuse that certificate (checked once per server).

The load: ``clients`` Python processes, each looping over: new TCP connection to 127.0.0.1,
full TLS handshake with the client certificate (a fresh session every time: no session is ever
offered for resumption, tickets are disabled on the client, and ``session_reused`` is counted),
``GET /health`` with ``Connection: close``, read the whole 200 response, close. Every exchange
also records whether the server sent a session ticket (``tickets`` in the results).
Resumed: the same loop, except that each client offers the session of its previous exchange (the
first one is a full handshake), against the mgfast server with resumption on. After a warm-up,
the completed exchanges in a fixed window give handshakes/s; server CPU per handshake is the
server's whole process tree over that window. The targets alternate (mgfast, nginx, mgfast, ...)
for ``rounds`` rounds, each after waiting for a quiet machine.

    python -m bench.handshakes [--quick] [--workers 2] [--clients 4]   # prints JSON
    python -m bench --parts handshakes      # the same, written into bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import socket
import ssl
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from bench.common import (Proc, busy_cpu_seconds, cpu_seconds, ensure_tool, free_port, gateway,
                          peak_rss_mib, percentile, process_tree, tool_version, wait_until)
from bench.quiet import section_meta, wait_quiet

REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Options:
    workers: int = 2  # server workers (mgfast `workers`, nginx `worker_processes`)
    clients: int = 4  # load generator processes
    warmup_s: float = 2.0
    window_s: float = 6.0
    rounds: int = 2  # mgfast, nginx, mgfast, nginx, ...


QUICK = Options(warmup_s=1.0, window_s=2.0, rounds=1)


# ---- load generator (one process per client) -----------------------------------------------------

def client_context(ca: str, crt: str, key: str, *, resume: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server: CA + IP SAN
    context.load_verify_locations(cafile=ca)
    context.load_cert_chain(crt, key)
    if not resume:
        context.options |= ssl.OP_NO_TICKET  # and no session is ever passed in: full handshakes
    return context


@dataclass
class Exchange:
    status: int
    reused: bool  # the session offered was resumed
    tls: str  # "version cipher"
    body: bytes
    session: ssl.SSLSession | None
    ticket: bool  # the server sent a session ticket


def exchange(context: ssl.SSLContext, port: int,
             session: ssl.SSLSession | None = None) -> Exchange:
    """One connection: handshake (offering ``session``), GET /health, the whole response."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
    # as curl and most HTTP clients: without it, a server that sends nothing after the
    # handshake (no session ticket) and delays its ACK holds the request back 40 ms (mgfast
    # ACKs at once, nginx does not), which would measure the client, not the server
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        tls = context.wrap_socket(raw, server_hostname="127.0.0.1", session=session)
    except BaseException:
        raw.close()
        raise
    with tls:
        tls.sendall(REQUEST)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} bytes of response")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = tls.recv(4096)
            if not chunk:
                raise ConnectionError("closed inside the response body")
            body += chunk
        status = int(head.split(b" ", 2)[1])
        got = tls.session  # tickets arrive before the response: read by now
        return Exchange(status, tls.session_reused, f"{tls.version()} {tls.cipher()[0]}", body,
                        got, bool(got is not None and got.has_ticket))


def client_main(conn, port: int, ca: str, crt: str, key: str, resume: bool = False) -> None:
    """Load generator process: ``("run", t_start, t_end)`` (CLOCK_MONOTONIC, shared by all
    processes) -> stats of the exchanges that completed inside [t_start, t_end]. With
    ``resume``, each exchange offers the session of the one before."""
    context = client_context(ca, crt, key, resume=resume)
    conn.send("ready")
    command = conn.recv()
    _, t_start, t_end = command
    ok = reused = tickets = 0
    session = None
    failures: dict[str, int] = {}
    latencies: list[float] = []
    tls_seen = ""
    warmup_ok = 0
    now = time.monotonic
    while True:
        t0 = now()
        if t0 >= t_end:
            break
        try:
            result = exchange(context, port, session)
            was_reused, got_ticket, tls_seen = result.reused, result.ticket, result.tls
            if resume and result.ticket:
                session = result.session
            error = None if result.status == 200 else f"HTTP {result.status}"
        except (OSError, ssl.SSLError, ValueError, IndexError) as exc:
            error = f"{type(exc).__name__}: {str(exc)[:120]}"
            was_reused = got_ticket = False
            session = None
        t1 = now()
        if t0 < t_start or t1 > t_end:  # warm-up, or finished after the window closed
            warmup_ok += error is None
            if error is not None and t1 > t_start:
                failures[error] = failures.get(error, 0) + 1
            continue
        if error is None:
            ok += 1
            reused += was_reused
            tickets += got_ticket
            latencies.append((t1 - t0) * 1000)
        else:
            failures[error] = failures.get(error, 0) + 1
    conn.send({"ok": ok, "reused": reused, "tickets": tickets, "failures": failures,
               "latencies_ms": latencies,
               "tls": tls_seen, "warmup_ok": warmup_ok})


def revoked_check(port: int, seed, crt: Path, key: Path, log: Path | None = None) -> dict:
    """The revoked certificate must be refused and the valid one accepted. mgfast fails the
    handshake (TLS 1.3: the alert arrives at the first read); nginx completes it and answers
    ``400 The SSL certificate error``, logging the reason at ``info`` level."""
    good = client_context(str(seed.ca_crt), str(seed.client_crt), str(seed.client_key))
    control = exchange(good, port).status
    log_size = log.stat().st_size if log is not None and log.exists() else 0
    context = client_context(str(seed.ca_crt), str(crt), str(key))
    try:
        result = exchange(context, port)
        status, body = result.status, result.body
    except (OSError, ssl.SSLError) as exc:
        return {"rejected": True, "how": f"handshake failed: {str(exc)[:120]}",
                "valid_cert_status": control}
    reason = ""
    if log is not None:
        time.sleep(0.2)
        with open(log, "rb") as f:
            f.seek(log_size)
            found = re.search(rb"client SSL certificate verify error: \([^)]*\)", f.read())
            reason = found.group(0).decode(errors="replace") if found else ""
    rejected = status == 400 and b"SSL certificate error" in body
    title = re.search(rb"<title>([^<]*)</title>", body)
    how = f"HTTP {title.group(1).decode(errors='replace') if title else status}"
    return {"rejected": rejected, "how": how + (f"; log: {reason}" if reason else ""),
            "valid_cert_status": control}


# ---- the two servers -----------------------------------------------------------------------------

NGINX_CONF = """\
worker_processes {workers};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 4096; }}
http {{
    access_log {dir}/access.log combined buffer=64k flush=1s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {server_crt};
        ssl_certificate_key {server_key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_crl {crl};
        ssl_session_tickets off;
        ssl_conf_command NumTickets 0;
        location /health {{
            default_type application/json;
            return 200 '{{"status":"healthy"}}';
        }}
    }}
}}
"""


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_nginx(binary: str, work: Path, port: int, seed, workers: int) -> Proc:
    directory = work / "nginx"
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, dir=directory, port=port,
                                      server_crt=seed.server_crt, server_key=seed.server_key,
                                      ca=seed.ca_crt, crl=seed.crl))
    proc = Proc("nginx", [binary, "-p", str(directory), "-c", str(conf),
                          "-e", str(directory / "error.log")], work)
    try:
        def up() -> bool:
            proc.check_alive()
            return port_open(port)
        wait_until(up, timeout=15, what="nginx to listen")
    except BaseException:
        proc.stop()
        raise
    return proc


def start_mgfast(work: Path, port: int, seed, workers: int, *, resumption: bool = False) -> Proc:
    config: dict = {
        "ip": "127.0.0.1",
        "port": port,
        "workers": workers,
        "tls": {
            "identity": {"certificate": str(seed.server_crt), "key": str(seed.server_key)},
            "peers": {"lookup_hash_directory": str(seed.hash_dir), "crl_enabled": True},
        },
        "out_stream": {"url": f"pub+bind:ipc://{work}/handshakes-out"},
    }
    name = "server-handshakes"
    if resumption:
        config["tls"]["session_tickets"] = {"enabled": True}
        config["out_stream"]["url"] += "-resumed"
        name += "-resumed"
    return gateway("server", config, work, name=name)


# ---- one measurement -----------------------------------------------------------------------------

def measure(target: str, port: int, roots: list[int], seed, opts: Options, progress, *,
            resume: bool = False) -> dict:
    background = wait_quiet(f"handshakes {target}", progress)
    ctx = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    try:
        for i in range(opts.clients):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=client_main, name=f"hs-client-{i}",
                            args=(child, port, str(seed.ca_crt), str(seed.client_crt),
                                  str(seed.client_key), resume), daemon=True)
            p.start()
            pipes.append(parent)
            procs.append(p)
        for parent in pipes:
            if not parent.poll(30):
                raise RuntimeError("a load generator process did not start")
            parent.recv()
        now = time.monotonic()
        t_start = now + 0.2 + opts.warmup_s
        t_end = t_start + opts.window_s
        for parent in pipes:
            parent.send(("run", t_start, t_end))
        client_pids = [p.pid for p in procs]
        time.sleep(max(0.0, t_start - time.monotonic()))
        s0, c0, b0, w0 = (cpu_seconds(roots), cpu_seconds(client_pids), busy_cpu_seconds(),
                          time.monotonic())
        time.sleep(max(0.0, t_end - time.monotonic()))
        s1, c1, b1, w1 = (cpu_seconds(roots), cpu_seconds(client_pids), busy_cpu_seconds(),
                          time.monotonic())
        processes = len(process_tree(roots))
        stats = []
        for parent in pipes:
            if not parent.poll(CONNECT_TIMEOUT + 20):
                raise RuntimeError("a load generator process did not report")
            stats.append(parent.recv())
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
    ok = sum(s["ok"] for s in stats)
    failures: dict[str, int] = {}
    for s in stats:
        for kind, n in s["failures"].items():
            failures[kind] = failures.get(kind, 0) + n
    latencies = sorted(v for s in stats for v in s["latencies_ms"])
    wall = w1 - w0
    server_cpu, client_cpu = s1 - s0, c1 - c0
    busy = (b1 - b0) / wall
    return {
        "target": target,
        "handshakes_per_s": ok / opts.window_s,
        "ok": ok,
        "failed": sum(failures.values()),
        "failures": failures,
        "reused": sum(s["reused"] for s in stats),
        "tickets": sum(s["tickets"] for s in stats),
        "warmup_ok": sum(s["warmup_ok"] for s in stats),
        "server_cpu_us_per_hs": server_cpu / ok * 1e6 if ok else None,
        "client_cpu_us_per_hs": client_cpu / ok * 1e6 if ok else None,
        "server_cpus": server_cpu / wall,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "machine_busy_cpus": busy,
        "other_cpus": max(0.0, busy - (server_cpu + client_cpu) / wall),
        "background": background,
        "processes": processes,
        "tls": next((s["tls"] for s in stats if s["tls"]), ""),
    }


def run(opts: Options, work: Path, *, progress=print, argv: list[str] | None = None) -> dict:
    from tests.seed_ca import SeedCa

    nginx_bin = ensure_tool("nginx", "nginx-light")
    work.mkdir(parents=True, exist_ok=True)
    seed = SeedCa.create(work / "pki")
    revoked_crt, revoked_key = seed.issue_client("revoked", "media-gateway-client-revoked")
    seed.revoke(revoked_crt)
    seed.publish_crl()  # HASH.r1 in the hash directory, and ca/crl/ca.crl for nginx
    result = {
        "meta": section_meta("bench.handshakes", argv or [], opts == QUICK),
        "options": asdict(opts),
        "nginx": tool_version([nginx_bin, "-v"], prefix="nginx version"),
        "rounds": [], "revoked": {}, "peak_rss_mib": {}, "processes": {},
    }
    mg_port, ng_port = free_port(), free_port()
    resumed_port = free_port()
    progress(f"handshakes: mgfast server and nginx (no session tickets), {opts.workers} "
             f"workers each, {opts.clients} client processes, {opts.rounds} x "
             f"{opts.window_s:g} s windows; then mgfast with session resumption ...")
    mgfast = start_mgfast(work, mg_port, seed, opts.workers)
    resumed = None
    try:
        resumed = start_mgfast(work, resumed_port, seed, opts.workers, resumption=True)
        nginx = start_nginx(nginx_bin, work, ng_port, seed, opts.workers)
        try:
            targets = {"mgfast": (mg_port, [mgfast.pid]), "nginx": (ng_port, [nginx.pid])}
            logs = {"mgfast": None, "nginx": work / "nginx" / "error.log"}
            for name, (port, _) in targets.items():
                check = revoked_check(port, seed, revoked_crt, revoked_key, logs[name])
                result["revoked"][name] = check
                progress(f"  {name}: revoked client certificate "
                         f"{'rejected' if check['rejected'] else 'ACCEPTED'} ({check['how']}); "
                         f"valid one: HTTP {check['valid_cert_status']}")
            runs = [(name, port, roots, False) for name, (port, roots) in targets.items()]
            runs.append(("mgfast-resumed", resumed_port, [resumed.pid], True))
            for round_ in range(opts.rounds):
                for name, port, roots, resume in runs:
                    row = measure(name, port, roots, seed, opts, progress, resume=resume)
                    row["round"] = round_ + 1
                    result["rounds"].append(row)
                    progress(f"  {name} round {round_ + 1}: {row['handshakes_per_s']:,.0f} "
                             f"handshakes/s, server {row['server_cpu_us_per_hs'] or 0:,.0f} us "
                             f"CPU/handshake, p50 {row['p50_ms']:.1f} ms, failed {row['failed']}, "
                             f"reused {row['reused']}, tickets {row['tickets']}, background "
                             f"{row['background']['busy_cpus']:.2f} CPUs")
            for name, (_, roots) in targets.items():
                result["peak_rss_mib"][name] = peak_rss_mib(roots)
                result["processes"][name] = len(process_tree(roots))
        finally:
            nginx.stop()
            result["nginx_errors"] = [
                line for line in (work / "nginx" / "error.log").read_text(errors="replace")
                .splitlines() if "[emerg]" in line or "[alert]" in line][:5]
    finally:
        mgfast.stop()
        if resumed is not None:
            resumed.stop()
    summary: dict = {}
    for name in ("mgfast", "nginx", "mgfast-resumed"):
        rows = [r for r in result["rounds"] if r["target"] == name]
        summary[name] = {
            "handshakes_per_s": statistics.mean(r["handshakes_per_s"] for r in rows),
            "server_cpu_us_per_hs": statistics.mean(r["server_cpu_us_per_hs"] or 0 for r in rows),
            "failed": sum(r["failed"] for r in rows),
            "reused": sum(r["reused"] for r in rows),
            "ok": sum(r["ok"] for r in rows),
            "tickets": sum(r["tickets"] for r in rows),
        }
    nginx_rate = summary["nginx"]["handshakes_per_s"]
    summary["ratio"] = summary["mgfast"]["handshakes_per_s"] / nginx_rate if nginx_rate else None
    nginx_cpu = summary["nginx"]["server_cpu_us_per_hs"]
    summary["cpu_ratio"] = (summary["mgfast"]["server_cpu_us_per_hs"] / nginx_cpu
                            if nginx_cpu else None)
    full_cpu = summary["mgfast"]["server_cpu_us_per_hs"]
    summary["resumed_cpu_ratio"] = (summary["mgfast-resumed"]["server_cpu_us_per_hs"] / full_cpu
                                    if full_cpu else None)
    full_rate = summary["mgfast"]["handshakes_per_s"]
    summary["resumed_rate_ratio"] = (summary["mgfast-resumed"]["handshakes_per_s"] / full_rate
                                     if full_rate else None)
    result["summary"] = summary
    progress(f"  mgfast / nginx: {summary['ratio']:.2f}x handshakes/s, "
             f"{summary['cpu_ratio']:.2f}x server CPU per handshake (tickets sent: mgfast "
             f"{summary['mgfast']['tickets']}, nginx {summary['nginx']['tickets']})")
    progress(f"  mgfast resumed / mgfast full: {summary['resumed_rate_ratio']:.2f}x "
             f"handshakes/s, {summary['resumed_cpu_ratio']:.2f}x server CPU per handshake "
             f"({summary['mgfast-resumed']['reused']} of {summary['mgfast-resumed']['ok']} "
             f"resumed)")
    return result


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.handshakes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short windows, one round")
    parser.add_argument("--workers", type=int, help="server workers for both (default 2)")
    parser.add_argument("--clients", type=int, help="load generator processes (default 4)")
    parser.add_argument("--window", type=float, help="seconds counted per round (default 6)")
    parser.add_argument("--rounds", type=int, help="rounds of (mgfast, nginx) (default 2)")
    args = parser.parse_args(argv)
    opts = QUICK if args.quick else Options()
    for field, value in (("workers", args.workers), ("clients", args.clients),
                         ("window_s", args.window), ("rounds", args.rounds)):
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
