"""Polling helpers shared by the scheduler's integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """``pred()``'s first truthy value, polled every 0.2 s; fails after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := pred():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def used_gpus(client: Any, gpu_type: str) -> float:
    """GPUs in use in one pool, as ``pylon cluster`` shows them."""
    return float({p.gpu_type: p for p in client.jobs.cluster()}[gpu_type].used_gpus)
