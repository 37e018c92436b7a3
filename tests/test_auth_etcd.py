"""The user store against a real etcd: initial read, watch, outage and resync, TLS with a
client certificate, user/password credentials, and ``mgfast users`` writing what it reads."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time

import pytest

from mgfast.auth.config import CacheConfig, EtcdConfig, EtcdCredentials, EtcdTls
from mgfast.auth.passwords import verify
from mgfast.auth.records import RecordError, UserRecord
from mgfast.auth.store import UserStore
from tests.etcd_peer import HASH1, HASH2, EtcdPeer
from tests.seed_ca import SeedCa
from tests.util import arun


def record(password_hash: str, **extra) -> str:
    return json.dumps({"password_hash": password_hash, **extra})


def etcd_config(etcd: EtcdPeer, **overrides) -> EtcdConfig:
    fields = dict(endpoints=(f"127.0.0.1:{etcd.client_port}",), secure=etcd.tls is not None,
                  path="/users/", data_format="json", connect_timeout=2.0, lease_timeout=60.0,
                  cache=CacheConfig(size=10))
    fields.update(overrides)
    return EtcdConfig(**fields)


async def until(check, timeout: float = 5.0, what: str = "condition") -> float:
    """Await ``check()`` becoming true; returns the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
def etcd(tmp_path):
    with EtcdPeer(tmp_path / "etcd") as peer:
        yield peer


def test_users_are_read_then_watched_and_an_outage_resyncs(etcd, caplog):
    etcd.put("/users/user1", record(HASH1))
    etcd.put("/users-other/x", record(HASH1))  # outside the prefix ("/users/")

    async def body():
        store = UserStore(etcd_config(etcd))
        assert not store.synced and store.get("user1") is None
        store.start()
        await until(lambda: store.synced, what="first sync")
        assert set(store.raw) == {"user1"} and store.get("user1") == UserRecord(HASH1, None)
        # added, changed, deleted: each within a second
        await asyncio.to_thread(etcd.put, "/users/user2", record(HASH2))
        assert await until(lambda: store.get("user2") is not None) < 1.0
        await asyncio.to_thread(etcd.put, "/users/user2", record(HASH1,
                                allowed_routing_labels={"set": "a"}))
        assert await until(lambda: store.get("user2").password_hash == HASH1) < 1.0
        assert store.get("user2").rule.allows([b"a"])
        await asyncio.to_thread(etcd.delete, "/users/user2")
        assert await until(lambda: store.get("user2") is None) < 1.0
        # a broken record is logged with its key and a fix, and answered as such
        with caplog.at_level(logging.ERROR, "mgfast.auth"):
            await asyncio.to_thread(etcd.put, "/users/broken", "{nope")
            await until(lambda: "broken" in store.raw)
        assert isinstance(store.get("broken"), RecordError)
        (line,) = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert line.key == "/users/broken" and "mgfast users put" in line.fix
        # etcd dies: the store keeps its users, says it is not connected, and comes back
        await asyncio.to_thread(etcd.kill)
        await until(lambda: not store.connected and store.failing, what="the loss to be noticed")
        assert store.synced and store.get("user1") is not None
        await asyncio.to_thread(etcd.start)
        await asyncio.to_thread(etcd.delete, "/users/user1")
        await asyncio.to_thread(etcd.put, "/users/user3", record(HASH2))
        await until(lambda: store.connected and store.get("user3") is not None
                    and store.get("user1") is None, timeout=10, what="the resync")
        assert store.resyncs >= 1
        await store.stop()

    arun(body(), timeout=40)


def test_not_synced_while_etcd_is_unreachable(tmp_path):
    from tests.util import free_port
    config = EtcdConfig(endpoints=(f"127.0.0.1:{free_port()}",), secure=False, path="/users/",
                        data_format="json", connect_timeout=0.3, lease_timeout=60.0,
                        cache=CacheConfig(size=10))

    async def body():
        store = UserStore(config)
        store.start()
        await asyncio.sleep(1.0)
        assert not store.synced and not store.connected
        await store.stop()

    arun(body())


def test_the_next_url_is_tried_when_one_is_down(etcd):
    from tests.util import free_port
    etcd.put("/users/user1", record(HASH1))
    config = etcd_config(etcd, connect_timeout=0.3, endpoints=(
        f"127.0.0.1:{free_port()}", f"127.0.0.1:{etcd.client_port}"))

    async def body():
        store = UserStore(config)
        store.start()
        await until(lambda: store.synced, what="sync through the second url")
        assert store.client.endpoint == f"127.0.0.1:{etcd.client_port}"
        await store.stop()

    arun(body())


@pytest.fixture
def seed(tmp_path) -> SeedCa:
    return SeedCa.create(tmp_path / "pki")


