"""A hostile HTTP client against a real ``mgfast server`` with its default limits and layout:
each attack is refused with the right status, and the server tree's memory stays bounded while
it lasts and returns to idle once the client leaves."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from tests.gateway_process import GatewayProcess, server_config
from tests.util import endpoint, wait_until

MiB = 1024 * 1024
# What one hostile client may add to the server tree while it attacks, and how close to idle
# the tree must be a second after it left (allocator and interpreter noise).
PEAK_BOUND = 64 * MiB
IDLE_SLACK = 8 * MiB


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        pending.extend(int(c) for c in children)
    return total


class RssWatch:
    """Samples the tree's RSS every few milliseconds in a thread; ``peak`` is the highest."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(0.005)

    def __enter__(self) -> "RssWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def server(tmp_path):
    with GatewayProcess("server", server_config(f"pub+bind:{endpoint('tcp', tmp_path)}"),
                        tmp_path) as server:
        wait_until(lambda: len(server.children()) >= 2, what="the server's children")
        yield server


def idle_rss(server: GatewayProcess) -> int:
    """The tree's RSS once a few requests have warmed every worker up."""
    for _ in range(8):
        with connect(server) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
            read_response(sock)
    return tree_rss(server.proc.pid)


def connect(server: GatewayProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.config["port"]), timeout=10)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (status, headers, body) read by its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def send_until_closed(sock: socket.socket, chunks, limit: int) -> int:
    """Send chunks until the server stops reading (or ``limit`` bytes); bytes sent."""
    sent = 0
    for chunk in chunks:
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
        if sent >= limit:
            break
    return sent


def back_to_idle(server: GatewayProcess, idle: int) -> None:
    wait_until(lambda: tree_rss(server.proc.pid) <= idle + IDLE_SLACK, timeout=1.0,
               what=f"the server tree's RSS to return within {IDLE_SLACK // MiB} MiB of idle "
                    f"({idle // MiB} MiB; now {tree_rss(server.proc.pid) // MiB} MiB)")


def endless_chunks(size: int = 256 * 1024):
    piece = b"%x\r\n" % size + b"x" * size + b"\r\n"
    while True:
        yield piece


def test_announced_bodies_that_never_arrive_reserve_no_memory(server):
    idle = idle_rss(server)
    sockets = [connect(server) for _ in range(8)]
    with RssWatch(server.proc.pid) as watch:
        for sock in sockets:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/protobuf\r\n"
                         b"Content-Length: 30000000\r\n\r\n" + b"x" * 1000)
        for sock in sockets:
            time.sleep(0.01)  # a second piece, in its own read
            sock.sendall(b"y" * 1000)
        time.sleep(0.3)
    assert watch.peak - idle < 8 * MiB, f"+{(watch.peak - idle) // MiB} MiB for 16 KB sent"
    for sock in sockets:
        sock.close()


def test_endless_chunked_body_is_refused_at_the_limit_and_its_memory_returned(server):
    idle = idle_rss(server)
    with RssWatch(server.proc.pid) as watch:
        for _ in range(3):  # one after another: nothing accumulates
            with connect(server) as sock:
                sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/protobuf"
                             b"\r\nTransfer-Encoding: chunked\r\n\r\n")
                sent = send_until_closed(sock, endless_chunks(), 200 * MiB)
                status, _, body = read_response(sock)
            assert status == 413, body
            assert b"http.max_body_size" in body
            assert sent < 200 * MiB, "the server read on past its body limit"
            back_to_idle(server, idle)
    assert watch.peak - idle < PEAK_BOUND, f"peak +{(watch.peak - idle) // MiB} MiB"


def test_endless_header_is_refused_with_431_and_memory_stays_bounded(server):
    idle = idle_rss(server)
    with RssWatch(server.proc.pid) as watch:
        with connect(server) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nX-Long: ")
            piece = b"v" * 65536
            send_until_closed(sock, iter(lambda: piece, None), 100 * MiB)
            status, headers, body = read_response(sock)
    assert status == 431 and headers["connection"] == "close", body
    assert b"http.max_header_size" in body or b"http.max_line_size" in body
    assert watch.peak - idle < 16 * MiB
    back_to_idle(server, idle)


