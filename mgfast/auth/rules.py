"""Routing-label rules: which Savant messages a user may send.

A user record's ``allowed_routing_labels`` is Savant's label filter rule, in serde's externally
tagged form::

    {"set": "l"}        the message's routing_labels contain l
    {"unset": "l"}      they do not
    {"and": [r, ...]}   all hold (an empty list holds)
    {"or": [r, ...]}    any holds (an empty list does not)
    {"not": r}          r does not hold

:func:`parse` turns the decoded JSON/YAML value into a :class:`Rule`; ``Rule.allows(labels)``
answers for the message's labels (bytes, as the codec extracts them, so no per-message decode).
"""

from __future__ import annotations

from typing import Any, Iterable

MAX_DEPTH = 32  # deeper rules are refused: they come from etcd, bound the recursion
MAX_NODES = 4096  # rule size bound, for the same reason


class RuleError(ValueError):
    """The rule is malformed; str() says where (a JSON path inside the rule) and why."""


class Rule:
    """A compiled rule; ``op`` is one of set/unset/and/or/not."""

    __slots__ = ("op", "label", "children")

    def __init__(self, op: str, label: bytes = b"", children: tuple[Rule, ...] = ()) -> None:
        self.op = op
        self.label = label
        self.children = children

    def allows(self, labels: Iterable[bytes]) -> bool:
        """Whether a message with these routing labels may pass."""
        return self._eval(labels if isinstance(labels, (set, frozenset)) else set(labels))

    def _eval(self, labels: set[bytes] | frozenset[bytes]) -> bool:
        op = self.op
        if op == "set":
            return self.label in labels
        if op == "unset":
            return self.label not in labels
        if op == "and":
            return all(child._eval(labels) for child in self.children)
        if op == "or":
            return any(child._eval(labels) for child in self.children)
        return not self.children[0]._eval(labels)

    def to_json(self) -> Any:
        """The serde form again (for ``mgfast users list``)."""
        if self.op in ("set", "unset"):
            return {self.op: self.label.decode("utf-8", "replace")}
        if self.op == "not":
            return {"not": self.children[0].to_json()}
        return {self.op: [child.to_json() for child in self.children]}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rule) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"Rule({self.to_json()!r})"


def parse(value: Any) -> Rule:
    """The decoded ``allowed_routing_labels`` value -> Rule; RuleError if malformed."""
    budget = [MAX_NODES]
    return _parse(value, "allowed_routing_labels", 0, budget)


def _parse(value: Any, where: str, depth: int, budget: list[int]) -> Rule:
    budget[0] -= 1
    if depth > MAX_DEPTH or budget[0] < 0:
        raise RuleError(f"{where}: the rule nests deeper than {MAX_DEPTH} levels or has more "
                        f"than {MAX_NODES} parts")
    if not isinstance(value, dict) or len(value) != 1:
        raise RuleError(f"{where}: expected one of {{\"set\": L}}, {{\"unset\": L}}, "
                        f"{{\"and\": [...]}}, {{\"or\": [...]}}, {{\"not\": RULE}}, got "
                        f"{_describe(value)}")
    ((op, arg),) = value.items()
    inner = f"{where}.{op}"
    if op in ("set", "unset"):
        if not isinstance(arg, str):
            raise RuleError(f"{inner}: the label must be a string, got {_describe(arg)}")
        return Rule(op, arg.encode())
    if op in ("and", "or"):
        if not isinstance(arg, list):
            raise RuleError(f"{inner}: expected a list of rules, got {_describe(arg)}")
        return Rule(op, children=tuple(_parse(item, f"{inner}[{i}]", depth + 1, budget)
                                       for i, item in enumerate(arg)))
    if op == "not":
        return Rule(op, children=(_parse(arg, inner, depth + 1, budget),))
    raise RuleError(f"{where}: unknown rule {op!r}; use set, unset, and, or, not")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return f"an object with keys {sorted(map(str, value))[:5]}"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {str(value)[:40]!r}"
