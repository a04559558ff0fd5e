"""Admission policy: which pending jobs start now, and on which GPU type.

Pure function over a snapshot, so a simulator can drive it unchanged. This is the FIFO
baseline (strict order, no backfill past a blocked head); the heterogeneity-aware and
fair-share policies plug in behind the same signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from pylon_services.scheduler.domain.job import Job


@dataclass
class Free:
    """Free capacity of one pool (GPU type; 'cpu' for nodes without GPUs)."""

    gpus: float
    cpus: float


def demand(job: Job) -> tuple[float, float]:
    """(GPUs, CPUs) the whole gang needs."""
    res = job.spec.get("resources", {})
    workers = job.spec.get("workers", 1)
    return workers * float(res.get("gpus", 0)), workers * float(res.get("cpus", 1) or 1)


def fifo_admit(pending: list[Job], free: dict[str, Free]) -> list[tuple[Job, str]]:
    """Admit jobs in submit order while they fit; stop at the first that does not (no
    overtaking, so the head of the queue is never starved)."""
    out: list[tuple[Job, str]] = []
    for job in pending:
        gpus, cpus = demand(job)
        prefs = list(job.spec.get("resources", {}).get("gpu_types", [])) or sorted(free)
        if gpus == 0:
            prefs = sorted(free, key=lambda p: (p != "cpu", p))  # CPU jobs prefer CPU nodes
        pool = next((p for p in prefs if p in free and free[p].gpus >= gpus and free[p].cpus >= cpus), None)
        if pool is None:
            break
        free[pool].gpus -= gpus
        free[pool].cpus -= cpus
        out.append((job, pool))
    return out
