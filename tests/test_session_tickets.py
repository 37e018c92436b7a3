"""TLS session tickets: none by default; with ``tls.session_tickets`` one key in all workers,
rotated, and a resumed session of a client revoked since is refused.

In-process: real OpenSSL on both ends through memory BIOs (TlsServerProtocol, TlsReloader).
Processes: ``mgfast server`` with 2 workers, ``openssl s_client -sess_out`` / ``-sess_in`` as
the client (it prints ``Reused, TLSv1.3`` for a resumed session, ``New, TLSv1.3`` otherwise).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from mgfast.config.model import SessionTickets, ServerTls
from mgfast.tls import tickets
from mgfast.tls.context import server_context
from mgfast.tls.outcome import HandshakeOutcome
from mgfast.tls.reloader import TlsReloader
from mgfast.tls.server_protocol import CLOSED, OPEN, TlsServerProtocol
from tests.gateway_process import GatewayProcess
from tests.seed_ca import SeedCa
from tests.test_mtls import seed_server_config
from tests.test_tls_units import App, PeerTransport, leaf_der, server_tls
from tests.util import scaled, wait_until

SECRET = bytes(range(32))
REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> SeedCa:
    return SeedCa.create(tmp_path_factory.mktemp("seed"))


def with_tickets(tls: ServerTls, rotate_interval: float = 3600.0) -> ServerTls:
    return dataclasses.replace(tls, session_tickets=SessionTickets(
        enabled=True, rotate_interval=rotate_interval))


# ---- in-process: memory BIOs -------------------------------------------------------------------

def in_loop(test):
    """Run a synchronous test body inside a running loop (TlsServerProtocol arms timers)."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        async def main():
            return test(*args, **kwargs)
        return asyncio.run(main())
    return wrapper


_client_contexts: dict[Path, ssl.SSLContext] = {}


def client_context(seed: SeedCa) -> ssl.SSLContext:
    """One per CA: a session resumes only through the client context it came from."""
    if seed.workdir not in _client_contexts:
        context = ssl.create_default_context(cafile=str(seed.ca_crt))
        context.load_cert_chain(str(seed.client_crt), str(seed.client_key))
        _client_contexts[seed.workdir] = context
    return _client_contexts[seed.workdir]


def tls12_context(seed: SeedCa) -> ssl.SSLContext:
    key = seed.workdir / "tls1.2"
    if key not in _client_contexts:
        context = ssl.create_default_context(cafile=str(seed.ca_crt))
        context.load_cert_chain(str(seed.client_crt), str(seed.client_key))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        _client_contexts[key] = context
    return _client_contexts[key]


class Connection:
    """One client connection to a TlsServerProtocol; ``session`` offers a saved one."""

    def __init__(self, seed: SeedCa, context: ssl.SSLContext, *,
                 session: ssl.SSLSession | None = None,
                 recheck: TlsReloader | None = None,
                 client: ssl.SSLContext | None = None) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = (client or client_context(seed)).wrap_bio(self.incoming, self.outgoing,
                                              server_hostname="127.0.0.1", session=session)
        self.outcomes: list[HandshakeOutcome] = []
        self.app = App()
        self.server = TlsServerProtocol(
            context, self.app, handshake_timeout=5.0,
            on_handshake=lambda outcome, _: self.outcomes.append(outcome),
            recheck_resumed=recheck.resumed_verdict if recheck is not None else None)
        self.transport = PeerTransport()
        self.server.connection_made(self.transport)
        self.pump()

    def pump(self) -> None:
        """Move records both ways until neither side has more; the client also reads (that is
        when it takes in session tickets)."""
        for _ in range(20):
            for step in (self.client.do_handshake, lambda: self.client.read(1)):
                try:
                    step()
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    pass
                except ssl.SSLError:
                    break
            data = self.outgoing.read()
            if data:
                self.server.data_received(data)
            sent = bytes(self.transport.out)
            self.transport.out.clear()
            if sent:
                self.incoming.write(sent)
            if not data and not sent:
                return

    @property
    def ticket(self) -> ssl.SSLSession | None:
        """The client's session if the server gave it a ticket."""
        session = self.client.session
        return session if session is not None and session.has_ticket else None


