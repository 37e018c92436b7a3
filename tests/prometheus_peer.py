"""A real Prometheus server (the Debian package's ``/usr/bin/prometheus``) for tests.

    with PrometheusPeer(tmp_path, {"server": ["127.0.0.1:9100"]}, rule_files=[rules]) as prom:
        prom.wait_targets_up()
        prom.query('sum(rate(mgfast_messages_forwarded_total[1m]))')   # the result list

It listens on a free loopback port, keeps its TSDB under ``workdir``, scrapes every target (and
evaluates the rule files) every ``interval`` seconds, and is stopped on exit. The config is
written as JSON, which is YAML too, so no YAML library is needed. ``promtool`` runs the
package's command-line checks. Both binaries come from the Debian package ``prometheus``;
``scripts/test.sh`` installs it.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.util import free_port, wait_until

INSTALL_HINT = "run scripts/test.sh (it installs the Debian package `prometheus`)"


def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; fails the test, saying how to install it."""
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                   else None)
    if found is None:
        raise AssertionError(f"`{name}` is not installed: {INSTALL_HINT}")
    return found


def promtool(*args: str, stdin: str | None = None,
             timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run ``promtool ARGS`` (text in and out); the caller checks ``returncode``."""
    return subprocess.run([binary("promtool"), *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout)


class PrometheusError(AssertionError):
    """The HTTP API answered with an error (bad expression, ...); the message is Prometheus's."""


class PrometheusPeer:
    """``prometheus`` scraping ``targets`` ({job: ["host:port", ...]}) on loopback."""

    def __init__(self, workdir: Path, targets: dict[str, list[str]], *,
                 rule_files: list[Path] = (), interval: float = 1.0) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.targets = targets
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        seconds = f"{interval:g}s"
        config = {
            "global": {"scrape_interval": seconds, "scrape_timeout": seconds,
                       "evaluation_interval": seconds},
            "rule_files": [str(Path(f).resolve()) for f in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
                for job, addresses in targets.items()],
        }
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = self.workdir / "prometheus.log"
        self.proc: subprocess.Popen | None = None

    # ---- life cycle ----
    def start(self, timeout: float = 20.0) -> "PrometheusPeer":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary("prometheus"),
             f"--config.file={self.config_path}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1d"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        try:
            wait_until(ready, timeout=timeout, interval=0.1, what="prometheus to be ready")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> "PrometheusPeer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- HTTP API ----
    def api(self, path: str, **params) -> object:
        """GET ``/api/v1/PATH?params``; the ``data`` of a success, else PrometheusError."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400 / 422 carry Prometheus's own explanation
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: "
                                  f"{body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query; the vector's samples as ``{"metric": {...}, "value": [t, "v"]}``.
        A scalar result comes back as one sample without labels."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: a {data['resultType']}, not an instant vector")
        return data["result"]

    def values(self, expr: str) -> list[float]:
        """The sample values of an instant query, as floats (NaN included)."""
        return [float(sample["value"][1]) for sample in self.query(expr)]

    def value_at_least(self, expr: str, minimum: float) -> bool:
        """Whether some sample of ``expr`` is a finite number >= ``minimum`` (for wait_until)."""
        return any(math.isfinite(v) and v >= minimum for v in self.values(expr))

    def targets_health(self) -> dict[str, str]:
        """{scrape URL: "up" | "down" | "unknown"} of the active targets."""
        data = self.api("targets", state="active")
        return {t["scrapeUrl"]: t["health"] for t in data["activeTargets"]}

    def wait_targets_up(self, timeout: float = 20.0) -> None:
        want = sum(len(addresses) for addresses in self.targets.values())

        def up() -> bool:
            health = self.targets_health()
            return len(health) == want and all(h == "up" for h in health.values())
        try:
            wait_until(up, timeout=timeout, interval=0.2, what="every scrape target to be up")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ntargets: {self.api('targets', state='active')}"
                                 ) from None

    def alerts(self) -> list[dict]:
        """The alerts Prometheus holds (pending and firing), each with labels and state."""
        return self.api("alerts")["alerts"]

    def wait_scraped_after(self, moment: float, timeout: float = 15.0) -> None:
        """Wait until every target was scraped (successfully) after the Unix time ``moment``."""
        def scraped() -> bool:
            data = self.api("targets", state="active")["activeTargets"]
            return data and all(t["health"] == "up" and _unix(t["lastScrape"]) > moment
                                for t in data)
        wait_until(scraped, timeout=timeout, interval=0.2, what="a scrape of every target")


def _unix(rfc3339: str) -> float:
    """Prometheus's lastScrape (RFC 3339 with nanoseconds) as Unix seconds."""
    from datetime import datetime
    head, _, rest = rfc3339.partition(".")
    frac, zone = "", rest
    for i, ch in enumerate(rest):
        if not ch.isdigit():
            frac, zone = rest[:i], rest[i:]
            break
    stamp = datetime.fromisoformat(head + (zone.replace("Z", "+00:00") or "+00:00"))
    return stamp.timestamp() + (float("0." + frac) if frac else 0.0)
