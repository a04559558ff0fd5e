"""Shared pieces of the CLI: the client from global options, output helpers.

Every command takes ``--json`` for machine output. Address and key come from ``--address`` /
``--token``, ``PYLON_ADDRESS`` / ``PYLON_TOKEN``, or the platform a local ``pylon up`` started.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from pylon.client import Client

console = Console()
err = Console(stderr=True)
_opts: dict[str, Any] = {}


def client() -> Client:
    return Client(_opts.get("address"), _opts.get("token"))


def _plain(obj: Any) -> Any:
    """JSON-ready form of an SDK result: dataclasses become dicts (field names = proto fields),
    iterators (the SDK's lazy lists) lists, datetimes ISO 8601 strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, (list, tuple, Iterator)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def emit(obj: Any, as_json: bool, columns: list[str] | None = None) -> None:
    """Print a result: with ``as_json`` exactly one JSON document on stdout (nothing else is
    printed there), else a table (one row per item of a list)."""
    data = _plain(obj)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    cols = columns or (list(rows[0].keys()) if rows else [])
    table = Table(*cols)
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in cols])
    console.print(table)


JSON = typer.Option(False, "--json", help="Machine-readable output: one JSON document on stdout.")
LIMIT = typer.Option(100, "--limit", min=0, help="Show at most this many (0: all).")


def limit_of(value: int) -> int | None:
    """The SDK's ``limit`` for a ``--limit`` value (0 means no limit)."""
    return value or None

