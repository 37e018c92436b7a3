"""Load upstream Media Gateway 0.2.0 JSON configurations unchanged, plus mgfast's own keys.

Public API::

    load_server_config(path: str | os.PathLike | None, *, environ=None) -> ServerConfig
    load_client_config(path: str | os.PathLike | None, *, environ=None) -> ClientConfig
    parse_server_config(data: bytes | str, *, source: str, base_dir, environ=None) -> ServerConfig
    parse_client_config(data: bytes | str, *, source: str, base_dir, environ=None) -> ClientConfig

``path=None`` loads the embedded default (``mgfast.config.defaults``) through the same code, so it
is validated identically; its ``source`` is ``<embedded default>``. Every problem is raised as one
:class:`~mgfast.config.errors.ConfigError` naming the file, the JSON path, the problem and the
fix; no other exception type escapes for any input (a property test checks this).

The schema is declarative: the tables at the end of this module (``_SERVER``, ``_CLIENT`` and their
parts) say which keys exist, which are required, and which value spec checks each one. Every check
(integer range, duration, file, socket URL, ...) is implemented once, in one spec class.

Upstream keys
-------------
Server: ``ip``, ``port``, ``out_stream`` (required); ``tls``, ``auth``, ``statistics``.
``out_stream``: ``url`` (required, a Savant *writer* URL: pub/dealer/req), ``send_timeout``,
``send_retries``, ``receive_timeout``, ``receive_retries``, ``send_hwm``, ``receive_hwm``,
``fix_ipc_permissions``, ``inflight_ops`` (upstream ignores the last one; it is in the samples and
mgfast uses it as the in-flight window). ``tls``: ``identity`` {``certificate``, ``key``} (required),
``peers`` {``lookup_hash_directory`` (required), ``crl_enabled``}. ``auth.basic``: ``etcd`` {``urls``
(a list, or one string), ``tls`` {``root_certificate``, ``identity``}, ``credentials`` {``username``,
``password``}, ``path``, ``data_format`` (``json`` | ``yaml``), ``connect_timeout``,
``lease_timeout``, ``cache``}, ``cache`` {``size``, ``usage`` {``period``, ``evicted_threshold``}},
``quarantine`` {``failed_attempt_limit``, ``period``}. The loader checks its shape;
``mgfast.auth.config`` adds the checks across fields and builds ``ServerConfig.auth``.
``statistics``: exactly one of ``frame_period`` (integer) or ``timestamp_period`` (duration), plus
the optional ``history_size`` that upstream samples carry.

Client: ``ip``, ``port``, ``url``, ``in_stream`` (required); ``retry_strategy``, ``wait_strategy``,
``tls``, ``auth``, ``statistics``. ``url`` must be ``http://`` or ``https://`` with a host; a
``tls`` section together with an ``http://`` url is rejected (the certificates would silently go
unused), while ``https://`` without ``tls`` verifies the server against the system CA store.
``in_stream``: ``url`` (required, a Savant *reader* URL: sub/router/rep), ``receive_timeout``,
``receive_hwm``, ``topic_prefix_spec`` (``{"none": null}``, ``{"source_id": "cam-1"}``,
``{"prefix": "cam-"}``; serde's bare-string form ``"none"`` works too), ``source_cache_size``,
``inflight_ops``, ``fix_ipc_permissions``. ``retry_strategy``: ``{"exponential": {"initial_delay":
D, "maximum_delay": D, "multiplier": M}}`` with M >= 2, 0 < initial <= maximum. ``wait_strategy``:
``"yield"`` or ``{"sleep": D}``. ``tls``: ``root_certificate``, ``identity`` {``certificate``,
``key``}. ``auth.basic``: ``username``, ``password``.

Upstream requires many keys that mgfast defaults (out_stream/in_stream tuning, ``crl_enabled``);
a config that loads upstream loads here, not always the other way round.

mgfast extension keys
---------------------
Server:
  ``workers``: number of HTTP worker processes, integer 1..1024; absent or null = one per CPU.
  ``metrics``: ``{"ip": IP, "port": PORT}``, the plain-HTTP Prometheus ``/metrics`` listener;
  ``ip`` defaults to the top-level ``ip``; ``port`` must differ from the gateway's ``port``.
  ``http``: ``max_body_size`` (bytes, integer >= 1; default 64 MiB where upstream caps at 256 KiB),
  ``header_timeout``, ``body_timeout``, ``idle_timeout`` (durations > 0).
  ``tls.handshake_timeout``: duration > 0 a TLS handshake may take.
  ``tls.recheck_interval``: duration > 0 between re-checks of live connections' client
  certificates against the hash directory (revocation closes them).
Client:
  ``connections``: keep-alive HTTP connections to the server, integer 1..1024 (default 4).
  ``batch``: messages per POST between mgfast peers, integer 1..65536 (default 1 = upstream API).
  ``pipeline``: requests in flight per connection, integer 1..1024 (default 16; 1 = one at a time).
  ``drain_timeout``: duration >= 0 to deliver what was already read on SIGTERM.
  ``metrics``: as for the server (``port`` must differ from the client's ``port``).
  ``http``: as for the server.

Values
------
Durations are ``{"secs": S, "nanos": N}`` with non-negative integers and N < 1e9 (serde's
``[S, N]`` list form is accepted too) and become float seconds. ZeroMQ timeouts must be at least
1 ms and fit in 32-bit milliseconds, as Savant passes them to ZeroMQ. ``fix_ipc_permissions`` is a
decimal integer 0..511 (JSON has no octal: 0o777 is 511). Ports are 1..65535. Out/in stream counts
(retries, high-water marks, inflight_ops, source_cache_size) are integers >= 1. JSON ``null`` for an
optional key means "not set" (as in upstream, where twelf drops nulls). Duplicate keys: the last one
wins, as in upstream.

File paths (certificates, keys, the hash directory, etcd TLS files) that are relative are resolved
against the directory of the config file (upstream resolves them against its working directory;
for the embedded default, against the current directory). Files must exist, be regular files and
be readable; the hash directory must exist and be listable. Their contents are checked later, when
the TLS contexts are built.

Environment substitution
------------------------
Upstream (twelf + shellexpand) expands ``$VAR``, ``${VAR}`` and ``${VAR:-default}`` over the whole
file text before it parses the JSON, so both ``"url": "${URL:-http://gw:8080}"`` and an unquoted
``"port": ${PORT:-8080}`` work there. mgfast accepts both forms with the same syntax: ``$$`` is a
literal ``$``; a ``$`` followed by neither a name character nor ``{`` is literal; the default is
used only when the variable is unset (a variable set to the empty string gives ""); an unset
variable without a default is a ConfigError naming it. How:

* If the file is valid JSON as written, placeholders are expanded inside each string value after
  parsing (object keys are left alone). A value containing quotes or backslashes therefore cannot
  break the JSON, which upstream's text expansion would.
* Numeric strings: a string that held a placeholder may stand for an integer, a number or a
  boolean, so ``"port": "${PORT:-8080}"`` gives the integer 8080 (upstream rejects that form). A
  literal string such as ``"port": "8080"`` is still a type error, as upstream, with the fix
  "write it without quotes".
* If the file is valid JSON only after expansion (unquoted placeholders), the whole text is
  expanded first, exactly as upstream does; JSON errors are then reported at the line and column
  of the expanded text.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn
from urllib.parse import urlsplit

import orjson

from mgfast.auth import config as auth_config
from mgfast.config import defaults
from mgfast.config.errors import ConfigError
from mgfast.config.model import (
    BasicAuth,
    ClientConfig,
    ClientTls,
    HttpLimits,
    Identity,
    InStreamConfig,
    Listen,
    OutStreamConfig,
    Peers,
    RetryStrategy,
    ServerConfig,
    ServerTls,
    Statistics,
    TopicPrefixSpec,
    WaitStrategy,
)
from mgfast.zmq.url import READER_TYPES, WRITER_TYPES, parse_socket_url

__all__ = [
    "load_server_config",
    "load_client_config",
    "parse_server_config",
    "parse_client_config",
]

JsonPath = tuple  # of str (object keys) and int (list indexes)

MAX_CONFIG_BYTES = 1024 * 1024  # a config is a few KiB; anything this big is the wrong file
MAX_NESTING = 64  # no setting nests deeper than 6; bounds recursion on hostile input
I32_MAX = 2**31 - 1  # Savant hands timeouts (in ms), HWMs and retries to ZeroMQ as C ints
U64_MAX = 2**64 - 1


# ----------------------------------------------------------------------------------- public API

def load_server_config(path: str | os.PathLike | None = None, *,
                       environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Load and validate a Media Gateway server config; ``None`` loads the embedded default."""
    if path is None:
        return parse_server_config(defaults.SERVER_DEFAULT_JSON, source=defaults.EMBEDDED_SOURCE,
                                   base_dir=Path.cwd(), environ=environ)
    source, base_dir, data = _read_file(path)
    return parse_server_config(data, source=source, base_dir=base_dir, environ=environ)


