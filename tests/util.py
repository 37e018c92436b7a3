"""Helpers shared by the tests and the benchmarks: free ports, waiting on a condition with a
deadline, ZeroMQ endpoints, running an async test body. Processes: tests/gateway_process.py."""

from __future__ import annotations

import os
import random
import socket
import time
from typing import Callable, TypeVar

T = TypeVar("T")

# Every deadline in the suite is multiplied by this factor. 1 natively; scripts/arm64-check.sh
# sets MGFAST_TIME_SCALE (about 6x slower under qemu user-mode emulation) so waits and the
# per-test timeout stretch with the machine instead of failing on a slow one.
TIME_SCALE = float(os.environ.get("MGFAST_TIME_SCALE", "1") or "1")


def scaled(seconds: float) -> float:
    """``seconds`` times MGFAST_TIME_SCALE: for deadlines and upper bounds on elapsed time."""
    return seconds * TIME_SCALE


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, chosen below Linux's
    ephemeral range (32768-60999): a port the kernel hands out for port 0 can be taken again by
    any outgoing connection before the test binds it ("address already in use")."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # that band is full: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessExited(AssertionError):
    """A process a test waits on has exited: waiting longer cannot help."""


def wait_until(check: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> T:
    """Poll ``check`` until it returns a truthy value; fail the test after ``timeout`` seconds
    (times MGFAST_TIME_SCALE). ``check`` may raise until the condition holds, except
    ProcessExited, which fails at once."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except ProcessExited:
            raise
        except Exception as exc:  # the condition may raise until it holds
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last_exc!r}")


def endpoint(transport: str, tmp_path, name: str = "stream") -> str:
    """A ZeroMQ endpoint: an ipc socket under ``tmp_path/socks`` or a free loopback tcp port."""
    if transport == "ipc":
        return f"ipc://{tmp_path}/socks/{name}"
    return f"tcp://127.0.0.1:{free_port()}"


def arun(coro, timeout: float = 20.0):
    """Run an async test body on uvloop (the production loop), bounded in time."""
    import asyncio

    import uvloop
    return uvloop.run(asyncio.wait_for(coro, scaled(timeout)))
