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


def test_time_scale_stretches_the_per_test_timeout_and_waits(pytester, monkeypatch) -> None:
    # What scripts/arm64-check.sh relies on: MGFAST_TIME_SCALE multiplies a test's
    # @pytest.mark.timeout, the ini/--timeout default and wait_until's timeout.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest("from tests.conftest import pytest_collection_modifyitems\n")
    pytester.makepyfile(test_inner="""
        import time
        import pytest
        from tests.util import wait_until

        @pytest.mark.timeout(0.5)
        def test_marker():
            time.sleep(1)

        def test_default():
            time.sleep(1)

        def test_wait_until():
            started = time.monotonic()
            wait_until(lambda: time.monotonic() - started > 1, timeout=0.5)
    """)
    monkeypatch.setenv("MGFAST_TIME_SCALE", "1")
    pytester.runpytest_subprocess("-q", "--timeout=0.5").assert_outcomes(failed=3)
    monkeypatch.setenv("MGFAST_TIME_SCALE", "4")
    pytester.runpytest_subprocess("-q", "--timeout=0.5").assert_outcomes(passed=3)
