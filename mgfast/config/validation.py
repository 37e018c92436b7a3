"""A small validation library: value specs that check one JSON value and build its Python form.

Each check (integer range, duration, file, socket URL, object keys, tagged enum, ...) is
implemented once, in one spec class; ``mgfast.config.schema`` composes them into the server and
client schemas. A spec either returns the built value or raises :class:`ConfigError` through
``Ctx.fail``; things upstream accepts but that are probably mistakes go to ``Ctx.warn``.
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

from mgfast.config.errors import ConfigError, ConfigWarning
from mgfast.zmq.url import READER_TYPES, WRITER_TYPES, parse_socket_url

JsonPath = tuple[str | int, ...]  # object keys and list indexes

I32_MAX = 2**31 - 1  # Savant hands timeouts (in ms), HWMs and retries to ZeroMQ as C ints
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I64_MIN, I64_MAX = -2**63, 2**63 - 1


class Ctx:
    """Where the document came from (names it in messages, anchors relative paths), whether
    warnings are errors, and the warnings collected so far."""

    __slots__ = ("file", "base_dir", "strict", "warnings")

    def __init__(self, file: str, base_dir: Path, *, strict: bool = False) -> None:
        self.file = file
        self.base_dir = base_dir
        self.strict = strict
        self.warnings: list[ConfigWarning] = []

    def fail(self, path: JsonPath, problem: str, fix: str) -> NoReturn:
        raise ConfigError(self.file, format_path(path), problem, fix)

    def warn(self, path: JsonPath, problem: str, fix: str) -> None:
        """Upstream accepts it, so by default mgfast does too, after saying so."""
        if self.strict:
            self.fail(path, problem, fix + " (strict mode makes this an error; without --strict "
                                           "and \"strict\": true it is a warning)")
        self.warnings.append(ConfigWarning(self.file, format_path(path), problem, fix))


def format_path(path: JsonPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def short(text: str, limit: int = 60) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


class Substituted(str):
    """A string that held a ``$`` placeholder: it may stand for a number or a boolean."""

    __slots__ = ()


def describe(value: Any) -> str:
    """How a JSON value reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        text = repr(value)
        return f"the number {text if len(text) <= 30 else text[:30] + '...'}"
    if isinstance(value, Substituted):
        return f"the string {short(value)} (after environment substitution)"
    if isinstance(value, str):
        return f"the string {short(value)}"
    if isinstance(value, list):
        return "a list"
    return "an object"


def seconds_text(value: float) -> str:
    return f"{value * 1000:g} ms" if value < 1 else f"{value:g} s"


# ----------------------------------------------------------------------------------- value specs

class Spec:
    """Checks one JSON value and turns it into its Python form, or raises ConfigError."""

    expected = "a value"
    example = "a value"

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> Any:
        raise NotImplementedError

    def wrong_type(self, value: Any, ctx: Ctx, path: JsonPath, fix: str | None = None) -> NoReturn:
        ctx.fail(path, f"expected {self.expected}, got {describe(value)}",
                 fix or f"write {self.example}")


_INT_TEXT = re.compile(r"-?[0-9]{1,30}")
_NUMBER_TEXT = re.compile(r"-?[0-9]{1,30}(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?")


class Int(Spec):
    def __init__(self, lo: int, hi: int | None = None, *, example: str | None = None,
                 fix: str | None = None) -> None:
        self.lo, self.hi = lo, hi
        self.expected = "an integer" if hi is None else f"an integer from {lo} to {hi}"
        self.example = example or str(lo)
        self.range_fix = fix or (f"write a whole number of at least {lo}" if hi is None
                                 else f"write a whole number from {lo} to {hi}")

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> int:
        if isinstance(value, Substituted) and _INT_TEXT.fullmatch(value):
            value = int(value)
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e30:
            self.wrong_type(value, ctx, path, f"write {int(value)} without a decimal point")
        if (isinstance(value, str) and not isinstance(value, Substituted)
                and _INT_TEXT.fullmatch(value.strip())):
            self.wrong_type(value, ctx, path, f"write {value.strip()} without quotes")
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(value, ctx, path, self.range_fix)
        if value < self.lo or (self.hi is not None and value > self.hi):
            ctx.fail(path, f"{describe(value)} is out of range", self.range_fix)
        return value