def test_ten_thousand_tiny_headers_get_431(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n" + b"a: b\r\n" * 10_000 + b"\r\n")
        status, _, body = read_response(sock)
    assert status == 431 and b"request header block" in body and b"32768" in body


def test_a_header_line_over_the_limit_gets_431_naming_it(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 431 and b"'X-Big'" in body and b"http.max_line_size" in body


def test_a_megabyte_url_gets_a_short_414(server):
    with connect(server) as sock:
        sock.sendall(b"GET /" + b"a" * MiB + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 414 and len(body) < 500, body[:200]


def test_unknown_path_error_quotes_only_the_start_of_it(server):
    with connect(server) as sock:
        sock.sendall(b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 404 and len(body) < 300 and b"(8001 bytes)" in body


def test_head_health_has_no_body_and_the_next_response_is_intact(server):
    with connect(server) as sock:
        sock.sendall(b"HEAD /health HTTP/1.1\r\nHost: a\r\n\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    head, get = data.split(b"HTTP/1.1 200")[1:]
    assert head.endswith(b"\r\n\r\n") and b"content-length: 20" in head
    assert get.endswith(b'{"status":"healthy"}')


def test_legitimate_requests_still_pass_right_under_the_limits(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\nX-Fine: " + b"v" * 8000 + b"\r\n\r\n")
        assert read_response(sock)[0] == 200
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n" + b"a: b\r\n" * 4000 + b"\r\n")
        assert read_response(sock)[0] == 200



@pytest.mark.parametrize("size_mib", [3, 9])
def test_memory_of_large_accepted_bodies_returns_after_they_are_written(server, size_mib):
    from mgfast.media import encode_media
    from tests import savant_peers as sp
    body = encode_media(b"cam", sp.to_bytes(sp.video_frame()), [b"f" * (size_mib * MiB)])
    idle = idle_rss(server)
    for _ in range(6):
        with connect(server) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/protobuf\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            assert read_response(sock)[0] == 200
    back_to_idle(server, idle)


def test_a_client_that_never_reads_its_answers_is_not_read_either(server):
    """Pipelined requests whose answers the client leaves unread: the server stops reading
    once its write buffer is full, so the client's sends block and memory stays bounded."""
    idle = idle_rss(server)
    request = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
    burst = request * 2000
    sent = 0
    with RssWatch(server.proc.pid) as watch, connect(server) as sock:
        sock.settimeout(2.0)
        try:
            while sent < 100 * MiB:
                sent += sock.send(burst)
        except socket.timeout:
            pass  # blocked: the server stopped reading
    assert sent < 20 * MiB, f"the server read {sent // MiB} MiB of requests nobody read answers to"
    assert watch.peak - idle < 32 * MiB
    back_to_idle(server, idle)


@pytest.fixture
def patient_server(tmp_path):
    """Lingering long enough that a worker starved of CPU for a moment does not end it."""
    linger = {"linger_time": {"secs": 30, "nanos": 0}, "linger_timeout": {"secs": 5, "nanos": 0}}
    with GatewayProcess("server", server_config(f"pub+bind:{endpoint('tcp', tmp_path)}",
                                                http=linger), tmp_path) as server:
        wait_until(lambda: len(server.children()) >= 2, what="the server's children")
        yield server


def test_what_follows_a_rejection_is_read_and_dropped_not_kept(patient_server):
    """Lingering close: after the 413 the server half-closes and reads what the client goes on
    sending (so that its close cannot reset the answers away), dropping it: 32 MiB behind the
    rejection all get through, the tree's memory does not grow with them, and once the
    client closes its side it reads every answer and a clean EOF."""
    server = patient_server
    idle = idle_rss(server)
    piece = b"z" * 65536
    with RssWatch(server.proc.pid) as watch, connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n" * 4
                     + b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: application/protobuf\r\n"
                       b"Content-Length: %d\r\n\r\n" % (64 * MiB))
        sent = send_until_closed(sock, iter(lambda: piece, None), 32 * MiB)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):  # a reset would raise
            data += chunk
    assert sent >= 32 * MiB, f"the server stopped reading after {sent // MiB} MiB"
    assert [a[:3] for a in data.split(b"HTTP/1.1 ")[1:]] == [b"200"] * 4 + [b"413"]
    assert watch.peak - idle < 16 * MiB, f"peak +{(watch.peak - idle) // MiB} MiB"
    back_to_idle(server, idle)
