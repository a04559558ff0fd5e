"""The contract between the scheduler's policies and whatever drives them.

A scheduling pass is a pure function ``Policy.schedule(Snapshot) -> Decision``. The live
controller builds the snapshot from Redis (ledger, queues, quotas, usage) and Ray (nodes), then
applies the decision (start placement groups, signal preemptions, store explanations). The
simulator builds the same snapshot from a trace and a declared cluster. Neither may reach into a
policy's internals: everything a policy needs is in the snapshot, everything it decides is in
the decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Demand:
    """What one job asks for: ``workers`` x (GPUs, CPUs, memory) on one of ``gpu_types``.

    ``gpu_types`` is in order of preference; empty means any GPU type (or a CPU-only job when
    ``gpus_per_worker`` is 0).
    """

    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    memory_bytes_per_worker: int = 0
    gpu_types: tuple[str, ...] = ()
    # Added (optional): False for a gang=false job, whose workers may span GPU types; only
    # ``check_satisfiable`` reads it (a pass reads ``PendingJob.gang``).
    gang: bool = True

    @property
    def total_gpus(self) -> float:
        return self.workers * self.gpus_per_worker


@dataclass(frozen=True)
class Node:
    """One node of the cluster as the pass sees it (free = capacity minus running allocations)."""

    id: str
    gpu_type: str  # "cpu" for nodes without accelerators
    gpus_total: float
    gpus_free: float
    cpus_free: float
    memory_free_bytes: int = 1 << 62
    healthy: bool = True
    cpus_total: float = 0.0  # added for check_satisfiable; 0 = unknown (never limits)


@dataclass(frozen=True)
class QueueQuota:
    """A tenant's queue (Kueue's LocalQueue + ClusterQueue in one): nominal GPUs per GPU type,
    the cohort it may borrow from, how much it may borrow per type, and its fair-share weight."""

    name: str  # "tenants/{t}/queues/{q}"
    tenant: str
    nominal_gpus: dict[str, float] = field(default_factory=dict)
    cohort: str = ""
    borrowing_limit_gpus: dict[str, float] = field(default_factory=dict)  # absent type = unlimited
    weight: float = 1.0


@dataclass(frozen=True)
class PendingJob:
    """A job waiting for admission. ``job_type`` keys the throughput table; ``remaining_work``
    is in steps (what is left after earlier attempts and checkpoints)."""

    id: str
    tenant: str
    queue: str
    priority: int
    submit_time: float
    demand: Demand
    job_type: str = ""
    preemptible: bool = True
    gang: bool = True
    remaining_work: float = 0.0


@dataclass(frozen=True)
class RunningJob:
    """A job holding resources (ADMITTED, STARTING, RUNNING or PREEMPTING)."""

    id: str
    tenant: str
    queue: str
    priority: int
    gpu_type: str
    demand: Demand
    nodes: tuple[str, ...]  # one node id per worker
    start_time: float
    job_type: str = ""
    preemptible: bool = True
    borrowed: bool = False  # admitted on quota borrowed from its cohort
    preempting: bool = False
    remaining_work: float = 0.0
    # Added (optional): gang=false jobs split over GPU types: the GPU type of each worker (same
    # order as ``nodes``); empty when every worker runs on ``gpu_type``.
    worker_gpu_types: tuple[str, ...] = ()
    # Added (optional): when ``remaining_work`` was measured; 0 means at ``start_time``. The
    # estimated finish is ``(progress_time or start_time) + remaining_work / job rate``.
    progress_time: float = 0.0


class ThroughputTable(Protocol):
    """Steps per second of a job type on one worker of a GPU type (None when unknown)."""

    def rate(self, job_type: str, gpu_type: str) -> float | None: ...


@dataclass(frozen=True)
class Snapshot:
    """Everything a pass may look at."""

    now: float
    nodes: tuple[Node, ...]
    pending: tuple[PendingJob, ...]  # in submit order
    running: tuple[RunningJob, ...]
    queues: dict[str, QueueQuota]
    usage_gpu_seconds: dict[str, float]  # tenant -> decayed GPU-seconds used (fair share)
    throughput: ThroughputTable


@dataclass(frozen=True)
class Admit:
    """Start ``job_id`` on ``gpu_type``; ``nodes`` has one node id per worker (a gang is
    admitted whole or not at all). A gang=false job may be split over GPU types: then
    ``worker_gpu_types`` names each worker's type (same order as ``nodes``) and ``gpu_type`` is
    the first worker's."""

    job_id: str
    gpu_type: str
    nodes: tuple[str, ...]
    borrowed: bool = False
    worker_gpu_types: tuple[str, ...] = ()

    def types(self) -> tuple[str, ...]:
        """The GPU type of each worker."""
        return self.worker_gpu_types or (self.gpu_type,) * len(self.nodes)


@dataclass(frozen=True)
class Preempt:
    """Ask ``job_id`` to checkpoint and yield, to make room for ``for_job``."""

    job_id: str
    for_job: str
    reason: str  # "priority" | "reclaim" | "fair-share" | "migrate" (gavel: for_job == job_id, move it to a faster type)


@dataclass(frozen=True)
class Explanation:
    """Why a job still waits, for ExplainJob. ``blocking`` lists what stands in the way in
    words a user can act on; ``estimated_start`` is a unix time or 0 when unknown."""

    job_id: str
    reason: str
    position: int  # 1-based position in its queue
    blocking: tuple[str, ...] = ()
    estimated_start: float = 0.0


@dataclass
class Decision:
    admits: list[Admit] = field(default_factory=list)
    preempts: list[Preempt] = field(default_factory=list)
    explanations: dict[str, Explanation] = field(default_factory=dict)


class Policy(Protocol):
    """A scheduling policy. Implementations live in ``domain/`` and are pure."""

    name: str

    def schedule(self, snap: Snapshot) -> Decision: ...