class Mode(Int):
    """``fix_ipc_permissions``: a u32 as upstream, applied like chmod(2) (bits above 0o7777
    ignored). JSON has no octal, so a value that only makes sense read as octal is a warning."""

    def __init__(self) -> None:
        super().__init__(0, U32_MAX, example="511",
                         fix="write the permission bits as a decimal number (JSON has no octal: "
                             "0o777 is 511, 0o770 is 504, 0o666 is 438)")

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> int:
        mode = super().parse(value, ctx, path)
        if mode > 0o777:
            as_octal = int(str(mode), 8) if set(str(mode)) <= set("01234567") else None
            hint = (f"; if you meant octal {mode}, write {as_octal}" if as_octal is not None
                    and as_octal <= 0o7777 else "")
            ctx.warn(path, f"{mode} is mode 0o{mode & 0o7777:o} (decimal {mode} read as "
                           f"permission bits{', beyond 0o7777 ignored' if mode > 0o7777 else ''})",
                     f"write the mode in decimal, e.g. 511 for 0o777{hint}")
        return mode


class Number(Spec):
    def __init__(self, lo: float, *, fix: str) -> None:
        self.lo = lo
        self.expected = f"a number of at least {lo:g}"
        self.example = f"{lo:g}"
        self.range_fix = fix

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> float:
        if isinstance(value, Substituted) and _NUMBER_TEXT.fullmatch(value):
            value = float(value)
        if (isinstance(value, str) and not isinstance(value, Substituted)
                and _NUMBER_TEXT.fullmatch(value.strip())):
            self.wrong_type(value, ctx, path, f"write {value.strip()} without quotes")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.wrong_type(value, ctx, path, self.range_fix)
        if not math.isfinite(value) or value < self.lo:
            ctx.fail(path, f"{describe(value)} is out of range", self.range_fix)
        return float(value)


class Bool(Spec):
    expected = "true or false"
    example = "true or false"

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> bool:
        if isinstance(value, Substituted) and value in ("true", "false"):
            return value == "true"
        if (isinstance(value, str) and not isinstance(value, Substituted)
                and value.strip().lower() in ("true", "false")):
            self.wrong_type(value, ctx, path, f"write {value.strip().lower()} without quotes")
        if not isinstance(value, bool):
            self.wrong_type(value, ctx, path)
        return value


class Str(Spec):
    def __init__(self, *, nonempty: bool = True, choices: tuple[str, ...] = (),
                 example: str = '"text"') -> None:
        self.nonempty = nonempty
        self.choices = choices
        self.expected = ("one of " + ", ".join(f'"{c}"' for c in choices)) if choices else "a string"
        self.example = f'"{choices[0]}"' if choices else example

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> str:
        if not isinstance(value, str):
            self.wrong_type(value, ctx, path)
        if self.nonempty and not value:
            ctx.fail(path, "must not be empty", f"write {self.example}")
        if self.choices and value not in self.choices:
            close = difflib.get_close_matches(value, self.choices, n=1)
            hint = f'did you mean "{close[0]}"? Otherwise write' if close else "write"
            ctx.fail(path, f"{short(value)} is not one of {', '.join(self.choices)}",
                     f"{hint} one of " + ", ".join(f'"{c}"' for c in self.choices))
        return value


class Ip(Str):
    def __init__(self) -> None:
        super().__init__(example='"0.0.0.0"')
        self.expected = "an IP address or host name"

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> str:
        text = super().parse(value, ctx, path)
        if any(ch.isspace() for ch in text) or "/" in text or text.count(":") == 1:
            ctx.fail(path, f"{short(text)} is not an IP address or host name",
                     'write only the address to listen on, e.g. "0.0.0.0", "127.0.0.1" or "::"; '
                     "the port goes in the port key")
        return text


