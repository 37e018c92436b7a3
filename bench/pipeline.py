"""The end-to-end benchmark: one Savant stream over three paths, for small and large messages.

    savant-rs writer --> [path] --> savant-rs reader

    direct       writer (dealer+connect) -> reader (router+bind): the ceiling
    stunnel      writer -> stunnel client ==mutual TLS over TCP 127.0.0.1==> stunnel server
                 -> reader: what an operator would otherwise deploy
    mgfast b=1   writer -> mgfast client (router+bind) ==HTTPS, mutual TLS==> mgfast server
                 (out_stream dealer+connect) -> reader; batch 1 = exactly the upstream API
    mgfast b=64  the same with ``batch: 64`` (MediaBatch framing between mgfast peers)

Every ZeroMQ endpoint of a path (writer to path, path to reader, or writer to reader) is of one
*transport*: ``ipc`` (Unix sockets in the work directory; stunnel accepts and connects on them
too) or ``tcp`` (127.0.0.1, a free port each). Both run by default: Savant deployments use both,
and the comparison with stunnel and direct is only fair over the transport the gateway uses.

The writer and the reader are the same in every path (same sockets, same endpoints): DEALER to
ROUTER gives back-pressure all the way, so nothing is dropped silently and "messages/s" is what
the path sustains. Both TLS paths use the seed guide's certificates (tests.seed_ca) and verify
the peer in both directions against the same CA, the server side with CRL checking on the hash
directory.

Per path and size, with fresh processes: a warm-up (connections and TLS sessions established),
then a *load* phase (writer as fast as back-pressure lets it, bounded by count and time), then
a *paced* phase at a fixed rate below every path's capacity, for latency without queueing.
See bench/README.md for what each number means.

    python -m bench.pipeline [--quick] [--transport ipc|tcp]   # this part alone
    python -m bench                                             # everything
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (Certs, Proc, busy_cpu_seconds, cpu_seconds, ensure_tool, free_port,
                          gateway, peak_rss_mib, process_tree)
from bench.peers import PeerProcess, reader_main, writer_main


@dataclass(frozen=True)
class Size:
    name: str
    payload: int  # bytes of topic + Savant message + extra, per message
    max_count: int  # load phase bound (the time bound applies too)
    paced_rate: int  # messages/s of the paced phase


SIZES = (
    Size("small", 200, 400_000, 1000),
    Size("large", 100 * 1024, 40_000, 200),
)


TRANSPORTS = ("ipc", "tcp")  # every ZeroMQ endpoint of a path is one of these

PACED_MAX_LOAD = 0.5  # the paced phase runs at no more than this fraction of the load rate


@dataclass(frozen=True)
class Options:
    load_seconds: float = 8.0
    paced_seconds: float = 4.0
    warmup: int = 500
    # Topics cam-0..cam-N-1, round-robin: a deployment carries many sources, and the client
    # maps each topic to one of its connections by hash (cam-0..7 use all of 4 connections).
    sources: int = 8
    connections: int = 4  # mgfast client keep-alive connections
    inflight_ops: int = 1000  # mgfast client in-flight window (in_stream.inflight_ops)
    batch: int = 64
    drain_timeout: float = 30.0
    server_workers: int | None = None  # None: the server's default
    profile: bool = False  # py-spy every gateway Python process during the load phase
    # Run the mgfast client from this checkout instead (an A/B of clients against this
    # checkout's server). Its config must know the keys written here: `pipeline` is written
    # only on -p rows, so the other rows run clients from before that key (e.g. 05add79).
    client_tree: Path | None = None


QUICK = Options(load_seconds=1.5, paced_seconds=1.0, warmup=100)


# ---- endpoints -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """One ZeroMQ endpoint, as savant-rs and mgfast URLs write it (``zmq``, after the
    ``type+bind:`` prefix) and as stunnel's ``accept`` / ``connect`` write it (``stunnel``)."""

    zmq: str
    stunnel: str


_ports_given: set[int] = set()


