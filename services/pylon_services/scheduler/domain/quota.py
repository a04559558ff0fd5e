"""Quotas in Kueue's model: nominal GPUs per queue and GPU type, borrowing inside a cohort.

A queue may always use its own nominal quota. Beyond it, it borrows: up to its borrowing limit
(absent = unlimited), and only what the cohort as a whole leaves idle (the sum of the members'
nominal quotas minus the sum of their usage). A queue missing from the snapshot has no quota
(unlimited), so a cluster without configured queues still schedules.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from pylon_services.scheduler.domain.scheduling import QueueQuota, RunningJob

EPS = 1e-9


@dataclass(frozen=True)
class QuotaVerdict:
    ok: bool
    borrowed: bool = False
    reason: str = ""


class QuotaLedger:
    """Usage per (queue, GPU type) and per (cohort, GPU type), charged as a pass admits jobs."""

    def __init__(self, queues: dict[str, QueueQuota], running: tuple[RunningJob, ...] | list[RunningJob]) -> None:
        self.queues = queues
        self.used: dict[tuple[str, str], float] = defaultdict(float)
        self.cohort_used: dict[tuple[str, str], float] = defaultdict(float)
        self.cohort_nominal: dict[tuple[str, str], float] = defaultdict(float)
        for q in queues.values():
            if q.cohort:
                for t, g in q.nominal_gpus.items():
                    self.cohort_nominal[(q.cohort, t)] += g
        for r in running:
            if r.worker_gpu_types:  # a split gang=false job: each worker charges its own type
                for t in r.worker_gpu_types:
                    self.charge(r.queue, t, r.demand.gpus_per_worker)
            else:
                self.charge(r.queue, r.gpu_type, r.demand.total_gpus)

    def nominal(self, queue: str, gpu_type: str) -> float:
        return self.queues[queue].nominal_gpus.get(gpu_type, 0.0)

    def check(self, queue: str, gpu_type: str, gpus: float) -> QuotaVerdict:
        """May ``queue`` take ``gpus`` more GPUs of ``gpu_type``? Says whether that borrows,
        and if not allowed, exactly which limit stops it."""
        q = self.queues.get(queue)
        if q is None or gpus <= 0:
            return QuotaVerdict(True)
        used, nominal = self.used[(queue, gpu_type)], self.nominal(queue, gpu_type)
        if used + gpus <= nominal + EPS:
            return QuotaVerdict(True)
        head = (f"queue {queue} is at its nominal quota on {gpu_type} ({used:g}/{nominal:g} GPUs"
                f", this job needs {gpus:g})")
        if not q.cohort:
            return QuotaVerdict(False, reason=f"{head} and it belongs to no cohort to borrow from")
        over = used + gpus - nominal
        limit = q.borrowing_limit_gpus.get(gpu_type)
        if limit is not None and over > limit + EPS:
            return QuotaVerdict(False, reason=f"{head} and borrowing {over:g} would exceed its borrowing "
                                              f"limit of {limit:g} GPUs in cohort {q.cohort}")
        idle = self.cohort_nominal[(q.cohort, gpu_type)] - self.cohort_used[(q.cohort, gpu_type)]
        own_unused = max(0.0, nominal - used)
        lendable = max(0.0, idle - own_unused)
        if over > lendable + EPS:
            what = "nothing to lend" if lendable <= EPS else f"only {lendable:g} GPUs to lend"
            return QuotaVerdict(False, reason=f"{head} and the cohort {q.cohort} has {what} on {gpu_type}")
        return QuotaVerdict(True, borrowed=True)

    def within_nominal(self, queue: str, gpu_type: str, gpus: float) -> bool:
        """True when the job fits in its queue's own nominal quota (so it may reclaim)."""
        q = self.queues.get(queue)
        return q is not None and self.used[(queue, gpu_type)] + gpus <= self.nominal(queue, gpu_type) + EPS

    def charge(self, queue: str, gpu_type: str, gpus: float, sign: int = 1) -> None:
        self.used[(queue, gpu_type)] += sign * gpus
        q = self.queues.get(queue)
        if q is not None and q.cohort:
            self.cohort_used[(q.cohort, gpu_type)] += sign * gpus

    def cohort_of(self, queue: str) -> str:
        q = self.queues.get(queue)
        return q.cohort if q is not None else ""
