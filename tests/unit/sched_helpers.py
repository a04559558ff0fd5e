"""Builders for scheduler snapshots in unit tests (pure data, no services)."""

from __future__ import annotations

from pylon_services.scheduler.domain.scheduling import (
    Demand,
    Node,
    PendingJob,
    QueueQuota,
    RunningJob,
    Snapshot,
)
from pylon_services.scheduler.domain.throughput import ThroughputTable


def nodes(spec: dict[str, tuple[int, float]]) -> list[Node]:
    """``{"V100": (2, 4)}`` -> 2 nodes of 4 V100s each, all free."""
    out = []
    for t, (n, g) in spec.items():
        out += [Node(f"{t}-{i}", t, g, g, 64.0, cpus_total=64.0) for i in range(n)]
    return out


def pending(job_id: str, *, workers: int = 1, gpus: float = 1, types: tuple[str, ...] = (), tenant: str = "acme",
            queue: str = "", priority: int = 0, t: float = 0.0, job_type: str = "m", work: float = 100.0) -> PendingJob:
    return PendingJob(job_id, tenant, queue or f"tenants/{tenant}/queues/default", priority, t,
                      Demand(workers, gpus, 1.0, 0, types), job_type, True, True, work)


def running(job_id: str, gpu_type: str, node_ids: tuple[str, ...], *, gpus: float = 1, tenant: str = "acme",
            queue: str = "", priority: int = 0, start: float = 0.0, work: float = 100.0, borrowed: bool = False,
            preemptible: bool = True, preempting: bool = False, job_type: str = "m") -> RunningJob:
    return RunningJob(job_id, tenant, queue or f"tenants/{tenant}/queues/default", priority, gpu_type,
                      Demand(len(node_ids), gpus, 1.0, 0, ()), node_ids, start, job_type, preemptible,
                      borrowed, preempting, work)


def snapshot(node_list: list[Node], pend: list[PendingJob], run: list[RunningJob] = (), *,
             queues: dict[str, QueueQuota] | None = None, usage: dict[str, float] | None = None,
             table: ThroughputTable | None = None, now: float = 0.0) -> Snapshot:
    """Free capacity on nodes is reduced by the running jobs' allocations."""
    used: dict[str, float] = {}
    for r in run:
        for n in r.nodes:
            used[n] = used.get(n, 0.0) + r.demand.gpus_per_worker
    ns = tuple(Node(n.id, n.gpu_type, n.gpus_total, n.gpus_total - used.get(n.id, 0.0), n.cpus_free,
                    cpus_total=n.cpus_total) for n in node_list)
    return Snapshot(now, ns, tuple(pend), tuple(run), queues or {}, usage or {},
                    table or ThroughputTable(default_rate=1.0))
