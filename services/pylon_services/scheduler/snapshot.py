"""Build the policy's ``Snapshot`` from the ledger's jobs and Ray's nodes.

Free capacity per node is the node's total minus what the ledger's active jobs hold there, not
Ray's own "available" figure: Ray only counts a placement group once it is created, so a job
admitted a moment ago would look free and be handed out twice.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pylon_services.scheduler.domain.job import Job, JobState
from pylon_services.scheduler.domain.scheduling import (
    Demand,
    Node,
    PendingJob,
    QueueQuota,
    RunningJob,
    Snapshot,
    ThroughputTable,
)
from pylon_services.scheduler.store.ray_exec import RayNode


def demand_of(spec: dict[str, Any]) -> Demand:
    res = spec.get("resources", {})
    types = tuple(t for t in res.get("gpu_types", []) if t)
    return Demand(workers=int(spec.get("workers", 1) or 1), gpus_per_worker=float(res.get("gpus", 0) or 0),
                  cpus_per_worker=float(res.get("cpus", 1) or 1),
                  memory_bytes_per_worker=int(res.get("memory_bytes", 0) or 0), gpu_types=types,
                  gang=bool(spec.get("gang", True)))


def job_type_of(job: Job) -> str:
    return job.spec.get("job_type") or next((k for k in ("trainer", "command", "engine") if job.spec.get(k)), "")


def remaining_work(job: Job) -> float:
    total = int(job.spec.get("total_steps", 0) or 0)
    return float(max(0, total - job.step)) if total else 0.0


def pending_of(job: Job) -> PendingJob:
    return PendingJob(id=job.key, tenant=job.tenant, queue=job.queue, priority=job.priority,
                      submit_time=job.queued_at or job.create_time, demand=demand_of(job.spec),
                      job_type=job_type_of(job), preemptible=bool(job.spec.get("preemptible", False)),
                      gang=job.gang, remaining_work=remaining_work(job))


def running_of(job: Job, progress_time: float) -> RunningJob:
    return RunningJob(id=job.key, tenant=job.tenant, queue=job.queue, priority=job.priority, gpu_type=job.gpu_type,
                      demand=demand_of(job.spec), nodes=tuple(job.nodes), start_time=job.admit_time,
                      job_type=job_type_of(job), preemptible=bool(job.spec.get("preemptible", False)),
                      borrowed=job.borrowed, preempting=job.state == JobState.PREEMPTING,
                      remaining_work=remaining_work(job), progress_time=progress_time,
                      worker_gpu_types=tuple(job.worker_gpu_types))


def free_nodes(nodes: list[RayNode], holding: list[Job]) -> tuple[Node, ...]:
    """Alive nodes with the ledger's allocations subtracted."""
    used_g: dict[str, float] = defaultdict(float)
    used_c: dict[str, float] = defaultdict(float)
    used_m: dict[str, float] = defaultdict(float)
    for job in holding:
        d = demand_of(job.spec)
        for node_id in job.nodes:
            used_g[node_id] += d.gpus_per_worker
            used_c[node_id] += d.cpus_per_worker
            used_m[node_id] += d.memory_bytes_per_worker
    out = []
    for n in nodes:
        if not n.alive:
            continue
        mem = int(n.memory - used_m[n.id]) if n.memory else 1 << 62
        out.append(Node(id=n.id, gpu_type=n.gpu_type, gpus_total=n.gpus, gpus_free=max(0.0, n.gpus - used_g[n.id]),
                        cpus_free=max(0.0, n.cpus - used_c[n.id]), memory_free_bytes=mem, cpus_total=n.cpus))
    return tuple(out)


def build_snapshot(now: float, nodes: list[RayNode], pending: list[Job], active: list[Job],
                   queues: dict[str, QueueQuota], usage: dict[str, float], table: ThroughputTable,
                   progress_times: dict[str, float]) -> Snapshot:
    holding = [j for j in active if not j.state.terminal]
    return Snapshot(now=now, nodes=free_nodes(nodes, holding),
                    pending=tuple(pending_of(j) for j in sorted(pending, key=lambda j: (j.queued_at, j.id))),
                    running=tuple(running_of(j, progress_times.get(j.key, 0.0)) for j in holding),
                    queues=queues, usage_gpu_seconds=usage, throughput=table)