def new_port() -> int:
    """A free TCP port on 127.0.0.1, never the same twice in one run: a port is bound only later,
    by another process, so two free_port() calls in a row can return the same one (this
    happened: an mgfast client got one port for its listener and its in_stream)."""
    while (port := free_port()) in _ports_given:
        pass
    _ports_given.add(port)
    return port


def endpoint(transport: str, work: Path, name: str) -> Endpoint:
    """A new endpoint: the Unix socket ``work/name``, or 127.0.0.1 on a free TCP port."""
    if transport == "ipc":
        path = work / name
        return Endpoint(f"ipc://{path}", str(path))
    if transport == "tcp":
        port = new_port()
        return Endpoint(f"tcp://127.0.0.1:{port}", f"127.0.0.1:{port}")
    raise ValueError(f"unknown transport {transport!r}; choose from {', '.join(TRANSPORTS)}")


def parse_transports(text: str | None) -> tuple[str, ...]:
    """``--transport``: ``ipc``, ``tcp`` or both comma-separated (default: both, in that order)."""
    if not text:
        return TRANSPORTS
    chosen = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [t for t in chosen if t not in TRANSPORTS]
    if unknown or not chosen:
        raise ValueError(f"--transport {text!r}: choose from {', '.join(TRANSPORTS)} "
                         "(comma-separated for several)")
    return chosen


# ---- paths ---------------------------------------------------------------------------------------

class Path_:
    """What sits between writer and reader; ``start`` returns the writer's URL. Endpoints of its
    own (where the writer connects) are of the same ``transport`` as the reader's."""

    key = ""
    label = ""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(self, work: Path, certs: Certs, transport: str, reader: Endpoint,
              opts: Options) -> str:
        raise NotImplementedError

    @property
    def roots(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()[-2000:]}" for p in self.procs)


class Direct(Path_):
    key, label = "direct", "direct (ceiling)"

    def start(self, work, certs, transport, reader, opts):
        return f"dealer+connect:{reader.zmq}"


class Stunnel(Path_):
    key, label = "stunnel", "stunnel mTLS"

    def start(self, work, certs, transport, reader, opts):
        binary = ensure_tool("stunnel4", "stunnel4")
        port = new_port()
        entry = endpoint(transport, work, "stunnel-in")
        common = "foreground = yes\npid =\ndebug = 5\n"  # 5: logs "Configuration successful"
        # the TLS 1.3 suite mgfast prefers, so both tunnels pay the same cipher per byte
        suites = "ciphersuites = TLS_AES_128_GCM_SHA256\n"
        server_conf = work / "stunnel-server.conf"
        server_conf.write_text(
            common + "[gateway]\n"
            f"accept = 127.0.0.1:{port}\n"
            f"connect = {reader.stunnel}\n"
            f"cert = {certs.server_crt}\nkey = {certs.server_key}\n"
            f"CApath = {certs.hash_dir}\nCRLpath = {certs.hash_dir}\n"
            "verifyChain = yes\nrequireCert = yes\n" + suites)
        client_conf = work / "stunnel-client.conf"
        client_conf.write_text(
            common + "[gateway]\nclient = yes\n"
            f"accept = {entry.stunnel}\n"
            f"connect = 127.0.0.1:{port}\n"
            f"cert = {certs.client_crt}\nkey = {certs.client_key}\n"
            f"CAfile = {certs.ca}\nverifyChain = yes\ncheckIP = 127.0.0.1\n" + suites)
        for name, conf in (("stunnel-server", server_conf), ("stunnel-client", client_conf)):
            self.procs.append(Proc(name, [binary, str(conf)], work))
        for proc in self.procs:
            proc.wait_log("Configuration successful")
        return f"dealer+connect:{entry.zmq}"


