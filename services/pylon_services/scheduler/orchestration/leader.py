"""The scheduler's leader: one loop, run by whichever leader process holds the lease.

Each turn the leader:
1. waits for dispatch events (submits, cancels, worker results and progress) as long as the
   ``Pacer`` says it may, and handles them (``dispatch.py``);
2. does the chores that are due: reclaim entries a dead consumer left, sweep orphaned
   reservations, move every active job forward (``attempts.py``), look at the cluster's nodes
   (and publish them for the API);
3. runs the pass the pacer asks for, whole or append (``passes.py``), whose decision the
   ``DecisionApplier`` carries out (``apply.py``).

Everything it touches is a port (``domain/ports.py``) and time comes from a ``Clock``, so unit
tests run this loop on in-memory fakes with a fake clock. The process around it is
``pylon_services.scheduler.leader``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from pylon_services.scheduler.config import SchedulerConfig
from pylon_services.scheduler.domain.pacing import Backlog as BacklogState
from pylon_services.scheduler.domain.pacing import Chore, Pacer, PassKind
from pylon_services.scheduler.domain.ports import (
    Clock,
    ClusterExecutor,
    JobLedger,
    Lease,
    ModelRegistrar,
    SchedulerState,
    SystemClock,
)
from pylon_services.scheduler.domain.snapshot import ClusterNode, ClusterView
from pylon_services.scheduler.orchestration.apply import DecisionApplier
from pylon_services.scheduler.orchestration.attempts import Attempts
from pylon_services.scheduler.orchestration.backlog import Backlog
from pylon_services.scheduler.orchestration.dispatch import Dispatcher, changes_beyond_arrivals
from pylon_services.scheduler.orchestration.passes import Passes

log = logging.getLogger("pylon.scheduler")
EVENT_BATCH_S = 0.05  # after events, let a burst of submits arrive as one batch
CLUSTER_REPUBLISH_S = 10.0  # the published cluster view is refreshed at least this often


def new_identity() -> str:
    """How the lease names this leader: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Leader:
    def __init__(self, jobs: JobLedger, state: SchedulerState, executor: ClusterExecutor, lease: Lease,
                 cfg: SchedulerConfig, clock: Clock | None = None, identity: str = "",
                 registrar: ModelRegistrar | None = None) -> None:
        self.jobs, self.state, self.executor, self.lease, self.cfg = jobs, state, executor, lease, cfg
        self.clock = clock or SystemClock()
        self.identity = identity or new_identity()
        self.pacer = Pacer(cfg.pacing())
        self.backlog = Backlog(jobs, cfg.backlog_resync_s, self.clock)
        self.attempts = Attempts(jobs, state, executor, cfg, self.clock, registrar)
        self.applier = DecisionApplier(state, executor, self.attempts, self.backlog, cfg.declared_pools(), self.clock)
        self.passes = Passes(jobs, state, executor, self.backlog, self.attempts, self.applier, cfg, self.clock)
        self.dispatcher = Dispatcher(jobs, state, self.backlog, self.attempts)
        self.leading = False
        self.stopping = False  # ``run`` ends after the turn in progress
        self.first_bid = asyncio.Event()  # set once the loop has tried to take the lease
        self._published: tuple[list[ClusterNode], float] | None = None
        self._stats = (self.clock.monotonic(), 0, 0.0, 0)  # since, passes, their CPU-seconds, decoded

    async def run(self) -> None:
        """Lead while holding the lease, else wait and bid again; survives transient errors. Ends
        after the current turn once ``stopping`` is set: cancelling alone is not enough, because a
        cancelled blocking Redis read can come back as a connection error that redis-py retries,
        and the cancellation is lost (seen under load: the process ignored SIGTERM)."""
        while not self.stopping:
            try:
                try:
                    held = await self.lease.hold(self.identity, self.cfg.lease_s)
                finally:
                    self.first_bid.set()  # also when Redis is not there yet
                if held:
                    if not self.leading:
                        await self.become_leader()
                    await self.turn()
                else:
                    self.leading = False
                    await self.clock.sleep(self.cfg.pass_period_s)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep scheduling through transient errors
                log.exception("scheduling turn failed")
                await self.clock.sleep(self.cfg.pass_period_s)

    async def stop(self) -> None:
        """Give the lease back at once instead of letting it expire."""
        if self.leading:
            self.leading = False
            await self.lease.give_back(self.identity)

    async def become_leader(self) -> None:
        """Take over: claim the dispatch entries a dead leader never acknowledged, then adopt
        (the next turn tracks every active job by its executor names) and sweep orphans."""
        await self.state.ensure_group()
        self.backlog.invalidate()
        self.passes.forget()
        self.state.forget_explanations()
        self.applier.forget()
        self._published = None
        claimed = await self.state.reclaim(self.identity, 0)
        claimed += await self.state.pending_of(self.identity)
        self.leading = True
        self.pacer.changed()
        log.info("became scheduler leader %s; reclaimed %d dispatch entries", self.identity, len(claimed))
        await self.dispatcher.handle(claimed)
        await self.sweep_orphans()
        self.pacer.chore_done(Chore.SWEEP, self.clock.monotonic())

    def _backlog_state(self) -> BacklogState:
        return BacklogState(arrived=self.backlog.arrived, changed=self.backlog.changed,
                            can_append=self.passes.can_append)

    async def turn(self) -> None:
        wait = self.pacer.wait_s(self.clock.monotonic(), self._backlog_state())
        events = await self.state.read_events(self.identity, max(1, int(wait * 1000)))
        await self.dispatcher.handle(events)
        if changes_beyond_arrivals(events):
            self.pacer.changed()
        await self._chores(self.clock.monotonic())
        now = self.clock.monotonic()
        kind = self.pacer.next_pass(now, self._backlog_state())
        if kind == PassKind.WHOLE:
            await self._whole_pass(now)
        elif kind == PassKind.APPEND:
            self.pacer.started(kind, now)
            decision = None
            try:
                decision = await self.passes.append()
            finally:
                if decision is None or decision.admits or decision.preempts:
                    # Arrivals it could not decide (they were read), or a changed cluster: the
                    # next pass is a whole one.
                    self.passes.forget()
                    self.pacer.append_failed()
        if events:
            await self.clock.sleep(EVENT_BATCH_S)

    async def _whole_pass(self, now: float) -> None:
        self.pacer.started(PassKind.WHOLE, now)
        cpu = self.clock.cpu()
        self.applier.launch_s = 0.0
        await self.passes.whole()
        # Waiting for admitted jobs' placement groups does not count: under load it once pushed
        # the next pass (and a new job's first look) more than 30 s out.
        self.pacer.whole_done(self.clock.monotonic() - now - self.applier.launch_s)
        self._log_stats(self.clock.cpu() - cpu)

    async def _chores(self, now: float) -> None:
        if self.pacer.chore_due(Chore.RECLAIM, now):
            # Entries stuck with another consumer (a replica that lost the lease mid-turn).
            await self.dispatcher.handle(await self.state.reclaim(self.identity, self.cfg.reclaim_idle_ms))
        if self.pacer.chore_due(Chore.SWEEP, now):
            await self.sweep_orphans()
        if self.pacer.chore_due(Chore.TRACK, now):
            await self.track_active()
        if self.pacer.chore_due(Chore.NODES, now):
            await self._look_at_nodes(now)

    async def _look_at_nodes(self, now: float) -> None:
        """Nodes join (the autoscaler) or die without an event: a continued pass must not go on
        past that, and the API's view of the cluster follows."""
        nodes = await self.executor.nodes()
        continued = self.passes.continued_nodes()
        if continued is not None and nodes != continued:
            self.passes.cluster_changed()
            self.pacer.changed()
        if self._published is None or self._published[0] != nodes or now - self._published[1] >= CLUSTER_REPUBLISH_S:
            await self.state.publish_cluster(ClusterView(tuple(nodes), tuple(self.cfg.declared_pools()),
                                                         self.clock.time()))
            self._published = (nodes, now)

    async def track_active(self) -> None:
        """Move every active job forward; any change it writes makes the next pass due."""
        for job in await self.jobs.active():
            try:
                await self.attempts.track(job)
            except Exception:  # noqa: BLE001 - one job's trouble must not stall the others
                log.exception("tracking %s failed; retried next turn", job.name)
        await self._release_terminal()

    async def _release_terminal(self) -> None:
        """Jobs cancelled through the API stay in the active set until their workers are gone."""
        terminal = [j for j in await self.jobs.get_many(await self.jobs.active_keys()) if j.state.terminal]
        # Concurrently: a release waits up to the launcher's stop grace for tasks still ending.
        outcomes = await asyncio.gather(*(self.executor.release(j) for j in terminal), return_exceptions=True)
        for job, outcome in zip(terminal, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("releasing %s failed; retried next turn", job.name, exc_info=outcome)
                continue
            await self.jobs.save_moved(job, pending=False, active=False)

    async def sweep_orphans(self) -> None:
        """Remove reservations no active attempt owns (a leader that died between creating one
        and recording it, or a job finished while nobody led)."""
        wanted = {self.executor.attempt_name(j) for j in await self.jobs.active()}
        for name in await self.executor.orphans(wanted):
            log.warning("removing orphaned placement group %s", name)
            await self.executor.remove(name)

    def _log_stats(self, pass_cpu_s: float) -> None:
        """Every ``stats_every_s``: how many passes ran, their CPU cost, and the backlog's size."""
        since, n, cpu, decoded = self._stats
        n, cpu = n + 1, cpu + pass_cpu_s
        now = self.clock.monotonic()
        if now - since < self.cfg.stats_every_s:
            self._stats = (since, n, cpu, decoded)
            return
        log.info("leader: %d passes in %.0fs, %.1f ms CPU each, %d pending, %d jobs decoded, %d append passes "
                 "and %d cluster changes so far", n, now - since, 1000 * cpu / n, self.backlog.size,
                 self.backlog.decoded - decoded, self.passes.append_passes, self.passes.cluster_changes)
        self._stats = (now, 0, 0.0, self.backlog.decoded)