class Duration(Spec):
    """serde's ``std::time::Duration``: ``{"secs": S, "nanos": N}`` or ``[S, N]``, S a u64 and N a
    u32 whose whole seconds carry into S (as ``Duration::new``), as float seconds with bounds."""

    expected = 'a duration {"secs": S, "nanos": N}'

    def __init__(self, *, positive: bool = False, min_s: float = 0.0, max_s: float | None = None,
                 why: str = "", example: str = '{"secs": 1, "nanos": 0}') -> None:
        self.positive, self.min_s, self.max_s, self.why = positive, min_s, max_s, why
        self.example = example

    _SECS = Int(0, U64_MAX, example="1")
    _NANOS = Int(0, U32_MAX, example="0")
    _KEYS = {"secs": _SECS, "nanos": _NANOS}

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> float:
        if isinstance(value, dict):
            check_keys(value, self._KEYS, ctx, path, unknown_is_error=True)  # serde rejects them
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
        secs, nanos = secs + nanos // 1_000_000_000, nanos % 1_000_000_000
        if secs > U64_MAX:
            ctx.fail(path, "the seconds overflow a 64-bit count once nanos are carried into secs",
                     f"write a shorter duration, e.g. {self.example}")
        seconds = secs + nanos / 1e9
        why = f" ({self.why})" if self.why else ""
        if self.positive and seconds <= 0:
            ctx.fail(path, "must be longer than zero", f"write e.g. {self.example}")
        if seconds < self.min_s:
            ctx.fail(path, f"{seconds_text(seconds)} is too short: the minimum is "
                           f"{seconds_text(self.min_s)}{why}", f"write e.g. {self.example}")
        if self.max_s is not None and seconds > self.max_s:
            ctx.fail(path, f"{seconds_text(seconds)} is too long: the maximum is "
                           f"{seconds_text(self.max_s)}{why}", f"write e.g. {self.example}")
        return seconds


class FilePath(Spec):
    """A path to an existing readable file (``kind="file"``) or listable directory; a relative
    one is taken from ``Ctx.base_dir`` (the working directory, as upstream)."""

    def __init__(self, kind: str, what: str, example: str) -> None:
        self.kind, self.what = kind, what
        self.expected = f"the path of the {what}"
        self.example = example
        self._str = Str(example=example)

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> Path:
        text = self._str.parse(value, ctx, path)
        resolved = Path(os.path.normpath(ctx.base_dir / text))  # an absolute text wins in "/"
        shown = f"{self.what} {resolved}" + ("" if text == str(resolved) else f" (from {short(text)})")
        fix = (f"create it, or correct the path (relative paths are resolved against "
               f"{ctx.base_dir}, the working directory, as upstream does)")
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


class SocketUrl(Spec):
    def __init__(self, role: str) -> None:
        self.role = role
        types = WRITER_TYPES if role == "writer" else READER_TYPES
        self.types = ", ".join(types)
        self.expected = f"a Savant ZeroMQ {role} URL"
        self.example = f'"{types[0]}+bind:ipc:///tmp/stream"'

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> Any:
        text = Str(example=self.example).parse(value, ctx, path)
        try:
            return parse_socket_url(text, role=self.role)  # type: ignore[arg-type]
        except ValueError as exc:
            problem, _, fix = str(exc).partition("; ")
            ctx.fail(path, problem, fix or (
                f"write <type>+<bind|connect>:ipc:///path or <type>+<bind|connect>:tcp://host:port "
                f"with a {self.role} type ({self.types}), e.g. {self.example}"))


