"""Start ``mgfast server`` / ``mgfast client`` as real processes on a JSON config, and stop them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.util import free_port, scaled, wait_until


class GatewayProcess:
    """A running ``python -m mgfast KIND CONFIG``; ``url`` is its HTTP(S) base.

    Every instance started during a test is listed in ``started`` (reset per test by
    tests/conftest.py), so a failing test's report shows each gateway's log."""

    started: list["GatewayProcess"] = []

    def __init__(self, kind: str, config: dict, workdir: Path, *, health_ready: bool = True,
                 extra_args: tuple[str, ...] = (), env: dict | None = None,
                 new_session: bool = False) -> None:
        GatewayProcess.started.append(self)
        self.kind = kind
        self.config = config
        self.config_path = workdir / f"{kind}-{config['port']}.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = workdir / f"{kind}-{config['port']}.log"
        self.log_file = open(self.log_path, "wb")
        scheme = "https" if kind == "server" and config.get("tls") else "http"
        self.url = f"{scheme}://127.0.0.1:{config['port']}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mgfast", kind, str(self.config_path), *extra_args],
            stdout=self.log_file, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=new_session)
        if health_ready:
            self.wait_listening()

    def wait_listening(self, timeout: float = 20.0) -> None:
        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} exited {self.proc.returncode}:\n{self.log()}")
            return b'msg=listening' in self.log_path.read_bytes()
        wait_until(listening, timeout=timeout, what=f"{self.kind} to listen")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> dict[str, int]:
        """{child name: pid} of the latest start of each server child, from the log."""
        pids: dict[str, int] = {}
        for line in self.log().splitlines():
            if "msg=started" in line:
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                pids[fields["child"]] = int(fields["pid"])
        return pids

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()
        return self.proc.returncode

    def __enter__(self) -> "GatewayProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def server_config(out_url: str, **overrides) -> dict:
    """A minimal upstream-format server config on a free port."""
    config = {
        "ip": "127.0.0.1",
        "port": free_port(),
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
