"""Client-certificate authentication: the seed guide's "Testing / Server" section and beyond,
with certificates from the openssl CLI (tests.seed_ca) and ``mgfast pki``, curl as the client."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.gateway_process import GatewayProcess, server_config
from tests.seed_ca import SeedCa
from tests.util import free_port, scaled, wait_until

HEALTHY = {"status": "healthy"}


def seed_server_config(seed: SeedCa, tmp_path: Path, *, crl_enabled: bool = True,
                       **tls_extra) -> dict:
    """The seed's media-gateway-server.json, paths and port adapted."""
    return server_config(f"pub+bind:ipc://{tmp_path}/server", tls={
        "identity": {"certificate": str(seed.server_crt), "key": str(seed.server_key)},
        "peers": {"lookup_hash_directory": str(seed.hash_dir), "crl_enabled": crl_enabled},
        **tls_extra,
    })


def curl(server: GatewayProcess, ca: Path, cert: Path | None = None,
         key: Path | None = None) -> subprocess.CompletedProcess:
    args = ["curl", "-sS", "--cacert", str(ca)]
    if cert is not None:
        args += ["--cert", str(cert), "--key", str(key)]
    return subprocess.run(args + ["-v", f"{server.url}/health"], capture_output=True, text=True,
                          timeout=30)


