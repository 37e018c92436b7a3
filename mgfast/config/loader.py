"""Load upstream Media Gateway 0.2.0 JSON configs unchanged, plus mgfast's own keys.

The jobs are split: ``reading`` (file, JSON, ``${VAR:-default}``), ``validation`` (the value
specs), ``schema`` (the key tables), ``checks`` (rules across keys). This module ties them
together. ``path=None`` loads the embedded default (``mgfast.config.defaults``) through the same
code, so it is validated identically. Every error is one :class:`ConfigError` naming the file,
the JSON path, the problem and the fix; no other exception escapes for any input (a property
test checks this). What upstream accepts but is likely a mistake (an unknown key, which upstream
ignores) is logged as a :class:`ConfigWarning`; ``strict`` (``--strict`` or ``"strict": true``)
turns warnings into errors.

Relative file paths are resolved against the working directory, as upstream does.
The keys themselves are documented in README.md ("Configuration reference").
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from mgfast.config import defaults, schema
from mgfast.config.model import ClientConfig, ServerConfig
from mgfast.config.reading import load_document, read_file
from mgfast.config.validation import Bool, Ctx, Obj, describe

__all__ = ["load_server_config", "load_client_config", "parse_server_config",
           "parse_client_config"]

log = logging.getLogger("mgfast.config")


def load_server_config(path: str | os.PathLike[str] | None = None, *,
                       environ: Mapping[str, str] | None = None,
                       strict: bool = False) -> ServerConfig:
    """Load and validate a Media Gateway server config; ``None`` loads the embedded default."""
    source, data = _source(path, defaults.SERVER_DEFAULT_JSON)
    return parse_server_config(data, source=source, base_dir=Path.cwd(), environ=environ,
                               strict=strict)


def load_client_config(path: str | os.PathLike[str] | None = None, *,
                       environ: Mapping[str, str] | None = None,
                       strict: bool = False) -> ClientConfig:
    """Load and validate a Media Gateway client config; ``None`` loads the embedded default."""
    source, data = _source(path, defaults.CLIENT_DEFAULT_JSON)
    return parse_client_config(data, source=source, base_dir=Path.cwd(), environ=environ,
                               strict=strict)


def parse_server_config(data: bytes | str, *, source: str, base_dir: str | os.PathLike[str],
                        environ: Mapping[str, str] | None = None,
                        strict: bool = False) -> ServerConfig:
    """Validate server config text; ``source`` names it in messages, ``base_dir`` anchors
    relative paths."""
    config = _parse(schema.SERVER, data, source, base_dir, environ, strict)
    assert isinstance(config, ServerConfig)
    return config


def parse_client_config(data: bytes | str, *, source: str, base_dir: str | os.PathLike[str],
                        environ: Mapping[str, str] | None = None,
                        strict: bool = False) -> ClientConfig:
    """Validate client config text; ``source`` names it in messages, ``base_dir`` anchors
    relative paths."""
    config = _parse(schema.CLIENT, data, source, base_dir, environ, strict)
    assert isinstance(config, ClientConfig)
    return config


def _source(path: str | os.PathLike[str] | None, embedded: str) -> tuple[str, bytes | str]:
    if path is None:
        return defaults.EMBEDDED_SOURCE, embedded
    return read_file(path)


def _parse(top: Obj, data: bytes | str, source: str, base_dir: str | os.PathLike[str],
           environ: Mapping[str, str] | None, strict: bool) -> Any:
    ctx = Ctx(str(source), Path(os.path.abspath(base_dir)), strict=strict)
    doc = load_document(data, ctx, os.environ if environ is None else environ)
    if not isinstance(doc, dict):
        ctx.fail((), f"the top level must be a JSON object, got {describe(doc)}",
                 f"write the settings as one object, e.g. {top.example}")
    if doc.get("strict") is not None:  # before any other key, so it governs their warnings
        ctx.strict = strict or Bool().parse(doc["strict"], ctx, ("strict",))
    config = top.parse(doc, ctx, ())
    for warning in ctx.warnings:
        log.warning(str(warning))
    return config
