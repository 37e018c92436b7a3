"""Lingering close on real sockets: the server protocol (plain and TLS, on uvloop and the stdlib
loop) in a thread, a blocking client socket in the test. A client that pipelines requests with
a bad one among them and never reads until the server is done gets every answer up to the
error and a clean EOF, not a reset; the linger ends when the client closes, when the time is
up, or when too much arrives, and nothing read while lingering is parsed or kept."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import threading
import time

import pytest
import uvloop

from mgfast.config.model import HttpLimits, Identity, Peers, ServerTls
from mgfast.http import linger, responses
from mgfast.http.server_protocol import HttpServerProtocol, Request
from mgfast.tls.context import server_context
from mgfast.tls.server_protocol import TlsServerProtocol
from tests.seed_ca import SeedCa
from tests.test_http_protocol import FakeTransport
from tests.util import scaled, wait_until

KiB = 1024
MiB = 1024 * KiB
MAX_BODY = 64 * KiB


def post(path: bytes, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (
        path, len(body), body)


GOOD = post(b"/before", b"x" * 100)
TOO_BIG = b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
MALFORMED = b"NOT HTTP AT ALL\r\n\r\n"
# Valid requests behind the bad one: parsing any of them would show in the app.
TAIL = post(b"/after", b"y" * (MAX_BODY // 2)) * 256  # 8 MiB, past any socket buffer


class App:
    def __init__(self) -> None:
        self.paths: list[bytes] = []

    def handle(self, request: Request):
        self.paths.append(request.path)
        if request.path == b"/slow":
            async def later() -> responses.Response:
                await asyncio.sleep(0.05)
                return responses.Response(200, b"ok")
            return later()
        return responses.Response(200, b"ok")


class Server:
    """The server protocol on a loopback port, its loop in a thread; ``lost`` holds when each
    connection was lost (monotonic), ``errors`` what reached the loop's exception handler."""

    def __init__(self, limits: HttpLimits, *, loop: str, tls: ServerTls | None = None) -> None:
        self.limits = limits
        self.loop_kind = loop
        self.tls = tls
        self.app = App()
        self.connections: set[HttpServerProtocol] = set()
        self.made = 0
        self.lost: list[float] = []
        self.errors: list[dict] = []
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> Server:
        self._thread.start()
        assert self._ready.wait(scaled(10)), "the server did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(scaled(10))
        assert not self.errors, self.errors

    def _run(self) -> None:
        loop = uvloop.new_event_loop() if self.loop_kind == "uvloop" else asyncio.new_event_loop()
        loop.set_exception_handler(lambda _, context: self.errors.append(context))
        try:
            loop.run_until_complete(self._serve(loop))
        finally:
            loop.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._stop = loop, asyncio.Event()
        outer = self

        class Counted(HttpServerProtocol):
            def connection_made(self, transport) -> None:
                outer.made += 1
                super().connection_made(transport)

            def connection_lost(self, exc) -> None:
                outer.lost.append(time.monotonic())
                super().connection_lost(exc)

        def factory() -> asyncio.Protocol:
            http = Counted(self.app, self.limits, self.connections)
            if self.tls is None:
                return http
            return TlsServerProtocol(server_context(self.tls), http, handshake_timeout=5,
                                     on_handshake=lambda *_: None, limits=self.limits)

        server = await loop.create_server(factory, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        for connection in list(self.connections):
            connection.abort()
        await asyncio.sleep(0)

    def wait_closed(self, timeout: float = 5.0) -> float:
        """When the (one) connection was closed, once it has been."""
        wait_until(lambda: self.made and self.lost, timeout=timeout,
                   what="the server to close the connection")
        return self.lost[0]


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> SeedCa:
    return SeedCa.create(tmp_path_factory.mktemp("seed"))


def connect(server: Server, seed: SeedCa | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=scaled(10))
    if server.tls is None:
        return sock
    context = ssl.create_default_context(cafile=str(seed.ca_crt))
    context.load_cert_chain(str(seed.client_crt), str(seed.client_key))
    return context.wrap_socket(sock, server_hostname="127.0.0.1")


def server_tls(seed: SeedCa | None) -> ServerTls | None:
    if seed is None:
        return None
    return ServerTls(identity=Identity(certificate=seed.server_crt, key=seed.server_key),
                     peers=Peers(lookup_hash_directory=seed.hash_dir, crl_enabled=True))


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything until the server's EOF; a reset raises."""
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def statuses(data: bytes) -> list[bytes]:
    return [part[:3] for part in data.split(b"HTTP/1.1 ")[1:]]


@pytest.fixture(params=["plain", "tls"])
def tls_seed(request) -> SeedCa | None:
    return request.getfixturevalue("seed") if request.param == "tls" else None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("bad, status", [(TOO_BIG, b"413"), (MALFORMED, b"400")],
                         ids=["413", "400"])
def test_a_client_that_reads_only_after_the_close_gets_every_answer_and_a_clean_eof(
        loop, bad, status, tls_seed):
    """Ten requests, a bad one, 8 MiB of requests behind it, all sent before reading a byte:
    the server answers the ten and the bad one, half-closes, drops the tail unparsed and
    closes once the client goes quiet. Without lingering the close found the tail unread and
    reset the connection: the client's sends failed, or its read did, after the answers."""
    limits = HttpLimits(max_body_size=MAX_BODY, linger_time=10, linger_timeout=1.0)
    with Server(limits, loop=loop, tls=server_tls(tls_seed)) as server:
        with connect(server, tls_seed) as sock:
            sock.sendall(GOOD * 10 + bad + TAIL)
            server.wait_closed()
            data = read_to_eof(sock)
        assert statuses(data) == [b"200"] * 10 + [status]
        error = data.rsplit(b"HTTP/1.1 ", 1)[1]
        assert b"connection: close" in error
        assert (b"http.max_body_size" if status == b"413" else b"malformed HTTP") in error
        assert server.app.paths == [b"/before"] * 10  # nothing behind the bad one


@pytest.mark.timeout(60)
def test_the_linger_ends_as_soon_as_the_client_closes(tls_seed):
    """The answers and the FIN come at once; the server then waits only for the client."""
    limits = HttpLimits(max_body_size=MAX_BODY, linger_time=30, linger_timeout=30)
    with Server(limits, loop="uvloop", tls=server_tls(tls_seed)) as server:
        with connect(server, tls_seed) as sock:
            sock.sendall(GOOD * 3 + TOO_BIG + TAIL[:MiB])
            data = read_to_eof(sock)  # the server's half-close, while it lingers
            assert statuses(data) == [b"200"] * 3 + [b"413"]
            assert not server.lost
            closed = time.monotonic()
        assert server.wait_closed() - closed < scaled(1.0)


@pytest.mark.timeout(60)
def test_a_quiet_client_is_closed_after_the_linger_timeout():
    limits = HttpLimits(max_body_size=MAX_BODY, linger_time=30, linger_timeout=0.2)
    with Server(limits, loop="uvloop") as server:
        with connect(server, None) as sock:
            sock.sendall(TOO_BIG)
            assert statuses(read_to_eof(sock)) == [b"413"]
            began = time.monotonic()
            lost = server.wait_closed() - began
        assert lost < scaled(1.5)


@pytest.mark.timeout(60)
def test_a_half_closed_client_gets_its_answers_and_then_the_close_at_once():
    """The client's EOF comes while its requests are still being handled: the server closes
    right after the last answer (it used to wait out the idle timeout)."""
    limits = HttpLimits(idle_timeout=30, linger_time=30, linger_timeout=30)
    with Server(limits, loop="uvloop") as server:
        with connect(server, None) as sock:
            sock.sendall(post(b"/slow", b"1") * 3)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(scaled(3))
            assert statuses(read_to_eof(sock)) == [b"200"] * 3
        server.wait_closed(timeout=1.0)


def send_forever(sock: socket.socket, sent: list[int]) -> None:
    """Send until the server resets the connection; ``sent[0]`` counts the bytes."""
    piece = TAIL[:256 * KiB]
    try:
        while True:
            sent[0] += sock.send(piece)
    except OSError:
        pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_client_that_never_stops_sending_is_closed_after_the_linger_time(loop, monkeypatch):
    monkeypatch.setattr(linger, "LINGER_MAX_BYTES", 1 << 40)  # the time alone ends it
    limits = HttpLimits(max_body_size=MAX_BODY, linger_time=0.5, linger_timeout=30)
    with Server(limits, loop=loop) as server:
        with connect(server, None) as sock:
            sock.sendall(GOOD + TOO_BIG)
            began = time.monotonic()
            sent = [0]
            sender = threading.Thread(target=send_forever, args=(sock, sent), daemon=True)
            sender.start()
            lost = server.wait_closed() - began
            sender.join(scaled(10))
            assert not sender.is_alive(), "the server never reset the endless sender"
        assert 0.4 < lost < scaled(2.0)
        assert sent[0] > MiB  # it was read (and dropped) while lingering
        assert server.app.paths == [b"/before"]


@pytest.mark.timeout(60)
def test_lingering_stops_reading_past_its_byte_budget(monkeypatch):
    """Input is dropped as it comes (never buffered), and only up to LINGER_MAX_BYTES."""
    monkeypatch.setattr(linger, "LINGER_MAX_BYTES", 4 * MiB)
    limits = HttpLimits(max_body_size=MAX_BODY, linger_time=30, linger_timeout=30)
    with Server(limits, loop="uvloop") as server:
        with connect(server, None) as sock:
            sock.sendall(TOO_BIG)
            sent = [0]
            sender = threading.Thread(target=send_forever, args=(sock, sent), daemon=True)
            sender.start()
            server.wait_closed()
            sender.join(scaled(10))
            assert not sender.is_alive(), "the server never reset the endless sender"
        # the budget plus what the kernel buffers hold on both sides
        assert 4 * MiB <= sent[0] < 4 * MiB + 16 * MiB
        assert server.app.paths == []


@pytest.mark.timeout(60)
def test_the_gateway_client_takes_the_half_close_after_an_error_answer(tls_seed):
    """mgfast's own client connection: the answers up to the 413 settle their requests, the
    ones behind it come back unsent (ClosedByServer, to resend at once), and its close ends
    the server's linger at once."""
    from mgfast.http import client_connection as cc
    from tests.util import arun

    limits = HttpLimits(max_body_size=MAX_BODY, linger_time=30, linger_timeout=30)

    async def body(server: Server) -> tuple[list, list]:
        context = None
        if tls_seed is not None:
            context = ssl.create_default_context(cafile=str(tls_seed.ca_crt))
            context.load_cert_chain(str(tls_seed.client_crt), str(tls_seed.client_key))
        connection = cc.HttpClientConnection("127.0.0.1", server.port, ssl_context=context)
        answered: list = []
        failed: list = []
        connection.on_response = lambda entry, response: answered.append(
            (entry, response.status))
        connection.on_failure = lambda entries, error: failed.append((entries, error))
        await connection.connect()
        requests = [GOOD, GOOD, TOO_BIG + b"y" * (MAX_BODY + 1), GOOD, GOOD, GOOD]
        connection.send(list(range(len(requests))), requests)
        deadline = asyncio.get_running_loop().time() + scaled(5)
        while len(answered) + sum(len(e) for e, _ in failed) < len(requests):
            assert asyncio.get_running_loop().time() < deadline, (answered, failed)
            await asyncio.sleep(0.01)
        assert not connection.connected
        return answered, failed

    with Server(limits, loop="uvloop", tls=server_tls(tls_seed)) as server:
        answered, failed = arun(body(server))
        server.wait_closed(timeout=1.0)
    assert answered == [(0, 200), (1, 200), (2, 413)]
    [(entries, error)] = failed
    assert entries == [3, 4, 5] and isinstance(error, cc.ClosedByServer) and not error.sent
    assert server.app.paths == [b"/before"] * 2


class ResetTransport(FakeTransport):
    """A socket's transport whose peer has reset the connection: the half-close fails as
    asyncio's does (shutdown raises ENOTCONN)."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: asyncio.BaseProtocol | None = None
        self.aborted = False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol

    def abort(self) -> None:
        self.aborted = self.closed = True
        self.protocol.connection_lost(None)


def test_a_connection_reset_before_the_half_close_is_aborted_not_raised():
    async def body() -> None:
        connections: set[HttpServerProtocol] = set()
        protocol = HttpServerProtocol(App(), HttpLimits(max_body_size=MAX_BODY), connections)
        transport = ResetTransport()
        transport.protocol = protocol
        protocol.connection_made(transport)
        protocol.data_received(GOOD + TOO_BIG)
        assert statuses(bytes(transport.out)) == [b"200", b"413"]
        assert transport.aborted and not connections  # connection_lost reached the protocol

    asyncio.run(body())
