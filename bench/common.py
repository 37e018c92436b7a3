"""Shared pieces of the benchmarks: tools, certificates, gateway processes, process-tree CPU/RSS.

Starting processes, free ports and waiting are the tests' own helpers (tests/gateway_process.py,
tests/util.py), re-exported here.

Everything here targets 127.0.0.1 (TCP) or ipc sockets under the run's work directory, and
every process started is stopped by the code that started it (``Proc.stop`` / context managers).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

if str(REPO) not in sys.path:  # `python bench/run.py` puts bench/ first, not the repo root
    sys.path.insert(0, str(REPO))

from tests.gateway_process import GatewayProcess, LoggedProcess  # noqa: E402
from tests.util import free_port, wait_until  # noqa: E402,F401  (re-exported to bench/*)


# ---- tools ------------------------------------------------------------------------------------

_apt_updated = False


def ensure_tool(binary: str, package: str) -> str:
    """The path of ``binary``; installs Debian ``package`` with apt-get first if it is missing."""
    global _apt_updated
    path = shutil.which(binary)
    if path:
        return path
    if os.geteuid() != 0:
        raise SystemExit(f"bench: `{binary}` is missing; install it: apt-get install {package}")
    print(f"bench: installing {package} (apt-get) for `{binary}`", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        _apt_updated = True
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env,
                   timeout=600, stdout=subprocess.DEVNULL)
    path = shutil.which(binary)
    if not path:
        raise SystemExit(f"bench: apt-get installed {package} but `{binary}` is still missing")
    return path


def tool_version(args: list[str], prefix: str = "") -> str:
    """The first line of a tool's version output (that starts with ``prefix``)."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = [l.strip() for l in (out.stdout + out.stderr).splitlines() if l.startswith(prefix)]
    return lines[0] if lines else "?"


def machine_info() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import ssl

    n = 100_000
    started = time.perf_counter()
    for _ in range(n):
        os.getpid()  # a real system call (glibc caches no pid)
    syscall_us = (time.perf_counter() - started) / n * 1e6
    return {
        "syscall_us": f"{syscall_us:.2f}",
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
    }


# ---- certificates -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Certs:
    """The seed guide's CA (openssl CLI, tests.seed_ca): server cert for IP 127.0.0.1, a client
    cert, and the lookup hash directory with the CA certificate and an empty CRL."""

    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    hash_dir: Path

    @classmethod
    def create(cls, workdir: Path) -> "Certs":
        from tests.seed_ca import SeedCa

        seed = SeedCa.create(workdir)
        return cls(seed.ca_crt, seed.server_crt, seed.server_key, seed.client_crt,
                   seed.client_key, seed.hash_dir)


# ---- processes ----------------------------------------------------------------------------------
# One implementation for the tests and the benchmarks: tests/gateway_process.py (free ports and
# waiting: tests/util.py).

Proc = LoggedProcess


def gateway(kind: str, config: dict, workdir: Path, name: str | None = None,
            tree: Path | None = None) -> GatewayProcess:
    """``python -m mgfast KIND CONFIG`` from this checkout, or from the checkout ``tree`` (its
    ``mgfast`` package, extension built in place), ready once it logs ``msg=listening``."""
    root = tree or REPO
    env = {"PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return GatewayProcess(kind, config, workdir, name=name or kind, cwd=root, env=env,
                          ready_timeout=30.0)


# ---- process-tree accounting ----------------------------------------------------------------------

def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(roots: list[int]) -> list[int]:
    """``roots`` and all their living descendants."""
    children = _children_map()
    seen: list[int] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen or not Path(f"/proc/{pid}").exists():
            continue
        seen.append(pid)
        stack.extend(children.get(pid, ()))
    return seen


def cpu_seconds(roots: list[int]) -> float:
    """utime + stime of the tree's processes, plus cutime + cstime (children already reaped)."""
    total = 0
    for pid in process_tree(roots):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        total += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return total / CLK_TCK


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all CPUs, from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def peak_rss_mib(roots: list[int]) -> float:
    """Sum over the tree of each process's peak resident set (VmHWM), MiB: an upper bound of
    the tree's peak, exact when the peaks coincide."""
    total_kib = 0
    for pid in process_tree(roots):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
                    break
        except OSError:
            continue
    return total_kib / 1024


def percentile(sorted_values, q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan when empty)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]
