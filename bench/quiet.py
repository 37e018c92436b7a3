"""Helpers of the handshakes, backpressure and metrics-cost parts: waiting for a quiet machine,
the current resident set of a process tree, the shared section metadata.

The machine may be shared with other work (test suites). Before each measurement
:func:`wait_quiet` samples ``/proc/stat`` over one second and, while more than ``threshold``
CPUs' worth is busy, waits and samples again, for at most ``max_wait`` seconds; the figure it
returns is recorded next to the measurement either way.
"""

from __future__ import annotations

import datetime
import shlex
import sys
import time
from pathlib import Path

from bench.common import REPO, busy_cpu_seconds, machine_info, process_tree

QUIET_THRESHOLD = 0.3  # CPUs busy (of all of them) below which the machine counts as quiet
QUIET_MAX_WAIT = 120.0  # seconds


def busy_cpus(seconds: float = 1.0) -> float:
    """CPUs' worth of non-idle time on the whole machine over the next ``seconds``."""
    busy0, t0 = busy_cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (busy_cpu_seconds() - busy0) / (time.monotonic() - t0)


def load_average_1m() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def wait_quiet(what: str, progress=print, *, threshold: float = QUIET_THRESHOLD,
               max_wait: float = QUIET_MAX_WAIT) -> dict:
    """Wait (bounded) until the machine is quiet; returns what the last sample saw:
    ``{"busy_cpus", "loadavg_1m", "waited_s", "quiet"}``."""
    started = time.monotonic()
    announced = False
    while True:
        busy = busy_cpus(1.0)
        waited = time.monotonic() - started
        if busy < threshold or waited >= max_wait:
            quiet = busy < threshold
            if not quiet:
                progress(f"  {what}: machine still busy ({busy:.2f} CPUs) after {waited:.0f} s; "
                         f"measuring anyway (recorded)")
            return {"busy_cpus": round(busy, 3), "loadavg_1m": load_average_1m(),
                    "waited_s": round(waited, 1), "quiet": quiet}
        if not announced:
            progress(f"  {what}: machine busy ({busy:.2f} CPUs, load {load_average_1m():.2f}); "
                     f"waiting up to {max_wait:.0f} s for a quiet moment")
            announced = True
        time.sleep(2.0)


def rss_mib(roots: list[int]) -> tuple[float, dict[int, float]]:
    """Current resident set (sum of ``VmRSS``) of the tree, MiB, and per pid."""
    per_pid: dict[int, float] = {}
    for pid in process_tree(roots):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    per_pid[pid] = int(line.split()[1]) / 1024
                    break
        except OSError:
            continue
    return sum(per_pid.values()), per_pid


def section_meta(module: str, argv: list[str], quick: bool) -> dict:
    """What every one of these sections records: command, date, machine."""
    python = Path(sys.executable)
    try:
        python = python.relative_to(REPO)
    except ValueError:
        pass
    return {
        "command": shlex.join([str(python), "-m", module, *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "quick": quick,
    }
