"""What runs inside Ray for one worker of one job attempt: a registered trainer or engine, or a
user command.

``run_workload`` runs as a Ray task owned by the detached launcher actor of its node
(``launcher.py``), so the work survives the leader that launched it. It finds the workload's code
through the workload registry (``pylon_services.workloads``: imported here, in the worker, never
in the API), hands it a ``WorkerContext`` and reports the result to Redis, where a (possibly new)
leader reads it. It never raises: the scheduler always learns an exit code.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from pylon_services.runtime.settings import Settings
from pylon_services.scheduler.domain.job import Job
from pylon_services.scheduler.worker.command import run_command
from pylon_services.scheduler.worker.context import WorkerContext
from pylon_services.workloads import REGISTRY, WorkloadKind, WorkloadResult

log = logging.getLogger("pylon.worker")


def run_workload(job_dict: dict[str, Any], settings_dict: dict[str, Any], attempt: int, rank: int = 0
                 ) -> dict[str, Any]:
    settings = Settings(**settings_dict)
    ctx = WorkerContext(settings, Job.from_dict(job_dict), attempt, rank)
    ctx.log(f"attempt {attempt} worker {rank} started on {socket.gethostname()} (pid {os.getpid()}, "
            f"gpu type {ctx.gpu_type or 'cpu'})")
    result = WorkloadResult(exit_code=1, error="did not run")
    try:
        result = run_command(ctx) if ctx.kind == "command" else _run_registered(ctx)
    except Exception as exc:  # noqa: BLE001 - the job fails, the worker reports why
        # The job's log says what failed; the traceback (platform code, paths, internal addresses)
        # goes to the worker's own log only.
        log.exception("job %s attempt %d worker %d failed", ctx.job_name, attempt, rank)
        result = WorkloadResult(exit_code=1, error=f"{type(exc).__name__}: {str(exc)[:500]}")
        ctx.log(f"pylon: the worker failed: {result.error}")
    finally:
        try:
            ctx.close_checkpoints()  # pending background uploads finish before the result is told
            ctx.archive_log()
        finally:
            ctx.report(result.to_dict())
    return result.to_dict()


def _run_registered(ctx: WorkerContext) -> WorkloadResult:
    """A trainer or engine from the registry, with the job's flags watched on a thread."""
    workload = REGISTRY.get(WorkloadKind(ctx.kind), ctx.workload_name())
    if workload is None:  # validated at submit; a registry that changed since is the only way here
        raise RuntimeError(f"no {ctx.kind} named {ctx.workload_name()!r} is installed on this worker")
    done = threading.Event()
    threading.Thread(target=ctx.watch_flags, args=(done,), daemon=True).start()
    try:
        return workload.load()(ctx)
    finally:
        done.set()
