"""A real etcd (Debian ``etcd-server``) on loopback for the tests: free ports, a temporary data
directory, optionally TLS with client certificates or user/password auth; killed and
restarted on the same ports and data by the tests that need an outage."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.util import free_port, wait_until

ROOT_PASSWORD = "root-pw"

# The upstream guide's hashes (argon2i, m=12, t=3, p=1) of password, password1 and password2.
HASH = "$argon2i$v=19$m=12,t=3,p=1$RzNHVVBjQXo4WUNBUUZYSnlOaGc$9Jmizcl1dv6maVzyIiuMV1OB1P9l6PKLbdmNjJDIgaU"
HASH1 = "$argon2i$v=19$m=12,t=3,p=1$YXkzZmx1eTFwVW5hZ0R2S1dXazA$VxVMw2Omh1CeVqry8Cay+4OZ69OGvn4fma2M5rURZhI"
HASH2 = "$argon2i$v=19$m=12,t=3,p=1$c0ZYQ1d3VWxabmx0ZUVmWDNIeVk$qHLr2T3xvedA5zZfTZhbNt3sXB9pa/xlFQ9dVmZG8DQ"


def _secs(s: float) -> dict:
    return {"secs": int(s), "nanos": int(round((s - int(s)) * 1e9))}


def auth_section(etcd: "EtcdPeer", *, quarantine_period: float = 60.0) -> dict:
    """The upstream guide's server ``auth`` (cache sizes 10, usage 60 s / 10, quarantine after
    3 failures), pointed at ``etcd`` (with its TLS client certificate when it has TLS)."""
    cache = {"size": 10, "usage": {"period": _secs(60), "evicted_threshold": 10}}
    etcd_conf = {"urls": [etcd.url], "path": "/users", "data_format": "json",
                 "lease_timeout": _secs(60), "connect_timeout": _secs(2), "cache": cache}
    if etcd.tls is not None:
        etcd_conf["tls"] = {"root_certificate": str(etcd.tls.ca_crt), "identity": {
            "certificate": str(etcd.tls.client_crt), "key": str(etcd.tls.client_key)}}
    return {"basic": {"etcd": etcd_conf, "cache": cache, "quarantine": {
        "failed_attempt_limit": 3, "period": _secs(quarantine_period)}}}


class EtcdPeer:
    """``etcd`` as a child process; ``etcdctl(...)`` runs the CLI against it."""

    def __init__(self, workdir: Path, *, tls=None, users: dict[str, str] | None = None,
                 autostart: bool = True) -> None:
        """``tls``: a tests.seed_ca.SeedCa whose server certificate (IP 127.0.0.1) etcd serves
        and whose CA must have signed the client's certificate. ``users``: etcd users to create
        (name -> password, each granted read and write under /), then auth is enabled.
        ``autostart=False``: ports are reserved in the config only; call ``start()`` later."""
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "etcd-data"
        self.tls = tls
        self.client_port = free_port()
        self.peer_port = free_port()
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.client_port}"
        self.auth_enabled = False
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"etcd-{self.client_port}.log"
        self.log_file = None
        if not autostart:
            return
        self.start()
        if users:
            self._enable_auth(users)

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = ["etcd", "--name", "test", "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"test={peer}", "--logger", "zap", "--log-level", "warn"]
        if self.tls is not None:
            args += ["--cert-file", str(self.tls.server_crt), "--key-file",
                     str(self.tls.server_key), "--trusted-ca-file", str(self.tls.ca_crt),
                     "--client-cert-auth"]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_until(self._healthy, timeout=20, what="etcd to answer")

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"etcd exited {self.proc.returncode}: "
                                 f"{self.log_path.read_text(errors='replace')[-2000:]}")
        return self.etcdctl("endpoint", "health", check=False).returncode == 0

    def kill(self) -> None:
        """SIGKILL: the connection drops without goodbye, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.log_file is not None:
            self.log_file.close()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.log_file is not None:
            self.log_file.close()

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["etcdctl", "--endpoints", self.url, "--command-timeout", "5s"]
        if self.tls is not None:
            cmd += ["--cacert", str(self.tls.ca_crt), "--cert", str(self.tls.client_crt),
                    "--key", str(self.tls.client_key)]
        if self.auth_enabled:
            cmd += ["--user", f"root:{ROOT_PASSWORD}"]
        result = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30,
                                env={**os.environ, "ETCDCTL_API": "3"})
        if check and result.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed: {result.stderr}")
        return result

    def put(self, key: str, value: str) -> None:
        self.etcdctl("put", key, value)

    def delete(self, key: str) -> None:
        self.etcdctl("del", key)

    def _enable_auth(self, users: dict[str, str]) -> None:
        self.etcdctl("user", "add", f"root:{ROOT_PASSWORD}")
        self.etcdctl("role", "add", "gateway")
        self.etcdctl("role", "grant-permission", "gateway", "--prefix=true", "readwrite", "/")
        for name, password in users.items():
            self.etcdctl("user", "add", f"{name}:{password}")
            self.etcdctl("user", "grant-role", name, "gateway")
        self.etcdctl("auth", "enable")
        self.auth_enabled = True

    def __enter__(self) -> "EtcdPeer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
