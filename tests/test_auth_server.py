"""``mgfast server`` with ``auth.basic`` and a real etcd: the upstream guide's Testing section
with curl, 503 until the first sync, an etcd outage, routing labels with savant-rs peers, the
mgfast client's preemptive credentials, and two servers sharing one etcd."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from base64 import b64encode

import pytest

from mgfast.media import encode_media
from tests import savant_peers as sp
from tests.etcd_peer import HASH, HASH1, HASH2, EtcdPeer, auth_section
from tests.gateway_process import GatewayProcess, http_get, server_config
from tests.seed_ca import SeedCa
from tests.test_client import client_config, stop_client
from tests.util import endpoint, free_port, wait_until

SYNCED = 'mgfast_auth_user_store_synced{path="/users/"}'
CONNECTED = 'mgfast_auth_user_store_connected{path="/users/"}'


def curl_post(server: GatewayProcess, user: str | None = None) -> tuple[int, str]:
    """The guide's ``curl -v -u USER:PASSWORD http://HOST:PORT/ -X POST``: (status, headers)."""
    args = ["curl", "-sS", "-v", "-o", "/dev/null", "-w", "%{http_code}"]
    if user is not None:
        args += ["-u", user]
    result = subprocess.run(args + [f"{server.url}/", "-X", "POST"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return int(result.stdout), result.stderr


def status_of(server: GatewayProcess, user: str) -> int:
    return curl_post(server, user)[0]


def metrics(port: int) -> dict[str, float]:
    _, body = http_get(f"http://127.0.0.1:{port}/metrics")
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


@pytest.fixture
def seed(tmp_path) -> SeedCa:
    return SeedCa.create(tmp_path / "pki")


def test_upstream_guide_testing_section_with_curl(seed, tmp_path):
    """etcd with TLS client certificates, as in the guide; the quarantine period is 2 s here
    instead of 60 s so that its end is seen."""
    with EtcdPeer(tmp_path / "etcd", tls=seed) as etcd:
        etcd.put("/users/user1", json.dumps({"password_hash": HASH1}))
        config = server_config(f"pub+bind:ipc://{tmp_path}/server", workers=1,
                               auth=auth_section(etcd, quarantine_period=2.0))
        with GatewayProcess("server", config, tmp_path) as server:
            wait_until(lambda: status_of(server, "user1:password1") != 503, timeout=10,
                       what="the users to be read")
            # "400 Bad Request ... means that authentication is successful"
            assert status_of(server, "user1:password1") == 400
            status, headers = curl_post(server, "user1:password")
            assert status == 401 and re.search(r"< www-authenticate: Basic", headers, re.I)
            assert status_of(server, "user1:password") == 401
            assert status_of(server, "user1:password") == 401
            quarantined_at = time.monotonic()
            assert status_of(server, "user1:password1") == 401  # quarantined: no check
            assert status_of(server, "user1:password1") == 401
            wait_until(lambda: status_of(server, "user1:password1") == 400, timeout=10,
                       interval=0.2, what="the quarantine to end")
            assert time.monotonic() - quarantined_at >= 1.8
            # no credentials at all; the health endpoint stays open
            status, headers = curl_post(server)
            assert status == 401 and re.search(r"< www-authenticate: Basic", headers, re.I)
            assert http_get(server.url + "/health") == (200, b'{"status":"healthy"}')
            # user2 is added ...
            etcd.put("/users/user2", json.dumps({"password_hash": HASH2}))
            assert wait_until(lambda: status_of(server, "user2:password2") == 400, timeout=1.5,
                              interval=0.05, what="user2 to be loaded")
            # ... and its password changed to "password"
            etcd.put("/users/user2", json.dumps({"password_hash": HASH}))
            wait_until(lambda: status_of(server, "user2:password2") == 401, timeout=1.5,
                       interval=0.05, what="user2's new password")
            assert status_of(server, "user2:password") == 400
            # and deleted
            etcd.delete("/users/user2")
            wait_until(lambda: status_of(server, "user2:password") == 401, timeout=1.5,
                       interval=0.05, what="user2 to be gone")
        assert "level=error" not in server.log() and "Traceback" not in server.log()


def media(topic: str, message, *extra: bytes) -> bytes:
    return encode_media(topic.encode(), sp.to_bytes(message), list(extra))


def post(conn: http.client.HTTPConnection, body: bytes, user: str) -> tuple[int, bytes]:
    conn.request("POST", "/", body=body, headers={
        "Content-Type": "application/protobuf",
        "Authorization": "Basic " + b64encode(user.encode()).decode()})
    response = conn.getresponse()
    return response.status, response.read()


def labelled(labels: list[str], source: str = "cam-1") -> sp.Message:
    message = sp.end_of_stream(source)
    message.labels = labels
    return message


def test_503_until_first_sync_then_an_etcd_outage_keeps_serving(tmp_path):
    etcd = EtcdPeer(tmp_path / "etcd", autostart=False)
    metrics_port = free_port()
    config = server_config(f"pub+bind:{endpoint('tcp', tmp_path)}", workers=2,
                           auth=auth_section(etcd), metrics={"port": metrics_port})
    try:
        with GatewayProcess("server", config, tmp_path) as server:
            conn = http.client.HTTPConnection("127.0.0.1", config["port"], timeout=5)
            status, body = post(conn, media("cam-1", sp.end_of_stream()), "user1:password1")
            assert status == 503 and b"retry" in body
            assert http_get(server.url + "/health")[0] == 200
            wait_until(lambda: metrics(metrics_port).get(SYNCED) == 0,
                       what="the synced gauge")
            etcd.start()
            etcd.put("/users/user1", json.dumps({"password_hash": HASH1}))
            wait_until(lambda: post(conn, media("cam-1", sp.end_of_stream()),
                                    "user1:password1")[0] == 200, timeout=10,
                       what="the first sync")
            wait_until(lambda: metrics(metrics_port).get(SYNCED) == 1
                       and metrics(metrics_port).get(CONNECTED) == 1,
                       what="both workers synced")
            etcd.kill()
            wait_until(lambda: metrics(metrics_port).get(CONNECTED)
                       == 0, timeout=10, what="the lost connection in the metrics")
            # the users already read still work (new connections may land on either worker)
            for _ in range(4):
                fresh = http.client.HTTPConnection("127.0.0.1", config["port"], timeout=5)
                assert post(fresh, media("cam-1", sp.end_of_stream()), "user1:password1")[0] \
                    == 200
                fresh.close()
            etcd.start()
            wait_until(lambda: metrics(metrics_port).get(CONNECTED)
                       == 1, timeout=10, what="the reconnect")
            values = metrics(metrics_port)
            assert values['mgfast_auth_checks_total{reason="not_synced"}'] >= 1
            assert values['mgfast_auth_checks_total{reason="ok"}'] >= 5
            assert values["mgfast_auth_user_store_resyncs_total"] >= 1
            assert values["mgfast_auth_users"] == 1
    finally:
        etcd.stop()


def test_routing_labels_and_the_clients_credentials(tmp_path):
    """A user limited to {"set": "north"}: only messages labelled north are forwarded; the
    others get 401. The mgfast client with auth.basic gets its messages through."""
    with EtcdPeer(tmp_path / "etcd") as etcd:
        etcd.put("/users/north", json.dumps({"password_hash": HASH1,
                                             "allowed_routing_labels": {"set": "north"}}))
        etcd.put("/users/edge", json.dumps({"password_hash": HASH2}))
        out_url = endpoint("ipc", tmp_path, "out")
        metrics_port = free_port()
        config = server_config(f"pub+bind:{out_url}", workers=1, auth=auth_section(etcd),
                               metrics={"port": metrics_port})
        with GatewayProcess("server", config, tmp_path) as server, \
                sp.SavantReader(f"sub+connect:{out_url}") as reader:
            conn = http.client.HTTPConnection("127.0.0.1", config["port"], timeout=5)
            wait_until(lambda: post(conn, media("warmup", labelled(["north"])),
                                    "north:password1")[0] == 200, what="sub to join")
            status, body = post(conn, media("cam-s", labelled(["south"])), "north:password1")
            assert status == 401 and b"routing labels" in body
            assert post(conn, media("cam-n", labelled(["south", "north"])),
                        "north:password1")[0] == 200
            # pipelined requests of one connection (a group), mixed verdicts
            bodies = [media("p-ok", labelled(["north"])), media("p-no", labelled([])),
                      media("p-ok2", labelled(["north"]))]
            import socket
            with socket.create_connection(("127.0.0.1", config["port"]), timeout=5) as s:
                token = b64encode(b"north:password1")
                s.sendall(b"".join(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-type: "
                                   b"application/protobuf\r\nauthorization: Basic " + token +
                                   b"\r\ncontent-length: %d\r\n\r\n" % len(b) + b for b in bodies))
                answers = b""
                while answers.count(b"HTTP/1.1 ") < 3:
                    answers += s.recv(65536)
            assert re.findall(rb"HTTP/1.1 (\d+)", answers) == [b"200", b"401", b"200"]
            # the mgfast client with auth.basic, fed by a savant-rs writer
            in_url = endpoint("ipc", tmp_path, "in")
            client = GatewayProcess("client", client_config(
                f"router+bind:{in_url}", server.url,
                auth={"basic": {"username": "edge", "password": "password2"}}), tmp_path)
            with client, sp.SavantWriter(f"dealer+connect:{in_url}") as writer:
                for i in range(5):
                    assert writer.send("cam-c", sp.user_data("cam-c"), b"%d" % i) == "success"
                received = reader.wait_for(5, where=lambda m: m.topic == b"cam-c")
                assert [m.extra for m in received] == [(b"%d" % i,) for i in range(5)]
            stop_client(client)
            # as "north": the client skips what the user may not send (counted as rejected)
            # instead of retrying it forever, and the rest of the stream goes on in order
            for mode, extra in (("single", {}), ("batch", {"batch": 8})):
                in_url = endpoint("ipc", tmp_path, f"in-{mode}")
                topic = f"cam-{mode}"
                client = GatewayProcess("client", client_config(
                    f"router+bind:{in_url}", server.url, **extra,
                    auth={"basic": {"username": "north", "password": "password1"}}), tmp_path)
                with client, sp.SavantWriter(f"dealer+connect:{in_url}") as writer:
                    for i in range(6):
                        message = sp.user_data(topic)
                        message.labels = ["north"] if i % 2 == 0 else ["south"]
                        assert writer.send(topic, message, b"%d" % i) == "success"
                    received = reader.wait_for(3, where=lambda m: m.topic == topic.encode())
                    assert [m.extra for m in received] == [(b"0",), (b"2",), (b"4",)]
                assert stop_client(client)["rejected"] == 3, mode
            topics = [m.topic for m in reader.messages]
            assert b"cam-s" not in topics and b"p-no" not in topics
            assert {b"cam-n", b"p-ok", b"p-ok2"} <= set(topics)
            wait_until(lambda: metrics(metrics_port).get(
                'mgfast_auth_checks_total{reason="labels_denied"}') == 8, what="the metric")


def test_two_servers_share_one_etcd(tmp_path):
    with EtcdPeer(tmp_path / "etcd") as etcd:
        servers = [GatewayProcess("server", server_config(
            f"pub+bind:{endpoint('tcp', tmp_path)}", workers=1, auth=auth_section(etcd)),
            tmp_path) for _ in range(2)]
        try:
            for server in servers:
                wait_until(lambda: status_of(server, "user1:password1") == 401, timeout=10,
                           what="the users to be read")
            etcd.put("/users/user1", json.dumps({"password_hash": HASH1}))
            for server in servers:
                wait_until(lambda: status_of(server, "user1:password1") == 400, timeout=1.5,
                           interval=0.05, what="user1 on every server")
            etcd.delete("/users/user1")
            for server in servers:
                wait_until(lambda: status_of(server, "user1:password1") == 401, timeout=1.5,
                           interval=0.05, what="user1 gone from every server")
        finally:
            for server in servers:
                server.stop()


def test_upstream_sample_runs_and_says_what_is_wrong_while_etcd_is_unreachable(seed, tmp_path,
                                                                              monkeypatch):
    """upstream's samples/configuration/server/basic_auth_config.json with the listener, the
    out_stream and connect_timeout changed (its etcd host does not exist here): the server
    starts, answers 503, keeps /health open and logs how to fix it."""
    from pathlib import Path
    sample = json.loads((Path(__file__).parent / "configs" /
                         "upstream_server_basic_auth.json").read_text())
    import shutil
    for name, source in (("etcd-ca.crt", seed.ca_crt), ("etcd-client.crt", seed.client_crt),
                         ("etcd-client.key", seed.client_key)):
        shutil.copy(source, tmp_path / name)
    monkeypatch.chdir(tmp_path)  # its relative paths are the working directory's, as upstream
    sample["auth"]["basic"]["etcd"]["connect_timeout"] = {"secs": 1, "nanos": 0}  # not 30 s
    sample.update(ip="127.0.0.1", port=free_port(), workers=1)
    sample["out_stream"]["url"] = f"pub+bind:ipc://{tmp_path}/server"
    with GatewayProcess("server", sample, tmp_path) as server:
        assert status_of(server, "user1:password1") == 503
        assert http_get(server.url + "/health")[0] == 200
        wait_until(lambda: "etcd unavailable" in server.log(), what="the warning")
    line = next(line for line in server.log().splitlines() if "etcd unavailable" in line)
    assert "etcd:2379" in line and "auth.basic.etcd urls" in line


def test_quarantine_counts_attempts_on_every_worker(tmp_path):
    """Fresh connections land on either worker; three failures quarantine the pair on both."""
    with EtcdPeer(tmp_path / "etcd") as etcd:
        etcd.put("/users/user1", json.dumps({"password_hash": HASH1}))
        metrics_port = free_port()
        config = server_config(f"pub+bind:{endpoint('tcp', tmp_path)}", workers=2,
                               auth=auth_section(etcd), metrics={"port": metrics_port})
        with GatewayProcess("server", config, tmp_path) as server:
            wait_until(lambda: metrics(metrics_port).get(SYNCED) == 1, what="both synced")
            for _ in range(3):
                assert status_of(server, "user1:password") == 401
            # each worker holds the pair in quarantine (the gauge sums over workers)
            wait_until(lambda: metrics(metrics_port).get("mgfast_auth_quarantined") == 2,
                       what="the quarantine on both workers")
            assert [status_of(server, "user1:password1") for _ in range(8)] == [401] * 8


def test_unusable_etcd_tls_files_stop_the_start_naming_the_field(tmp_path):
    etcd = EtcdPeer(tmp_path / "etcd", autostart=False)
    etcd.tls = None
    auth = auth_section(etcd)
    (tmp_path / "ca.crt").write_text("not a PEM file\n")
    auth["basic"]["etcd"]["urls"] = ["https://127.0.0.1:2379"]
    auth["basic"]["etcd"]["tls"] = {"root_certificate": str(tmp_path / "ca.crt")}
    path = tmp_path / "server.json"
    path.write_text(json.dumps(server_config("pub+bind:tcp://127.0.0.1:1", auth=auth)))
    result = subprocess.run([sys.executable, "-m", "mgfast", "server", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "auth.basic.etcd.tls.root_certificate" in result.stderr
    assert str(tmp_path / "ca.crt") in result.stderr and "give the CA" in result.stderr
