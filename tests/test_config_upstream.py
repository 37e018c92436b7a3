"""Upstream's own configs load and run as they are; what upstream accepts, mgfast accepts with
upstream's meaning; what is probably a mistake is a warning (an error under strict)."""

from __future__ import annotations

import copy
import http.client
import logging
import os
import stat
from pathlib import Path

import orjson
import pytest

from mgfast import logs
from mgfast.config.errors import ConfigError
from mgfast.config.loader import load_client_config, load_server_config
from mgfast.config.model import ClientConfig, ServerConfig
from mgfast.media import encode_media
from tests import savant_peers as sp
from tests.gateway_process import GatewayProcess
from tests.util import free_port, wait_until

UPSTREAM = Path(__file__).parent / "data" / "upstream"
SAMPLES = sorted(p.relative_to(UPSTREAM) for p in UPSTREAM.rglob("*.json"))
FILES = ("server.crt", "server.key", "ca.crt", "client.crt", "client.key", "etcd-ca.crt",
         "etcd-client.crt", "etcd-client.key")


def is_server(name: Path) -> bool:
    return "server" in name.name or name.parent.name == "server"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """The working directory, holding the files the samples name relative to it."""
    for name in FILES:
        (tmp_path / name).write_text(f"dummy {name}\n")
    (tmp_path / "lookup-hash-dir").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def as_it_is(name: Path, workdir: Path) -> Path:
    """The sample byte for byte, except that benches' absolute /etc/certs points at
    ``workdir`` (the test does not write into /etc)."""
    text = (UPSTREAM / name).read_text()
    if "/etc/certs" not in text:
        return UPSTREAM / name
    path = workdir / name.name
    path.write_text(text.replace("/etc/certs", str(workdir)))
    return path


def test_all_upstream_configs_are_here() -> None:
    assert len(SAMPLES) == 18


@pytest.mark.parametrize("name", SAMPLES, ids=str)
def test_upstream_config_loads_without_warnings(name: Path, workdir: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, "mgfast.config")
    load = load_server_config if is_server(name) else load_client_config
    config = load(as_it_is(name, workdir), environ={}, strict=True)
    assert isinstance(config, ServerConfig if is_server(name) else ClientConfig)
    assert not caplog.records


def test_relative_paths_resolve_against_the_working_directory(tmp_path, monkeypatch) -> None:
    config_dir, cwd = tmp_path / "etc", tmp_path / "run"
    config_dir.mkdir()
    cwd.mkdir()
    sample = UPSTREAM / "samples/configuration/client/https_config.json"
    (config_dir / "client.json").write_bytes(sample.read_bytes())
    (config_dir / "ca.crt").write_text("next to the config, not used")
    monkeypatch.chdir(cwd)
    with pytest.raises(ConfigError) as info:
        load_client_config(config_dir / "client.json", environ={})
    assert info.value.path == "tls.root_certificate" and "working directory" in str(info.value)
    (cwd / "ca.crt").write_text("in the working directory")
    config = load_client_config(config_dir / "client.json", environ={})
    assert config.tls.root_certificate == cwd / "ca.crt"


# ------------------------------------------------------------ accepted with upstream's meaning

def sample_doc(name: str) -> dict:
    return orjson.loads((UPSTREAM / "samples/configuration" / name).read_bytes())


def load_doc(workdir: Path, doc: dict, *, strict: bool = False):
    path = workdir / "config.json"
    path.write_bytes(orjson.dumps(doc))
    load = load_server_config if "out_stream" in doc else load_client_config
    return load(path, environ={}, strict=strict)


def with_value(doc: dict, path: tuple, value) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return doc


SERVER, CLIENT = "server/default_config.json", "client/default_config.json"
RETRY = {"exponential": {"initial_delay": {"secs": 0, "nanos": 0},
                         "maximum_delay": {"secs": 1, "nanos": 0}, "multiplier": 2}}


@pytest.mark.parametrize(("sample", "path", "value", "read", "expected"), [
    (SERVER, ("out_stream", "send_retries"), 0, lambda c: c.out_stream.send_retries, 0),
    (SERVER, ("out_stream", "receive_retries"), 0, lambda c: c.out_stream.receive_retries, 0),
    (SERVER, ("out_stream", "send_timeout"), {"secs": 1, "nanos": 1_500_000_000},
     lambda c: c.out_stream.send_timeout, 2.5),  # serde's Duration carries nanos into secs
    (SERVER, ("port",), 0, lambda c: c.port, 0),
    (CLIENT, ("port",), 0, lambda c: c.port, 0),
    (CLIENT, ("in_stream", "topic_prefix_spec"), {"prefix": ""},
     lambda c: c.in_stream.topic_prefix_spec.accepts(b"anything"), True),
    (CLIENT, ("retry_strategy",), RETRY, lambda c: c.retry_strategy.initial_delay, 0.0),
    (SERVER, ("statistics",), {"frame_period": 0}, lambda c: c.statistics.frame_period, 0),
    (SERVER, ("statistics",), {"timestamp_period": {"secs": 0, "nanos": 0}},
     lambda c: c.statistics.timestamp_period, 0.0),
    (SERVER, ("out_stream", "fix_ipc_permissions"), 0, lambda c: c.out_stream.fix_ipc_permissions,
     0),
    (SERVER, ("out_stream", "inflight_ops"), None, lambda c: c.out_stream.inflight_ops, 100),
], ids=["send_retries_0", "receive_retries_0", "nanos_carry", "server_port_0", "client_port_0",
        "empty_prefix", "initial_delay_0", "frame_period_0", "timestamp_period_0", "mode_0",
        "null_is_unset"])
