"""Prometheus metrics, the Grafana dashboard and the alert rules, against real parts.

One stack for the module: a mutual-TLS ``mgfast server`` and an ``mgfast client`` (both with
``metrics`` on) fed by a savant-rs writer, scraped every second by a real Prometheus (the
Debian package's binary) that also evaluates ``grafana/alerts.yml``. On it: a few hundred
messages, one 413, a keep-alive connection cut when its certificate is revoked, one handshake
with that revoked certificate, a killed worker. Then every panel query of
``grafana/mgfast-dashboard.json`` must return data through Prometheus's HTTP API, the alerts
must fire on what happened (and only those), and ``promtool`` must accept the rules and both
scrapes. Without Prometheus installed the tests fail and say to run ``scripts/test.sh``.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests import savant_peers as sp
from tests.etcd_peer import HASH2, EtcdPeer, auth_section
from tests.gateway_process import GatewayProcess
from tests.prometheus_peer import PrometheusPeer, binary, promtool
from tests.seed_ca import SeedCa
from tests.test_client import client_config
from tests.test_mtls import curl, seed_server_config
from tests.util import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "mgfast-dashboard.json"
ALERTS = ROOT / "grafana" / "alerts.yml"
CATALOGS = [ROOT / "mgfast" / "metrics" / name
            for name in ("catalog.py", "client_catalog.py", "store.py")]

MESSAGES = 300  # forwarded by the client, in two halves around the worker kill
MAX_BODY = 64 * 1024  # the server's http.max_body_size: one bigger message gets 413
RATE_INTERVAL = "1m"  # what $__rate_interval stands for here (1 s scrapes, a short run)

pytestmark = pytest.mark.timeout(120)


# ---- what the dashboard and the catalogs hold -------------------------------------------------

def panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside rows included (rows themselves excluded)."""
    out = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def panel_queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of every panel."""
    return [(p["title"], t["refId"], t["expr"]) for p in panels(dashboard)
            for t in p.get("targets", [])]


def catalog_metrics() -> dict[str, str]:
    """{name: type} of every metric the catalogs and the store collector define, read from
    their source (Counter/Gauge/Histogram calls; the store's names are module constants)."""
    found: dict[str, str] = {}
    for path in CATALOGS:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None)
                    in ("Counter", "Gauge", "Histogram") and node.args
                    and isinstance(node.args[0], ast.Constant)):
                found[node.args[0].value] = node.func.id.lower()
            elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                  and isinstance(node.value.value, str)
                  and node.value.value.startswith("mgfast_")):
                found[node.value.value] = "gauge"  # the store collector's gauges
    return found


