"""The event loop every Pylon process runs on: uvloop where it is installed, else asyncio's.

uvloop (libuv, in C) does the loop's own work (callbacks, futures, socket reads and writes) for
less CPU than the stdlib loop. On SubmitJob it took about 8% off the scheduler API's CPU per call
(benchmarks/sched_submit_throughput.py: 331-383 against 360-405 us). grpc.aio and redis-py's
asyncio client run on either loop unchanged. ``PYLON_EVENT_LOOP=asyncio`` forces
the stdlib loop (to rule the loop out when chasing a bug); ``uvloop`` requires uvloop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
CHOICES = ("auto", "uvloop", "asyncio")


def loop_kind(choice: str | None = None) -> str:
    """The loop ``run`` uses for ``choice`` (default: ``PYLON_EVENT_LOOP``, else "auto")."""
    choice = (choice if choice is not None else os.environ.get("PYLON_EVENT_LOOP", "auto")).strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"PYLON_EVENT_LOOP={choice!r}: choose one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError("PYLON_EVENT_LOOP=uvloop, but uvloop is not installed (pip install uvloop)") from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """``asyncio.run(main)`` on the loop ``loop_kind`` picks."""
    if loop_kind(choice) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