def test_accepted_as_upstream(workdir, sample, path, value, read, expected) -> None:
    assert read(load_doc(workdir, with_value(sample_doc(sample), path, value))) == expected


def test_ipc_permissions_default_to_savants_0o777(workdir) -> None:
    assert load_doc(workdir, sample_doc(SERVER)).out_stream.fix_ipc_permissions == 0o777
    assert load_doc(workdir, sample_doc(CLIENT)).in_stream.fix_ipc_permissions == 0o777


def test_permissions_on_a_connecting_socket_are_refused_as_savant_does(workdir) -> None:
    doc = with_value(sample_doc(SERVER), ("out_stream", "url"), "pub+connect:ipc:///tmp/x")
    with pytest.raises(ConfigError, match="fix_ipc_permissions.*connects"):
        load_doc(workdir, with_value(doc, ("out_stream", "fix_ipc_permissions"), 511))


# ---------------------------------------------------------------- warnings, strict, did-you-mean

WARNED = [
    (("tls", "peers", "crl_enable"), True, "tls.peers.crl_enable", 'did you mean "crl_enabled"'),
    (("out_stream", "sendhwm"), 5, "out_stream.sendhwm", 'did you mean "send_hwm"'),
    (("colour",), "blue", "colour", "known keys here"),
    (("out_stream", "fix_ipc_permissions"), 777, "out_stream.fix_ipc_permissions", "write 511"),
]


def tls_server_doc() -> dict:
    return sample_doc("server/certificate_auth_config.json")


@pytest.mark.parametrize(("path", "value", "json_path", "fragment"), WARNED,
                         ids=[w[2] for w in WARNED])
def test_probable_mistakes_warn_with_the_file_and_the_fix(workdir, caplog, path, value,
                                                          json_path, fragment) -> None:
    caplog.set_level(logging.WARNING, "mgfast.config")
    config = load_doc(workdir, with_value(tls_server_doc(), path, value))
    assert isinstance(config, ServerConfig)  # upstream starts with it, so does mgfast
    (record,) = caplog.records
    text = record.getMessage()
    assert text.startswith(f"{workdir / 'config.json'}: {json_path}: ") and fragment in text
    assert ". Fix: " in text


@pytest.mark.parametrize(("path", "value", "json_path", "fragment"), WARNED,
                         ids=[w[2] for w in WARNED])
def test_strict_makes_warnings_errors(workdir, path, value, json_path, fragment) -> None:
    doc = with_value(tls_server_doc(), path, value)
    with pytest.raises(ConfigError) as info:
        load_doc(workdir, doc, strict=True)
    assert info.value.path == json_path and fragment in str(info.value)
    with pytest.raises(ConfigError) as info:  # the same from the config key
        load_doc(workdir, dict(doc, strict=True))
    assert info.value.path == json_path
    assert isinstance(load_doc(workdir, dict(doc, strict=False)), ServerConfig)


def test_tls_with_a_plain_http_url_warns(workdir, caplog) -> None:
    caplog.set_level(logging.WARNING, "mgfast.config")
    doc = with_value(sample_doc("client/https_config.json"), ("url",), "http://gw:8080")
    assert load_doc(workdir, doc).url == "http://gw:8080"
    assert "certificates go unused" in caplog.records[0].getMessage()


