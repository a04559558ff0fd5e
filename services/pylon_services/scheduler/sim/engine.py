"""The discrete-event simulator: the scheduler's real ``Policy`` objects over a trace.

Events (arrivals, completions, preempted jobs yielding) sit in a heap, so each costs O(log n).
All events of one timestamp are applied before the policy runs once, and the policy runs only
when something changed (an arrival, a completion, a yield). A job runs at its per-worker rate on
the GPU type it was admitted on (times its workers) and completes when its remaining work hits
zero. A preempted job yields after ``preempt_grace_s`` and keeps the progress of its last
checkpoint (``checkpoint_interval_s``; 0 = it checkpoints on the preemption signal).
"""

from __future__ import annotations

import heapq
import math
from array import array
from dataclasses import dataclass, field, replace

from pylon_services.scheduler.domain.placement import check_satisfiable
from pylon_services.scheduler.domain.scheduling import (
    Decision,
    Demand,
    Node,
    PendingJob,
    Policy,
    QueueQuota,
    RunningJob,
    Snapshot,
)
from pylon_services.scheduler.domain.throughput import ThroughputTable
from pylon_services.scheduler.sim.traces import TraceJob

ARRIVAL, COMPLETION, YIELD = 0, 1, 2


class SimulationError(RuntimeError):
    """The simulation cannot go on (a job with no known throughput, a stuck queue)."""


@dataclass
class Outcome:
    """What a run produced: per-job times, and the time series the plot draws."""

    arrival: dict[str, float] = field(default_factory=dict)
    finish: dict[str, float] = field(default_factory=dict)
    ideal: dict[str, float] = field(default_factory=dict)  # run time alone on its best type
    busy_gpu_seconds: float = 0.0
    total_gpus: float = 0.0
    preemptions: int = 0
    passes: int = 0
    times: array = field(default_factory=lambda: array("d"))
    queue_len: array = field(default_factory=lambda: array("d"))
    used_gpus: array = field(default_factory=lambda: array("d"))
    unfinished: int = 0
    rejected: dict[str, str] = field(default_factory=dict)  # job -> why no node can ever hold it


@dataclass
class _Run:
    job: RunningJob
    rate: float
    token: int


