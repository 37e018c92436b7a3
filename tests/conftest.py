"""Suite-wide hooks: a failing test that ran gateway processes shows their logs."""

from __future__ import annotations

import pytest

from tests.gateway_process import GatewayProcess
from tests.util import TIME_SCALE

pytest_plugins = ["pytester"]

MAX_LOG_CHARS = 20_000  # per gateway: the end of the log is what explains a failure


def pytest_collection_modifyitems(config, items) -> None:
    # pytest-timeout's per-test limit stretches with MGFAST_TIME_SCALE like every wait in
    # tests/util.py: each test gets its own (prepended, so closest) marker, the test's
    # @pytest.mark.timeout(N) or else --timeout / the ini `timeout`, times the factor.
    if TIME_SCALE == 1:
        return
    default = float(config.getoption("timeout", None) or config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        base = float(marker.args[0]) if marker is not None and marker.args else default
        if base:
            item.add_marker(pytest.mark.timeout(base * TIME_SCALE), append=False)


def pytest_report_header(config) -> str | None:
    if TIME_SCALE == 1:
        return None
    return f"MGFAST_TIME_SCALE={TIME_SCALE:g}: test deadlines x{TIME_SCALE:g}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    GatewayProcess.started.clear()  # before the fixtures, which may start gateways too


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and GatewayProcess.started:
        for gateway in GatewayProcess.started:
            try:
                text = gateway.log()
            except OSError as exc:
                text = f"(log unreadable: {exc})"
            if len(text) > MAX_LOG_CHARS:
                text = f"... ({len(text) - MAX_LOG_CHARS} characters cut)\n" + text[-MAX_LOG_CHARS:]
            report.sections.append((f"mgfast {gateway.kind} log ({gateway.log_path})", text))
