"""Estimates and words for jobs that wait: when running jobs finish, when a waiting job may start.

Estimated finish of a running job = (progress_time or start_time) + remaining_work / (its
per-worker rate on its GPU type x workers). Per GPU type, the pass keeps those finish times sorted
with running sums of the GPUs they release, so "when are G more GPUs of type T free" is one binary
search. Jobs that wait claim the GPUs they will need, so the next job's estimate lies behind
theirs. Node fragmentation is ignored: it is an estimate, and says so (0 = unknown).
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict

from pylon_services.scheduler.domain.scheduling import Demand, RunningJob, ThroughputTable


def job_rate(table: ThroughputTable, job_type: str, gpu_type: str, workers: int) -> float | None:
    """Steps/s of the whole job on ``gpu_type`` (per-worker rate x workers), None if unknown."""
    r = table.rate(job_type, gpu_type)
    return r * workers if r else None


def running_rate(table: ThroughputTable, r: RunningJob) -> float | None:
    """Steps/s of a running job. A gang=false job split over GPU types moves at its slowest
    worker's pace (its workers step together), so: the slowest of its types' per-worker rates x
    workers; None if any of them is unknown."""
    if not r.worker_gpu_types:
        return job_rate(table, r.job_type, r.gpu_type, r.demand.workers)
    rates = [table.rate(r.job_type, t) for t in set(r.worker_gpu_types)]
    return min(rates) * r.demand.workers if all(rates) else None  # type: ignore[type-var,operator]


def gpus_by_type(r: RunningJob) -> dict[str, float]:
    """GPUs a running job holds per GPU type (several types for a split gang=false job)."""
    if not r.worker_gpu_types:
        return {r.gpu_type: r.demand.total_gpus}
    out: dict[str, float] = defaultdict(float)
    for t in r.worker_gpu_types:
        out[t] += r.demand.gpus_per_worker
    return dict(out)


def estimated_finish(r: RunningJob, table: ThroughputTable, now: float) -> float | None:
    """When a running job should end, from its remaining work and throughput; None if unknown."""
    rate = running_rate(table, r)
    if rate is None or r.remaining_work <= 0:
        return None
    return max(now, (r.progress_time or r.start_time) + r.remaining_work / rate)


class ReleaseTimeline:
    """Per GPU type: sorted estimated finish times of running jobs and cumulative GPUs freed."""

    def __init__(self, running: tuple[RunningJob, ...], table: ThroughputTable, now: float) -> None:
        self.now = now
        events: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in running:
            end = now if r.preempting else estimated_finish(r, table, now)
            if end is not None:
                for t, gpus in gpus_by_type(r).items():
                    events[t].append((end, gpus))
        self.times: dict[str, list[float]] = {}
        self.freed: dict[str, list[float]] = {}
        for t, ev in events.items():
            ev.sort()
            self.times[t] = [e for e, _ in ev]
            self.freed[t] = list(itertools.accumulate(g for _, g in ev))
        self.claimed: dict[str, float] = defaultdict(float)

    def estimate(self, gpu_type: str, gpus: float, free_now: float, claim: bool = False) -> float:
        """Earliest time ``gpus`` GPUs of ``gpu_type`` are free behind earlier claims (0 = unknown)."""
        need = gpus + self.claimed[gpu_type] - free_now
        if claim:
            self.claimed[gpu_type] += gpus
        if need <= 1e-9:
            return self.now
        freed = self.freed.get(gpu_type, [])
        i = bisect.bisect_left(freed, need - 1e-9)
        return self.times[gpu_type][i] if i < len(freed) else 0.0


def describe_demand(d: Demand, types: list[str], gang: bool = True) -> str:
    """``"a gang of 4 workers x 2 GPUs on one of [V100, P100]"`` in the users' words."""
    where = f"on one of [{', '.join(types)}]" if len(types) != 1 else f"on {types[0]}"
    if d.workers == 1:
        return f"{d.gpus_per_worker:g} GPUs {where}"
    if not gang:
        return f"{d.workers} workers x {d.gpus_per_worker:g} GPUs (gang=false: any mix) of [{', '.join(types)}]"
    return f"a gang of {d.workers} workers x {d.gpus_per_worker:g} GPUs {where}"


def capacity_reason(d: Demand, types: list[str], fit: int, gang: bool = True, fit_any: int = 0) -> str:
    """Why a job does not fit anywhere right now, with the largest set that would fit (on one
    GPU type for a gang; summed over the acceptable types for gang=false)."""
    if d.workers == 1:
        return f"waiting for {describe_demand(d, types)}: no node has that much free"
    if not gang:
        return f"waiting for {describe_demand(d, types, gang)}: only {fit_any} workers fit across those types"
    return f"waiting for {describe_demand(d, types)}: the largest free set is {fit} workers"
