"""What one sleep-and-wake between two processes costs on this host: the price of every hop
between a worker and the egress (the worker sleeps until the egress answers, the egress until
a worker writes). A quick measurement, not part of the load benchmark:

    .venv/bin/python -m bench.wakeup [--count 20000]

Two processes ping-pong one byte over a Unix socket pair, each blocking in ``recv`` until the
other answers, so every round trip puts each side to sleep once and wakes it once. Reported:
each side's CPU (user + system) per round trip, with the two processes on different CPUs and
on the same CPU (``os.sched_setaffinity``). On a virtual machine a wake on another, idle CPU
is the dearest (an inter-processor interrupt, and the vCPU leaving halt). Each placement runs
three times; each keeps its best.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def round_trips(count: int, cpus: tuple[int, int]) -> tuple[float, float]:
    """(parent, child) CPU in us per round trip, the parent pinned to cpus[0], the child to
    cpus[1]."""
    ours, theirs = socket.socketpair()
    before_children = _cpu(resource.RUSAGE_CHILDREN)
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            os.sched_setaffinity(0, {cpus[1]})
            for _ in range(count):
                theirs.sendall(theirs.recv(1))
        finally:
            os._exit(0)
    theirs.close()
    os.sched_setaffinity(0, {cpus[0]})
    ours.sendall(b"x")  # the child is running before the clock starts
    ours.recv(1)
    started = _cpu(resource.RUSAGE_SELF)
    for _ in range(count - 1):
        ours.sendall(b"x")
        ours.recv(1)
    parent = _cpu(resource.RUSAGE_SELF) - started
    os.waitpid(pid, 0)
    child = _cpu(resource.RUSAGE_CHILDREN) - before_children
    ours.close()
    return parent / (count - 1) * 1e6, child / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wakeup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20000)
    args = parser.parse_args(argv)
    allowed = sorted(os.sched_getaffinity(0))
    placements = {"same CPU": (allowed[0], allowed[0])}
    if len(allowed) > 1:
        placements["other CPU"] = (allowed[0], allowed[1])
    best: dict[str, tuple[float, float]] = {}
    try:
        for _ in range(3):
            for name, cpus in placements.items():
                spent = round_trips(args.count, cpus)
                if name not in best or sum(spent) < sum(best[name]):
                    best[name] = spent
    finally:
        os.sched_setaffinity(0, allowed)
    print(f"CPU per sleep-and-wake round trip, best of 3 ({args.count} round trips each):")
    for name, (parent, child) in best.items():
        print(f"  {name:9s}  {parent:5.1f} us + {child:5.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
