"""Config loader: upstream JSON loads unchanged; every mistake is one ConfigError a person can act on."""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mgfast.config import reading, validation
from mgfast.config.errors import ConfigError
from mgfast.config.loader import (
    load_client_config,
    load_server_config,
    parse_client_config,
    parse_server_config,
)
from mgfast.config.model import (
    ClientConfig,
    Listen,
    ServerConfig,
    SessionTickets,
    WaitStrategy,
)
from mgfast.zmq.settings import TopicPrefixSpec

CONFIGS = Path(__file__).parent / "configs"
DELETE = object()  # mutation marker: remove the key

# Files the configs point at. Content is not the loader's business, only existence/readability.
CERT_FILES = ("server.crt", "server.key", "ca.crt", "client.crt", "client.key",
              "etcd-ca.crt", "etcd-client.crt", "etcd-client.key")


def make_certs(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in CERT_FILES:
        (directory / name).write_text(f"dummy {name}\n")
    (directory / "lookup-hash-dir").mkdir(exist_ok=True)
    return directory


@pytest.fixture
def certs(tmp_path: Path, monkeypatch) -> Path:
    """The certificate files, in the working directory (relative paths resolve there, as
    upstream)."""
    monkeypatch.chdir(tmp_path)
    return make_certs(tmp_path)


def sample(name: str) -> dict:
    return orjson.loads((CONFIGS / name).read_bytes())


def write(directory: Path, doc: Any, name: str = "config.json") -> Path:
    path = directory / name
    path.write_bytes(doc if isinstance(doc, bytes) else
                     doc.encode() if isinstance(doc, str) else orjson.dumps(doc))
    return path


def mutate(doc: dict, path: tuple, value: Any) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


def server_doc(certs: Path) -> dict:
    """The seed guide's server config with its /etc/certs paths pointed at ``certs``."""
    text = (CONFIGS / "seed_server.json").read_text().replace("/etc/certs", str(certs))
    return orjson.loads(text)


def client_doc() -> dict:
    return sample("client_tls.json")


def expect_error(load, path_file: Path, json_path: str, *fragments: str,
                 environ: dict | None = None, strict: bool = False) -> ConfigError:
    """Load, expect exactly a ConfigError at ``json_path`` whose text contains ``fragments``."""
    with pytest.raises(ConfigError) as info:
        load(path_file, environ=environ if environ is not None else {}, strict=strict)
    err = info.value
    assert type(err) is ConfigError
    text = str(err)
    assert "\n" not in text
    assert err.file == str(path_file)
    assert err.path == json_path, text
    assert text.startswith(f"{path_file}: {json_path + ': ' if json_path else ''}"), text
    assert err.problem and err.fix and ". Fix: " in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    return err


def server_error(certs: Path, path: tuple, value: Any, json_path: str, *fragments: str,
                 environ: dict | None = None, strict: bool = False) -> ConfigError:
    file = write(certs, mutate(server_doc(certs), path, value))
    return expect_error(load_server_config, file, json_path, *fragments, environ=environ,
                        strict=strict)


def client_error(certs: Path, path: tuple, value: Any, json_path: str, *fragments: str,
                 environ: dict | None = None, strict: bool = False) -> ConfigError:
    file = write(certs, mutate(client_doc(), path, value))
    return expect_error(load_client_config, file, json_path, *fragments, environ=environ,
                        strict=strict)


# ------------------------------------------------------------------------------ loading samples

def test_seed_server_config_loads_unchanged(certs: Path) -> None:
    file = write(certs, (CONFIGS / "seed_server.json").read_text().replace("/etc/certs", str(certs)),
                 "media-gateway-server.json")
    cfg = load_server_config(file, environ={})
    assert isinstance(cfg, ServerConfig)
    assert (cfg.ip, cfg.port, cfg.source) == ("0.0.0.0", 8080, str(file))
    assert str(cfg.out_stream.url) == "pub+bind:ipc:///tmp/server"
    assert cfg.out_stream.send_timeout == 1.0 and cfg.out_stream.receive_timeout == 1.0
    assert (cfg.out_stream.send_retries, cfg.out_stream.receive_retries) == (3, 3)
    assert (cfg.out_stream.send_hwm, cfg.out_stream.receive_hwm) == (1000, 1000)
    assert cfg.out_stream.inflight_ops == 100
    assert cfg.tls is not None and cfg.tls.peers is not None
    assert cfg.tls.identity.certificate == certs / "server.crt"
    assert cfg.tls.identity.key == certs / "server.key"
    assert cfg.tls.peers.lookup_hash_directory == certs / "lookup-hash-dir"
    assert cfg.tls.peers.crl_enabled is True
    assert cfg.auth is None and cfg.statistics is None and cfg.metrics is None


def test_upstream_client_with_tls_and_strategies_loads(certs: Path) -> None:
    file = write(certs, (CONFIGS / "client_tls.json").read_bytes())
    cfg = load_client_config(file, environ={})
    assert isinstance(cfg, ClientConfig)
    assert cfg.url == "https://media-gateway-server:8080"
    assert cfg.tls is not None and cfg.tls.identity is not None
    assert cfg.tls.root_certificate == certs / "ca.crt"  # relative to the config's directory
    assert cfg.tls.identity.certificate == certs / "client.crt"
    assert cfg.tls.identity.key == certs / "client.key"
    assert (cfg.retry_strategy.initial_delay, cfg.retry_strategy.maximum_delay,
            cfg.retry_strategy.multiplier) == (0.001, 1.0, 2.0)
    assert cfg.wait_strategy == WaitStrategy(kind="sleep", sleep=0.001)
    assert cfg.auth is not None and (cfg.auth.username, cfg.auth.password) == ("user", "password")
    assert str(cfg.in_stream.url) == "sub+bind:ipc:///tmp/client"
    assert cfg.in_stream.receive_timeout == 10.0
    assert cfg.in_stream.topic_prefix_spec == TopicPrefixSpec(kind="prefix", value=b"cam-")
    assert cfg.in_stream.fix_ipc_permissions == 0o777
    assert cfg.statistics is not None and cfg.statistics.frame_period == 1000
    assert cfg.statistics.history_size == 100


def test_upstream_server_with_basic_auth_and_statistics_loads(certs: Path) -> None:
    file = write(certs, (CONFIGS / "server_basic_auth.json").read_bytes())
    cfg = load_server_config(file, environ={"ETCD_PASSWORD": "pw"})
    assert cfg.statistics is not None and cfg.statistics.timestamp_period == 1.0
    assert cfg.statistics.frame_period is None and cfg.statistics.history_size == 1000
    assert cfg.out_stream.fix_ipc_permissions == 511
    etcd = cfg.auth.etcd
    assert etcd.endpoints == ("etcd:2379",) and etcd.secure  # one string stands for a list
    assert (etcd.credentials.username, etcd.credentials.password) == ("root", "pw")
    assert etcd.tls.key == certs / "etcd-client.key"
    assert etcd.connect_timeout == 30.0 and etcd.lease_timeout == 60.0
    assert etcd.data_format == "json" and etcd.path == "/users/"
    assert (cfg.auth.cache.size, cfg.auth.cache.usage.period,
            cfg.auth.cache.usage.evicted_threshold) == (10, 60.0, 10)
    assert (cfg.auth.quarantine.failed_attempt_limit, cfg.auth.quarantine.period) == (3, 60.0)


def test_mgfast_extension_keys(certs: Path) -> None:
    server = load_server_config(write(certs, (CONFIGS / "server_mgfast.json").read_bytes()),
                                environ={})
    assert server.port == 8443  # unquoted placeholder, expanded over the text like upstream
    assert server.workers == 2
    assert server.metrics == Listen(ip="0.0.0.0", port=9100)  # ip defaults to the top-level one
    assert server.http.max_body_size == 16 * 1024 * 1024
    assert (server.http.header_timeout, server.http.body_timeout,
            server.http.idle_timeout) == (5.0, 30.0, 60.0)
    assert server.tls.handshake_timeout == 3.5 and server.tls.recheck_interval == 2.0
    assert server.tls.session_tickets == SessionTickets(enabled=True, rotate_interval=600.0)
    assert server.out_stream.url.socket_type == "dealer" and not server.out_stream.url.bind

    client = load_client_config(write(certs, (CONFIGS / "client_mgfast.json").read_bytes()),
                                environ={})
    assert (client.connections, client.batch, client.drain_timeout) == (8, 64, 15.0)
    assert client.metrics == Listen(ip="0.0.0.0", port=9101)
    assert client.http.max_body_size == 1048576
    assert client.wait_strategy == WaitStrategy(kind="yield")
    assert client.in_stream.topic_prefix_spec == TopicPrefixSpec(kind="source_id", value=b"cam-1")
    assert client.in_stream.inflight_ops == 100  # defaults where upstream would require a value


def test_embedded_defaults_load() -> None:
    server = load_server_config(None)
    assert server.source == "<embedded default>"
    assert (server.ip, server.port, server.tls) == ("127.0.0.1", 8080, None)
    assert str(server.out_stream.url) == "pub+bind:ipc:///tmp/mgfast/server"
    client = load_client_config(None)
    assert client.source == "<embedded default>"
    assert (client.ip, client.port, client.url) == ("127.0.0.1", 8081, "http://127.0.0.1:8080")
    assert str(client.in_stream.url) == "router+bind:ipc:///tmp/mgfast/client"
    assert client.tls is None


# ---------------------------------------------------------------------------- env substitution

def test_env_substitution_with_and_without_defaults(certs: Path) -> None:
    doc = server_doc(certs)
    doc["ip"] = "${BIND_IP}"
    doc["port"] = "${PORT:-9000}"  # a quoted placeholder may stand for a number
    doc["out_stream"]["url"] = "pub+bind:ipc://${SOCK_DIR:-/tmp}/server"
    doc["tls"]["peers"]["crl_enabled"] = "${CRL:-false}"
    doc["tls"]["identity"]["key"] = "$KEY_DIR/server.key"  # shellexpand's bare $NAME form
    file = write(certs, doc)
    env = {"BIND_IP": "127.0.0.1", "KEY_DIR": str(certs)}
    cfg = load_server_config(file, environ=env)
    assert (cfg.ip, cfg.port) == ("127.0.0.1", 9000)
    assert str(cfg.out_stream.url) == "pub+bind:ipc:///tmp/server"
    assert cfg.tls.peers.crl_enabled is False
    assert cfg.tls.identity.key == certs / "server.key"

    cfg = load_server_config(file, environ={**env, "PORT": "8088", "SOCK_DIR": "/run/gw",
                                            "CRL": "true"})
    assert cfg.port == 8088 and str(cfg.out_stream.url) == "pub+bind:ipc:///run/gw/server"
    assert cfg.tls.peers.crl_enabled is True
    # the default applies only to unset variables, as upstream: empty stays empty
    cfg = load_server_config(file, environ={**env, "SOCK_DIR": ""})
    assert str(cfg.out_stream.url) == "pub+bind:ipc:///server"


def test_env_substitution_escapes_and_literals(certs: Path) -> None:
    doc = client_doc()
    doc["auth"]["basic"]["password"] = 'a$$b$ c${UNCLOSED "quoted" \\ $'
    file = write(certs, doc)
    cfg = load_client_config(file, environ={})
    assert cfg.auth.password == 'a$b$ c${UNCLOSED "quoted" \\ $'
    # a value with quotes cannot break the JSON, unlike a text-level expansion
    doc["auth"]["basic"]["password"] = "${PW}"
    cfg = load_client_config(write(certs, doc), environ={"PW": 'x"y\\z'})
    assert cfg.auth.password == 'x"y\\z'


def test_env_substitution_uses_os_environ_by_default(certs: Path, monkeypatch) -> None:
    doc = server_doc(certs)
    doc["port"] = "${MGFAST_TEST_CONFIG_PORT}"
    file = write(certs, doc)
    monkeypatch.setenv("MGFAST_TEST_CONFIG_PORT", "8099")
    assert load_server_config(file).port == 8099


def test_missing_variable_in_a_string_names_it(certs: Path) -> None:
    err = client_error(certs, ("url",), "${GATEWAY_HOST}", "url", "GATEWAY_HOST",
                       "${GATEWAY_HOST:-value}")
    assert "not set" in err.problem


def test_missing_variable_in_unquoted_placeholder_names_it_with_line(certs: Path) -> None:
    text = (CONFIGS / "seed_server.json").read_text().replace("/etc/certs", str(certs))
    file = write(certs, text.replace('"port": 8080', '"port": ${GW_PORT}'))
    expect_error(load_server_config, file, "", "GW_PORT", "line 3, column 11")


def test_substituted_value_that_is_not_a_number(certs: Path) -> None:
    server_error(certs, ("port",), "${PORT}", "port", "'http' (after environment substitution)",
                 environ={"PORT": "http"})


def test_quoted_literal_number_is_a_type_error_with_fix(certs: Path) -> None:
    server_error(certs, ("port",), "8080", "port", "write 8080 without quotes")
    server_error(certs, ("tls", "peers", "crl_enabled"), "true", "tls.peers.crl_enabled",
                 "write true without quotes")


def test_invalid_json_after_substitution_reports_it(certs: Path) -> None:
    text = (CONFIGS / "seed_server.json").read_text().replace("/etc/certs", str(certs))
    file = write(certs, text.replace('"port": 8080', '"port": ${GW_PORT}'))
    expect_error(load_server_config, file, "", "after environment substitution", "line 3",
                 environ={"GW_PORT": "eighty"})


# ------------------------------------------------------------------------ file-level problems

def test_invalid_json_reports_line_and_column(certs: Path) -> None:
    text = (CONFIGS / "seed_server.json").read_text().replace('"port": 8080,', '"port": 8080,,')
    expect_error(load_server_config, write(certs, text), "", "invalid JSON at line 3, column",
                 "comma")


def test_whole_file_problems(certs: Path, tmp_path: Path) -> None:
    expect_error(load_server_config, tmp_path / "missing.json", "", "does not exist")
    expect_error(load_server_config, certs / "lookup-hash-dir", "", "directory")
    expect_error(load_server_config, write(certs, ""), "", "empty")
    expect_error(load_server_config, write(certs, "[1, 2]"), "", "top level must be a JSON object")
    expect_error(load_server_config, write(certs, b'{"ip": "\xff"}'), "", "not UTF-8")
    expect_error(load_client_config, write(certs, "null"), "", "top level")


def test_bom_is_tolerated(certs: Path) -> None:
    text = (CONFIGS / "seed_server.json").read_text().replace("/etc/certs", str(certs))
    assert load_server_config(write(certs, "\ufeff" + text), environ={}).port == 8080


# -------------------------------------------------------------------- one test per error class

def test_unknown_key_in_strict_mode_suggests_the_closest(certs: Path) -> None:
    server_error(certs, ("out_stream", "sned_timeout"), {"secs": 1, "nanos": 0},
                 "out_stream.sned_timeout", "unknown key", 'did you mean "send_timeout"',
                 strict=True)
    server_error(certs, ("tls", "peer"), {}, "tls.peer", 'did you mean "peers"', strict=True)
    server_error(certs, ("colour",), 1, "colour", "unknown key", "known keys here", strict=True)
    client_error(certs, ("auth", "basic", "id"), "user", "auth.basic.id", '"username"',
                 strict=True)
    server_error(certs, ("tls", "peer_lookup_hash_directory"), "x",
                 "tls.peer_lookup_hash_directory", '"peers"', strict=True)


@pytest.mark.parametrize(("path", "value", "json_path", "fragment"), [
    (("out_stream",), [1, 2], "out_stream", "expected an object, got a list"),
    (("tls",), "on", "tls", "expected an object, got the string 'on'"),
    (("port",), "eighty", "port", "expected an integer from 0 to 65535"),
    (("port",), 8080.0, "port", "without a decimal point"),
    (("port",), True, "port", "got true"),
    (("ip",), 0, "ip", "expected an IP address or host name"),
    (("tls", "peers", "crl_enabled"), 1, "tls.peers.crl_enabled", "expected true or false"),
    (("out_stream", "send_timeout"), 1, "out_stream.send_timeout", "duration"),
    (("out_stream", "send_timeout"), {"secs": {"nanos": 1}, "nanos": 0}, "out_stream.send_timeout.secs",
     "expected an integer"),
    (("out_stream", "url"), ["pub+bind:ipc:///tmp/x"], "out_stream.url", "got a list"),
    (("tls", "identity", "certificate"), {"path": "x"}, "tls.identity.certificate",
     "got an object"),
    (("statistics",), [[[]]], "statistics", "expected an object"),
    (("auth",), {"basic": []}, "auth.basic", "expected an object"),
    (("auth",), {"basic": {"etcd": {"urls": {}}}}, "auth.basic.etcd.urls", "expected a string"),
])
def test_wrong_type(certs: Path, path, value, json_path, fragment) -> None:
    server_error(certs, path, value, json_path, fragment)


def test_null_for_a_required_key(certs: Path) -> None:
    server_error(certs, ("out_stream", "url"), None, "out_stream.url", "must not be null")
    server_error(certs, ("port",), None, "port", "must not be null")


def test_null_for_an_optional_key_means_unset(certs: Path) -> None:
    file = write(certs, mutate(server_doc(certs), ("tls", "peers"), None))
    cfg = load_server_config(file, environ={})
    assert cfg.tls.peers is None
    file = write(certs, mutate(server_doc(certs), ("out_stream", "send_hwm"), None))
    assert load_server_config(file, environ={}).out_stream.send_hwm == 1000


@pytest.mark.parametrize(("path", "json_path"), [
    (("ip",), "ip"),
    (("port",), "port"),
    (("out_stream",), "out_stream"),
    (("out_stream", "url"), "out_stream.url"),
    (("tls", "identity"), "tls.identity"),
    (("tls", "identity", "key"), "tls.identity.key"),
    (("tls", "peers", "lookup_hash_directory"), "tls.peers.lookup_hash_directory"),
    (("out_stream", "send_timeout", "nanos"), "out_stream.send_timeout.nanos"),
])
def test_missing_required_key_server(certs: Path, path, json_path) -> None:
    err = server_error(certs, path, DELETE, json_path, "required key is missing")
    assert f'"{path[-1]}":' in err.fix


@pytest.mark.parametrize(("path", "json_path"), [
    (("url",), "url"),
    (("in_stream",), "in_stream"),
    (("in_stream", "url"), "in_stream.url"),
    (("retry_strategy", "exponential", "multiplier"), "retry_strategy.exponential.multiplier"),
    (("auth", "basic", "password"), "auth.basic.password"),
])
def test_missing_required_key_client(certs: Path, path, json_path) -> None:
    client_error(certs, path, DELETE, json_path, "required key is missing")


@pytest.mark.parametrize(("url", "fragment"), [
    ("sub+bind:ipc:///tmp/server", "not a writer type"),
    ("pub+listen:ipc:///tmp/server", "'bind' or 'connect'"),
    ("pub+bind:ipc://", "no ipc socket path"),
    ("pub+bind:tcp://127.0.0.1:99999", "port from 1 to 65535"),
    ("http://127.0.0.1:5555", "not a Savant socket URL"),
    ("", "must not be empty"),
])
def test_invalid_server_socket_url(certs: Path, url, fragment) -> None:
    server_error(certs, ("out_stream", "url"), url, "out_stream.url", fragment)


@pytest.mark.parametrize(("url", "fragment"), [
    ("pub+bind:ipc:///tmp/client", "not a reader type"),
    ("dealer+connect:tcp://127.0.0.1:5555", "not a reader type"),
    ("router+bind:udp://127.0.0.1:5555", "not a Savant socket URL"),
])
def test_invalid_client_socket_url(certs: Path, url, fragment) -> None:
    client_error(certs, ("in_stream", "url"), url, "in_stream.url", fragment)


def test_bare_endpoint_socket_url_takes_savant_defaults(certs: Path) -> None:
    cfg = load_server_config(write(certs, mutate(server_doc(certs), ("out_stream", "url"),
                                                 "tcp://127.0.0.1:5555")), environ={})
    assert (cfg.out_stream.url.socket_type, cfg.out_stream.url.bind) == ("dealer", True)


@pytest.mark.parametrize(("path", "json_path"), [
    (("tls", "identity", "certificate"), "tls.identity.certificate"),
    (("tls", "identity", "key"), "tls.identity.key"),
])
def test_missing_server_certificate_files(certs: Path, path, json_path) -> None:
    err = server_error(certs, path, "nope/missing.pem", json_path, "does not exist",
                       str(certs / "nope" / "missing.pem"))
    assert "resolved against" in err.fix


@pytest.mark.parametrize(("path", "json_path"), [
    (("tls", "root_certificate"), "tls.root_certificate"),
    (("tls", "identity", "certificate"), "tls.identity.certificate"),
    (("tls", "identity", "key"), "tls.identity.key"),
])
def test_missing_client_certificate_files(certs: Path, path, json_path) -> None:
    client_error(certs, path, "gone.pem", json_path, "does not exist", str(certs / "gone.pem"))


def test_certificate_path_is_a_directory_or_not_regular(certs: Path) -> None:
    server_error(certs, ("tls", "identity", "certificate"), str(certs / "lookup-hash-dir"),
                 "tls.identity.certificate", "is a directory")
    os.mkfifo(certs / "fifo.pem")
    client_error(certs, ("tls", "root_certificate"), "fifo.pem", "tls.root_certificate",
                 "not a regular file")


def test_unreadable_certificate(certs: Path, monkeypatch) -> None:
    # Root reads anything, so simulate the kernel's answer for the one file.
    real_open = open
    target = str(certs / "server.key")

    def fake_open(file, *args, **kwargs):
        if str(file) == target:
            raise PermissionError(13, "Permission denied", target)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(validation, "open", fake_open, raising=False)
    server_error(certs, ("tls", "identity", "key"), target, "tls.identity.key",
                 "cannot be read: permission denied", "readable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a mode-000 file")
def test_unreadable_certificate_for_real(certs: Path) -> None:
    (certs / "client.key").chmod(0)
    client_error(certs, ("tls", "identity", "key"), "client.key", "tls.identity.key",
                 "permission denied")


def test_lookup_hash_directory_missing_or_not_a_directory(certs: Path) -> None:
    path = ("tls", "peers", "lookup_hash_directory")
    server_error(certs, path, str(certs / "no-such-dir"), "tls.peers.lookup_hash_directory",
                 "does not exist")
    server_error(certs, path, str(certs / "ca.crt"), "tls.peers.lookup_hash_directory",
                 "is not a directory", "hash.N")


def test_retry_strategy_checks(certs: Path) -> None:
    base = ("retry_strategy", "exponential")
    client_error(certs, base + ("multiplier",), 1.5, "retry_strategy.exponential.multiplier",
                 "out of range", "2 or more")
    client_error(certs, base + ("initial_delay",), {"secs": 5, "nanos": 0},
                 "retry_strategy.exponential.initial_delay", "longer than maximum_delay")
    client_error(certs, ("retry_strategy",), {"linear": {}}, "retry_strategy.linear",
                 "unknown variant")
    client_error(certs, ("retry_strategy",), "exponential", "retry_strategy", "needs a value")
    file = write(certs, mutate(client_doc(), base + ("multiplier",), 3))
    assert load_client_config(file, environ={}).retry_strategy.multiplier == 3.0


def test_statistics_needs_exactly_one_period(certs: Path) -> None:
    both = {"frame_period": 10, "timestamp_period": {"secs": 1, "nanos": 0}}
    server_error(certs, ("statistics",), both, "statistics", "both", "exactly one")
    server_error(certs, ("statistics",), {"history_size": 10}, "statistics", "neither",
                 "exactly one")
    server_error(certs, ("statistics",), {"timestamp_period": 1000}, "statistics.timestamp_period",
                 "not a duration")


@pytest.mark.parametrize(("value", "expected"), [
    ({"none": None}, TopicPrefixSpec()),
    ("none", TopicPrefixSpec()),
    ({"source_id": "cam-1"}, TopicPrefixSpec(kind="source_id", value=b"cam-1")),
    ({"prefix": "cam-"}, TopicPrefixSpec(kind="prefix", value=b"cam-")),
])
def test_topic_prefix_spec_forms(certs: Path, value, expected) -> None:
    file = write(certs, mutate(client_doc(), ("in_stream", "topic_prefix_spec"), value))
    assert load_client_config(file, environ={}).in_stream.topic_prefix_spec == expected


@pytest.mark.parametrize(("value", "json_path", "fragment"), [
    ({"prefix": 1}, "in_stream.topic_prefix_spec.prefix", "expected a string"),
    ({"source": "cam-1"}, "in_stream.topic_prefix_spec.source", 'did you mean "source_id"'),
    ({"none": "x"}, "in_stream.topic_prefix_spec.none", "takes no value"),
    ({"none": None, "prefix": "a"}, "in_stream.topic_prefix_spec", "exactly one key"),
    ({}, "in_stream.topic_prefix_spec", "exactly one key"),
    ([], "in_stream.topic_prefix_spec", "got a list"),
])
def test_topic_prefix_spec_errors(certs: Path, value, json_path, fragment) -> None:
    client_error(certs, ("in_stream", "topic_prefix_spec"), value, json_path, fragment)


@pytest.mark.parametrize(("value", "expected"), [
    ("yield", WaitStrategy(kind="yield")),
    ({"yield": None}, WaitStrategy(kind="yield")),
    ({"sleep": {"secs": 0, "nanos": 5000000}}, WaitStrategy(kind="sleep", sleep=0.005)),
])
def test_wait_strategy_forms(certs: Path, value, expected) -> None:
    file = write(certs, mutate(client_doc(), ("wait_strategy",), value))
    assert load_client_config(file, environ={}).wait_strategy == expected


@pytest.mark.parametrize(("value", "json_path", "fragment"), [
    ("spin", "wait_strategy", "unknown variant"),
    ("sleep", "wait_strategy", "needs a value"),
    ({"sleep": 5}, "wait_strategy.sleep", "duration"),
    (3, "wait_strategy", '"yield"'),
])
def test_wait_strategy_errors(certs: Path, value, json_path, fragment) -> None:
    client_error(certs, ("wait_strategy",), value, json_path, fragment)


@pytest.mark.parametrize("port", [-1, 65536, 2**64 - 1])
def test_port_out_of_range(certs: Path, port) -> None:
    server_error(certs, ("port",), port, "port", "from 0 to 65535")
    client_error(certs, ("port",), port, "port", "from 0 to 65535")
    server_error(certs, ("metrics",), {"port": port}, "metrics.port", "from 0 to 65535")


def test_integer_beyond_64_bits(certs: Path) -> None:
    text = (CONFIGS / "seed_server.json").read_text().replace("/etc/certs", str(certs))
    file = write(certs, text.replace('"port": 8080', '"port": 123456789012345678901234567890'))
    expect_error(load_server_config, file, "port", "expected an integer from 0 to 65535")


@pytest.mark.parametrize("key", ["send_hwm", "receive_hwm", "inflight_ops"])
def test_out_stream_counts_must_be_positive(certs: Path, key) -> None:
    server_error(certs, ("out_stream", key), 0, f"out_stream.{key}", "out of range")
    server_error(certs, ("out_stream", key), -5, f"out_stream.{key}", "out of range")


@pytest.mark.parametrize("key", ["receive_hwm", "source_cache_size", "inflight_ops"])
def test_in_stream_counts_must_be_positive(certs: Path, key) -> None:
    client_error(certs, ("in_stream", key), 0, f"in_stream.{key}", "out of range")


@pytest.mark.parametrize(("path", "json_path"), [
    (("out_stream", "send_timeout"), "out_stream.send_timeout"),
    (("out_stream", "receive_timeout"), "out_stream.receive_timeout"),
])
def test_zmq_timeouts_must_be_at_least_a_millisecond(certs: Path, path, json_path) -> None:
    server_error(certs, path, {"secs": 0, "nanos": 0}, json_path, "too short", "1 ms")
    server_error(certs, path, {"secs": 0, "nanos": 999}, json_path, "too short")
    server_error(certs, path, {"secs": 10**9, "nanos": 0}, json_path, "too long")


def test_client_receive_timeout_positive(certs: Path) -> None:
    client_error(certs, ("in_stream", "receive_timeout"), {"secs": 0, "nanos": 0},
                 "in_stream.receive_timeout", "too short")


@pytest.mark.parametrize(("value", "json_path", "fragment"), [
    ({"secs": -1, "nanos": 0}, "out_stream.send_timeout.secs", "out of range"),
    ({"secs": 1, "nanos": -1}, "out_stream.send_timeout.nanos", "out of range"),
    ({"secs": 1, "nanos": 2**32}, "out_stream.send_timeout.nanos", "out of range"),
    ({"secs": 1.5, "nanos": 0}, "out_stream.send_timeout.secs", "expected an integer"),
    ({"secs": 1}, "out_stream.send_timeout.nanos", "required key is missing"),
    ({"secs": 1, "nanos": 0, "millis": 3}, "out_stream.send_timeout.millis", "unknown key"),
    ("1s", "out_stream.send_timeout", "duration"),
])
def test_duration_errors(certs: Path, value, json_path, fragment) -> None:
    server_error(certs, ("out_stream", "send_timeout"), value, json_path, fragment)


def test_duration_list_form_like_serde(certs: Path) -> None:
    file = write(certs, mutate(server_doc(certs), ("out_stream", "send_timeout"), [2, 500000000]))
    assert load_server_config(file, environ={}).out_stream.send_timeout == 2.5


@pytest.mark.parametrize(("mode", "fragment"), [(-1, "decimal"), (2**32, "decimal"),
                                               ("0777", "without quotes"), (511.5, "decimal")])
def test_fix_ipc_permissions_range(certs: Path, mode, fragment) -> None:
    server_error(certs, ("out_stream", "fix_ipc_permissions"), mode,
                 "out_stream.fix_ipc_permissions", fragment)


@pytest.mark.parametrize("mode", [0, 0o660, 0o777])
def test_fix_ipc_permissions_valid(certs: Path, mode) -> None:
    file = write(certs, mutate(server_doc(certs), ("out_stream", "fix_ipc_permissions"), mode))
    assert load_server_config(file, environ={}).out_stream.fix_ipc_permissions == mode


@pytest.mark.parametrize(("url", "fragment"), [
    ("ftp://gw:8080", "http:// or https://"),
    ("media-gateway-server:8080", "http:// or https://"),
    ("http://", "no host"),
    ("http://gw:99999", "not a valid URL"),
    ("http://[::1", "not a valid URL"),
])
def test_client_url_errors(certs: Path, url, fragment) -> None:
    client_error(certs, ("url",), url, "url", fragment)


def test_client_tls_with_plain_http_url_is_an_error_in_strict_mode(certs: Path) -> None:
    client_error(certs, ("url",), "http://gw:8080", "tls", "plain http", "https://", strict=True)


def test_https_without_tls_section_is_fine(certs: Path) -> None:
    file = write(certs, mutate(client_doc(), ("tls",), DELETE))
    assert load_client_config(file, environ={}).tls is None


def test_metrics_port_must_differ_from_the_gateway_port(certs: Path) -> None:
    server_error(certs, ("metrics",), {"port": 8080}, "metrics.port", "share port 8080")
    client_error(certs, ("metrics",), {"port": 8081}, "metrics.port", "share port 8081")


@pytest.mark.parametrize(("path", "value", "json_path", "fragment"), [
    (("workers",), 0, "workers", "from 1 to 1024"),
    (("http", "max_body_size"), 0, "http.max_body_size", "out of range"),
    (("http", "header_timeout"), {"secs": 0, "nanos": 0}, "http.header_timeout",
     "longer than zero"),
    (("tls", "handshake_timeout"), {"secs": 0, "nanos": 0}, "tls.handshake_timeout",
     "longer than zero"),
    (("tls", "session_tickets"), {"enabled": True, "rotate_interval": {"secs": 0, "nanos": 5}},
     "tls.session_tickets.rotate_interval", "too short: the minimum is 1 s"),
    (("tls", "session_tickets"), {"rotate_interval": {"secs": 8 * 86400, "nanos": 0}},
     "tls.session_tickets.rotate_interval", "at most 7 days"),
    (("tls", "session_tickets"), {"enabled": "yes"}, "tls.session_tickets.enabled", "true"),
    (("tls", "session_tickets"), True, "tls.session_tickets", '{"enabled": true'),
    (("metrics",), {"ip": "0.0.0.0:9100", "port": 9100}, "metrics.ip", "port goes in"),
    (("auth",), {"basic": {"etcd": {}, "cache": {"size": 1}}}, "auth.basic.etcd.urls",
     "required key is missing"),
])
def test_extension_and_auth_errors_server(certs: Path, path, value, json_path, fragment) -> None:
    server_error(certs, path, value, json_path, fragment)


@pytest.mark.parametrize(("path", "json_path", "fragment"), [
    (("http", "max_body_sizes"), "http.max_body_sizes", 'did you mean "max_body_size"'),
    (("ssl",), "ssl", '"tls"'),
])
def test_unknown_extension_keys_in_strict_mode(certs: Path, path, json_path, fragment) -> None:
    server_error(certs, path, {}, json_path, fragment, strict=True)


def test_auth_data_format_choices(certs: Path) -> None:
    doc = sample("server_basic_auth.json")
    doc["auth"]["basic"]["etcd"]["data_format"] = "jsn"
    file = write(certs, doc)
    expect_error(load_server_config, file, "auth.basic.etcd.data_format", 'did you mean "json"')


@pytest.mark.parametrize(("path", "value", "json_path", "fragment"), [
    (("connections",), 0, "connections", "from 1 to 1024"),
    (("batch",), 65537, "batch", "from 1 to 65536"),
    (("drain_timeout",), {"secs": -1, "nanos": 0}, "drain_timeout.secs", "out of range"),
])
def test_extension_errors_client(certs: Path, path, value, json_path, fragment) -> None:
    client_error(certs, path, value, json_path, fragment)


def test_config_error_format_and_pickling() -> None:
    err = ConfigError("gw.json", "out_stream.url", "bad\nthing.", "do\tthis")
    assert str(err) == "gw.json: out_stream.url: bad thing. Fix: do this"
    assert str(ConfigError("gw.json", "", "empty", "write it")) == "gw.json: empty. Fix: write it"
    again = pickle.loads(pickle.dumps(err))
    assert (again.file, again.path, again.problem, again.fix, str(again)) == (
        err.file, err.path, err.problem, err.fix, str(err))
    assert ConfigError.exit_status == 2


# ------------------------------------------------------------------------------ property tests

@pytest.fixture(scope="module")
def prop_dir(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("prop"))


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, prefix + (i,))
    return out


