"""Helpers for user code running as a Pylon job: preemption, checkpoints, metrics.

A preemptible job polls ``should_preempt()`` (cheap: one file check) between steps; when it
turns True the job saves its state under ``checkpoint_dir()`` and calls ``exit_preempted()``.
The scheduler requeues it and the next attempt finds the same files in ``checkpoint_dir()``, so
it resumes where it stopped. A job that ignores the flag gets SIGTERM after the grace period.
A job that should survive crashes checkpoints every ``checkpoint_every()`` steps (the spec's
``checkpoint_every_steps``; ``should_checkpoint(step)`` says when) and then calls
``checkpoint_saved(step)``, which returns once the checkpoint is in object storage: a retried
attempt finds it in ``checkpoint_dir()``.
``report(step, loss=...)`` records metrics (``pylon jobs get``, ListJobMetrics) and feeds the
scheduler's throughput table. ``data_store()`` reads the dataset versions the job's spec names
(``command.datasets``) and writes under the job's ``output/``, with no object-store credentials:
through an endpoint its worker serves it. Outside a Pylon job all of these are harmless no-ops
(``data_store()`` raises: there is nothing to read).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when used: numpy is not a cost every job script should pay
    from pylon.data.sources import JobDataSource

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "stopped to be requeued", not a failure
_METRICS_PREFIX = "##pylon-metrics "


def should_preempt() -> bool:
    """True once the scheduler asked this job to yield its GPUs."""
    flag = os.environ.get("PYLON_PREEMPT_FILE")
    return flag is not None and flag != "" and os.path.exists(flag)


def checkpoint_dir() -> str:
    """A directory restored from the job's last checkpoint before start and saved after exit."""
    path = os.environ.get("PYLON_CHECKPOINT_DIR") or os.path.join(os.getcwd(), "checkpoint")
    os.makedirs(path, exist_ok=True)
    return path


def checkpoint_every(default: int = 0) -> int:
    """The job's ``checkpoint_every_steps`` (0 when the job left it unset: then ``default``)."""
    return int(os.environ.get("PYLON_CHECKPOINT_EVERY", "0") or 0) or default


def should_checkpoint(step: int, default: int = 0) -> bool:
    """True when ``step`` is one the job should checkpoint at (every ``checkpoint_every()`` steps)."""
    every = checkpoint_every(default)
    return every > 0 and step > 0 and step % every == 0


def checkpoint_saved(step: int, timeout_s: float = 300.0) -> bool:
    """Say that ``checkpoint_dir()`` now holds a complete checkpoint of ``step``. On rank 0 of a
    Pylon job this returns once Pylon has uploaded the directory to object storage (True), so a
    retried or requeued attempt resumes from it even if this process dies right after; write the
    checkpoint's files completely (e.g. to a temporary name, then ``os.replace``) before calling.
    Elsewhere (other ranks, outside Pylon) it returns False at once."""
    mark = os.environ.get("PYLON_CHECKPOINT_SAVED_FILE")
    if not mark:
        return False
    tmp = mark + f".{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(str(int(step)))
    os.replace(tmp, mark)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(mark + ".done") as f:
                if f.read().strip() == str(int(step)):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


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


def job_name() -> str:
    """``tenants/{t}/jobs/{id}`` of this job ("" outside Pylon)."""
    return os.environ.get("PYLON_JOB", "")


def data_store() -> JobDataSource:
    """The job's data endpoint: ``get(key, start=, end=)``, ``list(prefix)`` and ``put(key, data)``
    on full object keys; pass it to ``pylon.data.ShardReader`` as the source of its shards."""
    from pylon.data.sources import JobDataSource

    url, token = os.environ.get("PYLON_DATA_URL"), os.environ.get("PYLON_DATA_TOKEN")
    if not url or not token:
        raise RuntimeError("not running as a Pylon job: no data endpoint (PYLON_DATA_URL)")
    return JobDataSource(url, token)


def output_prefix() -> str:
    """Where this job's outputs go: ``tenants/{t}/jobs/{id}/output/``."""
    return f"{job_name()}/output/" if job_name() else ""
