"""Record schemas: a small JSON-schema-like subset (field -> type, required), given or inferred.

The canonical form, stored in manifests, is
``{"fields": {name: {"type": [types...], "required": bool}}}`` with types from
``string, integer, number, boolean, object, array, null``. Users may also send the JSON-schema
shape (``{"properties": {name: {"type": ...}}, "required": [...]}``) or the shorthand
``{"fields": {name: "string"}}``; ``normalize_schema`` turns all of them into the canonical form.
Fields not in the schema are allowed and kept.
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Iterable
from typing import Any

from pylon_services.common.errors import InvalidArgument

TYPES = ("string", "integer", "number", "boolean", "object", "array", "null")
# Parquet cells can be dates, times, decimals or bytes: they are written out as strings, so
# they count as strings here (else an inferred schema would reject its own column).
_STRINGISH: tuple[type, ...] = (str, datetime.date, datetime.time, datetime.timedelta, decimal.Decimal, bytes)
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": _STRINGISH, "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,), "null": (type(None),),
}


def type_name(value: Any) -> str:
    """The schema type of a Python value (bool is not an integer here)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return "string"  # parquet dates, decimals, bytes: rendered as strings on output


def _types_of(spec: Any, name: str) -> list[str]:
    types = spec if isinstance(spec, list) else [spec]
    for t in types:
        if t not in TYPES and t != "any":
            raise InvalidArgument.field(f"schema.fields.{name}.type", f"unknown type {t!r}; expected one of {TYPES}")
    return sorted(set(types))


def normalize_schema(schema: dict | None) -> dict:
    """The canonical form of a user schema; raises InvalidArgument when it is not one."""
    if not schema:
        return {"fields": {}}
    if not isinstance(schema, dict):
        raise InvalidArgument.field("schema", "must be an object")
    if "properties" in schema:
        required = set(schema.get("required", []))
        fields = {n: {"type": (p or {}).get("type", "any"), "required": n in required}
                  for n, p in schema["properties"].items()}
    elif "fields" in schema:
        fields = {}
        for n, spec in schema["fields"].items():
            if not isinstance(spec, dict):
                spec = {"type": spec}
            fields[n] = {"type": spec.get("type", "any"), "required": bool(spec.get("required", False))}
    else:
        raise InvalidArgument.field("schema", "expected {'fields': {...}} or {'properties': {...}}")
    return {"fields": {n: {"type": _types_of(f["type"], n), "required": f["required"]} for n, f in fields.items()}}


class Validator:
    """Checks records against a canonical schema; with ``coerce`` (CSV), converts string cells
    to the schema's integer/number/boolean types first."""

    def __init__(self, schema: dict, *, coerce: bool = False) -> None:
        self.coerce = coerce
        self._checks: list[tuple[str, tuple[type, ...] | None, list[str], bool]] = []
        for name, spec in schema.get("fields", {}).items():
            types = spec["type"]
            allowed = None if "any" in types else tuple(t for n in types for t in _PY_TYPES[n])
            self._checks.append((name, allowed, types, spec["required"]))

    def check(self, record: dict[str, Any]) -> tuple[str, str] | None:
        """None when ``record`` conforms, else ``(reason_code, detail)``; may coerce in place."""
        for name, allowed, types, required in self._checks:
            value = record.get(name)
            if value is None:
                if required:
                    return "missing_field", f"required field {name!r} is missing or null"
                continue
            if self.coerce and type(value) is str:
                value = _coerce(value, types)
                record[name] = value
                if value is None:
                    if required:
                        return "missing_field", f"required field {name!r} is empty"
                    continue
            if allowed is not None and (not isinstance(value, allowed) or (type(value) is bool and bool not in allowed)):
                return "wrong_type", f"field {name!r}: expected {'|'.join(types)}, got {type_name(value)}"
        return None


def _coerce(value: str, types: list[str]) -> Any:
    """A CSV cell as the first schema type it parses as; an empty cell is null (CSV has no
    other way to say so), so it fails a required field."""
    if value == "":
        return None
    for t in types:
        if t == "string":
            return value
        try:
            if t == "integer":
                return int(value)
            if t == "number":
                return float(value)
        except ValueError:
            continue
        if t == "boolean" and value.lower() in ("true", "false"):
            return value.lower() == "true"
    return value


def _cell_type(value: Any, coerce: bool) -> str:
    if not coerce or type(value) is not str:
        return type_name(value)
    if value == "":
        return "null"
    for parse, name in ((int, "integer"), (float, "number")):
        try:
            parse(value)
            return name
        except ValueError:
            pass
    return "boolean" if value.lower() in ("true", "false") else "string"


def infer_from_records(records: Iterable[dict[str, Any]], *, coerce: bool = False,
                       text_field: str | None = None) -> dict:
    """Infer the canonical schema: each field's observed types (integer widened into number
    when both occur), required when present and non-null in every sampled record."""
    seen: dict[str, set[str]] = {}
    present: dict[str, int] = {}
    n = 0
    for rec in records:
        n += 1
        for name, value in rec.items():
            t = _cell_type(value, coerce)
            seen.setdefault(name, set()).add(t)
            if t != "null":
                present[name] = present.get(name, 0) + 1
    fields = {}
    for name, types in seen.items():
        if {"integer", "number"} <= types:
            types.discard("integer")
        if types == {"null"}:
            types = {"null", "string"}
        fields[name] = {"type": sorted(types), "required": present.get(name, 0) == n}
    if text_field and text_field in fields:
        fields[text_field] = {"type": ["string"], "required": True}
    return {"fields": fields}


def merge_schemas(schemas: list[dict]) -> dict:
    """One schema covering several files: union of types; required only where all require."""
    merged: dict[str, dict[str, Any]] = {}
    for i, schema in enumerate(schemas):
        for name, spec in schema.get("fields", {}).items():
            if name not in merged:
                merged[name] = {"type": set(spec["type"]), "required": spec["required"] and i == 0}
            else:
                merged[name]["type"] |= set(spec["type"])
                merged[name]["required"] = merged[name]["required"] and spec["required"]
        for name in merged.keys() - schema.get("fields", {}).keys():
            merged[name]["required"] = False
    return {"fields": {n: {"type": sorted(s["type"]), "required": s["required"]} for n, s in merged.items()}}
