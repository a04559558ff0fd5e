"""Small proto <-> Python helpers shared by every servicer (transport layer only)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from pylon_services.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def ts(seconds: float | None) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    if seconds:
        t.FromNanoseconds(int(seconds * 1e9))
    return t


def struct(d: dict[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if d:
        s.update(d)
    return s


def from_struct(s: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(s)


MAX_JSON_INT = 2**53  # the largest whole number a double (a Struct's only number) holds exactly


def plain_struct(s: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct a caller sent, as plain Python, for validation before anything else reads it.
    Whole numbers of safe size become ints again (as a JSON reader gives them); NaN and infinity
    stay floats for the caller's checks to refuse (``json_format`` raises on them, which would be
    an INTERNAL)."""
    return {k: _plain(v) for k, v in s.fields.items()}


def _plain(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        x = v.number_value
        return int(x) if x.is_integer() and abs(x) <= MAX_JSON_INT else x
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return plain_struct(v.struct_value)
    if kind == "list_value":
        return [_plain(x) for x in v.list_value.values]
    return None


def page_size(value: int) -> int:
    """0 means the default; negative is an error; large values are capped."""
    if value < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