class Simulator:
    """Replay ``jobs`` on ``nodes`` under ``policy`` (the same object the live service uses)."""

    def __init__(self, policy: Policy, nodes: list[Node], table: ThroughputTable, jobs: list[TraceJob], *,
                 queues: dict[str, QueueQuota] | None = None, checkpoint_interval_s: float = 0.0,
                 preempt_grace_s: float = 0.0, max_passes: int | None = None) -> None:
        self.policy, self.table = policy, table
        self.nodes = {n.id: n for n in nodes}
        self.queues = queues or {}
        self.checkpoint_interval_s, self.preempt_grace_s = checkpoint_interval_s, preempt_grace_s
        self.max_passes = max_passes
        self.trace = {j.id: j for j in jobs}
        self.pending: dict[str, PendingJob] = {}
        self.running: dict[str, _Run] = {}
        self.usage: dict[str, float] = {}
        self.tenant_gpus: dict[str, float] = {}
        self.heap: list[tuple[float, int, int, str, int]] = []
        self.seq = 0
        self.tokens: dict[str, int] = {}
        self.out = Outcome(total_gpus=sum(n.gpus_total for n in nodes))
        types = sorted({n.gpu_type for n in nodes})
        for j in jobs:
            if not any(table.rate(j.job_type, t) for t in types) and " x" in j.job_type:
                # No profile at this scale (Gavel has 1/2/4/8): assume linear scaling per worker.
                j = replace(j, job_type=j.job_type.rsplit(" x", 1)[0])
            # A type with no profile, or absent from the cluster, cannot run the job.
            runs_on = tuple(t for t in (j.gpu_types or types) if t in types and table.rate(j.job_type, t))
            if runs_on != tuple(j.gpu_types or types):
                j = replace(j, gpu_types=runs_on or ("none",))
            self.trace[j.id] = j
            why = check_satisfiable(Demand(j.workers, j.gpus_per_worker, 0.0, 0, j.gpu_types), nodes)
            if why:  # what the live service rejects at submit never enters the queue
                self.out.rejected[j.id] = why
                continue
            self._push(j.arrival, ARRIVAL, j.id, 0)
            best = max((r for t in types if (not j.gpu_types or t in j.gpu_types)
                        and (r := table.rate(j.job_type, t))), default=0.0)
            self.out.ideal[j.id] = j.total_steps / (best * j.workers) if best else math.inf

    def _push(self, at: float, kind: int, job_id: str, token: int) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, job_id, token))

    def run(self) -> Outcome:
        """Process every event; returns the outcome (jobs left waiting count as unfinished)."""
        now = 0.0
        while self.heap:
            at = self.heap[0][0]
            self._advance(now, at)
            now = at
            changed = False
            while self.heap and self.heap[0][0] == at:
                _, _, kind, job_id, token = heapq.heappop(self.heap)
                changed |= self._handle(kind, job_id, token, now)
            if changed and self.pending:
                self._pass(now)
            self._sample(now)
            if self.max_passes is not None and self.out.passes >= self.max_passes:
                break
        self.out.unfinished = len(self.pending) + len(self.running)
        return self.out

    def _advance(self, old: float, new: float) -> None:
        dt = new - old
        if dt <= 0:
            return
        for tenant, gpus in self.tenant_gpus.items():
            if gpus:
                self.usage[tenant] = self.usage.get(tenant, 0.0) + gpus * dt
                self.out.busy_gpu_seconds += gpus * dt

    def _handle(self, kind: int, job_id: str, token: int, now: float) -> bool:
        if kind == ARRIVAL:
            j = self.trace[job_id]
            demand = Demand(j.workers, j.gpus_per_worker, 0.0, 0, j.gpu_types)
            self.out.arrival[job_id] = now
            self.pending[job_id] = PendingJob(job_id, j.tenant, f"tenants/{j.tenant}/queues/default", j.priority,
                                              now, demand, j.job_type, True, True, j.total_steps)
            return True
        run = self.running.get(job_id)
        if run is None or run.token != token:
            return False  # a completion superseded by a preemption, or a yield after completion
        if kind == COMPLETION:
            self._release(run)
            self.out.finish[job_id] = now
            return True
        self._release(run)  # YIELD: requeue with the progress of the last checkpoint
        r = run.job
        ran = now - r.start_time
        kept = ran if self.checkpoint_interval_s <= 0 else math.floor(ran / self.checkpoint_interval_s) * \
            self.checkpoint_interval_s
        remaining = max(r.remaining_work - kept * run.rate, 1e-9)
        j = self.trace[job_id]
        self.pending[job_id] = PendingJob(job_id, r.tenant, r.queue, r.priority, self.out.arrival[job_id],
                                          r.demand, r.job_type, True, True, remaining)
        self.out.preemptions += 1
        return True

    def _release(self, run: _Run) -> None:
        r = run.job
        del self.running[r.id]
        self.tenant_gpus[r.tenant] -= r.demand.total_gpus
        for node_id in r.nodes:
            n = self.nodes[node_id]
            self.nodes[node_id] = replace(n, gpus_free=n.gpus_free + r.demand.gpus_per_worker)

    def _pass(self, now: float) -> None:
        snap = Snapshot(now, tuple(self.nodes.values()), tuple(self.pending.values()),
                        tuple(r.job for r in self.running.values()), self.queues, dict(self.usage), self.table)
        decision: Decision = self.policy.schedule(snap)
        self.out.passes += 1
        for a in decision.admits:
            self._start(a.job_id, a.gpu_type, a.nodes, a.borrowed, now)
        for p in decision.preempts:
            run = self.running.get(p.job_id)
            if run is not None and not run.job.preempting:
                run.job = replace(run.job, preempting=True)
                self._push(now + self.preempt_grace_s, YIELD, p.job_id, run.token)

    def _start(self, job_id: str, gpu_type: str, nodes: tuple[str, ...], borrowed: bool, now: float) -> None:
        job = self.pending.pop(job_id)
        per_worker = self.table.rate(job.job_type, gpu_type)
        if not per_worker:
            raise SimulationError(f"no throughput for job type {job.job_type!r} on {gpu_type}")
        rate = per_worker * job.demand.workers
        for node_id in nodes:
            n = self.nodes[node_id]
            self.nodes[node_id] = replace(n, gpus_free=n.gpus_free - job.demand.gpus_per_worker)
        token = self.tokens.get(job_id, 0) + 1
        self.tokens[job_id] = token
        running = RunningJob(job_id, job.tenant, job.queue, job.priority, gpu_type, job.demand, nodes, now,
                             job.job_type, job.preemptible, borrowed, False, job.remaining_work)
        self.running[job_id] = _Run(running, rate, token)
        self.tenant_gpus[job.tenant] = self.tenant_gpus.get(job.tenant, 0.0) + job.demand.total_gpus
        self._push(now + job.remaining_work / rate, COMPLETION, job_id, token)

    def _sample(self, now: float) -> None:
        self.out.times.append(now)
        self.out.queue_len.append(len(self.pending))
        self.out.used_gpus.append(sum(self.tenant_gpus.values()))