def load_client_config(path: str | os.PathLike | None = None, *,
                       environ: Mapping[str, str] | None = None) -> ClientConfig:
    """Load and validate a Media Gateway client config; ``None`` loads the embedded default."""
    if path is None:
        return parse_client_config(defaults.CLIENT_DEFAULT_JSON, source=defaults.EMBEDDED_SOURCE,
                                   base_dir=Path.cwd(), environ=environ)
    source, base_dir, data = _read_file(path)
    return parse_client_config(data, source=source, base_dir=base_dir, environ=environ)


def parse_server_config(data: bytes | str, *, source: str, base_dir: str | os.PathLike,
                        environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Validate server config text; ``source`` names it in errors, ``base_dir`` anchors paths."""
    return _parse(_SERVER, data, source, base_dir, environ)


def parse_client_config(data: bytes | str, *, source: str, base_dir: str | os.PathLike,
                        environ: Mapping[str, str] | None = None) -> ClientConfig:
    """Validate client config text; ``source`` names it in errors, ``base_dir`` anchors paths."""
    return _parse(_CLIENT, data, source, base_dir, environ)


# ------------------------------------------------------------------------- context and helpers

class _Ctx:
    """Where the document came from: names it in errors and anchors relative paths."""

    __slots__ = ("file", "base_dir")

    def __init__(self, file: str, base_dir: Path) -> None:
        self.file = file
        self.base_dir = base_dir

    def fail(self, path: JsonPath, problem: str, fix: str) -> NoReturn:
        raise ConfigError(self.file, _format_path(path), problem, fix)


def _format_path(path: JsonPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _short(text: str, limit: int = 60) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _describe(value: Any) -> str:
    """How a JSON value reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        text = repr(value)
        return f"the number {text if len(text) <= 30 else text[:30] + '...'}"
    if isinstance(value, _Substituted):
        return f"the string {_short(value)} (after environment substitution)"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _seconds(value: float) -> str:
    return f"{value * 1000:g} ms" if value < 1 else f"{value:g} s"


# --------------------------------------------------------------------- reading and substitution

def _read_file(path: str | os.PathLike) -> tuple[str, Path, bytes]:
    source = os.fsdecode(path)
    ctx = _Ctx(source, Path.cwd())
    fix_path = (f"check the path (a relative one is taken from the current directory {Path.cwd()}), "
                f"or run without CONFIG to use the embedded default")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except (FileNotFoundError, NotADirectoryError):
        ctx.fail((), "the config file does not exist", fix_path)
    except IsADirectoryError:
        ctx.fail((), "this is a directory, not a config file", fix_path)
    except PermissionError:
        ctx.fail((), "the config file cannot be read: permission denied",
                 "make it readable by the user mgfast runs as")
    except ValueError:
        ctx.fail((), "the path contains a NUL character", fix_path)
    except OSError as exc:
        ctx.fail((), f"the config file cannot be read: {exc.strerror or exc}", fix_path)
    if len(data) > MAX_CONFIG_BYTES:
        ctx.fail((), f"the file is larger than {MAX_CONFIG_BYTES} bytes, so it is not a config",
                 "pass the Media Gateway JSON config file")
    return source, Path(os.path.abspath(source)).parent, data


def _parse(schema: "_Obj", data: bytes | str, source: str, base_dir: str | os.PathLike,
           environ: Mapping[str, str] | None) -> Any:
    ctx = _Ctx(str(source), Path(os.path.abspath(base_dir)))
    env = os.environ if environ is None else environ
    doc = _load_json(_decode(data, ctx), ctx, env)
    if not isinstance(doc, dict):
        ctx.fail((), f"the top level must be a JSON object, got {_describe(doc)}",
                 f"write the settings as one object, e.g. {schema.example}")
    return schema.parse(doc, ctx, ())


def _decode(data: bytes | str, ctx: _Ctx) -> str:
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            ctx.fail((), f"the file is not UTF-8 text (invalid byte at offset {exc.start})",
                     "save it as UTF-8")
    text = text.removeprefix("\ufeff")  # editors on Windows write a BOM; JSON parsers reject it
    if not text.strip():
        ctx.fail((), "the file is empty",
                 'write a JSON object, e.g. {"ip": "0.0.0.0", "port": 8080, ...}')
    return text


class _Unset(Exception):
    def __init__(self, name: str, pos: int) -> None:
        super().__init__(name)
        self.name = name
        self.pos = pos


class _Substituted(str):
    """A string that held a ``$`` placeholder: it may stand for a number or a boolean."""

    __slots__ = ()


def _is_name_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _expand(text: str, env: Mapping[str, str]) -> str:
    """shellexpand::env semantics: ``$NAME``, ``${NAME}``, ``${NAME:-default}``, ``$$``."""
    out: list[str] = []
    i = 0
    while True:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        nxt = text[j + 1:j + 2]
        if nxt == "{":
            close = text.find("}", j)
            if close < 0:  # unbalanced: literal
                out.append("${")
                i = j + 2
                continue
            body = text[j + 2:close]
            sep = body.find(":-")
            name, default = (body[:sep], body[sep + 2:]) if sep > 0 else (body, None)
            value = env.get(name)
            if value is None:
                if default is None:
                    raise _Unset(name, j)
                value = default
            out.append(value)
            i = close + 1
        elif nxt and _is_name_char(nxt):
            k = j + 1
            while k < len(text) and _is_name_char(text[k]):
                k += 1
            name = text[j + 1:k]
            value = env.get(name)
            if value is None:
                raise _Unset(name, j)
            out.append(value)
            i = k
        else:  # "$$" is an escaped "$"; any other "$" is literal
            out.append("$")
            i = j + 2 if nxt == "$" else j + 1


def _unset_fix(name: str) -> str:
    var = name if name and all(_is_name_char(c) for c in name) else "NAME"
    return (f"set {var} in the environment, or give a default: ${{{var}:-value}}; "
            f"write $$ for a literal $")


def _unset_problem(name: str) -> str:
    if not name or not all(_is_name_char(c) for c in name):
        return f"the placeholder ${{{name}}} does not name an environment variable"
    return f"environment variable {name} is not set and the placeholder has no default"


def _load_json(text: str, ctx: _Ctx, env: Mapping[str, str]) -> Any:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as first:
        if "$" not in text:
            _json_fail(ctx, first, substituted=False)
        # Upstream expands the whole text before parsing: unquoted placeholders are legal there.
        try:
            expanded = _expand(text, env)
        except _Unset as exc:
            line = text.count("\n", 0, exc.pos) + 1
            col = exc.pos - (text.rfind("\n", 0, exc.pos) + 1) + 1
            ctx.fail((), f"{_unset_problem(exc.name)} (line {line}, column {col})",
                     _unset_fix(exc.name))
        if expanded == text:
            _json_fail(ctx, first, substituted=False)
        try:
            return orjson.loads(expanded)
        except orjson.JSONDecodeError as second:
            _json_fail(ctx, second, substituted=True)
    return _substitute(doc, env, ctx, ())


def _json_fail(ctx: _Ctx, exc: orjson.JSONDecodeError, *, substituted: bool) -> NoReturn:
    where = f"line {exc.lineno}, column {exc.colno}"
    if substituted:
        ctx.fail((), f"invalid JSON after environment substitution at {where}: {exc.msg}",
                 "check the substituted values: a placeholder outside quotes must expand to a "
                 "number, true, false or null; put it inside quotes for a string")
    ctx.fail((), f"invalid JSON at {where}: {exc.msg}",
             "correct the JSON there (usual causes: a trailing or missing comma, a missing quote, "
             "// comments, which JSON does not allow)")


def _substitute(node: Any, env: Mapping[str, str], ctx: _Ctx, path: JsonPath) -> Any:
    if len(path) > MAX_NESTING:
        ctx.fail(path, f"values are nested more than {MAX_NESTING} levels deep",
                 "no mgfast setting nests that deep; remove the extra levels")
    if isinstance(node, str):
        if "$" not in node:
            return node
        try:
            return _Substituted(_expand(node, env))
        except _Unset as exc:
            ctx.fail(path, _unset_problem(exc.name), _unset_fix(exc.name))
    if isinstance(node, list):
        return [_substitute(v, env, ctx, path + (i,)) for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {k: _substitute(v, env, ctx, path + (k,)) for k, v in node.items()}
    return node


# ----------------------------------------------------------------------------------- value specs

class _Spec:
    """Checks one JSON value and turns it into its Python form, or raises ConfigError."""

    expected = "a value"
    example = "a value"

    def parse(self, value: Any, ctx: _Ctx, path: JsonPath) -> Any:
        raise NotImplementedError

    def wrong_type(self, value: Any, ctx: _Ctx, path: JsonPath, fix: str | None = None) -> NoReturn:
        ctx.fail(path, f"expected {self.expected}, got {_describe(value)}",
                 fix or f"write {self.example}")


_INT_TEXT = re.compile(r"-?[0-9]{1,30}")
_NUMBER_TEXT = re.compile(r"-?[0-9]{1,30}(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?")


class _Int(_Spec):
    def __init__(self, lo: int, hi: int | None = None, *, example: str | None = None,
                 fix: str | None = None) -> None:
        self.lo, self.hi = lo, hi
        self.expected = "an integer" if hi is None else f"an integer from {lo} to {hi}"
        self.example = example or str(lo)
        self.range_fix = fix or (f"write a whole number of at least {lo}" if hi is None
                                 else f"write a whole number from {lo} to {hi}")

    def parse(self, value: Any, ctx: _Ctx, path: JsonPath) -> int:
        if isinstance(value, _Substituted) and _INT_TEXT.fullmatch(value):
            value = int(value)
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e30:
            self.wrong_type(value, ctx, path, f"write {int(value)} without a decimal point")
        if (isinstance(value, str) and not isinstance(value, _Substituted)
                and _INT_TEXT.fullmatch(value.strip())):
            self.wrong_type(value, ctx, path, f"write {value.strip()} without quotes")
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(value, ctx, path, self.range_fix)
        if value < self.lo or (self.hi is not None and value > self.hi):
            ctx.fail(path, f"{_describe(value)} is out of range", self.range_fix)
        return value


class _Number(_Spec):
    def __init__(self, lo: float, *, fix: str) -> None:
        self.lo = lo
        self.expected = f"a number of at least {lo:g}"
        self.example = f"{lo:g}"
        self.range_fix = fix

    def parse(self, value: Any, ctx: _Ctx, path: JsonPath) -> float:
        if isinstance(value, _Substituted) and _NUMBER_TEXT.fullmatch(value):
            value = float(value)
        if (isinstance(value, str) and not isinstance(value, _Substituted)
                and _NUMBER_TEXT.fullmatch(value.strip())):
            self.wrong_type(value, ctx, path, f"write {value.strip()} without quotes")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.wrong_type(value, ctx, path, self.range_fix)
        if not math.isfinite(value) or value < self.lo:
            ctx.fail(path, f"{_describe(value)} is out of range", self.range_fix)
        return float(value)


class _Bool(_Spec):
    expected = "true or false"
    example = "true or false"

    def parse(self, value: Any, ctx: _Ctx, path: JsonPath) -> bool:
        if isinstance(value, _Substituted) and value in ("true", "false"):
            return value == "true"
        if (isinstance(value, str) and not isinstance(value, _Substituted)
                and value.strip().lower() in ("true", "false")):
            self.wrong_type(value, ctx, path, f"write {value.strip().lower()} without quotes")
        if not isinstance(value, bool):
            self.wrong_type(value, ctx, path)
        return value


class _Str(_Spec):
    def __init__(self, *, nonempty: bool = True, choices: tuple[str, ...] = (),
                 example: str = '"text"') -> None:
        self.nonempty = nonempty
        self.choices = choices
        self.expected = ("one of " + ", ".join(f'"{c}"' for c in choices)) if choices else "a string"
        self.example = f'"{choices[0]}"' if choices else example

    def parse(self, value: Any, ctx: _Ctx, path: JsonPath) -> str:
        if not isinstance(value, str):
            self.wrong_type(value, ctx, path)
        value = str(value)
        if self.nonempty and not value:
            ctx.fail(path, "must not be empty", f"write {self.example}")
        if self.choices and value not in self.choices:
            close = difflib.get_close_matches(value, self.choices, n=1)
            hint = f'did you mean "{close[0]}"? Otherwise write' if close else "write"
            ctx.fail(path, f"{_short(value)} is not one of {', '.join(self.choices)}",
                     f"{hint} one of " + ", ".join(f'"{c}"' for c in self.choices))
        return value


class _Ip(_Str):
    def __init__(self) -> None:
        super().__init__(example='"0.0.0.0"')
        self.expected = "an IP address or host name"

    def parse(self, value: Any, ctx: _Ctx, path: JsonPath) -> str:
        value = super().parse(value, ctx, path)
        if any(ch.isspace() for ch in value) or "/" in value or value.count(":") == 1:
            ctx.fail(path, f"{_short(value)} is not an IP address or host name",
                     'write only the address to listen on, e.g. "0.0.0.0", "127.0.0.1" or "::"; '
                     "the port goes in the port key")
        return value


class _Duration(_Spec):
    """``{"secs": S, "nanos": N}`` (or serde's ``[S, N]``) as float seconds, with bounds."""

    expected = 'a duration {"secs": S, "nanos": N}'

    def __init__(self, *, positive: bool = False, min_s: float = 0.0, max_s: float | None = None,
                 why: str = "", example: str = '{"secs": 1, "nanos": 0}') -> None:
        self.positive, self.min_s, self.max_s, self.why = positive, min_s, max_s, why
        self.example = example

    _SECS = _Int(0, U64_MAX, example="1")
    _NANOS = _Int(0, 999_999_999, example="0",
                  fix="write 0 to 999999999; carry whole seconds into secs")
    _KEYS = {"secs": _SECS, "nanos": _NANOS}

    def parse(self, value: Any, ctx: _Ctx, path: JsonPath) -> float:
        if isinstance(value, dict):
            _check_keys(value, self._KEYS, ctx, path)
            for key in self._KEYS:
                if value.get(key) is None:
                    ctx.fail(path + (key,), "required key is missing" if key not in value
                             else "must not be null",
                             f'write both secs and nanos, e.g. {self.example}')
            secs = self._SECS.parse(value["secs"], ctx, path + ("secs",))
            nanos = self._NANOS.parse(value["nanos"], ctx, path + ("nanos",))
        elif isinstance(value, list) and len(value) == 2:
            secs = self._SECS.parse(value[0], ctx, path + (0,))
            nanos = self._NANOS.parse(value[1], ctx, path + (1,))
        else:
            fix = f"write {self.example}"
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                fix += " (a bare number is not a duration; older upstream versions took milliseconds)"
            self.wrong_type(value, ctx, path, fix)
        seconds = secs + nanos / 1e9
        why = f" ({self.why})" if self.why else ""
        if self.positive and seconds <= 0:
            ctx.fail(path, "must be longer than zero", f"write e.g. {self.example}")
        if seconds < self.min_s:
            ctx.fail(path, f"{_seconds(seconds)} is too short: the minimum is "
                           f"{_seconds(self.min_s)}{why}", f"write e.g. {self.example}")
        if self.max_s is not None and seconds > self.max_s:
            ctx.fail(path, f"{_seconds(seconds)} is too long: the maximum is "
                           f"{_seconds(self.max_s)}{why}", f"write e.g. {self.example}")
        return seconds


class _FilePath(_Spec):
    """A path to an existing readable file (``kind="file"``) or listable directory."""

    def __init__(self, kind: str, what: str, example: str) -> None:
        self.kind, self.what = kind, what
        self.expected = f"the path of the {what}"
        self.example = example
        self._str = _Str(example=example)

    def parse(self, value: Any, ctx: _Ctx, path: JsonPath) -> Path:
        text = self._str.parse(value, ctx, path)
        resolved = Path(os.path.normpath(ctx.base_dir / text))  # an absolute text wins in "/"
        shown = f"{self.what} {resolved}" + ("" if text == str(resolved) else f" (from {_short(text)})")
        fix = (f"create it, or correct the path (relative paths are resolved against "
               f"{ctx.base_dir}, the config file's directory)")
        try:
            st = os.stat(resolved)
        except (FileNotFoundError, NotADirectoryError):
            ctx.fail(path, f"{shown} does not exist", fix)
        except PermissionError:
            ctx.fail(path, f"{shown} cannot be reached: permission denied on a parent directory",
                     "let the user mgfast runs as traverse the parent directories")
        except ValueError:
            ctx.fail(path, "the path contains a NUL character", fix)
        except OSError as exc:
            ctx.fail(path, f"{shown} cannot be checked: {exc.strerror or exc}", fix)
        if self.kind == "dir":
            if not stat.S_ISDIR(st.st_mode):
                ctx.fail(path, f"{shown} is not a directory",
                         "point it at the directory holding the hash.N CA certificates and "
                         "hash.rN CRLs")
            if not os.access(resolved, os.R_OK | os.X_OK):
                ctx.fail(path, f"{shown} cannot be listed: permission denied",
                         "make it readable and searchable by the user mgfast runs as")
            return resolved
        if stat.S_ISDIR(st.st_mode):
            ctx.fail(path, f"{shown} is a directory, not a file", f"point it at the {self.what} file")
        if not stat.S_ISREG(st.st_mode):
            ctx.fail(path, f"{shown} is not a regular file", f"point it at the {self.what} file")
        try:
            with open(resolved, "rb") as f:
                f.read(1)
        except PermissionError:
            ctx.fail(path, f"{shown} cannot be read: permission denied",
                     "make it readable by the user mgfast runs as")
        except OSError as exc:
            ctx.fail(path, f"{shown} cannot be read: {exc.strerror or exc}", fix)
        return resolved


class _SocketUrl(_Spec):
    def __init__(self, role: str) -> None:
        self.role = role
        types = WRITER_TYPES if role == "writer" else READER_TYPES
        self.types = ", ".join(types)
        self.expected = f"a Savant ZeroMQ {role} URL"
        self.example = f'"{types[0]}+bind:ipc:///tmp/stream"'

    def parse(self, value: Any, ctx: _Ctx, path: JsonPath) -> Any:
        text = _Str(example=self.example).parse(value, ctx, path)
        try:
            return parse_socket_url(text, role=self.role)  # type: ignore[arg-type]
        except ValueError as exc:
            problem, _, fix = str(exc).partition("; ")
            ctx.fail(path, problem, fix or (
                f"write <type>+<bind|connect>:ipc:///path or <type>+<bind|connect>:tcp://host:port "
                f"with a {self.role} type ({self.types}), e.g. {self.example}"))


class _HttpUrl(_Spec):
    expected = "an http:// or https:// URL"
    example = '"http://127.0.0.1:8080"'

    def parse(self, value: Any, ctx: _Ctx, path: JsonPath) -> str:
        text = _Str(example=self.example).parse(value, ctx, path)
        fix = 'write the server\'s URL, e.g. "http://gateway:8080" or "https://gateway:8443"'
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not 0..65535
        except ValueError as exc:
            ctx.fail(path, f"{_short(text)} is not a valid URL: {exc}", fix)
        if parts.scheme not in ("http", "https"):
            ctx.fail(path, f"{_short(text)} does not start with http:// or https://", fix)
        if not parts.hostname:
            ctx.fail(path, f"{_short(text)} has no host name", fix)
        return text


class _Field:
    __slots__ = ("spec", "required")

    def __init__(self, spec: _Spec, required: bool = False) -> None:
        self.spec, self.required = spec, required


def _req(spec: _Spec) -> _Field:
    return _Field(spec, required=True)


def _opt(spec: _Spec) -> _Field:
    return _Field(spec)


def _check_keys(value: dict, known: Mapping[str, Any], ctx: _Ctx, path: JsonPath,
                hints: Mapping[str, str] | None = None) -> None:
    """Reject keys the schema does not know, suggesting the closest known one."""
    for key in value:
        if key in known:
            continue
        listing = ", ".join(known)
        if hints and key in hints:
            fix = hints[key]
        else:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            fix = (f'did you mean "{close[0]}"? Known keys here: {listing}' if close
                   else f"remove it or correct its name; known keys here: {listing}")
        ctx.fail(path + (key,), f"unknown key {_short(key)}", fix)


Post = Callable[[dict, _Ctx, JsonPath], None]


class _Obj(_Spec):
    """A JSON object with a fixed set of keys, built into a dataclass (or a dict)."""

    expected = "an object"

    def __init__(self, fields: dict[str, _Field], build: Callable[..., Any] = dict, *,
                 example: str, post: Post | None = None,
                 hints: Mapping[str, str] | None = None) -> None:
        self.fields, self.build, self.post, self.hints = fields, build, post, hints
        self.example = example

    def parse(self, value: Any, ctx: _Ctx, path: JsonPath) -> Any:
        if not isinstance(value, dict):
            self.wrong_type(value, ctx, path)
        _check_keys(value, self.fields, ctx, path, self.hints)
        kwargs: dict[str, Any] = {}
        for key, fld in self.fields.items():
            raw = value.get(key)
            if raw is None:  # JSON null means "not set", as in upstream
                if fld.required:
                    if key in value:
                        ctx.fail(path + (key,), "must not be null",
                                 f'write "{key}": {fld.spec.example}')
                    ctx.fail(path + (key,), "required key is missing",
                             f'add "{key}": {fld.spec.example}')
                continue
            kwargs[key] = fld.spec.parse(raw, ctx, path + (key,))
        if self.post is not None:
            self.post(kwargs, ctx, path)
        return self.build(**kwargs)


class _Tagged(_Spec):
    """A serde externally tagged enum: ``{"variant": payload}``, or ``"variant"`` for unit ones."""

    def __init__(self, variants: dict[str, _Spec | None], build: Callable[[str, Any], Any], *,
                 example: str) -> None:
        self.variants, self.build = variants, build
        self.example = example
        self.expected = "one of: " + ", ".join(
            f'"{name}"' if spec is None else f'{{"{name}": ...}}' for name, spec in variants.items())

    def parse(self, value: Any, ctx: _Ctx, path: JsonPath) -> Any:
        if isinstance(value, str):
            name, payload = str(value), None
            if name not in self.variants:
                self._unknown(name, ctx, path)
            if self.variants[name] is not None:
                ctx.fail(path, f'"{name}" needs a value', f"write {self.example}")
        elif isinstance(value, dict):
            if len(value) != 1:
                ctx.fail(path, f"must have exactly one key (the variant), got {len(value)}",
                         f"write {self.example}")
            ((name, payload),) = value.items()
            if name not in self.variants:
                self._unknown(name, ctx, path + (name,))
        else:
            self.wrong_type(value, ctx, path)
        spec = self.variants[name]
        if spec is None:
            if payload is not None:
                ctx.fail(path + (name,), f"{name} takes no value, got {_describe(payload)}",
                         f'write {{"{name}": null}} or "{name}"')
            return self.build(name, None)
        return self.build(name, spec.parse(payload, ctx, path + (name,)))

    def _unknown(self, name: str, ctx: _Ctx, path: JsonPath) -> NoReturn:
        close = difflib.get_close_matches(name, list(self.variants), n=1)
        hint = f'did you mean "{close[0]}"? Otherwise write ' if close else "write "
        ctx.fail(path, f"unknown variant {_short(name)}", f"{hint}{self.example}")


class _List(_Spec):
    """A non-empty list of items; with ``single_ok`` one bare item stands for a list of one."""

    def __init__(self, item: _Spec, *, single_ok: bool = False) -> None:
        self.item, self.single_ok = item, single_ok
        self.expected = "a non-empty list"
        self.example = f"[{item.example}]"

    def parse(self, value: Any, ctx: _Ctx, path: JsonPath) -> list:
        if self.single_ok and not isinstance(value, list):
            return [self.item.parse(value, ctx, path)]
        if not isinstance(value, list):
            self.wrong_type(value, ctx, path)
        if not value:
            ctx.fail(path, "must not be empty", f"write {self.example}")
        return [self.item.parse(v, ctx, path + (i,)) for i, v in enumerate(value)]


# --------------------------------------------------------------------------- cross-field checks

def _exactly_one_period(kw: dict, ctx: _Ctx, path: JsonPath) -> None:
    given = [k for k in ("frame_period", "timestamp_period") if k in kw]
    if len(given) != 1:
        ctx.fail(path, "has both frame_period and timestamp_period" if given
                 else "has neither frame_period nor timestamp_period",
                 'keep exactly one: "frame_period": 1000 (frames) or '
                 '"timestamp_period": {"secs": 1, "nanos": 0}')


def _initial_within_maximum(kw: dict, ctx: _Ctx, path: JsonPath) -> None:
    if kw["initial_delay"] > kw["maximum_delay"]:
        ctx.fail(path + ("initial_delay",),
                 f"initial_delay ({_seconds(kw['initial_delay'])}) is longer than maximum_delay "
                 f"({_seconds(kw['maximum_delay'])})",
                 "make initial_delay at most maximum_delay, e.g. 1 ms and 1 s")


def _finish_listener(kw: dict, ctx: _Ctx, path: JsonPath) -> None:
    """Top level: build ``metrics`` (default ip = the gateway's), keep it off the gateway port."""
    metrics = kw.get("metrics")
    if metrics is not None:
        if metrics["port"] == kw["port"]:
            ctx.fail(path + ("metrics", "port"),
                     f"the metrics listener would share port {kw['port']} with the gateway",
                     "pick another port for metrics, e.g. " + str(9000 + kw["port"] % 1000))
        kw["metrics"] = Listen(ip=metrics.get("ip", kw["ip"]), port=metrics["port"])
    kw["source"] = ctx.file


def _finish_client(kw: dict, ctx: _Ctx, path: JsonPath) -> None:
    _finish_listener(kw, ctx, path)
    if "tls" in kw and kw["url"].lower().startswith("http://"):
        ctx.fail(path + ("tls",),
                 f"tls is set but url {_short(kw['url'])} is plain http, so it would go unused",
                 "write https:// in url, or remove the tls section")


# ------------------------------------------------------------------------------- schema tables

_PORT = _Int(1, 65535, example="8080")
_IP = _Ip()
_ZMQ_TIMEOUT = _Duration(min_s=0.001, max_s=I32_MAX / 1000,
                         why="ZeroMQ timeouts are whole milliseconds in a 32-bit integer")
_ZMQ_COUNT = _Int(1, I32_MAX, example="1000")
_RETRIES = _Int(1, I32_MAX, example="3")
_MODE = _Int(0, 0o777, example="511",
             fix="write the permission bits as a decimal number from 0 to 511 (JSON has no octal: "
                 "0o777 is 511, 0o770 is 504, 0o666 is 438)")
_POSITIVE = _Duration(positive=True)
_ANY_DURATION = _Duration(example='{"secs": 0, "nanos": 1000000}')
_COUNT = _Int(1, U64_MAX, example="1000")


def _file(what: str, example: str) -> _FilePath:
    return _FilePath("file", what, f'"{example}"')


_IDENTITY = _Obj({
    "certificate": _req(_file("certificate", "/etc/certs/server.crt")),
    "key": _req(_file("private key", "/etc/certs/server.key")),
}, Identity, example='{"certificate": "server.crt", "key": "server.key"}')

_PEERS = _Obj({
    "lookup_hash_directory": _req(_FilePath("dir", "hash directory", '"/etc/certs/lookup-hash-dir"')),
    "crl_enabled": _opt(_Bool()),
}, Peers, example='{"lookup_hash_directory": "/etc/certs/lookup-hash-dir", "crl_enabled": true}')

_SERVER_TLS = _Obj({
    "identity": _req(_IDENTITY),
    "peers": _opt(_PEERS),
    "handshake_timeout": _opt(_POSITIVE),  # mgfast
    "recheck_interval": _opt(_POSITIVE),  # mgfast
}, ServerTls, example='{"identity": {"certificate": "server.crt", "key": "server.key"}}', hints={
    "peer_lookup_hash_directory": 'that is the pre-0.2.0 name; write "peers": '
                                  '{"lookup_hash_directory": "...", "crl_enabled": false}',
})

_CLIENT_TLS = _Obj({
    "root_certificate": _opt(_file("root certificate", "/etc/certs/ca.crt")),
    "identity": _opt(_IDENTITY),
}, ClientTls, example='{"root_certificate": "ca.crt"}')

_STATISTICS = _Obj({
    "frame_period": _opt(_Int(1, 2**63 - 1, example="1000")),
    "timestamp_period": _opt(_POSITIVE),
    "history_size": _opt(_COUNT),
}, Statistics, example='{"frame_period": 1000}', post=_exactly_one_period)

_HTTP = _Obj({  # mgfast
    "max_body_size": _opt(_Int(1, 2**40, example="67108864")),
    "header_timeout": _opt(_POSITIVE),
    "body_timeout": _opt(_POSITIVE),
    "idle_timeout": _opt(_POSITIVE),
}, HttpLimits, example='{"max_body_size": 67108864}')

_METRICS = _Obj({  # mgfast; turned into a Listen by _finish_listener
    "ip": _opt(_IP),
    "port": _req(_PORT),
}, dict, example='{"ip": "0.0.0.0", "port": 9100}')

_OUT_STREAM = _Obj({
    "url": _req(_SocketUrl("writer")),
    "send_timeout": _opt(_ZMQ_TIMEOUT),
    "send_retries": _opt(_RETRIES),
    "receive_timeout": _opt(_ZMQ_TIMEOUT),
    "receive_retries": _opt(_RETRIES),
    "send_hwm": _opt(_ZMQ_COUNT),
    "receive_hwm": _opt(_ZMQ_COUNT),
    "fix_ipc_permissions": _opt(_MODE),
    "inflight_ops": _opt(_Int(1, I32_MAX, example="100")),
}, OutStreamConfig, example='{"url": "pub+bind:ipc:///tmp/server"}')

_TOPIC_PREFIX_SPEC = _Tagged({
    "none": None,
    "source_id": _Str(example='"cam-1"'),
    "prefix": _Str(example='"cam-"'),
}, lambda name, value: TopicPrefixSpec() if value is None
   else TopicPrefixSpec(kind=name, value=value.encode()),
   example='{"none": null}, {"source_id": "cam-1"} or {"prefix": "cam-"}')

_IN_STREAM = _Obj({
    "url": _req(_SocketUrl("reader")),
    "receive_timeout": _opt(_ZMQ_TIMEOUT),
    "receive_hwm": _opt(_ZMQ_COUNT),
    "topic_prefix_spec": _opt(_TOPIC_PREFIX_SPEC),
    "source_cache_size": _opt(_Int(1, I32_MAX, example="1000")),
    "inflight_ops": _opt(_Int(1, I32_MAX, example="100")),
    "fix_ipc_permissions": _opt(_MODE),
}, InStreamConfig, example='{"url": "router+bind:ipc:///tmp/client"}')

_RETRY_STRATEGY = _Tagged({
    "exponential": _Obj({
        "initial_delay": _req(_Duration(positive=True, example='{"secs": 0, "nanos": 1000000}')),
        "maximum_delay": _req(_POSITIVE),
        "multiplier": _req(_Number(2, fix="write 2 or more: each retry waits multiplier times "
                                          "longer than the previous one, up to maximum_delay")),
    }, RetryStrategy, post=_initial_within_maximum,
        example='{"initial_delay": {"secs": 0, "nanos": 1000000}, '
                '"maximum_delay": {"secs": 1, "nanos": 0}, "multiplier": 2}'),
}, lambda name, value: value,
   example='{"exponential": {"initial_delay": {"secs": 0, "nanos": 1000000}, '
           '"maximum_delay": {"secs": 1, "nanos": 0}, "multiplier": 2}}')

_WAIT_STRATEGY = _Tagged({
    "yield": None,
    "sleep": _ANY_DURATION,
}, lambda name, value: WaitStrategy(kind="yield") if value is None
   else WaitStrategy(kind="sleep", sleep=value),
   example='"yield" or {"sleep": {"secs": 0, "nanos": 1000000}}')

_CACHE = _Obj({
    "size": _req(_COUNT),
    "usage": _opt(_Obj({
        "period": _req(_POSITIVE),
        "evicted_threshold": _req(_Int(1, 2**32 - 1, example="10")),
    }, example='{"period": {"secs": 60, "nanos": 0}, "evicted_threshold": 10}')),
}, example='{"size": 10}')

_CREDENTIALS = _Obj({
    "username": _req(_Str(example='"user"')),
    "password": _req(_Str(nonempty=False, example='"password"')),
}, example='{"username": "user", "password": "password"}')

_ETCD = _Obj({
    "urls": _req(_List(_Str(example='"http://etcd:2379"'), single_ok=True)),
    "tls": _opt(_Obj({
        "root_certificate": _opt(_file("etcd root certificate", "etcd-ca.crt")),
        "identity": _opt(_Obj({
            "certificate": _req(_file("etcd client certificate", "etcd-client.crt")),
            "key": _req(_file("etcd client key", "etcd-client.key")),
        }, example='{"certificate": "etcd-client.crt", "key": "etcd-client.key"}')),
    }, example='{"root_certificate": "etcd-ca.crt"}')),
    "credentials": _opt(_CREDENTIALS),
    "path": _req(_Str(example='"/users"')),
    "data_format": _req(_Str(choices=("json", "yaml"))),
    "connect_timeout": _req(_POSITIVE),
    "lease_timeout": _req(_Duration(positive=True, example='{"secs": 60, "nanos": 0}')),
    "cache": _req(_CACHE),
}, example='{"urls": ["http://etcd:2379"], "path": "/users", "data_format": "json", ...}')

_SERVER_AUTH = _Obj({
    "basic": _req(_Obj({
        "etcd": _req(_ETCD),
        "cache": _req(_CACHE),
        "quarantine": _opt(_Obj({
            "failed_attempt_limit": _req(_Int(1, 2**32 - 1, example="3")),
            "period": _req(_POSITIVE),
        }, example='{"failed_attempt_limit": 3, "period": {"secs": 60, "nanos": 0}}')),
    }, example='{"etcd": {...}, "cache": {"size": 10}}')),
}, lambda basic: basic, post=lambda kw, ctx, path: kw.update(
    basic=auth_config.build(kw["basic"], ctx.fail, path + ("basic",))),
   example='{"basic": {"etcd": {...}, "cache": {"size": 10}}}')

_CLIENT_AUTH = _Obj({
    "basic": _req(_Obj({
        "username": _req(_Str(example='"user"')),
        "password": _req(_Str(nonempty=False, example='"password"')),
    }, BasicAuth, example='{"username": "user", "password": "password"}', hints={
        "id": 'upstream 0.2.0 calls it "username": rename "id" to "username"',
    })),
}, lambda basic: basic, example='{"basic": {"username": "user", "password": "password"}}')

_TOP_HINTS = {"ssl": 'upstream 0.2.0 calls this section "tls" (with "identity" and "peers")'}

_SERVER = _Obj({
    "ip": _req(_IP),
    "port": _req(_PORT),
    "out_stream": _req(_OUT_STREAM),
    "tls": _opt(_SERVER_TLS),
    "auth": _opt(_SERVER_AUTH),
    "statistics": _opt(_STATISTICS),
    "http": _opt(_HTTP),  # mgfast
    "workers": _opt(_Int(1, 1024, example="4")),  # mgfast
    "metrics": _opt(_METRICS),  # mgfast
}, ServerConfig, post=_finish_listener, hints=_TOP_HINTS,
    example='{"ip": "0.0.0.0", "port": 8080, "out_stream": {"url": "pub+bind:ipc:///tmp/server"}}')

_CLIENT = _Obj({
    "ip": _req(_IP),
    "port": _req(_Int(1, 65535, example="8081")),
    "url": _req(_HttpUrl()),
    "in_stream": _req(_IN_STREAM),
    "retry_strategy": _opt(_RETRY_STRATEGY),
    "wait_strategy": _opt(_WAIT_STRATEGY),
    "tls": _opt(_CLIENT_TLS),
    "auth": _opt(_CLIENT_AUTH),
    "statistics": _opt(_STATISTICS),
    "http": _opt(_HTTP),  # mgfast
    "connections": _opt(_Int(1, 1024, example="4")),  # mgfast
    "batch": _opt(_Int(1, 65536, example="64")),  # mgfast
    "pipeline": _opt(_Int(1, 1024, example="16")),  # mgfast
    "drain_timeout": _opt(_Duration(example='{"secs": 10, "nanos": 0}')),  # mgfast
    "metrics": _opt(_METRICS),  # mgfast
}, ClientConfig, post=_finish_client, hints=_TOP_HINTS,
    example='{"ip": "0.0.0.0", "port": 8081, "url": "http://127.0.0.1:8080", '
            '"in_stream": {"url": "router+bind:ipc:///tmp/client"}}')
