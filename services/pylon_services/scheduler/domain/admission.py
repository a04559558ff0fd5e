"""One scheduling pass's working state, and the admission machinery every policy shares.

A policy decides two things: the order in which pending jobs are considered and, for a job, the
order of GPU types to try (and whether to decline a slow type and wait). Everything else is the
same for all policies and lives here: quota checks (``quota.py``), gang placement
(``placement.py``), EASY backfill behind one reserved head, priority and reclaim preemption with a
minimal set of whole-job victims, and the explanation of every job left waiting.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pylon_services.scheduler.domain.explain import (
    ReleaseTimeline,
    capacity_reason,
    estimated_finish,
    job_rate,
)
from pylon_services.scheduler.domain.placement import FreeIndex, acceptable_types
from pylon_services.scheduler.domain.quota import QuotaLedger
from pylon_services.scheduler.domain.scheduling import (
    Admit,
    Decision,
    Demand,
    Explanation,
    PendingJob,
    Preempt,
    RunningJob,
    Snapshot,
)


@dataclass
class Pass:
    """Mutable state of one pass over a snapshot; discarded when the pass returns."""

    snap: Snapshot
    free: FreeIndex = field(init=False)
    quota: QuotaLedger = field(init=False)
    timeline: ReleaseTimeline = field(init=False)
    decision: Decision = field(default_factory=Decision)
    held: set[str] = field(default_factory=set)  # nodes promised to a job waiting on preemption
    reserved: frozenset[str] = frozenset()  # nodes reserved for the blocked head (backfill)
    shadow: float = 0.0  # when the head is expected to start
    head: str = ""
    head_tried: bool = False
    claimed_victims: set[str] = field(default_factory=set)
    tenant_gpus: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    waiting_in_queue: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    blocked_by_priority: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    fit_cache: dict[tuple[float, float, int, str, int], int] = field(default_factory=dict)
    version: int = 0  # bumped whenever free capacity changes (invalidates fit_cache)
    waiting_for: dict[str, str] = field(default_factory=dict)  # job -> faster type it chose to wait for
    no_victims: set[tuple] = field(default_factory=set)  # request shapes that found no victims
    _rates: dict[tuple[str, str, int], float | None] = field(default_factory=dict)
    memo: dict[Any, Any] = field(default_factory=dict)  # per-pass caches of policies, keyed by shape
    _finish: dict[str, float | None] = field(default_factory=dict)

    running_by_type: dict[str, list[RunningJob]] = field(default_factory=lambda: defaultdict(list))
    min_preemptible_priority: dict[str, float] = field(default_factory=dict)
    may_yield_or_lend: set[str] = field(default_factory=set)  # types with yielding/borrowed jobs

    def __post_init__(self) -> None:
        self.free = FreeIndex(self.snap.nodes)
        for r in self.snap.running:
            for t in dict.fromkeys(r.worker_gpu_types or (r.gpu_type,)):  # a split job is on each of its types
                self.running_by_type[t].append(r)
                if r.preemptible and not r.preempting:
                    old = self.min_preemptible_priority.get(t, float("inf"))
                    self.min_preemptible_priority[t] = min(old, r.priority)
                if r.preempting or r.borrowed:
                    self.may_yield_or_lend.add(t)
        self.quota = QuotaLedger(self.snap.queues, self.snap.running)
        self.timeline = ReleaseTimeline(self.snap.running, self.snap.throughput, self.snap.now)
        for r in self.snap.running:
            self.tenant_gpus[r.tenant] += r.demand.total_gpus

    def rate(self, job: PendingJob, gpu_type: str) -> float | None:
        """Whole-job steps/s on ``gpu_type`` (memoised for the pass: the table is hit a lot)."""
        key = (job.job_type, gpu_type, job.demand.workers)
        if key not in self._rates:
            self._rates[key] = job_rate(self.snap.throughput, job.job_type, gpu_type, job.demand.workers)
        return self._rates[key]

    def finish(self, r: RunningJob) -> float | None:
        """Estimated finish of a running job (memoised for the pass)."""
        if r.id not in self._finish:
            self._finish[r.id] = estimated_finish(r, self.snap.throughput, self.snap.now)
        return self._finish[r.id]


def consider(policy: object, job: PendingJob, p: Pass) -> None:
    """Admit ``job`` on the first acceptable GPU type where quota, placement and the policy agree;
    otherwise try preemption, reserve for the head, and explain why it waits."""
    tkey = ("types", job.demand.gpu_types, job.demand.gpus_per_worker <= 0)
    if tkey not in p.memo:
        p.memo[tkey] = acceptable_types(job.demand, p.free.types())
    types: list[str] = p.memo[tkey]
    blockers: list[str] = []
    capacity_blocked = False
    waits_on: list[str] = []  # types where only capacity (not quota) stands in the way
    over_quota: list[str] = []
    for t in policy.rank_types(job, types, p):  # type: ignore[attr-defined]
        verdict = p.quota.check(job.queue, t, job.demand.total_gpus)
        if not verdict.ok:
            blockers.append(verdict.reason)
            over_quota.append(t)
            continue
        declined = policy.decline(job, t, p)  # type: ignore[attr-defined]
        if declined:
            blockers.append(declined)
            waits_on.append(p.waiting_for.get(job.id, t))
            continue
        nodes = _place(job, t, p)
        if nodes is not None:
            _admit(job, t, nodes, verdict.borrowed, p)
            return
        capacity_blocked = True
        waits_on.append(t)
    if not job.gang and job.demand.workers > 1 and len(types) > 1 and place_split(policy, job, types, p):
        return
    if capacity_blocked:
        fit = max((_workers_that_fit(job, t, p) for t in types), default=0)
        fit_any = sum(_workers_that_fit(job, t, p) for t in types) if not job.gang else 0
        blockers.append(capacity_reason(job.demand, types, fit, job.gang, fit_any))
    if not types:
        blockers.append(f"no pool of an acceptable GPU type {list(job.demand.gpu_types)} is up")
    waiting = try_preempt(policy, job, types, p) if capacity_blocked else ""
    if not waiting and over_quota and getattr(policy, "preemption", True):
        waiting = preempt_within_queue(job, over_quota, p)
    if waiting:
        blockers.insert(0, waiting)
    elif capacity_blocked and not p.head_tried and getattr(policy, "backfill", True):
        p.head_tried = True  # EASY backfill: one reservation per pass, for the first blocked job
        _reserve_head(job, types, p)
    _explain(job, waits_on, blockers, p)


def _place(job: PendingJob, t: str, p: Pass) -> tuple[str, ...] | None:
    """Place behind the head's reservation; a job that ends before the head's expected start
    may use the reserved nodes too (EASY backfill)."""
    exclude = frozenset(p.held) | p.reserved if p.head != job.id else frozenset(p.held)
    nodes = p.free.place(job.demand, t, exclude)
    if nodes is None and p.reserved and p.head != job.id:
        rate = p.rate(job, t)
        if rate and p.snap.now + job.remaining_work / rate <= p.shadow:
            nodes = p.free.place(job.demand, t, frozenset(p.held))
    return nodes


def place_split(policy: object, job: PendingJob, types: list[str], p: Pass) -> bool:
    """gang=false, when no single GPU type holds every worker: place the workers one by one,
    each on the first type (in the policy's order) where its GPUs pass the queue's quota for
    that type, the policy does not decline the type, and a node has room. All workers or none:
    the job's quota is reserved as a unit (Kueue's model); only the start on Ray is per worker.
    Admits and returns True when every worker found a place."""
    d = job.demand
    one = Demand(1, d.gpus_per_worker, d.cpus_per_worker, d.memory_bytes_per_worker, d.gpu_types)
    exclude = frozenset(p.held) | p.reserved if p.head != job.id else frozenset(p.held)
    ranked = [t for t in policy.rank_types(job, types, p)  # type: ignore[attr-defined]
              if not policy.decline(job, t, p)]  # type: ignore[attr-defined]
    taken: list[tuple[str, str]] = []
    per_type: dict[str, float] = defaultdict(float)
    borrowed = False
    for _ in range(d.workers):
        for t in ranked:
            verdict = p.quota.check(job.queue, t, per_type[t] + d.gpus_per_worker)
            if not verdict.ok:
                continue
            nodes = p.free.place(one, t, exclude)
            if nodes is not None:
                taken.append((t, nodes[0]))
                per_type[t] += d.gpus_per_worker
                borrowed = borrowed or verdict.borrowed
                break
        else:
            p.free.release([node for _, node in taken], one)
            return False
    worker_types = tuple(t for t, _ in taken)
    split = len(set(worker_types)) > 1
    p.decision.admits.append(Admit(job.id, worker_types[0], tuple(n for _, n in taken), borrowed,
                                   worker_gpu_types=worker_types if split else ()))
    for t, gpus in per_type.items():
        p.quota.charge(job.queue, t, gpus)
    p.tenant_gpus[job.tenant] += d.total_gpus
    p.version += 1
    return True


def _admit(job: PendingJob, t: str, nodes: tuple[str, ...], borrowed: bool, p: Pass) -> None:
    p.decision.admits.append(Admit(job.id, t, nodes, borrowed))
    p.quota.charge(job.queue, t, job.demand.total_gpus)
    p.tenant_gpus[job.tenant] += job.demand.total_gpus
    p.version += 1


def _workers_that_fit(job: PendingJob, t: str, p: Pass) -> int:
    d = job.demand
    key = (d.gpus_per_worker, d.cpus_per_worker, d.memory_bytes_per_worker, t, p.version)
    if key not in p.fit_cache:
        p.fit_cache[key] = p.free.workers_that_fit(d, t)
    return p.fit_cache[key]


def _subset(p: Pass, t: str) -> FreeIndex:
    """A scratch copy of the free capacity of one GPU type (for what-if placement)."""
    return p.free.scratch(t)


def _fits_after(job: PendingJob, t: str, release: list[RunningJob], p: Pass) -> tuple[str, ...] | None:
    scratch = _subset(p, t)
    for r in release:
        scratch.release(r.nodes, r.demand)
    return scratch.place(job.demand, t, frozenset(p.held))


def try_preempt(policy: object, job: PendingJob, types: list[str], p: Pass) -> str:
    """Make room for a blocked job: first wait for jobs already yielding, else pick the fewest
    whole-job victims (borrowers in its cohort when it reclaims its nominal quota, then
    lower-priority preemptible jobs). Returns the explanation line, or "" when nothing helps."""
    if not getattr(policy, "preemption", True):
        return ""
    for t in types:
        if not p.quota.check(job.queue, t, job.demand.total_gpus).ok:
            continue
        if t not in p.may_yield_or_lend and job.priority <= p.min_preemptible_priority.get(t, float("inf")):
            continue  # fast path: nothing on this type could ever make room for this job
        d = job.demand
        shape = (t, job.priority, job.queue, d.workers, d.gpus_per_worker, d.cpus_per_worker, d.memory_bytes_per_worker)
        if shape in p.no_victims:
            continue  # an identical request already found no victims this pass; claims only shrink the pool
        key = ("unclaimed", t, len(p.claimed_victims))
        if key not in p.memo:  # claims only grow, so their count identifies the filtered list
            p.memo[key] = [r for r in p.running_by_type[t] if r.id not in p.claimed_victims]
        on_type: list[RunningJob] = p.memo[key]
        yielding = [r for r in on_type if r.preempting]
        if yielding and (nodes := _fits_after(job, t, yielding, p)) is not None:
            _claim(job, yielding, nodes, p)
            return f"waiting for {len(yielding)} preempted job(s) on {t} to checkpoint and yield"
        candidates = _victim_candidates(job, t, on_type, p)
        reachable = p.free.free_gpus.get(t, 0.0) + sum(r.demand.total_gpus for r, _ in candidates + [
            (y, "") for y in yielding])
        victims = _minimal_victims(job, t, yielding, candidates, p) if reachable >= d.total_gpus else None
        if victims is None:
            p.no_victims.add(shape)
            continue
        nodes = _fits_after(job, t, yielding + [v for v, _ in victims], p)
        _claim(job, yielding + [v for v, _ in victims], nodes or (), p)
        for v, reason in victims:
            p.decision.preempts.append(Preempt(v.id, job.id, reason))
        kinds = sorted({reason for _, reason in victims})
        return f"preempting {len(victims)} job(s) on {t} ({', '.join(kinds)}) to make room"
    return ""


def preempt_within_queue(job: PendingJob, over_quota: list[str], p: Pass) -> str:
    """A job stopped by its own queue's quota may preempt lower-priority preemptible jobs of the
    same queue (Kueue's within-ClusterQueue preemption): the fewest whole jobs after which both
    the quota and the placement fit."""
    if "by_queue" not in p.memo:
        by_queue: dict[tuple[str, str], list[RunningJob]] = defaultdict(list)
        for r in sorted(p.snap.running, key=lambda r: (r.priority, -r.start_time)):
            if r.preemptible and not r.preempting:
                by_queue[(r.queue, r.gpu_type)].append(r)
        p.memo["by_queue"] = by_queue
    d = job.demand
    for t in over_quota:
        shape = ("in-queue", t, job.queue, job.priority, d.workers, d.gpus_per_worker, d.cpus_per_worker)
        if shape in p.no_victims:
            continue
        same = [r for r in p.memo["by_queue"].get((job.queue, t), ())
                if r.priority < job.priority and r.id not in p.claimed_victims]
        chosen: list[RunningJob] = []
        for r in same:
            chosen.append(r)
            if _fits_without(job, t, chosen, p):
                break
        else:
            p.no_victims.add(shape)
            continue
        for r in reversed(chosen[:-1] if len(chosen) > 1 else []):
            rest = [v for v in chosen if v is not r]
            if _fits_without(job, t, rest, p):
                chosen = rest
        _claim(job, chosen, _fits_after(job, t, chosen, p) or (), p)
        p.decision.preempts.extend(Preempt(v.id, job.id, "priority") for v in chosen)
        return f"preempting {len(chosen)} lower-priority job(s) of queue {job.queue} on {t} to fit its quota"
    return ""


def _fits_without(job: PendingJob, t: str, victims: list[RunningJob], p: Pass) -> bool:
    """Would the job pass its quota and be placed on ``t`` once ``victims`` are gone?"""
    freed = sum(v.demand.total_gpus for v in victims)
    p.quota.charge(job.queue, t, freed, sign=-1)
    try:
        if not p.quota.check(job.queue, t, job.demand.total_gpus).ok:
            return False
    finally:
        p.quota.charge(job.queue, t, freed)
    return _fits_after(job, t, victims, p) is not None


def _victim_candidates(job: PendingJob, t: str, on_type: list[RunningJob], p: Pass) -> list[tuple[RunningJob, str]]:
    """Borrowed jobs of other queues in the job's cohort (if it reclaims its own nominal quota),
    then lower-priority preemptible jobs, lowest priority and most recently started first."""
    out: list[tuple[RunningJob, str]] = []
    cohort = p.quota.cohort_of(job.queue)
    if cohort and p.quota.within_nominal(job.queue, t, job.demand.total_gpus):
        out += [(r, "reclaim") for r in on_type if r.borrowed and r.preemptible and not r.preempting
                and r.queue != job.queue and p.quota.cohort_of(r.queue) == cohort]
        out.sort(key=lambda c: (c[0].priority, -c[0].start_time))
    seen = {r.id for r, _ in out}
    lower = [r for r in on_type if r.preemptible and not r.preempting and r.priority < job.priority
             and r.id not in seen]
    lower.sort(key=lambda r: (r.priority, -r.start_time))
    return out + [(r, "priority") for r in lower]


def _minimal_victims(job: PendingJob, t: str, yielding: list[RunningJob],
                     candidates: list[tuple[RunningJob, str]], p: Pass) -> list[tuple[RunningJob, str]] | None:
    """Add candidates in order until the job fits, then drop any victim it fits without."""
    chosen: list[tuple[RunningJob, str]] = []
    scratch = _subset(p, t)
    for r in yielding:
        scratch.release(r.nodes, r.demand)
    for c in candidates:
        chosen.append(c)
        scratch.release(c[0].nodes, c[0].demand)
        if scratch.free_gpus.get(t, 0.0) + 1e-9 < job.demand.total_gpus:
            continue
        if scratch.place(job.demand, t, frozenset(p.held)) is not None:
            break
    else:
        return None
    for c in reversed(chosen[:-1] if len(chosen) > 1 else []):
        rest = [v for v in chosen if v is not c]
        if _fits_after(job, t, yielding + [v for v, _ in rest], p) is not None:
            chosen = rest
    return chosen


def _claim(job: PendingJob, victims: list[RunningJob], nodes: tuple[str, ...], p: Pass) -> None:
    p.claimed_victims.update(v.id for v in victims)
    p.held.update(nodes)
    p.held.update(n for v in victims for n in v.nodes)


def _reserve_head(job: PendingJob, types: list[str], p: Pass) -> None:
    """Reserve, for the first job blocked on capacity, the nodes it gets when enough running
    jobs finish (in estimated finish order); backfill may not delay it."""
    best: tuple[float, tuple[str, ...]] | None = None
    for t in types:
        if not p.quota.check(job.queue, t, job.demand.total_gpus).ok:
            continue
        ending = sorted((e, r.id, r) for r in p.running_by_type[t]
                        if (e := p.finish(r)) is not None)
        scratch = _subset(p, t)
        for end, _, r in ending:
            if best is not None and end >= best[0]:
                break
            scratch.release(r.nodes, r.demand)
            if scratch.free_gpus.get(t, 0.0) + 1e-9 < job.demand.total_gpus:
                continue
            nodes = scratch.place(job.demand, t, frozenset(p.held))
            if nodes is not None:
                best = (end, nodes)
                break
    if best is not None:
        p.head, p.shadow, p.reserved = job.id, best[0], frozenset(best[1])


def _explain(job: PendingJob, waits_on: list[str], blockers: list[str], p: Pass) -> None:
    p.waiting_in_queue[job.queue] += 1
    ahead = sum(n for prio, n in p.blocked_by_priority.items() if prio > job.priority)
    p.blocked_by_priority[job.priority] += 1
    if ahead:
        blockers.append(f"{ahead} higher-priority job(s) ahead")
    if p.head == job.id:
        blockers.append("nodes are reserved for it: smaller jobs may only backfill if they end first")
    elif p.head:
        blockers.append(f"job {p.head} at the head of the line holds a reservation")
    est, best_t = 0.0, ""
    for t in dict.fromkeys(waits_on):
        e = p.timeline.estimate(t, job.demand.total_gpus, p.free.free_gpus.get(t, 0.0))
        if e and (not est or e < est):
            est, best_t = e, t
    if best_t:  # later jobs queue behind this one on that type
        p.timeline.estimate(best_t, job.demand.total_gpus, p.free.free_gpus.get(best_t, 0.0), claim=True)
    p.decision.explanations[job.id] = Explanation(
        job.id, blockers[0] if blockers else "waiting for capacity", p.waiting_in_queue[job.queue],
        tuple(blockers), est)
