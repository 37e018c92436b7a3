"""Structured, quiet-by-default logs: one ``key=value`` line per event on stderr."""

from __future__ import annotations

import logging
import os
import sys
import time

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"ts={stamp}.{int(record.msecs):03d}Z", f"level={record.levelname.lower()}",
                 f"logger={record.name}", f"msg={_quote(record.getMessage())}"]
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                parts.append(f"{key}={_quote(str(value))}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "=\n'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# env_logger's level names (RUST_LOG, upstream's only log setting) in Python's terms; Python has
# no trace level, so trace is debug; "off" is above every level mgfast logs at.
_RUST_LEVELS = {"trace": "DEBUG", "debug": "DEBUG", "info": "INFO", "warn": "WARNING",
                "error": "ERROR", "off": "CRITICAL"}
_OWN_TARGETS = ("media_gateway", "savant")  # RUST_LOG targets that mean the gateway itself


def rust_log_level(spec: str) -> str | None:
    """The level env_logger's ``RUST_LOG`` gives the gateway: the global directive (``info``),
    else the most verbose one for a gateway target (``media_gateway_server=debug``); None if
    it names none. A ``/regex`` filter suffix is ignored."""
    order = list(_RUST_LEVELS)
    global_level, own = None, []
    for directive in spec.partition("/")[0].split(","):
        target, _, level = directive.strip().rpartition("=")
        level = level.strip().lower()
        if level not in _RUST_LEVELS:
            continue
        if not target:
            global_level = level
        elif target.strip().startswith(_OWN_TARGETS):
            own.append(level)
    chosen = global_level if global_level is not None else (
        min(own, key=order.index) if own else None)
    return _RUST_LEVELS[chosen] if chosen is not None else None


def setup(level: str | None = None) -> None:
    """Info by default (start-up, shutdown, warnings). ``--log-level``, else MGFAST_LOG_LEVEL,
    else RUST_LOG (so an upstream deployment's setting keeps working) overrides it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    chosen = (level or os.environ.get("MGFAST_LOG_LEVEL")
              or rust_log_level(os.environ.get("RUST_LOG", "")) or "INFO")
    root.setLevel(chosen.upper())
