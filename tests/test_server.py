"""``mgfast server`` as a process: HTTP API, out_stream semantics with savant-rs readers, HTTPS."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import time

import pytest

from mgfast.media import encode_media
from tests import savant_peers as sp
from tests.gateway_process import GatewayProcess, http_get, server_config
from tests.seed_ca import SeedCa
from tests.util import endpoint, scaled, wait_until

READER_FOR = {"pub": "sub", "dealer": "router", "req": "rep"}




def post(conn: http.client.HTTPConnection, body: bytes,
         content_type: str = "application/protobuf") -> tuple[int, bytes]:
    conn.request("POST", "/", body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    return response.status, response.read()


def media(topic: str, message, *extra: bytes) -> bytes:
    return encode_media(topic.encode(), sp.to_bytes(message), list(extra))


@pytest.fixture
def plain_server(tmp_path):
    """A server with a pub out_stream nobody reads: enough for the HTTP API tests."""
    with GatewayProcess("server", server_config(f"pub+bind:{endpoint('tcp', tmp_path)}"),
                        tmp_path) as server:
        yield server


# ---- HTTP API ---------------------------------------------------------------------------------

def test_health(plain_server):
    status, body = http_get(plain_server.url + "/health")
    assert (status, body) == (200, b'{"status":"healthy"}')


def test_without_workers_the_server_runs_one_per_cpu_less_one_and_delivers(tmp_path):
    """The default layout: the CPUs the server may run on (its affinity, as taskset or a cpuset
    sets it) less one, as the egress takes one when there are several workers. The server
    starts here on at most two CPUs (it inherits this process's affinity), so on any host the
    default is its smallest layout: one worker that writes the out_stream itself."""
    allowed = os.sched_getaffinity(0)
    given = set(sorted(allowed)[:2])
    where = endpoint("ipc", tmp_path)
    os.sched_setaffinity(0, given)
    try:
        with sp.SavantReader(f"router+bind:{where}") as reader:
            config = server_config(f"dealer+connect:{where}")
            del config["workers"]
            with GatewayProcess("server", config, tmp_path) as server:
                server.wait_log(f"workers={max(1, len(given) - 1)} ")
                conn = http.client.HTTPConnection("127.0.0.1", config["port"],
                                                  timeout=scaled(10))
                assert post(conn, media("cam-default", sp.user_data("cam-default")))[0] == 200
                assert reader.wait_for(1)[0].topic == b"cam-default"
                assert set(server.children()) == {"worker-0"}  # and no egress
    finally:
        os.sched_setaffinity(0, allowed)


def test_both_protobuf_media_types_and_an_empty_protocol_version_are_accepted(tmp_path):
    """As upstream (actix-protobuf takes application/x-protobuf too; the protocol version is
    the consuming Savant reader's check), and the message leaves as it came."""
    import zmq
    out = endpoint("ipc", tmp_path, "out")
    context = zmq.Context()
    sub = context.socket(zmq.SUB)  # raw ZeroMQ: a Savant reader would drop the versionless one
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        with GatewayProcess("server", server_config(f"pub+bind:{out}"), tmp_path) as server:
            sub.connect(out)
            conn = http.client.HTTPConnection("127.0.0.1", server.config["port"], timeout=5)
            warm = media("warm-up", sp.user_data("warm-up"))
            wait_until(lambda: post(conn, warm)[0] == 200 and sub.poll(100),
                       what="the subscription to be live")
            while sub.poll(100):
                sub.recv_multipart()
            no_version = b"\x4a\x00"  # a Savant Message with only end_of_stream (field 9)
            assert post(conn, media("cam-1", sp.user_data("cam-1")),
                        "application/x-protobuf")[0] == 200
            assert post(conn, encode_media(b"cam-2", no_version, []),
                        "application/x-protobuf; charset=binary")[0] == 200
            got = [sub.recv_multipart() for _ in range(2) if sub.poll(5000)]
            assert [frames[0] for frames in got] == [b"cam-1", b"cam-2"]
            assert got[1][1] == no_version
    finally:
        sub.close(0)
        context.term()


def test_unknown_path_and_wrong_method_keep_the_connection_usable(plain_server):
    conn = http.client.HTTPConnection("127.0.0.1", plain_server.config["port"], timeout=5)
    conn.request("GET", "/nope")
    response = conn.getresponse()
    assert response.status == 404 and b"/health" in response.read()
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 405 and response.getheader("allow") == "POST"
    response.read()
    conn.request("POST", "/health", body=b"")
    response = conn.getresponse()
    assert response.status == 405
    response.read()
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200  # same connection still serves


@pytest.mark.parametrize("body, content_type, reason", [
    (b"\x0a\x05abc", "application/protobuf", b"not valid protobuf"),
    (b"\x12\x03cam", "application/protobuf", b"no message"),
    (b"", "application/protobuf", b"no message"),
    (None, "application/json", b"Content-Type must be application/protobuf"),
])
def test_bad_media_gets_400_with_a_reason(plain_server, body, content_type, reason):
    if body is None:
        body = media("cam-1", sp.end_of_stream())
    conn = http.client.HTTPConnection("127.0.0.1", plain_server.config["port"], timeout=5)
    status, text = post(conn, body, content_type)
    assert status == 400 and reason in text, text
    assert post(conn, media("cam-1", sp.end_of_stream()))[0] == 200  # connection still usable


def test_non_utf8_topic_gets_400(plain_server):
    conn = http.client.HTTPConnection("127.0.0.1", plain_server.config["port"], timeout=5)
    status, text = post(conn, encode_media(b"\xff\xfe", sp.to_bytes(sp.end_of_stream()), []))
    assert status == 400 and b"UTF-8" in text


def test_malformed_http_gets_400_and_close(plain_server):
    with socket.create_connection(("127.0.0.1", plain_server.config["port"]), timeout=5) as s:
        s.sendall(b"BLAH / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ") and b"connection: close" in data


def test_body_over_configured_limit_gets_413(tmp_path):
    config = server_config(f"pub+bind:{endpoint('tcp', tmp_path)}",
                           http={"max_body_size": 1000})
    with GatewayProcess("server", config, tmp_path):
        conn = http.client.HTTPConnection("127.0.0.1", config["port"], timeout=5)
        status, text = post(conn, media("cam-1", sp.video_frame(), b"x" * 2000))
        assert status == 413 and b"max_body_size" in text


def test_silent_client_is_disconnected_after_the_header_timeout(tmp_path):
    config = server_config(f"pub+bind:{endpoint('tcp', tmp_path)}",
                           http={"header_timeout": {"secs": 0, "nanos": 300_000_000}})
    with GatewayProcess("server", config, tmp_path):
        with socket.create_connection(("127.0.0.1", config["port"]), timeout=5) as s:
            started = time.monotonic()
            assert s.recv(100) == b""  # closed by the server, not by our 5 s timeout
            assert time.monotonic() - started < scaled(3)


# ---- out_stream semantics with real savant-rs readers -----------------------------------------

@pytest.mark.parametrize("transport", ["ipc", "tcp"])
@pytest.mark.parametrize("mode", ["bind", "connect"])
@pytest.mark.parametrize("kind", ["pub", "dealer", "req"])
def test_savant_reader_receives_byte_identical_frames(tmp_path, kind, mode, transport):
    where = endpoint(transport, tmp_path)
    reader_mode = "connect" if mode == "bind" else "bind"
    reader_url = f"{READER_FOR[kind]}+{reader_mode}:{where}"
    server_url = f"{kind}+{mode}:{where}"
    reader = sp.SavantReader(reader_url)
    if reader_mode == "bind":
        reader.start()
    with GatewayProcess("server", server_config(server_url), tmp_path) as server:
        if reader_mode == "connect":
            reader.start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.config["port"], timeout=10)
            if kind == "pub":  # a subscriber that connects late misses what was sent before
                wait_until(lambda: post(conn, media("warm-up", sp.user_data("warm-up")))
                           and reader.messages, timeout=10, what="the subscription")
            sent = [
                ("cam-1", sp.video_frame("cam-1"), (b"\x00frame-bytes" * 1000,)),
                ("cam-2", sp.user_data("cam-2"), ()),
                ("cam-1", sp.video_frame("cam-1"), (b"a", b"b", b"")),
                ("cam-1", sp.end_of_stream("cam-1"), ()),
            ]
            for topic, message, extra in sent:
                status, text = post(conn, media(topic, message, *extra))
                assert status == 200, text
            received = reader.wait_for(len(sent), where=lambda m: m.topic != b"warm-up")
            assert [m.frames for m in received] == [
                [topic.encode(), sp.to_bytes(message), *extra] for topic, message, extra in sent]
        finally:
            reader.close()


def test_dealer_end_of_stream_is_acknowledged_and_req_without_peer_answers_502(tmp_path):
    config = server_config(f"req+connect:{endpoint('tcp', tmp_path)}")
    config["out_stream"]["receive_timeout"] = {"secs": 0, "nanos": 200_000_000}
    config["out_stream"]["receive_retries"] = 2
    with GatewayProcess("server", config, tmp_path):
        conn = http.client.HTTPConnection("127.0.0.1", config["port"], timeout=10)
        started = time.monotonic()
        status, _ = post(conn, media("cam-1", sp.user_data("cam-1")))
        elapsed = time.monotonic() - started
        assert status == 502
        assert 0.5 <= elapsed < scaled(5)  # receive_timeout x (receive_retries + 1) = 0.6 s


def test_pub_to_nobody_is_200_and_dealer_without_peer_times_out_with_504(tmp_path):
    config = server_config(f"dealer+connect:{endpoint('tcp', tmp_path)}")
    config["out_stream"].update(send_hwm=1, send_timeout={"secs": 0, "nanos": 100_000_000},
                                send_retries=1)
    with GatewayProcess("server", config, tmp_path):
        conn = http.client.HTTPConnection("127.0.0.1", config["port"], timeout=10)
        statuses = [post(conn, media("cam-1", sp.user_data("cam-1")))[0] for _ in range(3)]
        assert 504 in statuses


# ---- HTTPS ------------------------------------------------------------------------------------

def test_curl_gets_health_over_https_with_the_seed_server_certificate(tmp_path):
    seed = SeedCa.create(tmp_path / "pki")
    config = server_config(f"pub+bind:{endpoint('tcp', tmp_path)}", tls={
        "identity": {"certificate": str(seed.server_crt), "key": str(seed.server_key)}})
    with GatewayProcess("server", config, tmp_path):
        out = subprocess.run(
            ["curl", "-sS", "--cacert", str(seed.ca_crt),
             f"https://127.0.0.1:{config['port']}/health"],
            capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout == '{"status":"healthy"}'


# ---- start-up errors --------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    import sys
    return subprocess.run([sys.executable, "-m", "mgfast", *args], capture_output=True,
                          text=True, timeout=30)


def test_port_in_use_exits_2_with_a_clear_message(tmp_path):
    import json
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = server_config(f"pub+bind:{endpoint('tcp', tmp_path)}",
                               port=busy.getsockname()[1])
        path = tmp_path / "server.json"
        path.write_text(json.dumps(config))
        result = run_cli("server", str(path))
    assert result.returncode == 2
    assert "already in use" in result.stderr and "port" in result.stderr
    assert str(path) in result.stderr  # names the config file to change
    assert "Traceback" not in result.stderr


def test_config_error_exits_2_naming_file_and_field(tmp_path):
    import json
    config = server_config("pub+bind:tcp://127.0.0.1:1", bogus_key=1)
    path = tmp_path / "server.json"
    path.write_text(json.dumps(config))
    result = run_cli("server", "--strict", str(path))  # an unknown key is a warning otherwise
    assert result.returncode == 2
    assert str(path) in result.stderr and "bogus_key" in result.stderr
    assert "Traceback" not in result.stderr


def test_certificate_not_matching_key_exits_2(tmp_path):
    import json
    seed = SeedCa.create(tmp_path / "pki")
    config = server_config(f"pub+bind:{endpoint('tcp', tmp_path)}", tls={
        "identity": {"certificate": str(seed.server_crt), "key": str(seed.client_key)}})
    path = tmp_path / "server.json"
    path.write_text(json.dumps(config))
    result = run_cli("server", str(path))
    assert result.returncode == 2
    assert "does not match" in result.stderr and str(seed.server_crt) in result.stderr


def test_upstream_statistics_log_fps_lines(tmp_path):
    config = server_config(f"pub+bind:{endpoint('tcp', tmp_path)}",
                           statistics={"frame_period": 3})
    with GatewayProcess("server", config, tmp_path) as server:
        conn = http.client.HTTPConnection("127.0.0.1", config["port"], timeout=10)
        assert post(conn, media("cam-1", sp.video_frame("cam-1")))[0] == 200
        assert post(conn, media("cam-1", sp.user_data("cam-1")))[0] == 200
        assert "FPS counter" not in server.log()  # 2 messages of 3 (upstream: a frame each)
        assert post(conn, media("cam-1", sp.end_of_stream("cam-1")))[0] == 200
        wait_until(lambda: "Frame-based FPS counter triggered" in server.log(),
                   what="the FPS line")
        line = next(l for l in server.log().splitlines() if "Frame-based" in l)
        assert re.search(r"Frame-based FPS counter triggered: FPS = [0-9.inf]+, OPS = "
                         r"(0\.00|NaN), frame_delta = 3, time_delta = [0-9.]+ sec, "
                         r"period=\[[0-9]+, [0-9]+\] ms", line), line
    config = server_config(f"pub+bind:{endpoint('tcp', tmp_path)}",
                           statistics={"timestamp_period": {"secs": 0, "nanos": 200_000_000}})
    with GatewayProcess("server", config, tmp_path) as server:
        first_message_ms = time.time_ns() // 1_000_000
        conn = http.client.HTTPConnection("127.0.0.1", config["port"], timeout=10)
        assert post(conn, media("cam-1", sp.video_frame("cam-1")))[0] == 200
        wait_until(lambda: "Time-based FPS counter triggered" in server.log(),
                   what="a periodic FPS line")
        line = next(l for l in server.log().splitlines() if "Time-based" in l)
        match = re.search(r"frame_delta = 1, time_delta = [0-9.]+ sec , "
                          r"period=\[([0-9]+), ([0-9]+)\] ms", line)
        assert match, line
        # Counting starts at the first message, not at process start.
        assert int(match[1]) >= first_message_ms and int(match[2]) - int(match[1]) >= 200


# ---- batch framing between mgfast peers -----------------------------------------------------

def post_batch(conn, items) -> tuple[int, dict]:
    import orjson
    from mgfast.media import encode_media_batch
    conn.request("POST", "/", body=encode_media_batch(items),
                 headers={"Content-Type": "application/x-mgfast-batch"})
    response = conn.getresponse()
    return response.status, orjson.loads(response.read())


@pytest.mark.parametrize("workers", [1, 2])  # the writer in the worker / in the egress
def test_batch_writes_in_order_and_reports_each_item(tmp_path, workers):
    where = endpoint("tcp", tmp_path)
    with sp.SavantReader(f"router+bind:{where}") as reader:
        config = server_config(f"dealer+connect:{where}", workers=workers)
        with GatewayProcess("server", config, tmp_path):
            conn = http.client.HTTPConnection("127.0.0.1", config["port"], timeout=10)
            conn.request("GET", "/health")
            response = conn.getresponse()
            assert response.getheader("x-mgfast-batch") == "1"  # advertises the framing
            response.read()
            good = [(b"cam-1", sp.to_bytes(sp.user_data("cam-1")), [bytes([i])]) for i in range(3)]
            bad = (b"cam-1", b"\x0a\x05broken", [])
            status, body = post_batch(conn, [good[0], bad, good[1], good[2]])
            assert status == 200 and body == {"results": [200, 400, 200, 200]}
            got = reader.wait_for(3)
            assert [m.extra for m in got] == [(b"\x00",), (b"\x01",), (b"\x02",)]
            # All valid: written straight from the body up to the end of stream, whose write
            # waits for the reader's acknowledgement; then the rest, in order.
            items = [(b"cam-1", sp.to_bytes(sp.user_data("cam-1")), [b"a"]),
                     (b"cam-1", sp.to_bytes(sp.end_of_stream("cam-1")), []),
                     (b"cam-2", sp.to_bytes(sp.user_data("cam-2")), [b"b"])]
            status, body = post_batch(conn, items)
            assert status == 200 and body == {"results": [200, 200, 200]}
            got = reader.wait_for(6)[3:]
            assert [m.frames for m in got] == [[t, m, *d] for t, m, d in items]
            # a body of 32 KiB or more is received into a SendBuffer: its frames go to libzmq
            # by reference (one worker), or the body to the egress as it came (two)
            large = [(b"cam-3", sp.to_bytes(sp.user_data("cam-3")), [bytes([i]) * 40_000])
                     for i in range(2)]
            status, body = post_batch(conn, large)
            assert status == 200 and body == {"results": [200, 200]}
            got = reader.wait_for(8)[6:]
            assert [m.frames for m in got] == [[t, m, *d] for t, m, d in large]


@pytest.mark.parametrize("workers", [1, 2])
def test_batch_stops_at_the_first_failed_write(tmp_path, workers):
    config = server_config(f"dealer+connect:{endpoint('tcp', tmp_path)}", workers=workers)
    config["out_stream"].update(send_hwm=1, send_timeout={"secs": 0, "nanos": 100_000_000},
                                send_retries=1)
    with GatewayProcess("server", config, tmp_path):
        conn = http.client.HTTPConnection("127.0.0.1", config["port"], timeout=10)
        items = [(b"cam-1", sp.to_bytes(sp.user_data("cam-1")), [bytes([i])]) for i in range(5)]
        status, body = post_batch(conn, items)
        # nobody is connected: the first message fills the queue (send_hwm 1), the second
        # times out, and the other three are not attempted
        assert status == 200 and body == {"results": [200, 504]}
