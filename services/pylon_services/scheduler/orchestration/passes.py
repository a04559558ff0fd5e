"""Policy passes over the backlog: whole passes, and append passes that continue one.

A whole pass is O(backlog): every pending job is considered and explained. A saturated cluster
taking a stream of submissions (what Kueue parks as "inadmissible") would re-decide the same
blocked backlog on every batch of arrivals. So after a whole pass that admitted and preempted
nothing, when the only news is new submissions, an *append pass* reads and considers only the new
jobs, behind the waiting ones and against the state the whole pass left (free capacity, quota,
the head's backfill reservation, queue positions, the release timeline): ``Policy.extend``. For
FIFO that is exactly what a whole pass decides; fair share, gavel and finish-time fairness may
order an arrival ahead of older jobs, and an append pass treats it as last until the next whole
pass. Anything else (a node change, a queue change, an arrival of higher priority than a waiting
job) needs a whole pass: ``append`` then answers None.
"""

from __future__ import annotations

from dataclasses import dataclass

from pylon_services.scheduler.config import SchedulerConfig
from pylon_services.scheduler.domain.admission import Pass
from pylon_services.scheduler.domain.policies import make_policy
from pylon_services.scheduler.domain.ports import Clock, ClusterExecutor, JobLedger, SchedulerState
from pylon_services.scheduler.domain.scheduling import Decision, QueueQuota
from pylon_services.scheduler.domain.snapshot import ClusterNode, build_snapshot, gpus_held
from pylon_services.scheduler.orchestration.apply import DecisionApplier
from pylon_services.scheduler.orchestration.attempts import Attempts
from pylon_services.scheduler.orchestration.backlog import Backlog


@dataclass
class _LastPass:
    """What an append pass continues from: a whole pass that admitted and preempted nothing,
    and the facts it was made on (any change to them needs a whole pass)."""

    p: Pass
    nodes: list[ClusterNode]
    queues: dict[str, QueueQuota]
    min_priority: int  # of the jobs waiting in it: an arrival above this one needs a whole pass


class Passes:
    def __init__(self, jobs: JobLedger, state: SchedulerState, executor: ClusterExecutor, backlog: Backlog,
                 attempts: Attempts, applier: DecisionApplier, cfg: SchedulerConfig, clock: Clock) -> None:
        self.jobs, self.state, self.executor, self.backlog = jobs, state, executor, backlog
        self.attempts, self.applier, self.cfg, self.clock = attempts, applier, cfg, clock
        self.policy = make_policy(cfg.policy)
        self._continue: _LastPass | None = None
        self.whole_passes = 0
        self.append_passes = 0
        self.cluster_changes = 0  # continued passes given up because nodes or queues moved

    def cluster_changed(self) -> None:
        """The cluster moved under the continued pass (a node joined, left or changed its free
        resources): the next pass is a whole one."""
        self.cluster_changes += 1
        self._continue = None

    @property
    def can_append(self) -> bool:
        return self._continue is not None

    def continued_nodes(self) -> list[ClusterNode] | None:
        """The nodes the continued whole pass was made on (None: nothing to continue)."""
        return self._continue.nodes if self._continue is not None else None

    def forget(self) -> None:
        """The next pass is a whole one (a new leader, or a change an append cannot take in)."""
        self._continue = None

    async def whole(self) -> Decision:
        """One policy pass over the ledger and the cluster; applies and returns the decision."""
        self.whole_passes += 1
        pending = await self.backlog.pending()
        self.backlog.take_arrivals()  # this pass sees them all
        self._continue = None
        active = await self.jobs.active()
        usage = await self.state.add_usage(gpus_held(active), self.cfg.usage_half_life_s)
        if not pending:
            await self.state.save_explanations({})
            await self.applier.request_scale([], [])
            return Decision()
        nodes = await self.executor.nodes()
        queues = await self.state.queues()
        snap = build_snapshot(self.clock.time(), nodes, self.backlog.rows(), active, queues, usage,
                              await self.attempts.table(), self.attempts.progress_times)
        done = self.policy.run(snap)
        decision = done.decision
        if not decision.admits and not decision.preempts:
            self._continue = _LastPass(done, list(nodes), queues, min(j.priority for j in snap.pending))
        await self.applier.apply(decision, {**pending, **{j.key: j for j in active}}, snap.pending, snap.nodes,
                                 append=False)
        return decision

    async def append(self) -> Decision | None:
        """Decide only the jobs submitted since the last whole pass (see the module's doc); None
        when that would not decide what a whole pass decides, and one is needed."""
        last = self._continue
        if last is None:
            return None
        pending = await self.backlog.pending()
        arrivals = self.backlog.take_arrivals()
        if arrivals is None or self.backlog.changed or any(j.priority > last.min_priority for j in arrivals):
            return None
        if not arrivals:
            return Decision()
        if await self.executor.nodes() != last.nodes or await self.state.queues() != last.queues:
            self.cluster_changed()
            return None
        self.append_passes += 1
        decision = self.policy.extend(last.p, arrivals)
        by_key = dict(pending)
        if decision.admits or decision.preempts:
            self._continue = None  # the cluster changes: the next pass is a whole one
            if decision.preempts:
                by_key.update({j.key: j for j in await self.jobs.active()})
        await self.applier.apply(decision, by_key, arrivals, last.p.snap.nodes, append=True)
        return decision

