"""Basic authentication's parts on their own: config, rules, records, LRU, quarantine,
passwords, the header, the guard's decisions and the codec's routing labels."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from pathlib import Path

import argon2
import orjson
import pytest
from hypothesis import given, settings, strategies as st

from mgfast.auth import config as auth_config, records, rules
from mgfast.auth.config import CacheConfig, CacheUsage, EtcdConfig, QuarantineConfig
from mgfast.auth.guard import RESPONSES, Guard, parse_basic
from mgfast.auth.lru import Lru, check as eviction_check
from mgfast.auth.passwords import PasswordChecker, verify
from mgfast.auth.quarantine import MIN_ENTRIES, NAMES_PER_ADDRESS, Quarantine
from mgfast.auth.records import RecordError, UserRecord
from mgfast.config.errors import ConfigError
from mgfast.config.loader import load_server_config, parse_server_config
from mgfast.media import MediaError, routing_labels
from tests.savant_proto import savant_message, serialize
from tests.util import arun

CONFIGS = Path(__file__).parent / "configs"

# The upstream guide's hashes (argon2i, m=12, t=3, p=1).
GUIDE = {
    "password": "$argon2i$v=19$m=12,t=3,p=1$RzNHVVBjQXo4WUNBUUZYSnlOaGc$9Jmizcl1dv6maVzyIiuMV1OB1P9l6PKLbdmNjJDIgaU",
    "password1": "$argon2i$v=19$m=12,t=3,p=1$YXkzZmx1eTFwVW5hZ0R2S1dXazA$VxVMw2Omh1CeVqry8Cay+4OZ69OGvn4fma2M5rURZhI",
    "password2": "$argon2i$v=19$m=12,t=3,p=1$c0ZYQ1d3VWxabmx0ZUVmWDNIeVk$qHLr2T3xvedA5zZfTZhbNt3sXB9pa/xlFQ9dVmZG8DQ",
}


# ---- config --------------------------------------------------------------------------------

def test_upstream_sample_loads_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths are the working directory's, as upstream
    for name in ("etcd-ca.crt", "etcd-client.crt", "etcd-client.key"):
        (tmp_path / name).write_text("pem\n")
    shutil.copy(CONFIGS / "upstream_server_basic_auth.json", tmp_path / "server.json")
    auth = load_server_config(tmp_path / "server.json").auth
    assert auth.etcd.endpoints == ("etcd:2379",) and auth.etcd.secure
    assert auth.etcd.tls.root_certificate == tmp_path / "etcd-ca.crt"
    assert auth.etcd.tls.certificate == tmp_path / "etcd-client.crt"
    assert auth.etcd.path == "/users/" and auth.etcd.data_format == "json"
    assert auth.etcd.connect_timeout == 30.0 and auth.etcd.lease_timeout == 60.0  # seconds
    assert auth.etcd.cache == CacheConfig(size=10, usage=CacheUsage(period=60.0,
                                                                     evicted_threshold=10))
    assert auth.quarantine == QuarantineConfig(failed_attempt_limit=3, period=60.0)


def _auth_doc(**etcd) -> dict:
    return {"ip": "127.0.0.1", "port": 8080, "out_stream": {"url": "pub+bind:ipc:///tmp/x"},
            "auth": {"basic": {"etcd": {
                "urls": ["http://127.0.0.1:2379"], "path": "/users", "data_format": "json",
                "connect_timeout": {"secs": 1, "nanos": 0},
                "lease_timeout": {"secs": 60, "nanos": 0}, "cache": {"size": 10}, **etcd},
                "cache": {"size": 10}}}}


@pytest.mark.parametrize("etcd, json_path, fragment", [
    ({"urls": ["ftp://etcd:2379"]}, "auth.basic.etcd.urls[0]", "https://HOST:PORT"),
    ({"urls": ["http://a:1", "https://b:2"]}, "auth.basic.etcd.urls", "one scheme"),
    ({"path": "users"}, "auth.basic.etcd.path", '"/users"'),
    ({"tls": {}}, "auth.basic.etcd.tls", "write https://"),
])
def test_auth_config_errors_name_the_field_and_the_fix(tmp_path, etcd, json_path, fragment):
    with pytest.raises(ConfigError) as info:
        parse_server_config(orjson.dumps(_auth_doc(**etcd)), source="s.json", base_dir=tmp_path)
    assert info.value.path == json_path and fragment in str(info.value)
    assert "s.json" in str(info.value)


def test_bare_host_port_and_ipv6_urls(tmp_path):
    doc = _auth_doc(urls=["127.0.0.1:2379", "http://[::1]:2380"])
    auth = parse_server_config(orjson.dumps(doc), source="s", base_dir=tmp_path).auth
    assert auth.etcd.endpoints == ("127.0.0.1:2379", "[::1]:2380") and not auth.etcd.secure


# ---- rules and records ------------------------------------------------------------------------

@pytest.mark.parametrize("rule, labels, allowed", [
    ({"set": "a"}, [b"a"], True),
    ({"set": "a"}, [b"b"], False),
    ({"unset": "a"}, [b"b"], True),
    ({"unset": "a"}, [b"a", b"b"], False),
    ({"and": []}, [], True),
    ({"or": []}, [b"a"], False),
    ({"and": [{"set": "a"}, {"not": {"set": "b"}}]}, [b"a"], True),
    ({"and": [{"set": "a"}, {"not": {"set": "b"}}]}, [b"a", b"b"], False),
    ({"or": [{"set": "x"}, {"set": "y"}]}, [b"y"], True),
    ({"not": {"or": []}}, [], True),
])
def test_rules(rule, labels, allowed):
    assert rules.parse(rule).allows(labels) is allowed
    assert rules.parse(rule).to_json() == rule


@pytest.mark.parametrize("bad, fragment", [
    ({"sett": "a"}, "unknown rule 'sett'"),
    ({"set": 1}, "allowed_routing_labels.set: the label must be a string"),
    ({"and": {"set": "a"}}, "expected a list"),
    ({"and": [{"set": "a"}, {"or": [{}]}]}, "allowed_routing_labels.and[1].or[0]"),
    ("set", "expected one of"),
])
def test_bad_rules_say_where(bad, fragment):
    with pytest.raises(rules.RuleError, match=None) as info:
        rules.parse(bad)
    assert fragment in str(info.value)


def test_deep_rules_are_refused():
    rule: dict = {"set": "a"}
    for _ in range(rules.MAX_DEPTH + 1):
        rule = {"not": rule}
    with pytest.raises(rules.RuleError, match="deeper"):
        rules.parse(rule)


def test_records_json_and_yaml_forms():
    h = GUIDE["password1"]
    expected = UserRecord(h, rules.parse({"and": [{"set": "a"}, {"not": {"set": "b"}}]}))
    as_json = orjson.dumps({"password_hash": h, "allowed_routing_labels":
                            {"and": [{"set": "a"}, {"not": {"set": "b"}}]}, "extra": 1})
    assert records.parse(as_json, "json") == expected
    as_yaml_map = f"password_hash: '{h}'\nallowed_routing_labels:\n  and:\n  - set: a\n" \
                  f"  - not:\n      set: b\n".encode()
    assert records.parse(as_yaml_map, "yaml") == expected
    as_yaml_tags = f"password_hash: '{h}'\nallowed_routing_labels: !and [!set a, !not {{set: b}}]\n"
    assert records.parse(as_yaml_tags.encode(), "yaml") == expected
    nested_tags = f"password_hash: '{h}'\nallowed_routing_labels: !not {{or: [!set x]}}\n"
    assert records.parse(nested_tags.encode(), "yaml").rule == rules.parse(
        {"not": {"or": [{"set": "x"}]}})
    assert records.parse(orjson.dumps({"password_hash": h}), "json") == UserRecord(h, None)
    for fmt in ("json", "yaml"):
        assert records.parse(records.dump(expected, fmt), fmt) == expected


@pytest.mark.parametrize("data, fmt, fragment", [
    (b"{", "json", "not valid JSON"),
    (b"password_hash: [", "yaml", "not valid YAML"),
    (b'{"password_hash": "plain"}', "json", "argon2 PHC"),
    (b'{"allowed_routing_labels": {"set": "a"}}', "json", "password_hash"),
    (b'[1]', "json", "expected an object"),
    (b'{"password_hash": "$argon2i$x"}', "json", "not a well-formed argon2"),
    (b'{"password_hash": "' + GUIDE["password1"].replace("m=12", "m=4194304").encode() + b'"}',
     "json", "m=4194304, t=3, p=1 exceed"),
    (b'{"password_hash": "' + GUIDE["password1"].encode() + b'", "allowed_routing_labels": '
     b'{"x": 1}}', "json", "unknown rule"),
    (b'password_hash: !!python/object:os.system x', "yaml", "not valid YAML"),
])
def test_bad_records(data, fmt, fragment):
    with pytest.raises(RecordError) as info:
        records.parse(data, fmt)
    assert fragment in str(info.value)


# ---- routing labels from the codec, against the protobuf oracle ----------------------------------

@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=8),
       st.sampled_from([0, 5, 6, 7, 8, 9, 10, 11]))
def test_routing_labels_match_the_oracle(labels, kind):
    raw = serialize(savant_message(labels=labels, kind=kind, context={"k": "v"}))
    assert routing_labels(raw) == [label.encode() for label in labels]


def test_routing_labels_of_malformed_message():
    with pytest.raises(MediaError):
        routing_labels(b"\x12\x05ab")


# ---- LRU and the eviction warning ------------------------------------------------------------

def test_lru_counts_evictions_and_warns_in_upstreams_words(caplog):
    cache: Lru[str, int] = Lru("auth check result", 2)
    assert cache.put("a", 1) is None and cache.put("b", 2) is None
    cache.get("a")
    assert cache.put("c", 3) == "b"  # b was least recently used
    cache.put("a", 4)  # replacing is no eviction
    assert cache.evicted == 1 and list(cache.data) == ["c", "a"]
    usage = CacheUsage(period=1.0, evicted_threshold=0)
    with caplog.at_level(logging.WARNING, "mgfast.auth"):
        assert eviction_check(cache, usage, 0.0, 0, time.monotonic() - 1.0)
        assert not eviction_check(cache, usage, 0.0, 1, time.monotonic() - 1.0)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(
        "Evicted entities threshold is exceeded for auth check result: 1 per 1.0")
    assert line.endswith(" seconds")


# ---- quarantine -------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_quarantine_after_the_limit_for_the_period():
    clock = Clock()
    q = Quarantine(QuarantineConfig(failed_attempt_limit=3, period=60), 10, clock)
    q.failure("user1", "10.0.0.1")
    q.failure("user1", "10.0.0.1")
    assert not q.is_quarantined("user1", "10.0.0.1")
    q.failure("user1", "10.0.0.1")
    assert q.is_quarantined("user1", "10.0.0.1") and q.count() == 1
    assert not q.is_quarantined("user1", "10.0.0.2")  # no lock-out from elsewhere
    clock.now += 59.9
    assert q.is_quarantined("user1", "10.0.0.1")
    clock.now += 0.2
    assert not q.is_quarantined("user1", "10.0.0.1") and q.count() == 0


def test_success_resets_the_count():
    q = Quarantine(QuarantineConfig(failed_attempt_limit=3, period=60), 10, Clock())
    for _ in range(5):
        q.failure("u", "a")
        q.failure("u", "a")
        q.success("u", "a")
    assert not q.is_quarantined("u", "a")


def test_a_flood_of_other_names_neither_evicts_nor_bypasses():
    clock = Clock()
    q = Quarantine(QuarantineConfig(failed_attempt_limit=3, period=60), 10, clock)
    q.failure("victim", "attacker")
    q.failure("victim", "attacker")
    for i in range(NAMES_PER_ADDRESS * 4):  # invented names from the same address
        q.failure(f"name{i}", "attacker")
    assert q.is_quarantined("victim", "attacker")  # the address as a whole
    assert not q.is_quarantined("victim", "elsewhere")
    # a distributed flood fills the maps; quarantined pairs stay
    q.failure("user1", "x")
    q.failure("user1", "x")
    q.failure("user1", "x")
    for i in range(MIN_ENTRIES * 2):
        q.failure("n", f"addr{i}")
    assert q.is_quarantined("user1", "x")
    assert len(q.failures) <= MIN_ENTRIES and sum(map(len, q.names.values())) <= MIN_ENTRIES


# ---- the Authorization header -------------------------------------------------------------------

@pytest.mark.parametrize("header, expected", [
    (b"Basic dXNlcjE6cGFzc3dvcmQx", ("user1", b"password1")),
    (b"basic   dXNlcjE6cGE6c3M= ", ("user1", b"pa:ss")),
    (b"Basic dXNlcjE6", ("user1", b"")),
    (b"Basic dXNlcjE=", None),  # no colon: no password
    (b"Basic Og==", None),  # empty username
    (b"Bearer abc", None),
    (b"Basic !!!", None),
    (b"Basic /w==", None),  # not UTF-8
    (b"Basic", None),
])
def test_parse_basic(header, expected):
    assert parse_basic(header) == expected


# ---- passwords --------------------------------------------------------------------------------

def test_verify_the_guides_argon2i_hashes_and_other_types():
    for password, h in GUIDE.items():
        assert verify(h, password.encode())
        assert not verify(h, b"wrong")
    for kind in (argon2.Type.D, argon2.Type.ID):
        h = argon2.PasswordHasher(time_cost=1, memory_cost=64, type=kind).hash("pw")
        assert verify(h, b"pw") and not verify(h, b"px")
    assert not verify("$argon2i$garbage", b"pw")


def test_argon2_runs_off_the_loop_and_shares_one_verification():
    slow = argon2.PasswordHasher(time_cost=6, memory_cost=64 * 1024).hash("pw")

    async def body():
        checker = PasswordChecker()
        digest = checker.digest("u", b"pw")
        assert b"pw" not in digest and digest != PasswordChecker().digest("u", b"pw")
        first = checker.check(digest, slow, b"pw")
        second = checker.check(digest, slow, b"pw")
        assert first is second
        ticks = 0
        started = time.monotonic()
        while not first.done():
            await asyncio.sleep(0.005)
            ticks += 1
        elapsed = time.monotonic() - started
        assert await first and ticks >= elapsed / 0.005 / 4  # the loop kept turning
        checker.close()

    arun(body())


# ---- the guard ----------------------------------------------------------------------------------

class FakeStore:
    def __init__(self, users: dict[str, UserRecord | RecordError]) -> None:
        self.users = users
        self.synced = True

    def get(self, username):
        return self.users.get(username)

    def any_hash(self):
        return next(iter(self.users.values())).password_hash


def _basic_config(quarantine: bool = True) -> auth_config.BasicAuthConfig:
    return auth_config.BasicAuthConfig(
        etcd=EtcdConfig(endpoints=("x:1",), secure=False, path="/users/", data_format="json",
                        connect_timeout=1, lease_timeout=60, cache=CacheConfig(size=10)),
        cache=CacheConfig(size=10),
        quarantine=QuarantineConfig(failed_attempt_limit=3, period=60) if quarantine else None)


def _header(user: str, password: str) -> bytes:
    import base64
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


async def _verdict(guard: Guard, header: bytes, address: str = "10.0.0.1"):
    result = guard.check(header, address)
    return await result if isinstance(result, asyncio.Future) else result


def test_guard_decisions_in_upstreams_order():
    async def body():
        user1 = UserRecord(GUIDE["password1"], None)
        store = FakeStore({"user1": user1, "broken": RecordError("x")})
        guard = Guard(_basic_config(), store)
        assert await _verdict(guard, b"") is RESPONSES["missing"]
        assert RESPONSES["missing"].status == 401
        assert (b"www-authenticate", b'Basic realm="mgfast", charset="UTF-8"') in \
            RESPONSES["missing"].headers
        assert await _verdict(guard, b"Basic zzz") is RESPONSES["malformed"]
        assert await _verdict(guard, _header("user1", "password1")) is user1
        assert len(guard.results) == 1
        assert await _verdict(guard, _header("user1", "password")) is RESPONSES["wrong_password"]
        assert await _verdict(guard, _header("nobody", "x")) is RESPONSES["unknown_user"]
        assert await _verdict(guard, _header("broken", "x")) is RESPONSES["bad_record"]
        assert RESPONSES["bad_record"].status == 500
        assert RESPONSES["unknown_user"].body == RESPONSES["wrong_password"].body
        store.synced = False
        assert await _verdict(guard, _header("user1", "password1")) is RESPONSES["not_synced"]
        assert RESPONSES["not_synced"].status == 503
        assert guard.outcomes == {"missing": 1, "malformed": 1, "ok": 1, "wrong_password": 1,
                                  "unknown_user": 1, "bad_record": 1, "not_synced": 1}
        guard.close()

    arun(body())


def test_guard_cache_follows_a_password_change_and_quarantine_skips_the_check():
    async def body():
        store = FakeStore({"user2": UserRecord(GUIDE["password2"], None)})
        guard = Guard(_basic_config(), store)
        assert isinstance(await _verdict(guard, _header("user2", "password2")), UserRecord)
        result = guard.check(_header("user2", "password2"), "10.0.0.1")
        assert isinstance(result, UserRecord)  # a cache hit answers at once
        store.users["user2"] = UserRecord(GUIDE["password"], None)
        assert await _verdict(guard, _header("user2", "password2")) is RESPONSES["wrong_password"]
        assert isinstance(await _verdict(guard, _header("user2", "password")), UserRecord)
        for _ in range(3):
            await _verdict(guard, _header("user2", "bad"))
        verified = []
        guard.checker.check = lambda *a: verified.append(a)  # must not be called now
        assert guard.check(_header("user2", "password"), "10.0.0.1") is RESPONSES["quarantined"]
        assert not verified
        guard.checker.check = PasswordChecker.check.__get__(guard.checker)
        assert isinstance(await _verdict(guard, _header("user2", "password"), "10.0.0.9"),
                          UserRecord)
        guard.close()

    arun(body())


def test_unknown_users_cost_a_verification():
    async def body():
        slow = argon2.PasswordHasher(time_cost=4, memory_cost=32 * 1024).hash("pw")
        guard = Guard(_basic_config(quarantine=False), FakeStore({"real": UserRecord(slow, None)}))
        started = time.monotonic()
        await _verdict(guard, _header("real", "wrong"))
        known = time.monotonic() - started
        started = time.monotonic()
        await _verdict(guard, _header("ghost", "wrong"))
        unknown = time.monotonic() - started
        assert unknown > known / 3, (known, unknown)
        # repeats: both answered from the cache, at once (no oracle in the second try either)
        assert guard.check(_header("real", "wrong"), "10.0.0.1") is RESPONSES["wrong_password"]
        assert guard.check(_header("ghost", "wrong"), "10.0.0.1") is RESPONSES["unknown_user"]
        # the ghost becomes a user: its cached miss does not stand in the way
        fast = argon2.PasswordHasher(time_cost=1, memory_cost=64).hash("wrong")
        guard.store.users["ghost"] = UserRecord(fast, None)
        assert isinstance(await _verdict(guard, _header("ghost", "wrong")), UserRecord)
        guard.close()

    arun(body())


# ---- failed attempts shared between workers ----------------------------------------------------

def test_sibling_workers_apply_each_others_failures(tmp_path):
    from mgfast.auth.peers import PeerEvents

    async def body():
        config = QuarantineConfig(failed_attempt_limit=3, period=60)
        a, b = Quarantine(config, 10), Quarantine(config, 10)
        # two "workers" in one process: give each socket its own name
        import os
        pid = os.getpid
        os.getpid = lambda: 1
        peer_a = PeerEvents(tmp_path, a.apply)
        os.getpid = lambda: 2
        peer_b = PeerEvents(tmp_path, b.apply)
        os.getpid = pid
        a.publish, b.publish = peer_a.publish, peer_b.publish
        peer_a.start()
        peer_b.start()
        a.failure("user1", "10.0.0.1")
        b.failure("user1", "10.0.0.1")
        await asyncio.sleep(0.05)
        a.success("user1", "10.0.0.1")  # resets both
        await asyncio.sleep(0.05)
        assert ("user1", "10.0.0.1") not in b.failures
        a.failure("user1", "10.0.0.1")
        b.failure("user1", "10.0.0.1")
        a.failure("user1", "10.0.0.1")
        await asyncio.sleep(0.05)
        assert a.is_quarantined("user1", "10.0.0.1") and b.is_quarantined("user1", "10.0.0.1")
        peer_b.close()  # a dead sibling's socket is dropped by the next sender
        stale = tmp_path / "worker-3.sock"
        import socket
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(str(stale))
        s.close()
        a.failure("other", "10.0.0.2")
        assert not stale.exists() and peer_a.sent == 4
        peer_a.close()

    arun(body())


def test_a_flood_of_new_credentials_gets_503_while_cached_users_pass(monkeypatch):
    from mgfast.auth import passwords
    monkeypatch.setattr(passwords, "MAX_QUEUED", 4)

    async def body():
        slow = argon2.PasswordHasher(time_cost=3, memory_cost=16 * 1024).hash("pw")
        guard = Guard(_basic_config(quarantine=False),
                      FakeStore({"real": UserRecord(slow, None)}))
        assert isinstance(await _verdict(guard, _header("real", "pw")), UserRecord)
        flood = [guard.check(_header(f"ghost{i}", "x"), f"10.9.0.{i}") for i in range(10)]
        assert sum(v is RESPONSES["busy"] for v in flood) == 6
        assert RESPONSES["busy"].status == 503
        assert isinstance(guard.check(_header("real", "pw"), "10.0.0.1"), UserRecord)  # cached
        await asyncio.gather(*[v for v in flood if isinstance(v, asyncio.Future)])
        assert guard.checker.queued == 0 and not guard.checker.busy()
        guard.close()

    arun(body())


def test_the_eviction_watch_warns_each_period_it_is_exceeded(caplog):
    from mgfast.auth.lru import EvictionWatch

    async def body():
        cache: Lru[int, int] = Lru("user", 1)
        watch = EvictionWatch()
        watch.add(cache, CacheUsage(period=0.05, evicted_threshold=1))
        watch.add(Lru("auth quarantine", 1), None)  # no usage: not watched
        watch.start()
        assert len(watch.tasks) == 1
        await asyncio.sleep(0)  # the watch task starts counting
        for i in range(5):
            cache.put(i, i)  # 4 evictions in the first period: over 1 per 0.05 s
        for _ in range(100):
            if caplog.records:
                break
            await asyncio.sleep(0.01)
        watch.stop()

    with caplog.at_level(logging.WARNING, "mgfast.auth"):
        arun(body())
    (record,) = caplog.records
    assert re.fullmatch(r"Evicted entities threshold is exceeded for user: 4 per 0\.0\d\d "
                        r"seconds", record.getMessage())
