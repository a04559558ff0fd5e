"""The per-RPC access log: one JSON object per line on stderr, with the fields operators grep."""

from __future__ import annotations

import json
from typing import Any

from pylon_services.runtime.jsonlog import AccessLog


def test_access_lines_are_one_json_object_each(capsys: Any) -> None:
    log = AccessLog("scheduler")
    log.write("info", "rpc", {"request_id": "abc", "tenant": "acme", "method": "pylon.X/Y", "code": "OK",
                              "latency_ms": 0.25, "odd": object()})
    log.write("error", "rpc", {"request_id": "def", "code": "INTERNAL"})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["service"] == "scheduler" and first["logger"] == "pylon.rpc" and first["level"] == "info"
    assert first["method"] == "pylon.X/Y" and first["latency_ms"] == 0.25 and first["odd"].startswith("<object")
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2026-01-01T00:00:00.000Z")
    assert second["level"] == "error" and second["code"] == "INTERNAL"
