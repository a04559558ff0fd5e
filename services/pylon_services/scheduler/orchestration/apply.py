"""Carrying out a pass's decision: launch admitted jobs, preempt, ask the autoscaler for room
for the jobs still waiting, and store the explanations ExplainJob serves."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence

from pylon_services.scheduler.domain.autoscale import DeclaredPool, scale_up_plan
from pylon_services.scheduler.domain.job import Job
from pylon_services.scheduler.domain.ports import Clock, ClusterExecutor, SchedulerState
from pylon_services.scheduler.domain.scheduling import Decision, Node, PendingJob
from pylon_services.scheduler.orchestration.attempts import Attempts
from pylon_services.scheduler.orchestration.backlog import Backlog

log = logging.getLogger("pylon.scheduler")


class DecisionApplier:
    def __init__(self, state: SchedulerState, executor: ClusterExecutor, attempts: Attempts, backlog: Backlog,
                 pools: Sequence[DeclaredPool], clock: Clock) -> None:
        self.state, self.executor, self.attempts, self.backlog = state, executor, attempts, backlog
        self.pools = list(pools)
        self.clock = clock
        self.scale_request: list[dict[str, float]] | None = None  # last sent to the autoscaler
        self.launch_s = 0.0  # time spent launching admitted jobs since the last reset (not pass cost)

    def forget(self) -> None:
        """Send the autoscaler request again on the next pass (a new leader: another may have
        changed it meanwhile)."""
        self.scale_request = None

    async def apply(self, decision: Decision, by_key: Mapping[str, Job], waiting: Sequence[PendingJob],
                    nodes: Sequence[Node], *, append: bool) -> None:
        """Admit, preempt, ask for room for the jobs still ``waiting``, store the explanations
        (an append pass adds to them)."""
        # Whatever the outcome of these writes, re-read the jobs (a lost compare-and-swap leaves
        # the cached object changed in memory but not in the ledger).
        self.backlog.mark([a.job_id for a in decision.admits] + [p.job_id for p in decision.preempts])
        # Admitted jobs launch concurrently: each waits up to a second for its placement group.
        started = self.clock.monotonic()
        outcomes = await asyncio.gather(*(self.attempts.admit(by_key[a.job_id], a) for a in decision.admits),
                                        return_exceptions=True)
        self.launch_s += self.clock.monotonic() - started
        for admit, outcome in zip(decision.admits, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("admitting %s failed; retried next turn", admit.job_id, exc_info=outcome)
        for pre in decision.preempts:
            if pre.job_id in by_key:
                await self.attempts.preempt(by_key[pre.job_id], pre)
        admitted = {a.job_id for a in decision.admits}
        asked = await self.request_scale([j for j in waiting if j.id not in admitted], nodes, append=append)
        for job_id, gpu_type in asked.items():
            if (exp := decision.explanations.get(job_id)) is not None:
                decision.explanations[job_id] = dataclasses.replace(exp, blocking=(*exp.blocking, (
                    f"the {gpu_type} pool may grow: its nodes were requested from the autoscaler")))
        await self.state.save_explanations(decision.explanations, merge=append)

    async def request_scale(self, pending: Sequence[PendingJob], nodes: Sequence[Node], *,
                            append: bool = False) -> dict[str, str]:
        """Tell the autoscaler (KubeRay's) what room the still-pending jobs need in the declared
        pools (``domain/autoscale.py``), only when that changed ([] withdraws it); returns the
        pool each job was asked for in. ``append``: ``pending`` queue behind the jobs of the
        request already made, which stays and is added to."""
        if not self.pools and not self.scale_request:
            self.scale_request = []  # no declared pools: never touch the autoscaler
            return {}
        if append:
            before = self.scale_request or []
            more, asked = scale_up_plan(pending, self.pools, nodes, already=before) if self.pools else ([], {})
            bundles = before + more
        else:
            bundles, asked = scale_up_plan(pending, self.pools, nodes) if self.pools else ([], {})
        if bundles != self.scale_request:
            await self.executor.request_scale(bundles)
            self.scale_request = bundles
        return asked
