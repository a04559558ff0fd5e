"""The cluster as the executor reports it, and the policy's ``Snapshot`` built from it and the
ledger's jobs.

Free capacity per node is the node's total minus what the ledger's active jobs hold there, not
the executor's own "available" figure: Ray only counts a placement group once it is created, so a
job admitted a moment ago would look free and be handed out twice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pylon_services.scheduler.domain.autoscale import DeclaredPool, with_declared
from pylon_services.scheduler.domain.job import Job, JobState
from pylon_services.scheduler.domain.scheduling import Node, PendingJob, QueueQuota, RunningJob, Snapshot, ThroughputTable


@dataclass(frozen=True)
class ClusterNode:
    """One node with its totals, as the executor (Ray) reports it."""

    id: str
    gpu_type: str  # "cpu" for nodes without accelerators
    gpus: float
    cpus: float
    memory: float
    alive: bool


@dataclass(frozen=True)
class ClusterView:
    """What the leader last saw of the cluster, published for the API (submit checks,
    GetCluster): the nodes, the declared pools that may grow, and when it was seen."""

    nodes: tuple[ClusterNode, ...]
    pools: tuple[DeclaredPool, ...]
    seen_at: float

    def submit_nodes(self) -> tuple[Node, ...]:
        """Every alive node as if empty, plus the nodes declared pools may still add: what a
        job could ever get (``placement.check_satisfiable``)."""
        return with_declared(free_nodes(self.nodes, []), self.pools)

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": [asdict(n) for n in self.nodes], "pools": [asdict(p) for p in self.pools],
                "seen_at": self.seen_at}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClusterView:
        return cls(tuple(ClusterNode(**n) for n in d.get("nodes", ())),
                   tuple(DeclaredPool(**p) for p in d.get("pools", ())), float(d.get("seen_at", 0.0)))


def pending_of(job: Job) -> PendingJob:
    s = job.spec
    return PendingJob(id=job.key, tenant=job.tenant, queue=job.queue, priority=job.priority,
                      submit_time=job.queued_at or job.create_time, demand=s.demand(),
                      job_type=s.effective_job_type, preemptible=s.preemptible, gang=job.gang,
                      remaining_work=remaining_work(job))


def running_of(job: Job, progress_time: float) -> RunningJob:
    s = job.spec
    return RunningJob(id=job.key, tenant=job.tenant, queue=job.queue, priority=job.priority, gpu_type=job.gpu_type,
                      demand=s.demand(), nodes=tuple(job.nodes), start_time=job.admit_time,
                      job_type=s.effective_job_type, preemptible=s.preemptible, borrowed=job.borrowed,
                      preempting=job.state == JobState.PREEMPTING, remaining_work=remaining_work(job),
                      progress_time=progress_time, worker_gpu_types=tuple(job.worker_gpu_types))


def remaining_work(job: Job) -> float:
    total = job.spec.total_steps
    return float(max(0, total - job.step)) if total else 0.0


def free_nodes(nodes: Iterable[ClusterNode], holding: Sequence[Job]) -> tuple[Node, ...]:
    """Alive nodes with the ledger's allocations subtracted."""
    used_g: dict[str, float] = defaultdict(float)
    used_c: dict[str, float] = defaultdict(float)
    used_m: dict[str, float] = defaultdict(float)
    for job in holding:
        r = job.spec.resources
        for node_id in job.nodes:
            used_g[node_id] += r.gpus
            used_c[node_id] += r.cpus
            used_m[node_id] += r.memory_bytes
    out = []
    for n in nodes:
        if not n.alive:
            continue
        mem = int(n.memory - used_m[n.id]) if n.memory else 1 << 62
        out.append(Node(id=n.id, gpu_type=n.gpu_type, gpus_total=n.gpus, gpus_free=max(0.0, n.gpus - used_g[n.id]),
                        cpus_free=max(0.0, n.cpus - used_c[n.id]), memory_free_bytes=mem, cpus_total=n.cpus))
    return tuple(out)


def gpus_held(active: Iterable[Job]) -> dict[str, float]:
    """GPUs each tenant's holding jobs hold now (fair-share usage accrues on these)."""
    held: dict[str, float] = defaultdict(float)
    for j in active:
        if not j.state.terminal:
            held[j.tenant] += j.workers * j.spec.resources.gpus
    return dict(held)


def build_snapshot(now: float, nodes: Iterable[ClusterNode], pending: Sequence[PendingJob], active: Sequence[Job],
                   queues: dict[str, QueueQuota], usage: dict[str, float], table: ThroughputTable,
                   progress_times: Mapping[str, float]) -> Snapshot:
    """``pending`` in submit order (the leader's backlog keeps it so)."""
    holding = [j for j in active if not j.state.terminal]
    return Snapshot(now=now, nodes=free_nodes(nodes, holding), pending=tuple(pending),
                    running=tuple(running_of(j, progress_times.get(j.key, 0.0)) for j in holding),
                    queues=queues, usage_gpu_seconds=usage, throughput=table)
