"""The launchers: one detached, named Ray actor per node (per scheduler instance) that submits
and owns the workload tasks of the job attempts whose placement-group bundles sit on that node.

Why an owner actor instead of the scheduler process itself: a Ray task dies with its owner, so
tasks the scheduler submitted would die with it and could not be adopted. Why tasks instead of one
detached actor per worker: a task starts on an idle, already-running worker process (Ray keeps a
pool), an actor always needs a fresh process (about a second more per launch). The launchers
outlive any scheduler, so a new leader asks them what is still running (adoption). If a launcher
dies (its node died), its tasks die with it and the leader treats their jobs as lost (retry per
policy).

Why one per node, pinned there: a task's lease request goes to its owner's local raylet. An owner
on another node costs a spill-back to the bundle's node (measured: ~90 ms to the task running,
against ~10 ms from a launcher on the bundle's node; ``benchmarks/sched_launch_overhead.py``).
The executor (``store/ray_exec.py``) hands each worker to the launcher of the node its bundle was
placed on, so every launch is local whatever the cluster's size.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

STOP_GRACE_S = 2.0  # how long ``stop`` lets an attempt's tasks end by themselves


class Launcher:
    """Attempt name -> {rank: the ObjectRef of that worker's task} for the workers on this node."""

    def __init__(self, workload: Any = None) -> None:
        """``workload(job, settings, attempt, rank)`` is what each task runs: the platform's
        ``run_workload``; tests of the launcher itself pass a small function."""
        if workload is None:
            from pylon_services.scheduler.worker.run import run_workload as workload
        self._fn = ray.remote(workload)
        self.refs: dict[str, dict[int, Any]] = {}

    def launch(self, name: str, job: dict[str, Any], settings: dict[str, Any],
                  workers: list[tuple[int, Any, int, dict[str, Any]]]) -> int:
        """Start the listed workers, each ``(rank, placement group, bundle index, task options)``;
        a rank this launcher already started is skipped (idempotent). The caller has seen each
        group created, so the task is scheduled at once. Returns how many started.

        The group comes as the object, not its name: a name is looked up in the namespace of the
        job that created this (detached) actor, which is not always the scheduler's (a process
        whose Ray connection was opened in another namespace may have created it)."""
        mine = self.refs.setdefault(name, {})
        started = 0
        for rank, pg, bundle, opts in workers:
            if rank in mine:
                continue
            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle)
            mine[rank] = self._fn.options(**opts, max_retries=0, scheduling_strategy=strategy).remote(
                job, settings, job["attempt"], rank)
            started += 1
        return started

    def alive(self, name: str) -> dict[str, Any]:
        """The attempt's workers on this node: ``ranks`` it started (running or ended) and
        ``crashed``, rank -> the error of each task whose worker process died (a crash, a kill,
        its node lost). A task that ended normally reported its own result."""
        mine = self.refs.get(name, {})
        crashed: dict[int, str] = {}
        if mine:
            done, _ = ray.wait(list(mine.values()), num_returns=len(mine), timeout=0)
            for rank, ref in mine.items():
                if ref not in done:
                    continue
                try:
                    ray.get(ref, timeout=0)
                except Exception as exc:  # noqa: BLE001 - the worker process died
                    first = (str(exc).strip().splitlines() or [""])[0]
                    crashed[rank] = f"{type(exc).__name__}: {first}"
        return {"ranks": sorted(mine), "crashed": crashed}

    def stop(self, name: str, grace_s: float = STOP_GRACE_S) -> None:
        """End the attempt's tasks on this node and forget them: a task still running after
        ``grace_s`` is killed (its user process dies with it).

        Why the grace: the scheduler releases an attempt as soon as its workers reported their
        result, while their tasks are still returning. Force-cancelling a task in that window
        killed its worker process after Ray had already handed it the next task, another job's:
        that job failed with "worker process lost" (seen in CI after the SIGKILL-restart test). A
        cancelled job's worker sees the stop flag within 0.3 s and ends its user process itself."""
        refs = list(self.refs.pop(name, {}).values())
        if refs:
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=grace_s)
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished meanwhile
                pass

    def names(self) -> list[str]:
        return sorted(self.refs)
