"""The server's TLS pieces in-process: TlsServerProtocol fed a real client's records through
memory BIOs on a fake transport, the reloader and PeerVerifier on a seed CA's hash directory,
and the rejection log on an injected clock. No sockets, no processes."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from mgfast._zmq_io import SendBuffer
from mgfast.config.model import HttpLimits, Identity, Peers, ServerTls
from mgfast.http.server_protocol import HttpServerProtocol
from mgfast.tls import peer_certificate
from mgfast.tls.context import server_context
from mgfast.tls.outcome import HandshakeOutcome
from mgfast.tls.peer_verifier import PeerVerifier
from mgfast.tls.rejection_log import RejectionLog
from mgfast.tls.reloader import TlsReloader
from mgfast.tls.server_protocol import CLOSED, OPEN, TlsServerProtocol
from tests.seed_ca import SeedCa
from tests.test_http_protocol import EchoApp, FakeTransport


def leaf_der(path: Path) -> bytes:
    """The DER of the certificate in ``path`` (openssl ca writes its text dump before it)."""
    text = path.read_text()
    return ssl.PEM_cert_to_DER_cert(text[text.index("-----BEGIN CERTIFICATE-----"):])


class PeerTransport(FakeTransport):
    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default


class App(asyncio.Protocol):
    """Echoes what it reads, upper-cased."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = b""
        self.lost = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += bytes(data)
        self.transport.write(bytes(data).upper())

    def connection_lost(self, exc) -> None:
        self.lost = True


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> SeedCa:
    return SeedCa.create(tmp_path_factory.mktemp("seed"))


def server_tls(seed: SeedCa, *, crl: bool = True, timeout: float = 5.0) -> ServerTls:
    return ServerTls(identity=Identity(certificate=seed.server_crt, key=seed.server_key),
                     peers=Peers(lookup_hash_directory=seed.hash_dir, crl_enabled=crl),
                     handshake_timeout=timeout)


class Client:
    """A TLS client on memory BIOs; ``pump`` moves records both ways until neither moves."""

    def __init__(self, seed: SeedCa, *, with_certificate: bool = True) -> None:
        context = ssl.create_default_context(cafile=str(seed.ca_crt))
        if with_certificate:
            context.load_cert_chain(str(seed.client_crt), str(seed.client_key))
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing,
                                       server_hostname="127.0.0.1")

    def pump(self, server: TlsServerProtocol, transport: PeerTransport) -> None:
        for _ in range(20):
            moved = False
            try:
                self.sslobj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            data = self.outgoing.read()
            if data:
                server.data_received(data)
                moved = True
            if transport.out:
                self.incoming.write(bytes(transport.out))
                transport.out.clear()
                moved = True
            if not moved:
                return

    def read(self) -> bytes:
        try:
            return self.sslobj.read(65536)
        except ssl.SSLWantReadError:
            return b""


def connect(seed: SeedCa, tls: ServerTls, outcomes: list, **client_args):
    server = TlsServerProtocol(server_context(tls), App(), handshake_timeout=tls.handshake_timeout,
                               on_handshake=lambda outcome, _: outcomes.append(outcome))
    transport = PeerTransport()
    server.connection_made(transport)
    client = Client(seed, **client_args)
    client.pump(server, transport)
    return server, transport, client


def test_a_verified_client_gets_through_and_plaintext_flows_both_ways(seed) -> None:
    async def scenario() -> None:
        outcomes: list[HandshakeOutcome] = []
        server, transport, client = connect(seed, server_tls(seed), outcomes)
        assert [o.reason for o in outcomes] == ["ok"] and server.state == OPEN
        assert outcomes[0].peer == "127.0.0.1:40000" and "media-gateway-client" in \
            outcomes[0].subject
        assert server.peer_leaf_der == leaf_der(seed.client_crt)
        client.sslobj.write(b"hello")
        client.pump(server, transport)
        assert server.app.received == b"hello"
        await asyncio.sleep(0)  # the app's writes of one iteration leave as one record
        client.pump(server, transport)
        assert client.read() == b"HELLO"
        server.connection_lost(None)
        assert server.state == CLOSED and server.app.lost

    asyncio.run(scenario())