def assert_healthy(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    assert "< HTTP/1.1 200 OK" in result.stderr
    assert json.loads(result.stdout) == HEALTHY


def pki(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "mgfast", "pki", *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def seed(tmp_path) -> SeedCa:
    """The seed's CA (its ca.conf holds absolute paths, so each test makes its own)."""
    return SeedCa.create(tmp_path / "pki")


# ---- the seed guide, step for step --------------------------------------------------------------

def test_seed_guide_server_section_revocation_without_restart(seed, tmp_path):
    with GatewayProcess("server", seed_server_config(seed, tmp_path), tmp_path) as server:
        assert_healthy(curl(server, seed.ca_crt, seed.client_crt, seed.client_key))
        seed.revoke_client()  # openssl ca -revoke; -gencrl; cp as HASH.r1
        result = curl(server, seed.ca_crt, seed.client_crt, seed.client_key)
        assert result.returncode != 0
        assert "error:0A000414:SSL routines::sslv3 alert certificate revoked" in result.stderr
        assert server.proc.poll() is None  # the same process, no restart
        wait_until(lambda: "reason=revoked" in server.log(), what="the rejection to be logged")
        line = next(l for l in server.log().splitlines() if "reason=revoked" in l)
        assert 'subject="CN=media-gateway-client"' in line and 'issuer="CN=media-gateway-ca"' in line


def test_crl_disabled_accepts_a_revoked_certificate(seed, tmp_path):
    seed.revoke_client()
    config = seed_server_config(seed, tmp_path, crl_enabled=False)
    with GatewayProcess("server", config, tmp_path) as server:
        assert_healthy(curl(server, seed.ca_crt, seed.client_crt, seed.client_key))


def test_unknown_ca_and_missing_certificate_get_their_alerts(seed, tmp_path):
    foreign = tmp_path / "foreign"
    pki("init-ca", str(foreign), "--cn", "someone-else")
    pki("issue-client", str(foreign), "--cn", "intruder", "--out", str(tmp_path / "intruder"))
    with GatewayProcess("server", seed_server_config(seed, tmp_path), tmp_path) as server:
        result = curl(server, seed.ca_crt, tmp_path / "intruder.crt", tmp_path / "intruder.key")
        assert result.returncode != 0 and "alert unknown ca" in result.stderr
        result = curl(server, seed.ca_crt)
        assert result.returncode != 0
        assert "alert certificate required" in result.stderr
        wait_until(lambda: "reason=no_certificate" in server.log()
                   and "reason=unknown_ca" in server.log(), what="both rejections logged")


def test_expired_client_certificate_is_rejected(tmp_path):
    ca = tmp_path / "ca"
    pki("init-ca", str(ca), "--cn", "pki-ca")
    pki("issue-server", str(ca), "--cn", "server", "--ip", "127.0.0.1", "--out",
        str(tmp_path / "server"))
    pki("issue-client", str(ca), "--cn", "old", "--not-before", "2020-01-01T00:00:00Z",
        "--not-after", "2021-01-01T00:00:00Z", "--out", str(tmp_path / "old"))
    hash_dir = tmp_path / "hash"
    pki("install", str(hash_dir), str(ca / "ca.crt"))
    pki("gen-crl", str(ca), "--install", str(hash_dir))
    seed = SeedCa(tmp_path)  # only for the config's file names
    config = seed_server_config(seed, tmp_path)
    config["tls"]["identity"] = {"certificate": str(tmp_path / "server.crt"),
                                 "key": str(tmp_path / "server.key")}
    config["tls"]["peers"]["lookup_hash_directory"] = str(hash_dir)
    with GatewayProcess("server", config, tmp_path) as server:
        result = curl(server, ca / "ca.crt", tmp_path / "old.crt", tmp_path / "old.key")
        assert result.returncode != 0 and "alert certificate expired" in result.stderr
        wait_until(lambda: "reason=expired" in server.log(), what="the rejection logged")


def test_pki_flow_with_a_second_ca_added_while_running_and_an_expired_crl(tmp_path):
    """The seed's flow driven by ``mgfast pki``; a second CA arrives while the server runs."""
    ca, hash_dir = tmp_path / "ca", tmp_path / "hash"
    pki("init-ca", str(ca), "--cn", "first-ca")
    pki("issue-server", str(ca), "--cn", "server", "--ip", "127.0.0.1", "--out",
        str(tmp_path / "server"))
    pki("issue-client", str(ca), "--cn", "client-1", "--out", str(tmp_path / "client-1"))
    pki("install", str(hash_dir), str(ca / "ca.crt"))
    pki("gen-crl", str(ca), "--install", str(hash_dir))
    config = seed_server_config(SeedCa(tmp_path), tmp_path)
    config["tls"]["identity"] = {"certificate": str(tmp_path / "server.crt"),
                                 "key": str(tmp_path / "server.key")}
    config["tls"]["peers"]["lookup_hash_directory"] = str(hash_dir)
    with GatewayProcess("server", config, tmp_path) as server:
        assert_healthy(curl(server, ca / "ca.crt", tmp_path / "client-1.crt",
                            tmp_path / "client-1.key"))
        # A second CA, its client, and a CRL that expired an hour ago.
        second = tmp_path / "second"
        pki("init-ca", str(second), "--cn", "second-ca")
        pki("issue-client", str(second), "--cn", "client-2", "--out", str(tmp_path / "client-2"))
        result = curl(server, ca / "ca.crt", tmp_path / "client-2.crt", tmp_path / "client-2.key")
        assert "alert unknown ca" in result.stderr  # not installed yet
        pki("install", str(hash_dir), str(second / "ca.crt"))
        pki("gen-crl", str(second), "--install", str(hash_dir))
        assert_healthy(curl(server, ca / "ca.crt", tmp_path / "client-2.crt",
                            tmp_path / "client-2.key"))
        # revoke client-1 with mgfast pki: rejected, no restart
        pki("revoke", str(ca), str(tmp_path / "client-1.crt"))
        pki("gen-crl", str(ca), "--install", str(hash_dir))
        result = curl(server, ca / "ca.crt", tmp_path / "client-1.crt", tmp_path / "client-1.key")
        assert "alert certificate revoked" in result.stderr
    # A CA whose only CRL expired: a loud warning at start-up, and its clients are refused.
    third = tmp_path / "third"
    pki("init-ca", str(third), "--cn", "third-ca")
    pki("issue-client", str(third), "--cn", "client-3", "--out", str(tmp_path / "client-3"))
    pki("install", str(hash_dir), str(third / "ca.crt"))
    pki("gen-crl", str(third), "--last-update", "2020-01-01T00:00:00Z",
        "--next-update", "2020-02-01T00:00:00Z", "--install", str(hash_dir))
    config["port"] = free_port()
    with GatewayProcess("server", config, tmp_path) as server:
        assert "CRL EXPIRED" in server.log()
        result = curl(server, ca / "ca.crt", tmp_path / "client-3.crt", tmp_path / "client-3.key")
        assert result.returncode != 0
        wait_until(lambda: "reason=crl_expired" in server.log(), what="crl_expired logged")


# ---- live connections, timeouts, rotation -------------------------------------------------------

def client_tls(seed: SeedCa) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(seed.ca_crt))
    context.load_cert_chain(str(seed.client_crt), str(seed.client_key))
    return context


def get_health(sock: ssl.SSLSocket) -> bytes:
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock.recv(4096)


def test_server_prefers_aes128_gcm_and_serves_clients_that_offer_only_aes256(seed, tmp_path):
    """Python's and OpenSSL's clients offer AES-256-GCM first; the server picks AES-128-GCM
    (a third cheaper per byte). A client that offers AES-256-GCM alone still gets it."""
    config = seed_server_config(seed, tmp_path)
    with GatewayProcess("server", config, tmp_path):
        raw = socket.create_connection(("127.0.0.1", config["port"]), timeout=10)
        with client_tls(seed).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert b"200 OK" in get_health(tls)
            assert tls.cipher()[:2] == ("TLS_AES_128_GCM_SHA256", "TLSv1.3")
        only_256 = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{config['port']}", "-brief",
             "-ciphersuites", "TLS_AES_256_GCM_SHA384", "-CAfile", str(seed.ca_crt),
             "-cert", str(seed.client_crt), "-key", str(seed.client_key)],
            input=b"", capture_output=True, timeout=20)
        assert b"Ciphersuite: TLS_AES_256_GCM_SHA384" in only_256.stderr, only_256.stderr


