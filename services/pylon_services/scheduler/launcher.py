"""The launcher: one detached, named Ray actor per scheduler instance that submits and owns the
workload tasks of every job attempt.

Why an owner actor instead of the scheduler process itself: a Ray task dies with its owner, so
tasks the scheduler submitted would die with it and could not be adopted. Why tasks instead of one
detached actor per worker: a task starts on an idle, already-running worker process (Ray keeps a
pool), an actor always needs a fresh process (about a second more per launch). The launcher
outlives any scheduler, so a new leader asks it what is still running (adoption). If the launcher
itself dies, its tasks die with it and the leader treats their jobs as lost (retry per policy).
"""

from __future__ import annotations

from typing import Any

import ray
from ray.util.placement_group import get_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

PG_WAIT_S = 1.0


class Launcher:
    """Attempt name -> the ObjectRefs of its workers' tasks."""

    def __init__(self) -> None:
        from pylon_services.scheduler.workload import run_workload

        self._fn = ray.remote(run_workload)
        self.refs: dict[str, list[Any]] = {}

    def launch(self, name: str, job: dict[str, Any], settings: dict[str, Any], opts: dict[str, Any]) -> bool:
        """Start one task per worker in the attempt's placement group; a no-op if it already runs.

        Waits (at most ``PG_WAIT_S``) for the group to be created first: a task submitted before
        its group is placed is only scheduled when Ray retries the lease, which cost 0.5-1 s per
        launch in ``benchmarks/sched_launch_overhead.py`` when the group had to wait for resources
        that were still being returned. The scheduler only admits onto free capacity, so the
        group is normally placed within milliseconds and the wait is short."""
        if name in self.refs:
            return False
        pg = get_placement_group(name)
        pg.wait(timeout_seconds=PG_WAIT_S)
        workers = int(job["spec"].get("workers", 1) or 1)
        self.refs[name] = [
            self._fn.options(**opts, max_retries=0, scheduling_strategy=PlacementGroupSchedulingStrategy(
                pg, placement_group_bundle_index=rank)).remote(job, settings, job["attempt"], rank)
            for rank in range(workers)]
        return True

    def alive(self, name: str) -> bool:
        """True while every worker task of the attempt runs or ended normally (not crashed)."""
        refs = self.refs.get(name)
        if not refs:
            return False
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in done:
            try:
                ray.get(ref, timeout=0)
            except Exception:  # noqa: BLE001 - the worker process died (crash, node loss, kill)
                return False
        return True

    def stop(self, name: str) -> None:
        """Kill the attempt's tasks (their user processes die with them) and forget them."""
        for ref in self.refs.pop(name, []):
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished
                pass

    def names(self) -> list[str]:
        return sorted(self.refs)
