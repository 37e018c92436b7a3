"""Suite-wide hooks: a failing test that ran gateway processes shows their logs."""

from __future__ import annotations

import pytest

from tests.gateway_process import GatewayProcess

pytest_plugins = ["pytester"]

MAX_LOG_CHARS = 20_000  # per gateway: the end of the log is what explains a failure


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