def test_ticket_keys_are_one_per_secret_and_period() -> None:
    clock = [7200.5]
    keys = tickets.TicketKeys(SECRET, 3600.0, clock=lambda: clock[0])
    same = tickets.TicketKeys(SECRET, 3600.0, clock=lambda: clock[0])
    assert keys.period() == 2 and len(keys.key(2)) == tickets.KEY_BYTES
    assert keys.key(2) == same.key(2) != keys.key(3)
    assert tickets.TicketKeys(bytes(32), 3600.0).key(2) != keys.key(2)
    assert math.isclose(keys.seconds_to_next_period(), 3599.5)
    clock[0] = 10799.999
    assert keys.period() == 2


@in_loop
def test_the_default_server_context_issues_no_ticket(seed) -> None:
    tls = server_tls(seed)
    context = server_context(tls)
    assert context.num_tickets == 0
    connection = Connection(seed, context)
    assert connection.server.state == OPEN and connection.client.session is not None
    assert connection.ticket is None
    old = Connection(seed, context, client=tls12_context(seed))
    assert old.server.state == OPEN and old.client.version() == "TLSv1.2"
    assert old.ticket is None  # nor the TLS 1.2 ticket extension


@in_loop
def test_a_ticket_from_one_worker_resumes_on_another(seed) -> None:
    tls = with_tickets(server_tls(seed))
    worker_a, worker_b = TlsReloader(tls, SECRET), TlsReloader(tls, SECRET)
    assert worker_a.resumption and worker_a.context.num_tickets == tickets.TICKETS_PER_HANDSHAKE
    first = Connection(seed, worker_a.context, recheck=worker_a)
    assert first.ticket is not None and not first.client.session_reused
    again = Connection(seed, worker_b.context, session=first.ticket, recheck=worker_b)
    assert again.client.session_reused and again.server.state == OPEN
    assert [o.reason for o in again.outcomes] == ["ok"]
    # no Certificate message in a resumed handshake: the session's certificate stands in
    assert again.server.peer_leaf_der == leaf_der(seed.client_crt)
    assert again.ticket is not None  # a fresh ticket for the next time
    tls12 = Connection(seed, worker_a.context, recheck=worker_a, client=tls12_context(seed))
    assert tls12.client.version() == "TLSv1.2" and tls12.ticket is not None
    assert Connection(seed, worker_b.context, session=tls12.ticket, recheck=worker_b,
                      client=tls12_context(seed)).client.session_reused
    # a worker with a secret of its own (one per process: OpenSSL's default) cannot resume it
    other = TlsReloader(tls, bytes(32))
    full = Connection(seed, other.context, session=first.ticket, recheck=other)
    assert not full.client.session_reused and full.server.state == OPEN


def test_without_openssl_access_the_server_runs_without_resumption(seed, monkeypatch,
                                                                    caplog) -> None:
    """Where ctypes cannot reach OpenSSL's ticket keys: logged once, no tickets, no crash."""
    monkeypatch.setattr(tickets, "_FUNCTIONS", None)
    monkeypatch.setattr(tickets, "_warned", False)
    tls = with_tickets(server_tls(seed))
    with caplog.at_level(logging.WARNING, logger="mgfast.tls"):
        first, second = TlsReloader(tls, SECRET), TlsReloader(tls, SECRET)
    assert not first.resumption and not second.resumption
    assert first.context.num_tickets == 0 and second.context.num_tickets == 0
    assert sum("without session resumption" in r.getMessage() for r in caplog.records) == 1