def _prop_docs(directory: Path) -> list[tuple[Any, dict]]:
    server = orjson.loads((CONFIGS / "seed_server.json").read_text()
                          .replace("/etc/certs", str(directory)))
    server.update(workers=2, metrics={"port": 9100}, http={"max_body_size": 10,
                                                         "idle_timeout": {"secs": 1, "nanos": 0}},
                  statistics={"frame_period": 10})
    auth = sample("server_basic_auth.json")
    auth_server = dict(server, auth=auth["auth"])
    client = sample("client_tls.json")
    client.update(connections=2, batch=4, drain_timeout={"secs": 1, "nanos": 0},
                  metrics={"ip": "0.0.0.0", "port": 9101})
    return [(parse_server_config, server), (parse_server_config, auth_server),
            (parse_client_config, client)]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
    | st.sampled_from(["${X}", "${X:-1}", "$$", "none", "yield", "1", "true", "", "pub+bind:ipc://",
                       "http://h:1", "tcp://h:1", "ca.crt", "lookup-hash-dir", "/"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["secs", "nanos", "none", "prefix", "sleep", "url", "x",
                                       "exponential", "port", "basic"]), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_arbitrary_values_at_known_paths_never_crash(prop_dir: Path, data) -> None:
    parse, base = data.draw(st.sampled_from(_prop_docs(prop_dir)))
    doc = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        value = data.draw(json_values | st.just(DELETE))
        try:
            doc = mutate(doc, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed or reshaped the parent
    result = _parse_or_error(parse, orjson.dumps(doc), prop_dir)
    assert isinstance(result, (ServerConfig, ClientConfig, ConfigError))


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from('{}[]":,$-_ 0123456789aeilnprstu\\\n'),
                    max_size=80))
def test_arbitrary_text_never_crashes(prop_dir: Path, text: str) -> None:
    for parse in (parse_server_config, parse_client_config):
        result = _parse_or_error(parse, text, prop_dir)
        assert isinstance(result, (ServerConfig, ClientConfig, ConfigError))


def _parse_or_error(parse, data, directory: Path):
    try:
        return parse(data, source="prop.json", base_dir=directory, environ={"X": "7"})
    except ConfigError as err:
        text = str(err)
        assert "\n" not in text and text.startswith("prop.json: ") and ". Fix: " in text
        return err


@given(text=st.text(alphabet=st.characters(blacklist_characters="$", blacklist_categories=("Cs",))))
def test_expansion_is_identity_without_dollar(text: str) -> None:
    assert reading.expand(text, {}) == text