def series_names(metrics: dict[str, str]) -> set[str]:
    """The series names those metrics expose (histograms: _bucket, _sum, _count)."""
    names = set()
    for name, kind in metrics.items():
        names |= ({name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram"
                  else {name})
    return names


def substitute(expr: str, instances: list[str]) -> str:
    """The query Grafana sends: template variables replaced ($instance as a regex of the
    chosen instances, escaped for a PromQL string)."""
    regex = "|".join(re.escape(i).replace("\\", "\\\\") for i in instances)
    out = (expr.replace("${instance}", "$instance").replace("$instance", regex)
           .replace("$__rate_interval", RATE_INTERVAL))
    assert "$" not in out, f"an unknown template variable in {expr!r}"
    return out


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


# ---- the stack ---------------------------------------------------------------------------------

@dataclass
class Stack:
    prom: PrometheusPeer
    server: GatewayProcess
    client: GatewayProcess
    server_metrics: str  # host:port of each /metrics listener
    client_metrics: str


def pki(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "mgfast", "pki", *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")



def wait_closed(tls: ssl.SSLSocket, timeout: float) -> None:
    """Read until the server closes the connection; fail after ``timeout`` seconds."""
    tls.settimeout(timeout)
    try:
        while tls.recv(4096):  # only a close_notify or EOF may come
            pass
    except (socket.timeout, TimeoutError):
        raise AssertionError(f"the connection was not closed within {timeout}s") from None
    except (ssl.SSLError, ConnectionError):
        pass


def the_stack(workdir: Path, phases: list[tuple[str, float]]):
    def mark(what: str) -> None:
        phases.append((what, time.monotonic()))

    for name in ("prometheus", "promtool"):
        binary(name)  # fails now, saying to run scripts/test.sh, rather than half-way
    mark("start")
    seed = SeedCa.create(workdir / "pki")
    device_crt, device_key = seed.issue_client("device", "media-gateway-device")
    # Two more CAs in the hash directory: one whose CRL expired, one whose CRL expires in a day.
    now = datetime.now(timezone.utc)
    for name, last, nxt in (("expired-ca", now - timedelta(days=40), now - timedelta(days=10)),
                            ("soon-ca", now - timedelta(hours=1), now + timedelta(hours=24))):
        pki("init-ca", str(workdir / name), "--cn", name, "--ec")
        pki("install", str(seed.hash_dir), str(workdir / name / "ca.crt"))
        pki("gen-crl", str(workdir / name), "--last-update", iso(last), "--next-update",
            iso(nxt), "--install", str(seed.hash_dir))

    mark("certificates")
    server_metrics = f"127.0.0.1:{free_port()}"
    sconfig = seed_server_config(seed, workdir, recheck_interval={"secs": 1, "nanos": 0})
    processes: list = []
    etcd = EtcdPeer(workdir / "etcd")  # basic auth: the client's user is in etcd
    processes.append(etcd)
    etcd.put("/users/edge", json.dumps({"password_hash": HASH2}))
    sconfig.update(workers=2, http={"max_body_size": MAX_BODY}, auth=auth_section(etcd),
                   metrics={"ip": "127.0.0.1", "port": int(server_metrics.split(":")[1])})
    into = f"ipc://{workdir}/client-in"
    client_metrics = f"127.0.0.1:{free_port()}"
    try:
        server = GatewayProcess("server", sconfig, workdir)
        processes.append(server)
        cconfig = client_config(f"router+bind:{into}", server.url, tls={
            "root_certificate": str(seed.ca_crt),
            "identity": {"certificate": str(seed.client_crt), "key": str(seed.client_key)}},
            auth={"basic": {"username": "edge", "password": "password2"}},
            metrics={"ip": "127.0.0.1", "port": int(client_metrics.split(":")[1])})
        client = GatewayProcess("client", cconfig, workdir)
        processes.append(client)
        prom = PrometheusPeer(workdir / "prometheus",
                              {"mgfast-server": [server_metrics],
                               "mgfast-client": [client_metrics]},
                              rule_files=[ALERTS]).start()
        processes.append(prom)
        prom.wait_targets_up()
        mark("server, client and prometheus up")

        # A keep-alive connection with the device's certificate, then the device is revoked:
        # the server cuts the connection, and refuses the device's next handshake.
        context = ssl.create_default_context(cafile=str(seed.ca_crt))
        context.load_cert_chain(str(device_crt), str(device_key))
        raw = socket.create_connection(("127.0.0.1", sconfig["port"]), timeout=10)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as live:
            live.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" in live.recv(4096)
            seed.revoke(device_crt)
            seed.publish_crl()
            wait_closed(live, timeout=10)
        refused = curl(server, seed.ca_crt, device_crt, device_key)
        assert "alert certificate revoked" in refused.stderr, refused.stderr
        mark("live connection cut, revoked handshake")

        with sp.SavantWriter(f"dealer+connect:{into}", send_hwm=1000) as writer:
            def feed(first: int, count: int) -> None:
                for i in range(first, first + count):
                    topic = f"cam-{i % 3}"
                    assert writer.send(topic, sp.user_data(topic), b"%d" % i) == "success"

            def seen(*wanted: tuple[str, float], timeout: float = 20.0) -> None:
                for expr, minimum in wanted:
                    try:
                        wait_until(lambda: prom.value_at_least(expr, minimum), timeout=timeout,
                                   interval=0.2, what=f"Prometheus to see {expr} >= {minimum}")
                    except AssertionError as exc:
                        raise AssertionError(f"{exc}; it has {prom.query(expr)}") from None

            feed(0, MESSAGES // 2)
            # over the server's max_body_size: 413, the client skips it as rejected
            writer.send("cam-0", sp.user_data("cam-0"), os.urandom(MAX_BODY + 1024))
            # A worker's counts not yet exported (at most a second's) die with it: kill it only
            # once the server has exported everything the client sent so far.
            seen(("mgfast_client_messages_forwarded_total", MESSAGES // 2),
                 ("mgfast_client_messages_rejected_total", 1),
                 ("mgfast_messages_forwarded_total", MESSAGES // 2),
                 ('mgfast_http_requests_total{status="413"}', 1))
            mark("first half forwarded")
            victim = server.children()["worker-1"]
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: server.children()["worker-1"] != victim, timeout=20,
                       interval=0.1, what="the killed worker to be restarted")
            mark("worker restarted")
            feed(MESSAGES // 2, MESSAGES - MESSAGES // 2)
            seen(("mgfast_client_messages_forwarded_total", MESSAGES),
                 ("mgfast_messages_forwarded_total", MESSAGES),
                 ("mgfast_worker_restarts_total", 1),
                 ("mgfast_tls_revoked_rejections_total", 1),
                 ("mgfast_tls_live_connections_closed_total", 1),
                 ("mgfast_auth_user_store_connected", 1))
        mark("everything seen by prometheus")
        prom.wait_scraped_after(time.time())  # one more scrape, so rates have two points
        mark("one more scrape")
        yield Stack(prom, server, client, server_metrics, client_metrics)
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("metrics")
    phases: list[tuple[str, float]] = []
    gen = the_stack(workdir, phases)
    try:
        yield next(gen)
    except BaseException:
        for log in sorted(workdir.rglob("*.log")):
            print(f"---- {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        gen.close()
        print("stack phases: " + ", ".join(
            f"{what} +{now - before:.1f}s" for (_, before), (what, now) in zip(phases, phases[1:])))


# ---- the dashboard, on the real stack ----------------------------------------------------------

def test_every_dashboard_panel_query_returns_data(stack):
    dashboard = json.loads(DASHBOARD.read_text())
    instances = [stack.server_metrics, stack.client_metrics]
    failures = []
    queries = panel_queries(dashboard)
    for title, ref, expr in queries:
        query = substitute(expr, instances)
        result = stack.prom.query(query)
        finite = [s for s in result if math.isfinite(float(s["value"][1]))]
        if not finite:
            failures.append(f"{title} [{ref}]: {query} -> {result}")
    assert not failures, "panel queries without data:\n" + "\n".join(failures)
    assert len(queries) >= 20


def test_dashboard_shows_the_revoked_handshake_by_issuer(stack):
    dashboard = json.loads(DASHBOARD.read_text())
    instances = [stack.server_metrics, stack.client_metrics]
    exprs = [e for t, _, e in panel_queries(dashboard)
             if "revoked_rejections" in e and "increase" not in e]
    assert exprs, "no panel shows the revoked-certificate rejections"
    for expr in exprs:
        result = stack.prom.query(substitute(expr, instances))
        by_issuer = {s["metric"].get("issuer"): float(s["value"][1]) for s in result}
        assert by_issuer.get("CN=media-gateway-ca", 0) >= 1, (expr, result)
    # and the handshake panel shows it as a rejection with reason revoked
    result = stack.prom.query('sum by (outcome, reason) (mgfast_tls_handshakes_total)')
    counts = {(s["metric"]["outcome"], s["metric"]["reason"]): float(s["value"][1])
              for s in result}
    assert counts.get(("rejected", "revoked"), 0) >= 1 and counts.get(("ok", "ok"), 0) >= 1


def test_countdowns_show_the_crl_and_ca_deadlines(stack):
    remaining = {s["metric"]["issuer"]: float(s["value"][1]) for s in stack.prom.query(
        "min by (issuer) (mgfast_crl_next_update_timestamp_seconds) - time()")}
    assert remaining["CN=expired-ca"] < -9 * 86400
    assert 23 * 3600 < remaining["CN=soon-ca"] < 24 * 3600
    assert 29 * 86400 < remaining["CN=media-gateway-ca"] <= 30 * 86400
    expiry = {s["metric"]["subject"]: float(s["value"][1]) for s in stack.prom.query(
        "min by (subject) (mgfast_ca_expiry_timestamp_seconds) - time()")}
    assert 364 * 86400 < expiry["CN=media-gateway-ca"] <= 365 * 86400
    assert set(expiry) == {"CN=media-gateway-ca", "CN=expired-ca", "CN=soon-ca"}


def test_instance_variable_lists_the_server_and_the_client(stack):
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    query = variables["instance"]["query"]
    query = query["query"] if isinstance(query, dict) else query
    match = re.fullmatch(r"label_values\((.+), *instance\)", query)
    assert match, query
    values = stack.prom.api("label/instance/values", **{"match[]": match.group(1)})
    assert set(values) == {stack.server_metrics, stack.client_metrics}


# ---- the alert rules, on the real stack --------------------------------------------------------

def test_alerts_fire_on_what_happened_and_only_that(stack):
    expected = {
        ("MgfastRevokedCertificateHandshakes", "issuer", "CN=media-gateway-ca"): "firing",
        ("MgfastWorkerRestarts", "child", "worker"): "firing",
        ("MgfastCrlExpired", "issuer", "CN=expired-ca"): "firing",
        ("MgfastCrlExpiringSoon", "issuer", "CN=soon-ca"): "pending",  # for: 5m
    }

    def seen() -> dict:
        alerts = stack.prom.alerts()
        got = {}
        for alert in alerts:
            labels = alert["labels"]
            for name, key, value in expected:
                if labels["alertname"] == name and labels.get(key) == value:
                    got[(name, key, value)] = alert["state"]
        return got if got == expected else None

    try:
        wait_until(seen, timeout=15, interval=0.25, what="the expected alerts")
    except AssertionError:
        raise AssertionError(f"alerts: {json.dumps(stack.prom.alerts(), indent=1)}") from None
    alerts = stack.prom.alerts()
    # Only firing alerts notify anyone: exactly the expected ones fire (no egress timeouts, no
    # CA alert). A pending one may be a transient, such as a restarted worker's etcd watch in
    # its first second (MgfastAuthEtcdDisconnected waits 1 min before it fires).
    firing = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
    assert firing == {name for (name, _, _), state in expected.items() if state == "firing"}, \
        alerts
    for alert in alerts:
        assert alert["labels"]["instance"] == stack.server_metrics
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        text = alert["annotations"]["summary"] + alert["annotations"]["description"]
        assert "{{" not in text and "<error" not in text, text


def test_every_alert_rule_loaded_and_evaluates(stack):
    """Prometheus loaded every rule of the file, and each evaluates without an error."""
    groups = stack.prom.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["name"] for r in rules} == {
        "MgfastCrlExpiringSoon", "MgfastCrlExpired", "MgfastCaCertificateExpiringSoon",
        "MgfastRevokedCertificateHandshakes", "MgfastEgressTimeouts", "MgfastWorkerRestarts",
        "MgfastAuthEtcdDisconnected"}
    for rule in rules:
        assert rule["type"] == "alerting" and rule["health"] in ("ok", "unknown"), rule
        stack.prom.query(rule["query"])  # raises with Prometheus's message on an error


# ---- promtool ------------------------------------------------------------------------------------

def test_promtool_check_rules():
    result = promtool("check", "rules", "--lint=all", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout, result.stdout


def test_promtool_check_metrics_on_both_scrapes(stack):
    for where in (stack.server_metrics, stack.client_metrics):
        text = scrape(f"http://{where}/metrics")
        result = promtool("check", "metrics", stdin=text)
        assert result.returncode == 0, f"{where}:\n{result.stdout}{result.stderr}"
        assert not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_scrapes_hold_exactly_the_catalog_metrics(stack):
    """The server exports the server catalog and the store gauges, the client only its own
    (``_created`` companions of counters aside)."""
    defined = catalog_metrics()
    client_names = {n for n in defined if n.startswith("mgfast_client_")}
    exported = {}
    for where in (stack.server_metrics, stack.client_metrics):
        types = [line.split()[2] for line in scrape(f"http://{where}/metrics").splitlines()
                 if line.startswith("# TYPE mgfast_")]
        exported[where] = {name for name in types if not name.endswith("_created")}
    assert exported[stack.server_metrics] == set(defined) - client_names
    assert exported[stack.client_metrics] == client_names


def without_annotations(rules: str) -> str:
    """The rules file minus its ``annotations:`` blocks (promtool test rules compares the
    rendered annotations verbatim; the stack test checks they render)."""
    out, cut = [], None
    for line in rules.splitlines(keepends=True):
        indent = len(line) - len(line.lstrip())
        if cut is not None and line.strip() and indent <= cut:
            cut = None
        if cut is None and line.strip() == "annotations:":
            cut = indent
        if cut is None:
            out.append(line)
    return "".join(out)


def test_alert_rules_unit_tests(tmp_path):
    """promtool test rules: each alert fires on a synthetic history, and stays quiet on a
    healthy one (promtool's clock starts at Unix time 0)."""
    rules = tmp_path / "alerts.yml"
    rules.write_text(without_annotations(ALERTS.read_text()))
    assert "annotations" not in rules.read_text() and rules.read_text().count("alert:") == 7
    srv = 'instance="gw:9100", job="mgfast-server"'
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                # CRLs: expires at 1 day (soon), at 0 (expired), at 10 days (fine)
                {"series": f'mgfast_crl_next_update_timestamp_seconds{{{srv}, issuer="CN=soon"}}',
                 "values": "86400x30"},
                {"series": f'mgfast_crl_next_update_timestamp_seconds{{{srv}, issuer="CN=old"}}',
                 "values": "0x30"},
                {"series": f'mgfast_crl_next_update_timestamp_seconds{{{srv}, issuer="CN=ok"}}',
                 "values": "864000x30"},
                {"series": f'mgfast_ca_expiry_timestamp_seconds{{{srv}, subject="CN=soon"}}',
                 "values": "864000x100"},
                # a revoked rejection appears at 15m; an old count stays flat
                {"series": f'mgfast_tls_revoked_rejections_total{{{srv}, issuer="CN=new"}}',
                 "values": "_x15 1x30"},
                {"series": f'mgfast_tls_revoked_rejections_total{{{srv}, issuer="CN=flat"}}',
                 "values": "3x50"},
                # egress: send timeouts from 10m on; successes all along
                {"series": f'mgfast_egress_results_total{{{srv}, result="success"}}',
                 "values": "0+100x30"},
                {"series": f'mgfast_egress_results_total{{{srv}, result="send_timeout"}}',
                 "values": "0x9 0+5x20"},
                # one worker restart at 3m, none after
                {"series": f'mgfast_worker_restarts_total{{{srv}, child="worker"}}',
                 "values": "_x2 1x30"},
                # etcd lost from 20m to 24m (a worker reconnecting): fires after its 1m "for"
                {"series": f'mgfast_auth_user_store_connected{{{srv}, path="/users/"}}',
                 "values": "1x19 0x4 1x40"},
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "MgfastCrlExpiringSoon", "exp_alerts": []},
                {"eval_time": "10m", "alertname": "MgfastCrlExpiringSoon", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "instance": "gw:9100",
                                    "job": "mgfast-server", "issuer": "CN=soon"}}]},
                {"eval_time": "10m", "alertname": "MgfastCrlExpired", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "instance": "gw:9100",
                                    "job": "mgfast-server", "issuer": "CN=old"}}]},
                {"eval_time": "90m", "alertname": "MgfastCaCertificateExpiringSoon",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "instance": "gw:9100",
                                                "job": "mgfast-server", "subject": "CN=soon"}}]},
                {"eval_time": "16m", "alertname": "MgfastRevokedCertificateHandshakes",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "instance": "gw:9100",
                                                "issuer": "CN=new"}}]},
                {"eval_time": "35m", "alertname": "MgfastRevokedCertificateHandshakes",
                 "exp_alerts": []},
                {"eval_time": "8m", "alertname": "MgfastEgressTimeouts", "exp_alerts": []},
                {"eval_time": "14m", "alertname": "MgfastEgressTimeouts", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "instance": "gw:9100",
                                    "result": "send_timeout"}}]},
                {"eval_time": "4m", "alertname": "MgfastWorkerRestarts", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "instance": "gw:9100",
                                    "child": "worker"}}]},
                {"eval_time": "25m", "alertname": "MgfastWorkerRestarts", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "MgfastAuthEtcdDisconnected",
                 "exp_alerts": []},  # for: 1m
                {"eval_time": "22m", "alertname": "MgfastAuthEtcdDisconnected", "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "instance": "gw:9100",
                                    "path": "/users/"}}]},
                {"eval_time": "30m", "alertname": "MgfastAuthEtcdDisconnected",
                 "exp_alerts": []},
            ],
        }],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(json.dumps(tests, indent=1))  # JSON is YAML
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# ---- static: names, variables, documentation ---------------------------------------------------

def test_dashboard_uses_only_catalog_metrics_and_its_two_variables():
    dashboard = json.loads(DASHBOARD.read_text())
    known = series_names(catalog_metrics())
    used = set()
    for title, ref, expr in panel_queries(dashboard):
        names = set(re.findall(r"\bmgfast_[a-z0-9_]+", expr))
        assert names, f"{title} [{ref}] uses no mgfast metric: {expr}"
        assert names <= known, f"{title} [{ref}]: not in the catalogs: {names - known}"
        assert set(re.findall(r"\$\{?(\w+)", expr)) <= {"instance", "__rate_interval"}, expr
        assert 'instance=~"$instance"' in expr, f"{title} [{ref}] ignores $instance"
        used |= names
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query"
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert dashboard["schemaVersion"] >= 38  # Grafana 10
    # every metric of the catalogs is on the dashboard somewhere
    assert {n.removesuffix("_bucket") for n in used} >= set(catalog_metrics())


def test_readme_lists_every_metric():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Metrics"):]
    for name, kind in catalog_metrics().items():
        row = next((line for line in section.splitlines()
                    if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"README.md (Metrics) has no row for {name}"
        assert f"| {kind} |" in row, row