class HttpUrl(Spec):
    expected = "an http:// or https:// URL"
    example = '"http://127.0.0.1:8080"'

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> str:
        text = Str(example=self.example).parse(value, ctx, path)
        fix = 'write the server\'s URL, e.g. "http://gateway:8080" or "https://gateway:8443"'
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not 0..65535
        except ValueError as exc:
            ctx.fail(path, f"{short(text)} is not a valid URL: {exc}", fix)
        if parts.scheme not in ("http", "https"):
            ctx.fail(path, f"{short(text)} does not start with http:// or https://", fix)
        if not parts.hostname:
            ctx.fail(path, f"{short(text)} has no host name", fix)
        return text


# --------------------------------------------------------------------------- composite specs

class Field:
    """One key of an object: its spec and whether it is required."""

    __slots__ = ("spec", "required")

    def __init__(self, spec: Spec, required: bool = False) -> None:
        self.spec, self.required = spec, required


def req(spec: Spec) -> Field:
    return Field(spec, required=True)


def opt(spec: Spec) -> Field:
    return Field(spec)


def check_keys(value: dict[str, Any], known: Mapping[str, Any], ctx: Ctx, path: JsonPath,
               hints: Mapping[str, str] | None = None, *, unknown_is_error: bool = False) -> None:
    """Report keys the schema does not know, suggesting the closest known one. Upstream (serde
    without ``deny_unknown_fields``) ignores them, so they are warnings unless ``strict``."""
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
        if unknown_is_error:
            ctx.fail(path + (key,), f"unknown key {short(key)}", fix)
        ctx.warn(path + (key,), f"unknown key {short(key)} is ignored", fix)


Post = Callable[[dict[str, Any], Ctx, JsonPath], None]


class Obj(Spec):
    """A JSON object with a fixed set of keys, built into a dataclass (or a dict)."""

    expected = "an object"

    def __init__(self, fields: dict[str, Field], build: Callable[..., Any] = dict, *,
                 example: str, post: Post | None = None,
                 hints: Mapping[str, str] | None = None) -> None:
        self.fields, self.build, self.post, self.hints = fields, build, post, hints
        self.example = example

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> Any:
        if not isinstance(value, dict):
            self.wrong_type(value, ctx, path)
        check_keys(value, self.fields, ctx, path, self.hints)
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


class Tagged(Spec):
    """A serde externally tagged enum: ``{"variant": payload}``, or ``"variant"`` for unit ones."""

    def __init__(self, variants: dict[str, Spec | None], build: Callable[[str, Any], Any], *,
                 example: str) -> None:
        self.variants, self.build = variants, build
        self.example = example
        self.expected = "one of: " + ", ".join(
            f'"{name}"' if spec is None else f'{{"{name}": ...}}' for name, spec in variants.items())

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> Any:
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
                ctx.fail(path + (name,), f"{name} takes no value, got {describe(payload)}",
                         f'write {{"{name}": null}} or "{name}"')
            return self.build(name, None)
        return self.build(name, spec.parse(payload, ctx, path + (name,)))

    def _unknown(self, name: str, ctx: Ctx, path: JsonPath) -> NoReturn:
        close = difflib.get_close_matches(name, list(self.variants), n=1)
        hint = f'did you mean "{close[0]}"? Otherwise write ' if close else "write "
        ctx.fail(path, f"unknown variant {short(name)}", f"{hint}{self.example}")


class List(Spec):
    """A non-empty list of items; with ``single_ok`` one bare item stands for a list of one."""

    def __init__(self, item: Spec, *, single_ok: bool = False) -> None:
        self.item, self.single_ok = item, single_ok
        self.expected = "a non-empty list"
        self.example = f"[{item.example}]"

    def parse(self, value: Any, ctx: Ctx, path: JsonPath) -> list[Any]:
        if self.single_ok and not isinstance(value, list):
            return [self.item.parse(value, ctx, path)]
        if not isinstance(value, list):
            self.wrong_type(value, ctx, path)
        if not value:
            ctx.fail(path, "must not be empty", f"write {self.example}")
        return [self.item.parse(v, ctx, path + (i,)) for i, v in enumerate(value)]
