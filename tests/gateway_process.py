"""Child processes for the tests and the benchmarks (bench/common.py imports this module).

- :class:`LoggedProcess`: any command, its output in ``WORKDIR/NAME.log``, stopped by a signal
  and then SIGKILL; ``wait_log`` fails at once (:class:`ProcessExited`) if it dies meanwhile.
- :class:`GatewayProcess`: ``python -m mgfast KIND CONFIG`` on a JSON config written next to
  its log, ready once it logs ``msg=listening``.
- :func:`server_config`, :func:`http_get`: a minimal server config on a free port; a GET.

Free ports and waiting with a deadline are in tests/util.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.util import ProcessExited, free_port, scaled, wait_until


class LoggedProcess:
    """A running command whose stdout and stderr go to ``workdir/NAME.log``."""

    def __init__(self, name: str, args: list[str], workdir: Path, *, cwd: Path | None = None,
                 env: dict[str, str] | None = None, new_session: bool = False) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd,
                                     env={**os.environ, **(env or {})},
                                     start_new_session=new_session)
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        """Raise ProcessExited (with the end of the log) if the process has exited."""
        if self.proc.poll() is not None:
            raise ProcessExited(f"{self.name} exited {self.proc.returncode}:\n"
                                f"{self.log()[-5000:]}")

    def wait_log(self, needle: str, timeout: float = 20.0) -> None:
        """Wait until the log contains ``needle``; fail at once if the process dies first."""
        def seen() -> bool:
            self.check_alive()
            return needle.encode() in self.log_path.read_bytes()
        wait_until(seen, timeout=timeout, what=f"{self.name} to log {needle!r}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Send ``sig``, wait up to ``timeout`` seconds, then SIGKILL; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()
        return self.proc.returncode


class GatewayProcess(LoggedProcess):
    """A running ``python -m mgfast KIND CONFIG``; ``url`` is its HTTP(S) base.

    Every instance is listed in ``started`` (reset per test by tests/conftest.py), so a failing
    test's report shows each gateway's log."""

    started: list["GatewayProcess"] = []

    def __init__(self, kind: str, config: dict[str, Any], workdir: Path, *,
                 name: str | None = None, health_ready: bool = True,
                 ready_timeout: float = 20.0, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 new_session: bool = False) -> None:
        name = name or f"{kind}-{config['port']}"
        self.kind = kind
        self.config = config
        self.config_path = workdir / f"{name}.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        scheme = "https" if kind == "server" and config.get("tls") else "http"
        self.url = f"{scheme}://127.0.0.1:{config['port']}"
        super().__init__(name, [sys.executable, "-m", "mgfast", kind, str(self.config_path),
                                *extra_args], workdir, cwd=cwd, env=env,
                         new_session=new_session)
        GatewayProcess.started.append(self)
        if health_ready:
            try:
                self.wait_listening(ready_timeout)
            except BaseException:
                self.stop()
                raise

    def wait_listening(self, timeout: float = 20.0) -> None:
        self.wait_log("msg=listening", timeout)

    def children(self) -> dict[str, int]:
        """{child name: pid} of the latest start of each server child, from the log."""
        pids: dict[str, int] = {}
        for line in self.log().splitlines():
            if "msg=started" in line:
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                pids[fields["child"]] = int(fields["pid"])
        return pids

    def __enter__(self) -> "GatewayProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_config(out_url: str, **overrides: Any) -> dict[str, Any]:
    """A minimal upstream-format server config on a free port, with 2 workers (so the egress
    and its hop are under test on any machine; the default would be 1 worker on 2 CPUs)."""
    config: dict[str, Any] = {
        "ip": "127.0.0.1",
        "port": free_port(),
        "workers": 2,
        "out_stream": {
            "url": out_url,
            "send_timeout": {"secs": 1, "nanos": 0},
            "send_retries": 3,
            "receive_timeout": {"secs": 1, "nanos": 0},
            "receive_retries": 3,
            "send_hwm": 1000,
            "receive_hwm": 1000,
            "inflight_ops": 100,
        },
    }
    config.update(overrides)
    return config


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=scaled(timeout)) as response:
        return response.status, response.read()