@in_loop
def test_a_rebuilt_context_keeps_the_key_and_the_next_period_changes_it(seed) -> None:
    clock = [1000.0]
    tls = with_tickets(server_tls(seed), rotate_interval=60.0)
    reloader = TlsReloader(tls, SECRET, clock=lambda: clock[0])
    first = Connection(seed, reloader.context, recheck=reloader)
    old_context = reloader.context
    assert reloader.reload(force=True) and reloader.context is not old_context
    assert Connection(seed, reloader.context, session=first.ticket,
                      recheck=reloader).client.session_reused
    clock[0] = 1020.0  # the next period (1020 / 60 = 17, 1000 / 60 = 16.7)
    reloader._rotate()
    assert reloader.ticket_period == 17
    assert first.server.sslobj.session.timeout == 60  # a session lives one key period
    late = Connection(seed, reloader.context, session=first.ticket, recheck=reloader)
    assert not late.client.session_reused  # the old key is gone: a full handshake, accepted
    assert late.server.state == OPEN and [o.reason for o in late.outcomes] == ["ok"]


@in_loop
def test_a_resumed_session_of_a_client_revoked_since_is_refused(tmp_path) -> None:
    seed = SeedCa.create(tmp_path / "pki")  # its own: this test revokes the client
    reloader = TlsReloader(with_tickets(server_tls(seed)), SECRET)
    first = Connection(seed, reloader.context, recheck=reloader)
    assert first.ticket is not None
    assert Connection(seed, reloader.context, session=first.ticket,
                      recheck=reloader).server.state == OPEN
    seed.revoke_client()  # HASH.r1; the reloader's watcher has not run (not started)
    refused = Connection(seed, reloader.context, session=first.ticket, recheck=reloader)
    assert refused.client.session_reused  # OpenSSL resumed it; mgfast then refused it
    assert refused.server.state == CLOSED and refused.app.transport is None
    assert [o.reason for o in refused.outcomes] == ["revoked"]
    outcome = refused.outcomes[0]
    assert "no longer verifies" in outcome.detail
    assert outcome.subject == "CN=media-gateway-client" and outcome.serial
    assert refused.ticket is None or refused.ticket.id == first.ticket.id  # no new ticket
    assert refused.transport.closed


# ---- processes: mgfast server, openssl s_client ------------------------------------------------

def s_client(port: int, seed: SeedCa, *args: str) -> str:
    """One ``openssl s_client`` exchange (GET /health); its stdout and stderr."""
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(seed.ca_crt),
         "-cert", str(seed.client_crt), "-key", str(seed.client_key), "-ign_eof", *args],
        input=REQUEST, capture_output=True, timeout=scaled(30))
    return (result.stdout + result.stderr).decode(errors="replace")


def ticket_server(seed: SeedCa, tmp_path: Path, rotate_secs: int = 3600) -> GatewayProcess:
    config = seed_server_config(seed, tmp_path, session_tickets={
        "enabled": True, "rotate_interval": {"secs": rotate_secs, "nanos": 0}})
    config["workers"] = 2
    return GatewayProcess("server", config, tmp_path)


def test_a_default_server_sends_no_session_ticket(seed, tmp_path) -> None:
    config = seed_server_config(seed, tmp_path)
    config["workers"] = 2
    with GatewayProcess("server", config, tmp_path) as server:
        context = ssl.create_default_context(cafile=str(seed.ca_crt))
        context.load_cert_chain(str(seed.client_crt), str(seed.client_key))
        with socket.create_connection(("127.0.0.1", config["port"]), timeout=scaled(10)) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(REQUEST)
                response = b""
                while chunk := tls.recv(4096):  # tickets would arrive before the response
                    response += chunk
                assert response.startswith(b"HTTP/1.1 200 OK")
                assert tls.session is not None and not tls.session.has_ticket
        saved = tmp_path / "session.pem"
        out = s_client(config["port"], seed, "-sess_out", str(saved))
        assert "New, TLSv1.3" in out and "HTTP/1.1 200 OK" in out
        if saved.exists():  # no ticket, nothing to resume
            assert "Reused" not in s_client(config["port"], seed, "-sess_in", str(saved))
        assert server.proc.poll() is None