class Mgfast(Path_):
    def __init__(self, batch: int, workers: int | None = None, pipeline: int | None = None,
                 connections: int | None = None) -> None:
        super().__init__()
        self.batch = batch
        self.workers = workers  # None: the --workers option, else the server's default
        self.pipeline = pipeline  # None: the client's default
        self.connections = connections  # None: Options.connections
        self.key = (f"mgfast-b{batch}" + (f"-p{pipeline}" if pipeline else "")
                    + (f"-c{connections}" if connections else "")
                    + (f"-w{workers}" if workers else ""))
        self.label = (f"mgfast batch={batch}" + (f", pipeline={pipeline}" if pipeline else "")
                      + (f", {connections} connection{'s' * (connections > 1)}"
                         if connections else "")
                      + (f", {workers} worker{'s' * (workers > 1)}" if workers else ""))

    def start(self, work, certs, transport, reader, opts):
        entry = endpoint(transport, work, "client-in")
        duration = {"secs": 1, "nanos": 0}
        server = {
            "ip": "127.0.0.1",
            "port": new_port(),
            "tls": {
                "identity": {"certificate": str(certs.server_crt), "key": str(certs.server_key)},
                "peers": {"lookup_hash_directory": str(certs.hash_dir), "crl_enabled": True},
            },
            "out_stream": {
                "url": f"dealer+connect:{reader.zmq}",
                "send_timeout": duration, "send_retries": 3,
                "receive_timeout": duration, "receive_retries": 3,
                "send_hwm": 1000, "receive_hwm": 1000, "inflight_ops": 100,
            },
        }
        workers = self.workers or opts.server_workers
        if workers is not None:
            server["workers"] = workers
        self.procs.append(gateway("server", server, work))
        client = {
            "ip": "127.0.0.1",
            "port": new_port(),
            "url": f"https://127.0.0.1:{server['port']}",
            "in_stream": {
                "url": f"router+bind:{entry.zmq}",
                "receive_timeout": duration, "receive_hwm": 1000,
                "topic_prefix_spec": {"none": None}, "source_cache_size": 1000,
                "inflight_ops": opts.inflight_ops,
            },
            "tls": {
                "root_certificate": str(certs.ca),
                "identity": {"certificate": str(certs.client_crt), "key": str(certs.client_key)},
            },
            "batch": self.batch,
            "connections": self.connections or opts.connections,
        }
        if self.pipeline is not None:
            client["pipeline"] = self.pipeline
        self.procs.append(gateway("client", client, work, tree=opts.client_tree))
        return f"dealer+connect:{entry.zmq}"


def paths(opts: Options) -> list[Path_]:
    """Without --workers, mgfast runs with 1 worker (it owns the out_stream: no hop) and with 2
    (the egress process owns it), so the cost of the process model shows in one run."""
    if opts.server_workers is not None:
        chosen = [Direct(), Stunnel(), Mgfast(1, pipeline=1), Mgfast(1), Mgfast(opts.batch)]
    else:
        # batch=64 also over one connection, as stunnel carries the writer's one ZeroMQ peer
        # in one TLS connection: what the other three cost per message shows against it
        chosen = [Direct(), Stunnel(), Mgfast(1, 1, pipeline=1), Mgfast(1, 1),
                  Mgfast(opts.batch, 1), Mgfast(opts.batch, 1, connections=1),
                  Mgfast(1, 2), Mgfast(opts.batch, 2)]
    if opts.client_tree is not None:  # same keys (for --only), labels that tell the rows apart
        revision = tree_revision(opts.client_tree)
        for path in chosen:
            if isinstance(path, Mgfast):
                path.label += f", client@{revision}"
    return chosen


