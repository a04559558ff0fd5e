"""Scheduling policies behind the one ``Policy`` interface (``scheduling.py``).

All share quotas, gangs, backfill, preemption and explanations (``admission.py``); they differ in
the order jobs are considered and in how a GPU type is chosen:

- ``fifo``: priority, then submit order; GPU type ignored (the acceptable type with the most
  free GPUs). The baseline.
- ``fair-share``: priority, then tenants by weighted GPU usage (usage_gpu_seconds plus an hour of
  their current allocation, divided by the queue's weight), interleaved as jobs are admitted;
  GPU type ignored as in ``fifo``.
- ``gavel``: the fair-share order, but heterogeneity-aware: types ranked by the job's normalised
  throughput (rate on the type / its best rate), and a slow type is declined when waiting for a
  faster one is expected to finish the job sooner. An LP-free approximation of Gavel's max-min
  fairness over effective throughput: each admission gives the job with the least attained
  share the type where its normalised progress rate is highest, and slow GPUs end up with the
  jobs that lose least on them (see docs/design/scheduler.md).
- ``finish-time-fairness``: jobs ordered by their expected finish-time fairness ratio rho =
  (time already waited + isolated run time) / isolated run time, worst first (Themis' idea),
  with gavel's heterogeneity-aware type choice.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import defaultdict
from collections.abc import Iterator, Sequence

from pylon_services.scheduler.domain.admission import Pass, consider
from pylon_services.scheduler.domain.explain import job_rate
from pylon_services.scheduler.domain.placement import acceptable_types
from pylon_services.scheduler.domain.scheduling import Decision, PendingJob, Preempt, Snapshot

PROJECTION_S = 3600.0  # fair share counts a tenant's current allocation as this much future usage
MIGRATE_GAIN = 2.0  # a running job moves only to a type at least this much faster
MIGRATE_MIN_SAVING_S = 1800.0  # ... and only when that saves at least this much run time


class FifoPolicy:
    """Priority, then submit order; GPU type ignored. Backfill and preemption are shared."""

    name = "fifo"

    def __init__(self, *, backfill: bool = True, preemption: bool = True) -> None:
        self.backfill = backfill
        self.preemption = preemption

    def schedule(self, snap: Snapshot) -> Decision:
        return self.run(snap).decision

    def run(self, snap: Snapshot) -> Pass:
        """A whole pass over ``snap``; the returned pass can take later arrivals (``extend``)."""
        p = Pass(snap)
        for job in self.order(p):
            consider(self, job, p)
        return p

    def extend(self, p: Pass, arrivals: Sequence[PendingJob]) -> Decision:
        """Consider jobs submitted after the pass ``p`` ran, behind every job it considered and
        against what it left: free capacity, quota, the head's reservation, positions, the
        release timeline (at the pass's time). Returns the arrivals' decision (``p`` takes it
        in, so it can be extended again).

        For FIFO this is exactly what a whole pass over the old jobs and the arrivals decides,
        as long as no arrival has a higher priority than a job already waiting and nothing else
        changed (the controller checks both). Orders that can put an arrival ahead of older
        jobs (fair share by usage, gavel's regret window, finish-time fairness) treat it as
        arriving last until the next whole pass: the older jobs keep what the pass gave them.
        Running jobs are not migrated here (the whole pass found no move worth making)."""
        p.decision = Decision()
        p.snap = dataclasses.replace(p.snap, pending=tuple(arrivals))
        for job in self.order(p):
            consider(self, job, p)
        return p.decision

    def order(self, p: Pass) -> Iterator[PendingJob]:
        yield from sorted(p.snap.pending, key=lambda j: (-j.priority, j.submit_time, j.id))

    def rank_types(self, job: PendingJob, types: list[str], p: Pass) -> list[str]:
        """Type-agnostic: the job's stated preference if any, else the pool with most free GPUs."""
        if job.demand.gpu_types and "any" not in job.demand.gpu_types:
            return types
        return sorted(types, key=lambda t: (-p.free.free_gpus.get(t, 0.0), t))

    def decline(self, job: PendingJob, gpu_type: str, p: Pass) -> str:
        """Type-agnostic policies never decline a type that has room."""
        return ""


class FairSharePolicy(FifoPolicy):
    """Weighted fair share of GPU-hours across tenants; type-agnostic placement."""

    name = "fair-share"

    def order(self, p: Pass) -> Iterator[PendingJob]:
        by_prio: dict[int, dict[str, list[PendingJob]]] = defaultdict(lambda: defaultdict(list))
        for j in sorted(p.snap.pending, key=lambda j: (j.submit_time, j.id)):
            by_prio[j.priority][j.tenant].append(j)
        for prio in sorted(by_prio, reverse=True):
            yield from self._interleave(by_prio[prio], p)

    def _interleave(self, per_tenant: dict[str, list[PendingJob]], p: Pass) -> Iterator[PendingJob]:
        """Always serve the tenant with the lowest weighted usage; each job served counts as
        its GPUs of projected usage, so one pass interleaves tenants by weight (DRF-like)."""
        allocated: dict[str, float] = defaultdict(float)
        for r in p.snap.running:
            allocated[r.tenant] += r.demand.total_gpus
        heap = [(self._share(t, jobs[0], allocated, p), t) for t, jobs in per_tenant.items()]
        heapq.heapify(heap)
        cursor = dict.fromkeys(per_tenant, 0)
        while heap:
            _, tenant = heapq.heappop(heap)
            jobs = per_tenant[tenant]
            job = jobs[cursor[tenant]]
            yield job
            allocated[tenant] += job.demand.total_gpus
            cursor[tenant] += 1
            if cursor[tenant] < len(jobs):
                heapq.heappush(heap, (self._share(tenant, jobs[cursor[tenant]], allocated, p), tenant))

    @staticmethod
    def _share(tenant: str, job: PendingJob, allocated: dict[str, float], p: Pass) -> float:
        q = p.snap.queues.get(job.queue)
        weight = q.weight if q is not None and q.weight > 0 else 1.0
        used = p.snap.usage_gpu_seconds.get(tenant, 0.0) + PROJECTION_S * allocated[tenant]
        return used / weight


class GavelPolicy(FairSharePolicy):
    """Heterogeneity-aware max-min fairness on normalised (effective) throughput."""

    name = "gavel"

    def __init__(self, *, backfill: bool = True, preemption: bool = True, migration: bool = True,
                 lookahead: int = 64, regret_all_types: bool = True) -> None:
        super().__init__(backfill=backfill, preemption=preemption)
        self.migration = migration
        self.lookahead = lookahead
        self.regret_all_types = regret_all_types

    def run(self, snap: Snapshot) -> Pass:
        p = super().run(snap)
        if self.migration:
            migrate(p)
        return p

    def order(self, p: Pass) -> Iterator[PendingJob]:
        """The fair-share order, except for a window at its head: the jobs that fit in the free
        GPUs right now plus up to ``lookahead`` more of the same priority are served in order
        of regret, so the job that loses the most normalised throughput if denied its best type
        chooses first (Vogel's approximation of the max-min assignment). Jobs with little to
        lose are not starved: they take the slower types that high-regret jobs decline."""
        fair = list(self._fair_order(p))
        budget, window = sum(p.free.free_gpus.values()), 0
        while window < len(fair) and fair[window].demand.total_gpus <= budget:
            budget -= fair[window].demand.total_gpus
            window += 1
        if window:
            prio = fair[0].priority
            extra = 0
            while window < len(fair) and extra < self.lookahead and fair[window].priority == prio:
                window, extra = window + 1, extra + 1
        if window > 1:
            head = sorted(enumerate(fair[:window]), key=lambda ij: (-self._regret(ij[1], p), ij[0]))
            fair[:window] = [j for _, j in head]
        yield from fair

    def _fair_order(self, p: Pass) -> Iterator[PendingJob]:
        return FairSharePolicy.order(self, p)

    def _regret(self, job: PendingJob, p: Pass) -> float:
        rates = sorted(((p.rate(job, t) or 0.0) for t in acceptable_types(job.demand, p.free.types())
                        if self.regret_all_types or p.free.max_free(t) >= job.demand.gpus_per_worker), reverse=True)
        best = max((p.rate(job, t) or 0.0 for t in acceptable_types(job.demand, p.free.types())), default=0.0)
        if not rates or not best:
            return 0.0
        return (rates[0] - (rates[1] if len(rates) > 1 else 0.0)) / best

    @staticmethod
    def _best_type(job: PendingJob, p: Pass) -> tuple[str, float]:
        """The job's fastest acceptable type and its rate (memoised per request shape)."""
        key = ("best", job.job_type, job.demand.workers, job.demand.gpu_types, job.demand.gpus_per_worker)
        if key not in p.memo:
            best_t, best = "", 0.0
            for t in acceptable_types(job.demand, p.free.types()):
                r = p.rate(job, t)
                if r and r > best:
                    best_t, best = t, r
            p.memo[key] = (best_t, best)
        best_type: tuple[str, float] = p.memo[key]
        return best_type

    def rank_types(self, job: PendingJob, types: list[str], p: Pass) -> list[str]:
        pref = {t: i for i, t in enumerate(types)}
        return sorted(types, key=lambda t: (-(p.rate(job, t) or 0.0), pref[t]))

    def decline(self, job: PendingJob, gpu_type: str, p: Pass) -> str:
        """Decline a slower type when the faster one is expected free soon enough that the job
        would still finish earlier there (the release timeline of running jobs says when)."""
        here = p.rate(job, gpu_type)
        if not here or job.remaining_work <= 0:
            return ""
        best_t, best = self._best_type(job, p)
        if best <= here:
            return ""
        start = p.timeline.estimate(best_t, job.demand.total_gpus, p.free.free_gpus.get(best_t, 0.0))
        if not start:
            return ""
        now = p.snap.now
        if start + job.remaining_work / best < now + job.remaining_work / here:
            p.waiting_for[job.id] = best_t
            return (f"waiting for {best_t} (expected free at t={start:.0f}): it would run "
                    f"{best / here:.1f}x slower on {gpu_type}, so it would finish later there")
        return ""


class FinishTimeFairnessPolicy(GavelPolicy):
    """Worst expected finish-time-fairness ratio first; heterogeneity-aware type choice."""

    name = "finish-time-fairness"

    def _fair_order(self, p: Pass) -> Iterator[PendingJob]:
        def rho(j: PendingJob) -> float:
            best = max((p.rate(j, t) or 0.0 for t in acceptable_types(j.demand, p.free.types())), default=0.0)
            alone = j.remaining_work / best if best and j.remaining_work > 0 else 1.0
            return (p.snap.now - j.submit_time + alone) / alone

        yield from sorted(p.snap.pending, key=lambda j: (-j.priority, -rho(j), j.submit_time, j.id))


def migrate(p: Pass) -> None:
    """Move running jobs to faster GPUs nobody waiting wanted: Gavel re-allocates types every
    round; we do it only when it pays. A job is asked to yield (``Preempt(reason="migrate")``,
    ``for_job`` = itself) when a free type runs it at least MIGRATE_GAIN x faster and that saves
    at least MIGRATE_MIN_SAVING_S; it is requeued with its progress and re-admitted there."""
    free_types = [t for t, g in p.free.free_gpus.items() if g > 0]
    if not free_types:
        return
    moves = []
    for r in p.snap.running:
        if r.preempting or not r.preemptible or r.id in p.claimed_victims:
            continue
        if r.worker_gpu_types:
            continue  # a split gang=false job: no single type to compare against
        here = job_rate(p.snap.throughput, r.job_type, r.gpu_type, r.demand.workers)
        end = p.finish(r)
        if not here or end is None:
            continue
        for t in acceptable_types(r.demand, free_types):
            there = job_rate(p.snap.throughput, r.job_type, t, r.demand.workers)
            left = end - p.snap.now
            if there and there >= MIGRATE_GAIN * here and left - left * here / there >= MIGRATE_MIN_SAVING_S:
                moves.append((-(left - left * here / there), r.id, r, t))
    for _, _, r, t in sorted(moves):
        if r.id in p.claimed_victims or not p.quota.check(r.queue, t, r.demand.total_gpus).ok:
            continue
        if p.free.place(r.demand, t, frozenset(p.held) | p.reserved) is not None:
            p.claimed_victims.add(r.id)
            p.decision.preempts.append(Preempt(r.id, r.id, "migrate"))


POLICIES: dict[str, type[FifoPolicy]] = {
    cls.name: cls for cls in (FifoPolicy, FairSharePolicy, GavelPolicy, FinishTimeFairnessPolicy)
}


def make_policy(name: str, **options: bool) -> FifoPolicy:
    """A policy by name (``fifo``, ``fair-share``, ``gavel``, ``finish-time-fairness``)."""
    try:
        return POLICIES[name](**options)
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
