"""Shared pieces of the SDK resource collections."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pylon.ingest.v1 import ingest_pb2

if TYPE_CHECKING:
    from pylon.client import Client


CHUNK_BYTES = 1 << 20
Progress = Callable[[int, int], None]  # (bytes done, bytes total)
_FORMATS = {"text": ingest_pb2.DATA_FORMAT_TEXT, "txt": ingest_pb2.DATA_FORMAT_TEXT,
            "jsonl": ingest_pb2.DATA_FORMAT_JSONL, "csv": ingest_pb2.DATA_FORMAT_CSV,
            "parquet": ingest_pb2.DATA_FORMAT_PARQUET}


def _name(kind: str, name: str) -> str:
    """Accept a short id ("wiki") or a full resource name."""
    return name if name.startswith("tenants/") else f"tenants/-/{kind}/{name}"


def file_digest(path: str) -> str:
    """``sha256:<hex>`` of a local file (cached: see ``pylon.transfer.hash_file``)."""
    from pylon.transfer import hash_file

    return hash_file(path).sha256


class _Resource:
    def __init__(self, client: Client) -> None:
        self._c = client