def test_live_connection_is_cut_within_the_bound_after_revocation(seed, tmp_path):
    config = seed_server_config(seed, tmp_path,
                                recheck_interval={"secs": 1, "nanos": 0})
    with GatewayProcess("server", config, tmp_path) as server:
        raw = socket.create_connection(("127.0.0.1", config["port"]), timeout=10)
        with client_tls(seed).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert b"200 OK" in get_health(tls)
            seed.revoke_client()
            revoked_at = time.monotonic()
            tls.settimeout(10)
            try:
                data = tls.recv(4096)
                while data:  # only a close_notify or EOF may come
                    data = tls.recv(4096)
            except (ssl.SSLError, ConnectionError):
                pass
            assert time.monotonic() - revoked_at < scaled(4)  # recheck_interval 1 s, with slack
        assert "closing a live connection" in server.log()


def test_handshake_timeout_closes_a_silent_connection(seed, tmp_path):
    config = seed_server_config(seed, tmp_path,
                                handshake_timeout={"secs": 0, "nanos": 300_000_000})
    with GatewayProcess("server", config, tmp_path) as server:
        with socket.create_connection(("127.0.0.1", config["port"]), timeout=5) as s:
            started = time.monotonic()
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
            assert time.monotonic() - started < scaled(3)
        wait_until(lambda: "reason=timeout" in server.log(), what="timeout logged")


def test_sighup_rotates_the_server_certificate_and_keeps_open_connections(seed, tmp_path):
    with GatewayProcess("server", seed_server_config(seed, tmp_path), tmp_path) as server:
        raw = socket.create_connection(("127.0.0.1", server.config["port"]), timeout=10)
        with client_tls(seed).wrap_socket(raw, server_hostname="127.0.0.1") as open_conn:
            assert b"200 OK" in get_health(open_conn)
            old_serial = open_conn.getpeercert()["serialNumber"]
            # Issue a new server certificate with the seed's own openssl ca, in place.
            seed.run('openssl req -new -key "${CA_DIR}/certs/server.key" -out '
                     '"${CA_DIR}/certs/server2.csr" -subj "/CN=media-gateway-server-2"\n'
                     'openssl ca -batch -config "${CA_DIR}/ca.conf" -in '
                     '"${CA_DIR}/certs/server2.csr" -out "${CA_DIR}/certs/server.crt" '
                     '-extfile <(echo "subjectAltName=IP:127.0.0.1")')
            server.proc.send_signal(signal.SIGHUP)

            def new_serial() -> str:
                raw2 = socket.create_connection(("127.0.0.1", server.config["port"]), timeout=10)
                with client_tls(seed).wrap_socket(raw2, server_hostname="127.0.0.1") as fresh:
                    return fresh.getpeercert()["serialNumber"]

            wait_until(lambda: new_serial() != old_serial, what="the new server certificate")
            assert b"200 OK" in get_health(open_conn)  # the old connection still serves


# ---- start-up checks ---------------------------------------------------------------------------

