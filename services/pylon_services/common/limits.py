"""Size limits and value checks every API applies at its boundary, with the field named.

Why limits on every string, map and list: a stored record is returned by later Get and List
calls, so one oversized field (a 16 MiB description) would make every page that holds it fail
and would sit in each service's memory. The limits keep any record to a few KiB of user
metadata; list pages are bounded separately (``paging.PageBudget``). Every check raises
``InvalidArgument`` naming the field and the rule; messages quote at most ``QUOTE_CHARS`` of a
bad value (``quote``), never the whole input.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pylon_services.common.errors import FieldViolation, InvalidArgument

MAX_DESCRIPTION = 2048  # characters: descriptions of models, versions, datasets, uploads, jobs
MAX_DISPLAY_NAME = 256  # characters
MAX_LABELS = 64  # entries of one labels or tags map
MAX_LABEL_VALUE = 256  # characters of a label or tag value
MAX_REQUEST_ID = 128  # characters: [A-Za-z0-9._:-]
MAX_ETAG = 128  # characters
MAX_FILTER = 1024  # characters of a filter expression
MAX_ORDER_BY = 128  # characters of an order_by
MAX_NAME = 512  # characters of a resource name or a reference to one
MAX_URI = 1024  # characters of an object-store URI or prefix
MAX_JSON_BYTES = 64 << 10  # a JSON config, schema or signature, serialized
MAX_JSON_DEPTH = 32  # nesting of a JSON config
MAX_METRICS = 256  # entries of a metrics map
MAX_METRIC_NAME = 128  # characters
MAX_NUMBER_DIGITS = 10  # a version number written as text: up to 9,999,999,999
MAX_SHORT_TEXT = 256  # any other free-text field (a text field name, a tokenizer name, ...)
QUOTE_CHARS = 64  # how much of a bad value an error message quotes

KEY_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
KEY_RULE = "must be 1-63 characters: lowercase letters, digits, '-', '_' or '.', starting with a letter"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID_RULE = "must be 1-128 characters: ASCII letters, digits, '.', '_', ':' or '-'"
METRIC_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/@-]{0,127}$")
METRIC_RULE = "must be 1-128 characters: ASCII letters, digits, '_', '.', ':', '/', '@' or '-', starting with a letter or '_'"
DIGITS_RE = re.compile(r"^[0-9]{1,10}$")
# C0 controls except tab, newline and carriage return; DEL and C1 controls; lone surrogates.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of a value for an error message, cut to about ``limit`` characters (with how
    long the whole was), so a reply never echoes a whole input back."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def check_text(field: str, value: str, max_chars: int = MAX_SHORT_TEXT) -> str:
    """Free text up to ``max_chars`` characters, without NUL or other control characters
    (tab and line breaks are allowed)."""
    if len(value) > max_chars:
        raise InvalidArgument.field(field, f"must be at most {max_chars} characters (got {len(value)})")
    if _CONTROL_RE.search(value):
        raise InvalidArgument.field(field, "must not contain NUL or other control characters")
    return value


def check_description(field: str, value: str) -> str:
    return check_text(field, value, MAX_DESCRIPTION)


def check_display_name(field: str, value: str) -> str:
    return check_text(field, value, MAX_DISPLAY_NAME)


def check_labels(field: str, labels: Mapping[str, str], *, max_items: int = MAX_LABELS,
                 max_value: int = MAX_LABEL_VALUE) -> dict[str, str]:
    """Labels or tags: at most 64, keys like ids (``KEY_RULE``), values up to 256 characters.
    Returns them sorted by key (stored records compare equal whatever the input order)."""
    if len(labels) > max_items:
        raise InvalidArgument.field(field, f"at most {max_items} entries (got {len(labels)})")
    for key, value in labels.items():
        if not KEY_RE.match(key):
            raise InvalidArgument.field(f"{field}[{quote(key, 32)}]", f"key {KEY_RULE}")
        check_text(f"{field}[{key!r}]", value, max_value)
    return dict(sorted(labels.items()))


def check_strings(field: str, values: Iterable[str], *, max_items: int, max_chars: int = MAX_SHORT_TEXT
                  ) -> list[str]:
    """A repeated string field: at most ``max_items`` entries of at most ``max_chars`` each."""
    out = list(values)
    if len(out) > max_items:
        raise InvalidArgument.field(field, f"at most {max_items} entries (got {len(out)})")
    for i, v in enumerate(out):
        check_text(f"{field}[{i}]", v, max_chars)
    return out


def check_request_id(field: str, value: str) -> str:
    """An idempotency key ('' means none): it becomes part of storage keys, so ASCII only."""
    if value and not REQUEST_ID_RE.match(value):
        raise InvalidArgument.field(field, REQUEST_ID_RULE)
    return value


def check_etag(field: str, value: str) -> str:
    if len(value) > MAX_ETAG or _CONTROL_RE.search(value):
        raise InvalidArgument.field(field, f"is not an etag this server issued (at most {MAX_ETAG} characters)")
    return value


def check_metrics(field: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """A metrics map: at most 256 names (``METRIC_RULE``) to numbers (NaN and infinities allowed:
    a diverged run's loss is still worth recording)."""
    if len(metrics) > MAX_METRICS:
        raise InvalidArgument.field(field, f"at most {MAX_METRICS} entries (got {len(metrics)})")
    for key, value in metrics.items():
        if not METRIC_RE.match(key):
            raise InvalidArgument.field(f"{field}[{quote(key, 32)}]", f"name {METRIC_RULE}")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InvalidArgument.field(f"{field}[{key!r}]", "must be a number")
    return dict(metrics)


def check_json(field: str, value: Any, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A JSON value (a config, a schema) of at most 64 KiB serialized and 32 levels deep."""
    _check_depth(field, value, max_depth)
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=True).encode())
    except (TypeError, ValueError) as e:
        raise InvalidArgument.field(field, "must be JSON (objects, arrays, strings, numbers, booleans, null)") from e
    if size > max_bytes:
        raise InvalidArgument.field(field, f"must be at most {max_bytes} bytes as JSON (got {size})")
    return value


def json_violations(path: str, value: Any, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH,
                    most: int = 10) -> list[FieldViolation]:
    """What is wrong with a JSON value taken from a request (a workload's config, an engine's
    settings), each naming its path: NaN or infinity, a whole number beyond 64 bits, nesting
    beyond ``max_depth``, a size beyond ``max_bytes`` (strings and keys counted in UTF-8, a few
    bytes per value). At most ``most`` violations; the walk stops early on a huge value."""
    bad: list[FieldViolation] = []
    if _json_walk(path, value, 1, bad, max_bytes, max_depth, most) > max_bytes:
        bad.append(FieldViolation(path, f"must be at most {max_bytes >> 10} KiB as JSON"))
    return bad[:most]


def _json_walk(path: str, value: Any, depth: int, bad: list[FieldViolation], max_bytes: int, max_depth: int,
               most: int) -> int:
    """The approximate JSON size of ``value``; appends what is wrong to ``bad``."""
    if len(bad) >= most:
        return 0
    if isinstance(value, Mapping | list | tuple):
        if depth > max_depth:
            bad.append(FieldViolation(path, f"nests deeper than {max_depth} levels"))
            return 0
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        size = 2
        for k, v in items:
            child = f"{path}.{str(k)[:64]}" if isinstance(k, str) else f"{path}[{k}]"
            size += (len(str(k).encode()) + 4 if isinstance(k, str) else 1) + _json_walk(
                child, v, depth + 1, bad, max_bytes, max_depth, most)
            if size > max_bytes or len(bad) >= most:
                break
        return size
    if isinstance(value, str):
        return len(value.encode()) + 2
    if isinstance(value, float) and not math.isfinite(value):
        bad.append(FieldViolation(path, "must be a finite number"))
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63 - 1:
        bad.append(FieldViolation(path, "is out of the 64-bit integer range"))
    return 8


def _check_depth(field: str, value: Any, max_depth: int) -> None:
    """Iterative (no recursion limit to hit): each container's depth is counted once."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise InvalidArgument.field(field, f"must be nested at most {max_depth} levels deep")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def check_int(field: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise InvalidArgument.field(field, f"must be between {lo} and {hi} (got {quote(value, 24)})")
    return value


def check_number(field: str, value: float, lo: float, hi: float) -> float:
    """A finite number in [lo, hi] (durations, rates, fractions)."""
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidArgument.field(field, f"must be a number between {lo} and {hi}")
    return value


def parse_number(field: str, text: str, max_digits: int = MAX_NUMBER_DIGITS) -> int:
    """A non-negative whole number written in ASCII digits (``str.isdigit`` would accept '²',
    which ``int`` refuses), at most ``max_digits`` long."""
    if not (0 < len(text) <= max_digits and text.isascii() and text.isdigit()):
        raise InvalidArgument.field(field, f"must be a number of 1-{max_digits} ASCII digits (got {quote(text, 24)})")
    return int(text)


def check_enum(field: str, value: int, known: Mapping[int, Any] | Iterable[int]) -> int:
    """A proto enum value the server knows (an unknown number is refused, not treated as 0)."""
    if value not in known:
        raise InvalidArgument.field(field, f"unknown value {quote(value, 16)}")
    return value