def test_a_saved_session_resumes_on_either_worker(seed, tmp_path) -> None:
    with ticket_server(seed, tmp_path) as server:
        port = server.config["port"]
        saved = tmp_path / "session.pem"
        out = s_client(port, seed, "-sess_out", str(saved))
        assert "New, TLSv1.3" in out and "HTTP/1.1 200 OK" in out
        assert "session_tickets=on" in server.log()  # said at start-up
        # 8 connections from 8 source ports: the kernel spreads them over both workers, and
        # every one resumes (a worker with a key of its own would answer "New" about half)
        for _ in range(8):
            out = s_client(port, seed, "-sess_in", str(saved))
            assert "Reused, TLSv1.3" in out and "HTTP/1.1 200 OK" in out, out[-2000:]


def test_a_client_revoked_after_its_ticket_cannot_resume(tmp_path) -> None:
    seed = SeedCa.create(tmp_path / "pki")
    with ticket_server(seed, tmp_path) as server:
        port = server.config["port"]
        saved = tmp_path / "session.pem"
        assert "HTTP/1.1 200 OK" in s_client(port, seed, "-sess_out", str(saved))
        assert "Reused, TLSv1.3" in s_client(port, seed, "-sess_in", str(saved))
        seed.revoke_client()  # HASH.r1 into the hash directory; no signal, no wait
        for _ in range(4):  # on either worker, at once
            out = s_client(port, seed, "-sess_in", str(saved))
            assert "HTTP/1.1 200" not in out, out[-2000:]
        full = s_client(port, seed)  # and a full handshake gets the seed's alert
        assert "HTTP/1.1 200" not in full and "certificate revoked" in full
        wait_until(lambda: "resumed session" in server.log(), what="the refusal to be logged")
        line = next(l for l in server.log().splitlines() if "resumed session" in l)
        assert "reason=revoked" in line and 'subject="CN=media-gateway-client"' in line
        assert server.proc.poll() is None


def test_after_a_key_rotation_an_old_ticket_falls_back_to_a_full_handshake(seed, tmp_path):
    rotate = 2
    with ticket_server(seed, tmp_path, rotate_secs=rotate) as server:
        port = server.config["port"]
        saved = tmp_path / "session.pem"
        # early in a period, so that the ticket is still good for the first resumption
        wait_until(lambda: time.time() % rotate < 0.5, timeout=rotate + 1,
                   what="the start of a key period")
        assert "HTTP/1.1 200 OK" in s_client(port, seed, "-sess_out", str(saved))
        issued_in = math.floor(time.time() / rotate)
        assert "Reused, TLSv1.3" in s_client(port, seed, "-sess_in", str(saved))
        next_period = (issued_in + 1) * rotate
        wait_until(lambda: time.time() > next_period + 0.2, timeout=rotate + 1,
                   what="the next key period")
        out = s_client(port, seed, "-sess_in", str(saved))
        assert "New, TLSv1.3" in out and "HTTP/1.1 200 OK" in out, out[-2000:]
        assert server.proc.poll() is None


def test_without_tickets_a_client_with_nagle_on_is_not_held_back_by_a_delayed_ack(seed, tmp_path):
    """With no ticket to send, the server must ACK the client's Finished at once: otherwise a
    client that leaves Nagle's algorithm on (Python's socket) holds its request back until
    the kernel's delayed ACK, 40 ms, on every connection. Compared with a TCP_NODELAY client,
    which never waits, so the bound holds on a slow machine too."""
    config = seed_server_config(seed, tmp_path)
    config["workers"] = 1
    context = ssl.create_default_context(cafile=str(seed.ca_crt))
    context.load_cert_chain(str(seed.client_crt), str(seed.client_key))

    def exchange_ms(nodelay: bool) -> float:
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", config["port"]), timeout=scaled(10)) as raw:
            if nodelay:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(REQUEST)  # a second small write right after the Finished
                response = b""
                while chunk := tls.recv(4096):
                    response += chunk
        assert response.startswith(b"HTTP/1.1 200 OK")
        return (time.perf_counter() - started) * 1000

    with GatewayProcess("server", config, tmp_path):
        runs = [(exchange_ms(False), exchange_ms(True)) for _ in range(9)]
    nagle = sorted(r[0] for r in runs)[4]
    nodelay = sorted(r[1] for r in runs)[4]
    assert nagle - nodelay < 25, (nagle, nodelay)  # a delayed ACK is 40 ms or more