def test_the_message_callback_is_taken_off_once_the_certificate_is_seen(seed) -> None:
    """Python is called per record only during the handshake, not for every request after."""
    async def scenario() -> None:
        calls: list[int] = []

        def counting(*args) -> None:
            calls.append(args[3])
            peer_certificate._on_message(*args)

        context = server_context(server_tls(seed))
        peer_certificate._set_raw_callback(context, counting)
        server = TlsServerProtocol(context, App(), handshake_timeout=5.0,
                                   on_handshake=lambda outcome, _: None)
        transport = PeerTransport()
        server.connection_made(transport)
        client = Client(seed)
        client.pump(server, transport)
        assert server.state == OPEN and server.peer_leaf_der == leaf_der(seed.client_crt)
        during_handshake = len(calls)
        assert during_handshake > 0
        for _ in range(5):
            client.sslobj.write(b"ping")
            client.pump(server, transport)
            await asyncio.sleep(0)
            client.pump(server, transport)
            assert client.read() == b"PING"
        assert len(calls) == during_handshake

    asyncio.run(scenario())


class CountingHttp(HttpServerProtocol):
    """Counts the plaintext that came through data_received (and so through the parser)."""

    parsed = 0

    def data_received(self, data) -> None:
        self.parsed += len(data)
        super().data_received(data)


def test_a_large_body_is_decrypted_straight_into_its_buffer_and_pipelining_goes_on(seed):
    async def scenario() -> None:
        app = EchoApp()
        http = CountingHttp(app, HttpLimits())
        server = TlsServerProtocol(server_context(server_tls(seed)), http, handshake_timeout=5,
                                   on_handshake=lambda outcome, _: None)
        transport = PeerTransport()
        server.connection_made(transport)
        client = Client(seed)
        client.pump(server, transport)
        body = bytes(range(256)) * 400  # 100 KiB: several TLS records
        client.sslobj.write(b"POST /big HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
                            + body + b"POST /next HTTP/1.1\r\nContent-Length: 2\r\n\r\nok")
        client.pump(server, transport)
        await asyncio.sleep(0.05)
        assert [(r.path, bytes(r.body)) for r in app.seen] == [(b"/big", body), (b"/next", b"ok")]
        assert type(app.seen[0].body) is SendBuffer
        assert http.parsed < 20_000  # the head and the first record; the rest went uncopied
        client.pump(server, transport)
        answers = b""
        while chunk := client.read():
            answers += chunk
        assert answers.count(b"HTTP/1.1 200 OK") == 2 and answers.endswith(b"POST /next ok")

    asyncio.run(scenario())


def test_a_client_without_a_certificate_is_refused_with_the_alert_flushed(seed) -> None:
    async def scenario() -> None:
        outcomes: list[HandshakeOutcome] = []
        server, transport, client = connect(seed, server_tls(seed), outcomes,
                                            with_certificate=False)
        assert [o.reason for o in outcomes] == ["no_certificate"]
        assert server.state == CLOSED and transport.closed
        assert server.app.received == b"" and not server.app.lost  # the app never saw it
        with pytest.raises(ssl.SSLError, match="alert certificate required"):
            client.sslobj.read(1)  # the alert reached the client before the close

    asyncio.run(scenario())


def test_a_handshake_that_does_not_finish_times_out(seed) -> None:
    async def scenario() -> None:
        outcomes: list[HandshakeOutcome] = []
        server = TlsServerProtocol(server_context(server_tls(seed)), App(),
                                   handshake_timeout=0.01,
                                   on_handshake=lambda outcome, _: outcomes.append(outcome))
        transport = PeerTransport()
        server.connection_made(transport)
        await asyncio.sleep(0.05)
        assert [o.reason for o in outcomes] == ["timeout"] and transport.closed

    asyncio.run(scenario())


class Live:
    """What the reloader needs of a live connection."""

    def __init__(self, leaf_der: bytes) -> None:
        self.state = OPEN
        self.peer = "127.0.0.1:40000"
        self.peer_leaf_der = leaf_der
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_the_reloader_rebuilds_only_on_a_change_and_cuts_revoked_live_connections(tmp_path):
    seed = SeedCa.create(tmp_path)
    reloader = TlsReloader(server_tls(seed))
    live = Live(leaf_der(seed.client_crt))
    reloader.track(live)
    context = reloader.context
    assert reloader.reload() is False and reloader.context is context  # nothing changed
    seed.revoke_client()  # a new HASH.r1 in the directory
    assert reloader.reload() is True and reloader.context is not context
    assert live.closed and reloader.closed_by_reason == {"revoked": 1}
    assert reloader.reload() is False  # seen
    assert reloader.reload(force=True) is True and reloader.reloads == 2


