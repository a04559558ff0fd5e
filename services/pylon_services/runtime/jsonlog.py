"""JSON log lines on stderr: one object per line, with request id, tenant, method, code, latency."""

from __future__ import annotations

import json
import logging
import sys
import time

import orjson

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(service: str, level: str = "INFO") -> None:
    """Route the root logger to stderr as JSON (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(level.upper())
    ACCESS.service = service


class AccessLog:
    """Per-RPC lines written straight to stderr, like a web server's access log.

    Same JSON shape as the logger's lines, but without a LogRecord, handler chain and formatter per
    call: that path cost about a third of the runtime's per-call overhead (benchmarks/rpc_overhead.py).
    """

    def __init__(self, service: str = "pylon") -> None:
        self.service = service
        self._second = -1
        self._stamp = ""

    def _ts(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def write(self, level: str, msg: str, fields: dict[str, object]) -> None:
        line = {"ts": self._ts(time.time()), "level": level, "service": self.service, "logger": "pylon.rpc",
                "msg": msg, **fields}
        # orjson: ~1/5 of json's encode time on these lines (a visible share of a cheap RPC).
        sys.stderr.write(orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE).decode())


ACCESS = AccessLog()
