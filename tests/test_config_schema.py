"""The schema is documented once, in README.md's configuration reference: every key the loader
knows has a row there (or is named in the row of an enclosing key)."""

from __future__ import annotations

import re
from pathlib import Path

from mgfast.config import schema
from mgfast.config.validation import List, Obj, Spec, Tagged

README = Path(__file__).resolve().parent.parent / "README.md"


def schema_paths(spec: Spec, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every key path below ``spec``: object keys and tagged-enum variants."""
    out: set[tuple[str, ...]] = set()
    if isinstance(spec, Obj):
        for key, fld in spec.fields.items():
            out.add(prefix + (key,))
            out |= schema_paths(fld.spec, prefix + (key,))
    elif isinstance(spec, Tagged):
        for name, variant in spec.variants.items():
            out.add(prefix + (name,))
            if variant is not None:
                out |= schema_paths(variant, prefix + (name,))
    elif isinstance(spec, List):
        out |= schema_paths(spec.item, prefix)
    return out


def reference_rows() -> list[tuple[list[tuple[str, ...]], set[str]]]:
    """(documented key paths, every backticked name in the row) for each table row."""
    text = README.read_text()
    section = text.split("### Configuration reference", 1)[1].split("\n### ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        key_cell = line.split("|")[1]
        names = re.findall(r"`([^`]+)`", key_cell)
        first = tuple(names[0].split("."))
        keys = [first] + [tuple(n.split(".")) if "." in n else first[:-1] + (n,)
                          for n in names[1:]]
        rows.append((keys, set(re.findall(r"`([^`]+)`", line))))
    return rows


def documented(path: tuple[str, ...], rows) -> bool:
    for keys, mentioned in rows:
        for key in keys:
            if path[:len(key)] == key and all(part in mentioned for part in path[len(key):]):
                return True
    return False


def test_every_schema_key_is_in_the_readme_reference() -> None:
    rows = reference_rows()
    assert rows, "README.md has no configuration reference table"
    paths = schema_paths(schema.SERVER) | schema_paths(schema.CLIENT)
    missing = sorted(".".join(p) for p in paths if not documented(p, rows))
    assert not missing, f"document these keys in README.md's configuration reference: {missing}"


def test_the_reference_names_no_key_the_schema_lacks() -> None:
    paths = schema_paths(schema.SERVER) | schema_paths(schema.CLIENT)
    stale = sorted(".".join(k) for keys, _ in reference_rows() for k in keys if k not in paths)
    assert not stale, f"README.md documents keys the loader does not know: {stale}"