def start_fails(config: dict, tmp_path: Path) -> str:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([sys.executable, "-m", "mgfast", "server", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_empty_hash_directory_is_refused(seed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    config = seed_server_config(seed, tmp_path)
    config["tls"]["peers"]["lookup_hash_directory"] = str(empty)
    assert "no CA certificate" in start_fails(config, tmp_path)


def test_crl_enabled_with_a_ca_without_crl_is_refused(seed, tmp_path):
    for crl in seed.hash_dir.glob("*.r*"):
        crl.unlink()
    message = start_fails(seed_server_config(seed, tmp_path), tmp_path)
    assert "has no CRL" in message and str(seed.hash_dir) in message


# ---- a streaming client whose certificate is revoked ------------------------------------------

def test_client_revoked_mid_stream_is_cut_keeps_its_messages_and_recovers(seed, tmp_path):
    from tests import savant_peers as sp
    from tests.test_client import client_config, plan, stop_client
    out = f"ipc://{tmp_path}/out.sock"
    into = f"ipc://{tmp_path}/in.sock"
    sconfig = seed_server_config(seed, tmp_path, recheck_interval={"secs": 1, "nanos": 0})
    sconfig["out_stream"]["url"] = f"dealer+connect:{out}"
    sconfig["workers"] = 1
    tls = {"root_certificate": str(seed.ca_crt),
           "identity": {"certificate": str(seed.client_crt), "key": str(seed.client_key)}}
    before, during, after = plan(2, 10), plan(2, 5), plan(2, 3)
    before = [(t, b"before:" + e) for t, e in before]
    during = [(t, b"during:" + e) for t, e in during]
    after = [(t, b"after:" + e) for t, e in after]
    cconfig = client_config(f"router+bind:{into}", f"https://127.0.0.1:{sconfig['port']}",
                            tls=tls)
    with sp.SavantReader(f"router+bind:{out}") as reader, \
            GatewayProcess("server", sconfig, tmp_path) as server:
        client = GatewayProcess("client", cconfig, tmp_path)
        with sp.SavantWriter(f"dealer+connect:{into}") as writer, \
                contextlib.ExitStack() as cleanup:
            cleanup.callback(lambda: client.stop())  # whichever client runs, if a check fails
            for topic, extra in before:
                writer.send(topic, sp.user_data(topic), extra)
            reader.wait_for(len(before), timeout=30)
            # Revoke: the client's open keep-alive connection is cut within the bound.
            seed.revoke_client()
            revoked_at = time.monotonic()
            wait_until(lambda: "closing a live connection" in server.log(), timeout=10,
                       what="the live connection to be cut")
            assert time.monotonic() - revoked_at < scaled(4)  # recheck_interval 1 s, with slack
            for topic, extra in during:
                writer.send(topic, sp.user_data(topic), extra)
            wait_until(lambda: "reason=revoked" in server.log()
                       and "delivery failed; retrying" in client.log(), timeout=20,
                       what="the client's retries to be refused as revoked")
            assert len(reader.messages) == len(before)  # nothing got through after the cut
            # A new certificate, issued in place: the client picks it up on its next retry.
            seed.run('openssl genpkey -algorithm RSA -out "${CA_DIR}/certs/client2.key"\n'
                     'openssl req -new -key "${CA_DIR}/certs/client2.key" -out '
                     '"${CA_DIR}/certs/client2.csr" -subj "/CN=media-gateway-client-2"\n'
                     'openssl ca -batch -config "${CA_DIR}/ca.conf" -in '
                     '"${CA_DIR}/certs/client2.csr" -out "${CA_DIR}/certs/client2.crt" '
                     '-extfile <(echo "extendedKeyUsage=clientAuth")\n'
                     'cp "${CA_DIR}/certs/client2.key" "${CA_DIR}/certs/client.key.new"\n'
                     'cp "${CA_DIR}/certs/client2.crt" "${CA_DIR}/certs/client.crt.new"\n'
                     'mv "${CA_DIR}/certs/client.key.new" "${CA_DIR}/certs/client.key"\n'
                     'mv "${CA_DIR}/certs/client.crt.new" "${CA_DIR}/certs/client.crt"\n')
            got = reader.wait_for(len(before) + len(during), timeout=30)
            stats = stop_client(client)  # restart the client: nothing it read is missing
            client = GatewayProcess("client", cconfig, tmp_path)
            for topic, extra in after:
                writer.send(topic, sp.user_data(topic), extra)
            got = reader.wait_for(len(before) + len(during) + len(after), timeout=30)
            stop_client(client)
    assert stats["undelivered"] == 0 and stats["retried"] > 0
    for topic in ("cam-0", "cam-1"):
        extras = [m.extra[0] for m in got if m.topic == topic.encode()]
        expected = [e for t, e in before + during + after if t == topic]
        # at-least-once: a message in flight at the cut may come twice, never out of order
        assert list(dict.fromkeys(extras)) == expected