def test_a_reload_that_fails_keeps_the_previous_context(tmp_path, caplog) -> None:
    seed = SeedCa.create(tmp_path)
    reloader = TlsReloader(server_tls(seed))
    context = reloader.context
    seed.server_key.write_text("not a key\n")
    assert reloader.reload() is False and reloader.context is context
    assert "TLS reload failed" in caplog.text


def test_peer_verifier_verdicts(tmp_path) -> None:
    seed = SeedCa.create(tmp_path)
    leaf = leaf_der(seed.client_crt)
    assert PeerVerifier(seed.hash_dir, True).verdict(leaf) is None
    assert PeerVerifier(seed.hash_dir, True).verdict(b"\x30\x03junk") == "bad_certificate"
    # a serial in its issuer's newest CRL counts even where OpenSSL chose another CRL: looked
    # up by the issuer hash `openssl x509 -issuer_hash` prints
    issuer = subprocess.run(["openssl", "x509", "-in", str(seed.client_crt), "-noout",
                             "-issuer_hash"], capture_output=True, text=True,
                            check=True).stdout.strip()
    serial = x509.load_der_x509_certificate(leaf).serial_number
    listed = PeerVerifier(seed.hash_dir, False)  # OpenSSL checks no CRL here
    listed.revoked = {issuer: {serial + 1}}
    assert listed.verdict(leaf) is None
    listed.revoked = {issuer: {serial}}
    assert listed.verdict(leaf) == "revoked"
    seed.revoke_client()
    assert PeerVerifier(seed.hash_dir, True).verdict(leaf) == "revoked"
    assert PeerVerifier(seed.hash_dir, False).verdict(leaf) is None  # CRLs off: still valid
    empty = tmp_path / "empty"
    empty.mkdir()
    assert PeerVerifier(empty, False).verdict(leaf) == "unknown_ca"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def outcome(reason: str = "revoked", peer: str = "10.0.0.1:5000", serial: str = "01"
            ) -> HandshakeOutcome:
    return HandshakeOutcome(reason=reason, duration=0.001, peer=peer, serial=serial)


def test_the_rejection_log_says_each_rejection_once_per_window(caplog) -> None:
    caplog.set_level(logging.WARNING, "mgfast.tls")
    clock = Clock()
    rejections = RejectionLog(window=60.0, clock=clock)

    def logged() -> list[tuple[str, str, int]]:
        return [(r.reason, r.peer, r.similar_since_last) for r in caplog.records]

    rejections(outcome(reason="ok"))  # successes are not rejections
    rejections(outcome())
    rejections(outcome(peer="10.0.0.1:5001"))  # same address, another port: the same client
    clock.now += 59.9
    rejections(outcome())
    assert logged() == [("revoked", "10.0.0.1:5000", 0)]
    rejections(outcome(peer="10.0.0.2:5000"))  # another client
    rejections(outcome(reason="unknown_ca"))  # another reason
    clock.now += 0.2  # the first window is over: logged again, with what it held back
    rejections(outcome())
    assert logged() == [("revoked", "10.0.0.1:5000", 0), ("revoked", "10.0.0.2:5000", 0),
                        ("unknown_ca", "10.0.0.1:5000", 0), ("revoked", "10.0.0.1:5000", 2)]


def test_only_a_handshake_opens_a_connection(seed) -> None:
    """The checked transition: a connection closed (say, by its handshake timeout) cannot be
    opened by a handshake step that completes afterwards."""
    async def scenario() -> None:
        server = TlsServerProtocol(server_context(server_tls(seed)), App(), handshake_timeout=5,
                                   on_handshake=lambda outcome, _: None)
        server.connection_made(PeerTransport())
        server.abort()
        with pytest.raises(RuntimeError, match="closed -> open"):
            server._opened()
        assert server.state is CLOSED

    asyncio.run(scenario())
