"""Signals at awkward moments: during start-up, and timeout(1)'s double SIGTERM."""

from __future__ import annotations

import http.client
import os
import signal

import pytest

from mgfast.media import encode_media
from tests import savant_peers as sp
from tests.gateway_process import GatewayProcess, server_config
from tests.util import endpoint, wait_until


def starting_server(tmp_path) -> GatewayProcess:
    """A two-worker server in its own process group, caught right after its first child was
    spawned (still importing, not ready)."""
    config = server_config(f"pub+bind:{endpoint('ipc', tmp_path)}", workers=2)
    server = GatewayProcess("server", config, tmp_path, health_ready=False, new_session=True)
    wait_until(lambda: "msg=started" in server.log(), timeout=20, what="a child to be spawned")
    return server


def assert_quiet_stop(server: GatewayProcess) -> None:
    assert server.proc.wait(30) == 0, server.log()
    server.stop()
    log = server.log()
    for bad in ("Traceback", "KeyboardInterrupt", "level=error", "exited during start-up"):
        assert bad not in log, log


@pytest.mark.timeout(60)
def test_sigterm_during_startup_is_a_stop_not_a_crash(tmp_path) -> None:
    server = starting_server(tmp_path)
    server.proc.send_signal(signal.SIGTERM)
    assert_quiet_stop(server)


@pytest.mark.timeout(60)
def test_sigint_to_the_whole_group_during_startup_exits_quietly(tmp_path) -> None:
    server = starting_server(tmp_path)
    os.killpg(server.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert_quiet_stop(server)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
def test_timeouts_double_sigterm_still_drains(tmp_path, workers) -> None:
    """A request in flight (a DEALER out_stream nobody reads: about 2 s to its 504) when
    timeout(1) signals twice still gets its answer: the repeat is not a second request to
    stop at once."""
    config = server_config(f"dealer+bind:{endpoint('ipc', tmp_path)}", workers=workers)
    config["out_stream"].update(send_timeout={"secs": 1, "nanos": 0}, send_retries=1)
    server = GatewayProcess("server", config, tmp_path, new_session=True)
    conn = http.client.HTTPConnection("127.0.0.1", config["port"], timeout=30)
    conn.request("POST", "/", body=encode_media(b"cam", sp.to_bytes(sp.user_data("cam")), []),
                 headers={"Content-Type": "application/protobuf"})
    # timeout(1): SIGTERM to the command, then to its whole process group.
    server.proc.send_signal(signal.SIGTERM)
    os.killpg(server.proc.pid, signal.SIGTERM)
    response = conn.getresponse()
    assert response.status == 504, response.read()
    assert_quiet_stop(server)
    assert "killing a child" not in server.log()
    assert "msg=stopped" in server.log()
