"""Reading a config: the file's bytes, UTF-8 text, JSON, and ``${VAR:-default}`` expansion.

Upstream (twelf + shellexpand) expands ``$VAR``, ``${VAR}`` and ``${VAR:-default}`` over the whole
file text before it parses the JSON, so both ``"url": "${URL:-http://gw:8080}"`` and an unquoted
``"port": ${PORT:-8080}`` work there. Same syntax here: ``$$`` is a literal ``$``; a ``$``
followed by neither a name character nor ``{`` is literal; the default is used only when the
variable is unset (set to "" gives ""); an unset variable without a default is an error naming it.

* A file that is valid JSON as written has its placeholders expanded inside each string value
  after parsing (object keys are left alone), so a value containing quotes or backslashes cannot
  break the JSON, which upstream's text expansion would. Such a string may stand for a number
  or a boolean (:class:`~mgfast.config.validation.Substituted`): ``"port": "${PORT:-8080}"``
  gives 8080, where upstream rejects that form.
* A file that is valid JSON only after expansion (unquoted placeholders) is expanded as a whole
  first, exactly as upstream does; JSON errors are then reported in the expanded text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, NoReturn

import orjson

from mgfast.config.validation import Ctx, JsonPath, Substituted

MAX_CONFIG_BYTES = 1024 * 1024  # a config is a few KiB; anything this big is the wrong file
MAX_NESTING = 64  # no setting nests deeper than 6; bounds recursion on hostile input


def read_file(path: str | os.PathLike[str]) -> tuple[str, bytes]:
    """The file's name as the user gave it, and its bytes; a ConfigError if it cannot be read."""
    source = os.fsdecode(path)
    ctx = Ctx(source, Path.cwd())
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
    return source, data


def load_document(data: bytes | str, ctx: Ctx, env: Mapping[str, str]) -> Any:
    """The JSON document of ``data`` with every placeholder expanded (see the module docs)."""
    return _load_json(_decode(data, ctx), ctx, env)


def _decode(data: bytes | str, ctx: Ctx) -> str:
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


def _is_name_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def expand(text: str, env: Mapping[str, str]) -> str:
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


def _load_json(text: str, ctx: Ctx, env: Mapping[str, str]) -> Any:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as first:
        if "$" not in text:
            _json_fail(ctx, first, substituted=False)
        # Upstream expands the whole text before parsing: unquoted placeholders are legal there.
        try:
            expanded = expand(text, env)
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


def _json_fail(ctx: Ctx, exc: orjson.JSONDecodeError, *, substituted: bool) -> NoReturn:
    where = f"line {exc.lineno}, column {exc.colno}"
    if substituted:
        ctx.fail((), f"invalid JSON after environment substitution at {where}: {exc.msg}",
                 "check the substituted values: a placeholder outside quotes must expand to a "
                 "number, true, false or null; put it inside quotes for a string")
    ctx.fail((), f"invalid JSON at {where}: {exc.msg}",
             "correct the JSON there (usual causes: a trailing or missing comma, a missing quote, "
             "// comments, which JSON does not allow)")


def _substitute(node: Any, env: Mapping[str, str], ctx: Ctx, path: JsonPath) -> Any:
    if len(path) > MAX_NESTING:
        ctx.fail(path, f"values are nested more than {MAX_NESTING} levels deep",
                 "no mgfast setting nests that deep; remove the extra levels")
    if isinstance(node, str):
        if "$" not in node:
            return node
        try:
            return Substituted(expand(node, env))
        except _Unset as exc:
            ctx.fail(path, _unset_problem(exc.name), _unset_fix(exc.name))
    if isinstance(node, list):
        return [_substitute(v, env, ctx, path + (i,)) for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {k: _substitute(v, env, ctx, path + (k,)) for k, v in node.items()}
    return node
