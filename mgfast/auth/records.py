"""A user record as stored in etcd at ``<path>/<username>``.

``{"password_hash": "<argon2 PHC string>", "allowed_routing_labels": <rule>}`` in JSON or YAML
(``data_format``). YAML takes the same map form and also serde_yaml's tags for the rule
(``allowed_routing_labels: !and [!set a, !not {set: b}]``). Unknown keys are ignored, as
upstream's serde does; a missing or null rule lets every message through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import argon2
import orjson
import yaml
from argon2.exceptions import InvalidHashError

from mgfast.auth import rules
from mgfast.auth.rules import Rule

MAX_RECORD_BYTES = 64 * 1024  # a record is a few hundred bytes
# Bounds on a hash's own parameters: each verification costs that much memory and time on the
# worker, so a record with m=4 GiB must not be able to take the server down.
MAX_MEMORY_KIB = 1024 * 1024  # 1 GiB; RFC 9106's first recommendation is 2 GiB, its second 64 MiB
MAX_TIME_COST = 64
MAX_PARALLELISM = 64


class RecordError(ValueError):
    """The record cannot be used; str() names the field and the fix."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    password_hash: str
    rule: Rule | None  # None: all routing labels allowed


def parse(data: bytes, data_format: Literal["json", "yaml"]) -> UserRecord:
    """Record bytes -> UserRecord; RecordError saying what to fix."""
    if len(data) > MAX_RECORD_BYTES:
        raise RecordError(f"the record is {len(data)} bytes, over {MAX_RECORD_BYTES}")
    try:
        doc = orjson.loads(data) if data_format == "json" else yaml.load(data, _RuleLoader)
    except (orjson.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecordError(f"not valid {data_format.upper()} ({first}); the server reads records "
                          f"as auth.basic.etcd.data_format = {data_format!r}") from None
    if not isinstance(doc, dict):
        raise RecordError('expected an object {"password_hash": "$argon2id$...", ...}')
    password_hash = doc.get("password_hash")
    if not isinstance(password_hash, str) or not password_hash.startswith("$argon2"):
        raise RecordError("password_hash must be an argon2 PHC string ($argon2i$, $argon2d$ or "
                          "$argon2id$...); make one with `mgfast users hash`")
    _check_parameters(password_hash)
    raw_rule = doc.get("allowed_routing_labels")
    try:
        rule = None if raw_rule is None else rules.parse(raw_rule)
    except rules.RuleError as exc:
        raise RecordError(str(exc)) from None
    return UserRecord(password_hash, rule)


def _check_parameters(password_hash: str) -> None:
    try:
        params = argon2.extract_parameters(password_hash)
    except (InvalidHashError, ValueError):
        raise RecordError("password_hash is not a well-formed argon2 PHC string "
                          "($argon2id$v=19$m=...,t=...,p=...$salt$hash); make one with "
                          "`mgfast users hash`") from None
    if (params.memory_cost > MAX_MEMORY_KIB or params.time_cost > MAX_TIME_COST
            or params.parallelism > MAX_PARALLELISM):
        raise RecordError(f"password_hash parameters m={params.memory_cost}, "
                          f"t={params.time_cost}, p={params.parallelism} exceed what the "
                          f"server verifies (m <= {MAX_MEMORY_KIB} KiB, t <= {MAX_TIME_COST}, "
                          f"p <= {MAX_PARALLELISM}); hash the password again with smaller ones")


def dump(record: UserRecord, data_format: Literal["json", "yaml"]) -> bytes:
    """The record as the server reads it (``mgfast users put`` writes this)."""
    doc: dict[str, Any] = {"password_hash": record.password_hash}
    if record.rule is not None:
        doc["allowed_routing_labels"] = record.rule.to_json()
    if data_format == "json":
        return orjson.dumps(doc)
    return yaml.safe_dump(doc, sort_keys=False).encode()


class _RuleLoader(yaml.SafeLoader):
    """SafeLoader plus serde_yaml's enum tags: ``!set l`` reads as ``{"set": "l"}``."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)  # the only other kind of YAML node
        value = loader.construct_mapping(node, deep=True)
    return {suffix: value}


_RuleLoader.add_multi_constructor("!", _tagged)