def tree_revision(tree: Path) -> str:
    """The short commit of a checkout (``+dirty`` with uncommitted changes), else its path."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short=7", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(tree)
    return head + "+dirty" * bool(dirty)


# ---- profiling (optional) ------------------------------------------------------------------------

PROFILE_TOP = 12  # frames per process in the summary


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def start_profiles(roots: list[int], opts: Options, work: Path, path: Path_) -> list:
    """py-spy ``record`` (raw collapsed stacks) on every Python process of the path's trees for
    the load phase."""
    import shutil
    import subprocess
    import sys

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("bench: --profile needs py-spy: "
                         f"{sys.executable} -m pip install py-spy")
    names = {p.pid: p.name for p in path.procs} | child_names(path)
    spies = []
    for pid in process_tree(roots):
        if "python" not in _cmdline(pid):
            continue
        name = names.get(pid, f"{_parent_name(pid, names)}-child")
        out = work / f"py-spy-{name}-{pid}.txt"
        proc = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", str(int(opts.load_seconds) + 1),
             "--rate", "250", "--format", "raw", "--nolineno", "--nonblocking", "--output",
             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spies.append((f"{name} (pid {pid})", proc, out))
    return spies


def child_names(path: Path_) -> dict[int, str]:
    """The server's children by pid, as ``server:worker-0``, ``server:egress``: mgfast's
    supervisor logs "started child=worker-0 pid=123"."""
    names = {}
    for proc in path.procs:
        for match in re.finditer(r"child=(\S+) pid=(\d+)", proc.log()):
            names[int(match.group(2))] = f"{proc.name}:{match.group(1)}"
    return names


def _parent_name(pid: int, names: dict[int, str]) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
    except (OSError, ValueError):
        return "?"
    return names.get(ppid) or _parent_name(ppid, names) if ppid > 1 else "?"


def finish_profiles(spies: list) -> dict[str, list[tuple[str, float]]]:
    """Per process: the top frames by own samples, as (frame, percent of its samples)."""
    summary = {}
    for name, proc, out in spies:
        try:
            proc.wait(60)
        except Exception:
            proc.kill()
            proc.wait(5)
        own: dict[str, int] = {}
        total = 0
        if out.exists():
            for line in out.read_text(errors="replace").splitlines():
                stack, _, count = line.rpartition(" ")
                if not stack or not count.isdigit():
                    continue
                frame = stack.rsplit(";", 1)[-1]
                own[frame] = own.get(frame, 0) + int(count)
                total += int(count)
        top = sorted(own.items(), key=lambda kv: -kv[1])[:PROFILE_TOP]
        summary[name] = [(frame, 100.0 * n / total) for frame, n in top] if total else []
    return summary


# ---- one scenario --------------------------------------------------------------------------------

def run_scenario(path: Path_, size: Size, transport: str, certs: Certs, work: Path,
                 opts: Options) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    reader_at = endpoint(transport, work, "reader")
    reader = PeerProcess(reader_main, f"router+bind:{reader_at.zmq}", opts.sources)
    writer = None
    try:
        writer_url = path.start(work, certs, transport, reader_at, opts)
        writer = PeerProcess(writer_main, writer_url, opts.sources, size.payload)
        roots = path.roots

        def phase(number: int, count: int, seconds: float, rate: int) -> tuple[tuple, dict]:
            sent = writer.call(("run", number, count, seconds, rate), seconds + 120)
            got = reader.call(("wait", number, sent[0], opts.drain_timeout),
                              opts.drain_timeout + 30)
            return sent, got

        sent, got = phase(1, opts.warmup, 60, 0)
        if got["unique"] < sent[0]:
            raise RuntimeError(f"{path.label}: warm-up delivered {got['unique']} of {sent[0]}\n"
                               f"{path.logs()}")

        peers = [writer.pid, reader.pid]
        cpu0, peers0, busy0 = cpu_seconds(roots), cpu_seconds(peers), busy_cpu_seconds()
        load_started = time.monotonic()
        # each process tree, and each server child (workers, egress) of its own
        parts = [(p.name, p.pid) for p in path.procs]
        parts += [(name, pid) for pid, name in child_names(path).items()]
        split0 = {name: cpu_seconds([pid]) for name, pid in parts}
        spies = start_profiles(roots, opts, work, path) if opts.profile else []
        sent, got = phase(2, size.max_count, opts.load_seconds, 0)
        cpu1, peers1, busy1 = cpu_seconds(roots), cpu_seconds(peers), busy_cpu_seconds()
        load_wall = time.monotonic() - load_started
        split1 = {name: cpu_seconds([pid]) for name, pid in parts}
        profile = finish_profiles(spies)
        n_sent, failed, first_ns, _ = sent
        unique = got["unique"]
        elapsed = max(1e-9, (got["last_ns"] - first_ns) / 1e9)
        rate = unique / elapsed
        result = {
            "path": path.key, "label": path.label, "size": size.name, "payload": size.payload,
            "transport": transport, "sent": n_sent, "send_failed": failed, "received": unique,
            "lost": n_sent - failed - unique, "duplicates": got["duplicates"],
            "gaps": got["gaps"], "seconds": elapsed, "msgs_per_s": rate,
            "mb_per_s": rate * size.payload / 1e6,
            "load_p50_ms": got["p50_ms"], "load_p99_ms": got["p99_ms"],
            "cpu_us_per_msg": (cpu1 - cpu0) / unique * 1e6 if roots and unique else None,
            "processes": len(process_tree(roots)),
            # what the writer and reader cost, and how busy the machine was (1.0 = every CPU)
            "peers_cpu_us_per_msg": (peers1 - peers0) / unique * 1e6 if unique else None,
            "machine_busy": (busy1 - busy0) / load_wall / (os.cpu_count() or 1),
            # CPUs' worth of work by anything else (other programs, the kernel's own threads)
            "other_cores": max(0.0, (busy1 - busy0) - (cpu1 - cpu0) - (peers1 - peers0))
                           / load_wall,
            "cpu_split_us_per_msg": {name: (split1[name] - split0[name]) / unique * 1e6
                                     for name in split0} if unique else {},
        }
        if profile:
            result["profile"] = profile

        cpu2 = cpu_seconds(roots)
        # The fixed rate, or half of what this path just sustained if that is lower: latency
        # without a standing queue, so it shows the path's own cost and not its buffer sizes.
        paced_rate = max(1, min(size.paced_rate, int(rate * PACED_MAX_LOAD)))
        count = int(paced_rate * opts.paced_seconds)
        sent, got = phase(3, count, opts.paced_seconds + 5, paced_rate)
        cpu3 = cpu_seconds(roots)
        result.update({
            "paced_rate": paced_rate, "paced_sent": sent[0], "paced_received": got["unique"],
            "paced_lost": sent[0] - sent[1] - got["unique"],
            "paced_p50_ms": got["p50_ms"], "paced_p99_ms": got["p99_ms"],
            "paced_max_ms": got["max_ms"],
            "paced_cpu_us_per_msg": ((cpu3 - cpu2) / got["unique"] * 1e6
                                     if roots and got["unique"] else None),
            "peak_rss_mib": peak_rss_mib(roots) if roots else None,
        })
        return result
    finally:
        if writer is not None:
            writer.stop()
        path.stop()
        reader.stop()


def run(opts: Options, work: Path, certs: Certs | None = None, *, sizes=SIZES,
        transports=TRANSPORTS, only: set[str] | None = None, progress=print) -> list[dict]:
    """Every path for every size and transport; returns one result dict per scenario."""
    certs = certs or Certs.create(work / "pki")
    results = []
    for size, transport in ((s, t) for s in sizes for t in transports):
        for path in paths(opts):
            if only and path.key not in only:
                continue
            progress(f"pipeline: {path.label}, {size.name} ({size.payload} B), {transport} ...")
            started = time.monotonic()
            try:
                result = run_scenario(path, size, transport, certs,
                                      work / f"{path.key}-{size.name}-{transport}", opts)
            except Exception as exc:  # one broken path must not hide the others' numbers
                progress(f"  FAILED: {exc}")
                results.append({"path": path.key, "label": path.label, "size": size.name,
                                "payload": size.payload, "transport": transport,
                                "error": str(exc)})
                continue
            result["wall_s"] = time.monotonic() - started
            progress(f"  {result['msgs_per_s']:,.0f} msg/s, {result['mb_per_s']:,.1f} MB/s, "
                     f"paced p50/p99 {result['paced_p50_ms']:.2f}/{result['paced_p99_ms']:.2f} ms"
                     + (f", {result['cpu_us_per_msg']:.1f} us CPU/msg"
                        if result["cpu_us_per_msg"] is not None else "")
                     + f", lost {result['lost']}, {result['wall_s']:.0f}s")
            results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short phases (smoke run)")
    parser.add_argument("--only", help="comma-separated path keys: direct,stunnel,mgfast-b1,...")
    parser.add_argument("--size", choices=[s.name for s in SIZES], help="one size only")
    parser.add_argument("--transport", help="ZeroMQ endpoints of every path: ipc, tcp, or "
                        "ipc,tcp (the default: both)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the gateway processes during each load phase")
    parser.add_argument("--workdir", help="keep configs, logs and sockets here (default: a "
                        "temporary directory, removed afterwards)")
    parser.add_argument("--workers", type=int, help="mgfast server `workers` (default: its own)")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="run the selection N times, path after path, and print each "
                        "mgfast row's ratios to stunnel and direct as the median over the "
                        "rounds, each round's ratios taken within it")
    parser.add_argument("--client-tree", metavar="PATH", help="run the mgfast client from this "
                        "checkout (its extension built in place); the server stays this one's")
    args = parser.parse_args(argv)
    try:
        transports = parse_transports(args.transport)
    except ValueError as exc:
        parser.error(str(exc))
    opts = QUICK if args.quick else Options()
    if args.workers is not None:
        opts = dataclasses.replace(opts, server_workers=args.workers)
    if args.profile:
        opts = dataclasses.replace(opts, profile=True)
    if args.client_tree:
        tree = Path(args.client_tree).resolve()
        if not (tree / "mgfast" / "__main__.py").is_file():
            parser.error(f"--client-tree {args.client_tree}: no mgfast package there")
        opts = dataclasses.replace(opts, client_tree=tree)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    sizes = [s for s in SIZES if args.size in (None, s.name)]
    only = set(args.only.split(",")) if args.only else None

    def rounds(work: Path) -> list[dict]:
        certs = Certs.create(work / "pki")
        results = []
        for number in range(args.rounds):
            for result in run(opts, work / f"round-{number}" if args.rounds > 1 else work, certs,
                              sizes=sizes, transports=transports, only=only):
                result["round"] = number
                results.append(result)
        return results

    if args.workdir:
        results = rounds(Path(args.workdir).resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="mgfast-bench-") as tmp:
            results = rounds(Path(tmp))
    print(json.dumps(results, indent=1))
    for r in results:
        print_profile(r)
    if args.rounds > 1:
        for line in round_medians(results):
            print(line)
    return 0


def round_medians(results: list[dict]) -> list[str]:
    """Per mgfast row: the medians over the rounds of its msg/s and CPU per message, and of its
    ratios to the stunnel and direct rows of the same round (with their range)."""
    from statistics import median

    def of(r: dict, key: str) -> dict | None:
        return next((o for o in results if o.get("path") == key and "error" not in o
                     and (o["size"], o["transport"], o["round"])
                     == (r["size"], r["transport"], r["round"])), None)

    def ratios(rows: list[dict], base: str, field: str) -> str:
        values = []
        for r in rows:
            other = of(r, base)
            if other is not None and r.get(field) and other.get(field):
                values.append(r[field] / other[field])
        if not values:
            return "-"
        return f"{median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"

    rows_of: dict[tuple[str, str, str], list[dict]] = {}
    for r in results:
        if "error" not in r and r["path"].startswith("mgfast"):
            rows_of.setdefault((r["size"], r["transport"], r["path"]), []).append(r)
    lines = [f"medians over {1 + max(r['round'] for r in results)} rounds (each ratio within "
             f"its round; range in brackets):"]
    for (size, transport, key), rows in rows_of.items():
        lines.append(
            f"  {size} {transport} {key}: {median(r['msgs_per_s'] for r in rows):,.0f} msg/s, "
            f"{median(r['cpu_us_per_msg'] for r in rows):.2f} us CPU/msg; msg/s vs direct "
            f"{ratios(rows, 'direct', 'msgs_per_s')}, vs stunnel "
            f"{ratios(rows, 'stunnel', 'msgs_per_s')}; CPU/msg vs stunnel "
            f"{ratios(rows, 'stunnel', 'cpu_us_per_msg')}")
    return lines


def print_profile(result: dict, out=print) -> None:
    for process, frames in (result.get("profile") or {}).items():
        if not frames:  # idle the whole time (py-spy leaves idle samples out)
            continue
        out(f"py-spy, {result['label']}, {result['size']}, {result.get('transport', 'ipc')}: "
            f"{process}, top frames by own time")
        for frame, percent in frames:
            out(f"  {percent:5.1f}%  {frame}")


if __name__ == "__main__":
    raise SystemExit(main())
