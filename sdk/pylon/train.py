"""Helpers for user code running as a Pylon job: preemption, checkpoints, metrics.

A preemptible job polls ``should_preempt()`` (cheap: one file check) between steps; when it
turns True the job saves its state under ``checkpoint_dir()`` and calls ``exit_preempted()``.
The scheduler requeues it and the next attempt finds the same files in ``checkpoint_dir()``, so
it resumes where it stopped. A job that ignores the flag gets SIGTERM after the grace period.
``report(step, loss=...)`` records metrics (``pylon jobs get``, ListJobMetrics) and feeds the
scheduler's throughput table. Outside a Pylon job all of these are harmless no-ops.
"""

from __future__ import annotations

import json
import os
import sys

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "stopped to be requeued", not a failure
_METRICS_PREFIX = "##pylon-metrics "


def should_preempt() -> bool:
    """True once the scheduler asked this job to yield its GPUs."""
    flag = os.environ.get("PYLON_PREEMPT_FILE")
    return bool(flag) and os.path.exists(flag)


def checkpoint_dir() -> str:
    """A directory restored from the job's last checkpoint before start and saved after exit."""
    path = os.environ.get("PYLON_CHECKPOINT_DIR") or os.path.join(os.getcwd(), "checkpoint")
    os.makedirs(path, exist_ok=True)
    return path


def exit_preempted() -> None:
    """Leave after checkpointing: the scheduler requeues the job instead of failing it."""
    sys.stdout.flush()
    sys.exit(PREEMPTED_EXIT_CODE)


def report(step: int, **metrics: float) -> None:
    """Record metrics at ``step`` (e.g. ``report(100, loss=2.3)``)."""
    values = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    print(_METRICS_PREFIX + json.dumps(values), flush=True)


def rank() -> int:
    """This worker's index in the gang (0 when not a Pylon job)."""
    return int(os.environ.get("PYLON_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("PYLON_WORLD_SIZE", "1"))
