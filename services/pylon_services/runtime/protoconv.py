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


def page_size(value: int) -> int:
    """0 means the default; negative is an error; large values are capped."""
    if value < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
