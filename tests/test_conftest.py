"""The suite's own hooks: a failing gateway test prints the gateway's log."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_failing_gateway_test_shows_the_gateway_log(pytester, monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest("from tests.conftest import pytest_runtest_setup, "
                          "pytest_runtest_makereport\n")
    pytester.makepyfile(test_inner="""
        from tests.gateway_process import GatewayProcess, server_config

        def test_fails(tmp_path):
            server = GatewayProcess("server", server_config("pub+bind:ipc:///nonexistent/\\x00"),
                                    tmp_path, health_ready=False)
            server.proc.wait(30)
            server.stop()
            assert False, "the test's own failure"

        def test_passes(tmp_path):
            pass
    """)
    result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    assert "mgfast server log" in out and "mgfast server:" in out  # the process's own error
    assert out.count("mgfast server log") == 1