def test_tls_with_a_client_certificate(seed, tmp_path, caplog):
    with EtcdPeer(tmp_path / "etcd", tls=seed) as etcd:
        etcd.put("/users/user1", record(HASH1))
        good = etcd_config(etcd, tls=EtcdTls(root_certificate=seed.ca_crt,
                                             certificate=seed.client_crt, key=seed.client_key))
        no_identity = etcd_config(etcd, tls=EtcdTls(root_certificate=seed.ca_crt),
                                  connect_timeout=0.5)

        async def body():
            store = UserStore(good)
            store.start()
            await until(lambda: store.synced, what="sync over TLS")
            assert store.get("user1") is not None
            await asyncio.to_thread(etcd.put, "/users/user2", record(HASH2))
            await until(lambda: store.get("user2") is not None)
            await store.stop()
            refused = UserStore(no_identity)
            with caplog.at_level(logging.WARNING, "mgfast.auth"):
                refused.start()
                await asyncio.sleep(1.5)
            assert not refused.synced
            await refused.stop()
            assert any("etcd unavailable" in r.getMessage() for r in caplog.records)

        arun(body(), timeout=30)


def test_user_and_password_credentials(tmp_path, caplog):
    with EtcdPeer(tmp_path / "etcd", users={"gateway": "gw-pass"}) as etcd:
        etcd.put("/users/user1", record(HASH1))

        async def body():
            store = UserStore(etcd_config(etcd, credentials=EtcdCredentials(
                username="gateway", password="gw-pass")))
            store.start()
            await until(lambda: store.synced, what="sync with credentials")
            await asyncio.to_thread(etcd.put, "/users/user2", record(HASH2))
            await until(lambda: store.get("user2") is not None)
            await store.stop()
            wrong = UserStore(etcd_config(etcd, credentials=EtcdCredentials(
                username="gateway", password="nope")))
            with caplog.at_level(logging.WARNING, "mgfast.auth"):
                wrong.start()
                await asyncio.sleep(1.0)
            assert not wrong.synced
            await wrong.stop()
            (warning,) = [r for r in caplog.records if "etcd unavailable" in r.getMessage()]
            assert "authentication failed" in warning.error
            anonymous = UserStore(etcd_config(etcd))
            anonymous.start()
            await asyncio.sleep(1.0)
            assert not anonymous.synced  # etcd with auth on refuses a reader without a token
            await anonymous.stop()

        arun(body(), timeout=30)


def users_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mgfast", "users", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_users_cli_puts_lists_and_deletes_what_the_server_reads(tmp_path):
    with EtcdPeer(tmp_path / "etcd", users={"gateway": "gw-pass"}) as etcd:
        for fmt in ("json", "yaml"):  # json first: yaml stops after its put
            config = tmp_path / f"server-{fmt}.json"
            config.write_text(json.dumps({
                "ip": "127.0.0.1", "port": 8080, "out_stream": {"url": "pub+bind:ipc:///tmp/x"},
                "auth": {"basic": {"etcd": {
                    "urls": [etcd.url], "path": f"/{fmt}-users", "data_format": fmt,
                    "credentials": {"username": "gateway", "password": "gw-pass"},
                    "connect_timeout": {"secs": 2, "nanos": 0},
                    "lease_timeout": {"secs": 60, "nanos": 0}, "cache": {"size": 10}},
                    "cache": {"size": 10}}}}))
            put = users_cli("put", str(config), "user1", stdin="password1\n")
            assert put.returncode == 0, put.stderr
            raw = etcd.etcdctl("get", f"/{fmt}-users/user1", "--print-value-only").stdout
            from mgfast.auth import records
            stored = records.parse(raw.strip().encode(), fmt)
            assert verify(stored.password_hash, b"password1") and stored.rule is None
            if fmt == "yaml":
                break  # the rest is the same code for both formats
            labelled = users_cli("put", str(config), "cam", "--labels", '{"set": "north"}',
                                 stdin="pw\n")
            assert labelled.returncode == 0, labelled.stderr
            listed = users_cli("list", str(config), "--json")
            users = {u["username"]: u for u in json.loads(listed.stdout)["users"]}
            assert users["user1"]["hash"] == "argon2id"
            assert users["cam"]["allowed_routing_labels"] == {"set": "north"}
            assert users_cli("delete", str(config), "user1").returncode == 0
            missing = users_cli("delete", str(config), "user1")
            assert missing.returncode == 1 and "no user 'user1'" in missing.stderr
        bad = users_cli("put", str(config), "x", "--labels", '{"sett": "a"}', stdin="pw\n")
        assert bad.returncode == 2 and "unknown rule 'sett'" in bad.stderr
        hashed = users_cli("hash", stdin="password1\n")
        assert hashed.returncode == 0 and verify(hashed.stdout.strip(), b"password1")


def test_users_cli_errors_name_the_fix(tmp_path):
    from tests.util import free_port
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"ip": "127.0.0.1", "port": 8080,
                                  "out_stream": {"url": "pub+bind:ipc:///tmp/x"}}))
    result = users_cli("list", str(config))
    assert result.returncode == 2 and "no auth.basic section" in result.stderr
    config.write_text(json.dumps({
        "ip": "127.0.0.1", "port": 8080, "out_stream": {"url": "pub+bind:ipc:///tmp/x"},
        "auth": {"basic": {"etcd": {
            "urls": [f"http://127.0.0.1:{free_port()}"], "path": "/users", "data_format": "json",
            "connect_timeout": {"secs": 0, "nanos": 300000000},
            "lease_timeout": {"secs": 60, "nanos": 0}, "cache": {"size": 10}},
            "cache": {"size": 10}}}}))
    result = users_cli("list", str(config))
    assert result.returncode == 2 and "cannot reach etcd" in result.stderr
    assert "auth.basic.etcd urls" in result.stderr
