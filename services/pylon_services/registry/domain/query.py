"""Filters and orderings for listing models and versions (a small subset of Google AIP-160).

A filter is terms joined by ``AND``::

    tags.stage=eval AND metrics.loss<2.5 AND create_time>2026-01-01 AND alias=prod

Fields: ``tags.<key>``, ``metrics.<name>``, ``alias``, ``state``, ``format``, ``create_time``,
``version``, ``name``, ``creator``; operators ``= != < <= > >=`` (``:`` means "has", for
``alias:prod`` or ``tags:team``). Values compare as numbers when both sides are numeric, as
timestamps for ``create_time`` (ISO date/time or unix seconds), else as strings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pylon_services.common.errors import InvalidArgument
from pylon_services.common.limits import MAX_FILTER, MAX_ORDER_BY, quote

_TERM = re.compile(r"^\s*(?P<field>[A-Za-z_][\w.\-]*)\s*(?P<op><=|>=|!=|=|<|>|:)\s*(?P<value>.+?)\s*$")
_FIELDS = ("alias", "state", "format", "create_time", "version", "name", "creator", "description")
_ORDER_FIELDS = ("version", "create_time", "name")
MAX_TERMS = 32
_VERSION = re.compile(r"^[0-9]{1,10}$")
FILTER_RULE = ("terms 'field op value' joined by AND; fields: tags.<key>, metrics.<name>, "
               f"{', '.join(_FIELDS)}; ops: = != < <= > >= :")


@dataclass(frozen=True)
class Term:
    field: str
    op: str
    value: str


def _time(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidArgument.field("filter", f"create_time value {quote(value, 32)} is not an ISO time or unix "
                                              "seconds") from e
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def parse_filter(text: str) -> list[Term]:
    """Parse a filter; raises InvalidArgument naming the bad term and the rule."""
    if len(text) > MAX_FILTER:
        raise InvalidArgument.field("filter", f"must be at most {MAX_FILTER} characters (got {len(text)})")
    if not text.strip():
        return []
    terms = []
    raws = re.split(r"\s+AND\s+", text.strip())
    if len(raws) > MAX_TERMS:
        raise InvalidArgument.field("filter", f"at most {MAX_TERMS} terms")
    for raw in raws:
        m = _TERM.match(raw)
        if not m:
            raise InvalidArgument.field("filter", f"cannot parse {quote(raw)}: {FILTER_RULE}")
        field, op, value = m["field"], m["op"], m["value"].strip().strip('"')
        if not (field in _FIELDS or field.startswith(("tags.", "metrics.")) or (op == ":" and field == "tags")):
            raise InvalidArgument.field("filter", f"unknown field {quote(field, 32)}: {FILTER_RULE}")
        if field.startswith("metrics.") and op != ":":
            try:
                float(value)
            except ValueError:
                raise InvalidArgument.field("filter", f"{quote(field, 32)} compares with a number, not "
                                                      f"{quote(value, 32)}") from None
        if field == "version" and op != ":" and not _VERSION.match(value):
            raise InvalidArgument.field("filter", f"version compares with a number of 1-10 ASCII digits, not "
                                                  f"{quote(value, 32)}")
        if field == "create_time":
            _time(value)
        terms.append(Term(field, op, value))
    return terms


def _cmp(left: Any, op: str, right: Any) -> bool:
    if op == "=":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if left is None:
        return False
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]


def _matches(doc: dict[str, Any], t: Term) -> bool:
    f, op, v = t.field, t.op, t.value
    if f == "alias" or (f == "tags" and op == ":"):
        have = doc.get("aliases", []) if f == "alias" else list(doc.get("tags", {}))
        return (v in have) if op in (":", "=") else (v not in have) if op == "!=" else False
    if f.startswith("tags."):
        got = doc.get("tags", {}).get(f[5:])
        return got is not None if op == ":" else _cmp(got, op, v) if op in ("=", "!=") else _cmp(got, op, v)
    if f.startswith("metrics."):
        got = doc.get("metrics", {}).get(f[8:])
        return got is not None if op == ":" else got is not None and _cmp(float(got), op, float(v))
    if f == "create_time":
        return _cmp(float(doc.get("create_time", 0)), op, _time(v))
    if f == "version":
        return _cmp(int(doc.get("version", 0)), op, int(v) if _VERSION.match(v) else -1)
    got = doc.get(f, "")
    return v in str(got) if op == ":" else _cmp(str(got), op, v)


def compile_filter(text: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate over stored documents (versions or models)."""
    terms = parse_filter(text)
    return lambda doc: all(_matches(doc, t) for t in terms)


@dataclass(frozen=True)
class Order:
    field: str  # "version", "create_time", "name" or "metrics.<name>"
    descending: bool

    @property
    def is_native(self) -> bool:
        """True when the index is already in this order (versions newest first)."""
        return self.field in ("version", "create_time") and self.descending


def parse_order(text: str, default: str = "version desc") -> Order:
    if len(text) > MAX_ORDER_BY:
        raise InvalidArgument.field("order_by", f"must be at most {MAX_ORDER_BY} characters")
    parts = (text or default).split()
    if not parts or len(parts) > 2 or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc")):
        raise InvalidArgument.field("order_by", "must be '<field> [asc|desc]'")
    field = parts[0]
    if field not in _ORDER_FIELDS and not field.startswith("metrics."):
        raise InvalidArgument.field("order_by", f"field must be one of {', '.join(_ORDER_FIELDS)} or metrics.<name>")
    return Order(field, len(parts) == 2 and parts[1].lower() == "desc")


def sort_key(order: Order) -> Callable[[dict[str, Any]], Any]:
    """Key for sorting documents by ``order``; missing metrics sort last either way."""
    if order.field.startswith("metrics."):
        name = order.field[8:]

        def metric(doc: dict[str, Any]) -> tuple[int, float]:
            val = doc.get("metrics", {}).get(name)
            if val is None:
                return (1, 0.0)
            return (0, -float(val) if order.descending else float(val))

        return metric
    return lambda doc: doc.get(order.field, 0)