def test_strict_flag_on_the_command_line(workdir) -> None:
    import subprocess
    import sys
    path = workdir / "typo.json"
    path.write_bytes(orjson.dumps(with_value(sample_doc(SERVER), ("out_stream", "sned_hwm"), 1)))
    result = subprocess.run([sys.executable, "-m", "mgfast", "server", "--strict", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"{path}: out_stream.sned_hwm: unknown key" in result.stderr
    assert 'did you mean "send_hwm"' in result.stderr


# ---------------------------------------------------------------------------- RUST_LOG fallback

@pytest.mark.parametrize(("spec", "level"), [
    ("debug", "DEBUG"), ("warn", "WARNING"), ("trace", "DEBUG"), ("ERROR", "ERROR"),
    ("actix_web=debug,info", "INFO"), ("media_gateway_server=debug,actix=warn", "DEBUG"),
    ("savant_core=warn", "WARNING"), ("actix_web=debug", None), ("", None), ("bogus", None),
    ("info/FPS", "INFO"), ("off", "CRITICAL"),
])
def test_rust_log_directives(spec, level) -> None:
    assert logs.rust_log_level(spec) == level


def test_rust_log_is_the_last_fallback(monkeypatch) -> None:
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    try:
        monkeypatch.delenv("MGFAST_LOG_LEVEL", raising=False)
        monkeypatch.setenv("RUST_LOG", "warn")
        logs.setup()
        assert root.level == logging.WARNING
        monkeypatch.setenv("MGFAST_LOG_LEVEL", "debug")
        logs.setup()
        assert root.level == logging.DEBUG
        logs.setup("error")
        assert root.level == logging.ERROR
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


# ------------------------------------------------------------------------- running the samples

def runnable(name: str, tmp_path: Path, **replace) -> dict:
    """An upstream sample with only what must be unique on a shared test machine replaced:
    the port and the ipc path (``replace``)."""
    doc = sample_doc(name)
    doc.update(ip="127.0.0.1", port=free_port())
    for path, value in replace.items():
        doc = with_value(doc, tuple(path.split("__")), value)
    return doc


@pytest.mark.timeout(60)
def test_upstream_server_and_client_samples_run_end_to_end(tmp_path) -> None:
    out, into = tmp_path / "sock" / "server", tmp_path / "sock" / "client"
    server_doc = runnable("server/statistics_config.json", tmp_path,
                          out_stream__url=f"pub+bind:ipc://{out}")
    with sp.SavantReader(f"sub+connect:ipc://{out}") as reader, \
            GatewayProcess("server", server_doc, tmp_path) as server:
        # Savant's default for a bound ipc socket: open to every user.
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o777
        client_doc = runnable("client/default_config.json", tmp_path,
                              in_stream__url=f"sub+bind:ipc://{into}")
        client = GatewayProcess("client", client_doc, tmp_path,
                                env={"GATEWAY_URL": server.url})
        with client, sp.SavantWriter(f"pub+connect:ipc://{into}") as writer:
            assert stat.S_IMODE(os.stat(into).st_mode) == 0o777
            wait_until(lambda: (writer.send("cam-1", sp.user_data("cam-1")), reader.messages)[1],
                       what="a message through client and server", timeout=20)


@pytest.mark.timeout(60)
def test_upstream_certificate_auth_samples_run_with_the_files_they_name(tmp_path,
                                                                       monkeypatch) -> None:
    """upstream's certificate_auth samples, server and client, run from a directory holding
    the files they name (server.crt, server.key, lookup-hash-dir, ca.crt, client.crt,
    client.key: the seed guide's); only the port, the ipc paths and the client's url (its host
    name resolves nowhere here) are replaced."""
    import shutil

    from tests.seed_ca import SeedCa
    seed = SeedCa.create(tmp_path / "pki")
    for name, source in (("server.crt", seed.server_crt), ("server.key", seed.server_key),
                         ("ca.crt", seed.ca_crt), ("client.crt", seed.client_crt),
                         ("client.key", seed.client_key)):
        shutil.copy(source, tmp_path / name)
    shutil.copytree(seed.hash_dir, tmp_path / "lookup-hash-dir")
    monkeypatch.chdir(tmp_path)  # relative paths are the working directory's, as upstream
    out, into = tmp_path / "sock" / "server", tmp_path / "sock" / "client"
    server_doc = runnable("server/certificate_auth_config.json", tmp_path,
                          out_stream__url=f"pub+bind:ipc://{out}")
    with sp.SavantReader(f"sub+connect:ipc://{out}") as reader, \
            GatewayProcess("server", server_doc, tmp_path) as server:
        client_doc = runnable("client/certificate_auth_config.json", tmp_path,
                              in_stream__url=f"sub+bind:ipc://{into}", url=server.url)
        with GatewayProcess("client", client_doc, tmp_path), \
                sp.SavantWriter(f"pub+connect:ipc://{into}") as writer:
            wait_until(lambda: (writer.send("cam-1", sp.user_data("cam-1")), reader.messages)[1],
                       what="a message through client and server over mutual TLS", timeout=20)
    assert "client_certificates=required" in server.log()


def test_fix_ipc_permissions_applies_to_the_socket_file(tmp_path) -> None:
    out = tmp_path / "sock" / "server"
    doc = runnable("server/default_config.json", tmp_path, out_stream__url=f"pub+bind:ipc://{out}",
                   out_stream__fix_ipc_permissions=0o700)
    with GatewayProcess("server", doc, tmp_path):
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o700


def test_a_second_server_on_the_same_ipc_out_stream_is_refused(tmp_path) -> None:
    out = tmp_path / "sock" / "server"
    doc = runnable("server/default_config.json", tmp_path, out_stream__url=f"pub+bind:ipc://{out}",
                   workers=1)
    with GatewayProcess("server", doc, tmp_path) as first:
        second_doc = dict(doc, port=free_port())
        second = GatewayProcess("server", second_doc, tmp_path, health_ready=False)
        assert second.proc.wait(30) == 2
        second.stop()
        log = second.log()
        assert f"pub+bind:ipc://{out}" in log and "another process is bound" in log
        conn = http.client.HTTPConnection("127.0.0.1", first.config["port"], timeout=5)
        conn.request("POST", "/", body=encode_media(b"cam-1", sp.to_bytes(sp.user_data()), []),
                     headers={"Content-Type": "application/protobuf"})
        assert conn.getresponse().status == 200  # the first one still owns it
