"""The scheduling loop. Only the holder of the Redis lease ``pylon:scheduler:leader`` acts, so
several replicas can run. Each turn the leader:

1. reads the dispatch stream (``pylon:sched:events``: submits, worker results, progress) as the
   consumer group ``scheduler`` and acknowledges an entry only after handling it (at-least-once;
   a new leader reclaims what a dead one left unacknowledged with XAUTOCLAIM);
2. tracks every active job in the ledger (``attempts.py``): launches ADMITTED ones (idempotent:
   Ray objects are named by job and attempt), promotes STARTING ones whose placement group
   exists, finishes, retries, requeues preempted ones, and adopts what an earlier leader started;
3. runs one policy pass (``Snapshot -> Decision``) and applies it: admits, preemptions, and the
   explanations ExplainJob serves.

Passes are driven by change: one runs when an event arrived, a job was written or an active job
moved on, and otherwise only every ``idle_pass_s`` (estimates age), using at most
``idle_pass_duty_cycle`` of the leader's time for those. They start at
most every ``min_pass_interval_s`` and take at most ``pass_duty_cycle`` of the leader's time (not
counting the wait for admitted jobs' placement groups), and
read the backlog incrementally (``backlog.py``), so a cheaper pass means less CPU, not more passes.

When only new submissions arrived since a whole pass that admitted and preempted nothing (a
saturated cluster taking a stream of jobs: Kueue parks such a backlog as inadmissible), the leader
does not pass over the whole backlog again: an *append pass* considers just the new jobs, behind
the waiting ones and against what the last whole pass left (``Policy.extend``). It costs O(new
jobs), not O(backlog). A whole pass still runs for anything else (a result, a cancel, a queue or
node change, a job admitted), for an arrival of higher priority than a waiting job, and at least
every ``idle_pass_s``.
By default the leader runs in its own process (``leader_proc.py``), so the API's event loop
never waits behind a pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from pylon_services.common.errors import FailedPrecondition, NotFound
from pylon_services.scheduler.attempts import Attempts
from pylon_services.scheduler.backlog import Backlog
from pylon_services.scheduler.config import SchedulerConfig
from pylon_services.scheduler.domain.admission import Pass
from pylon_services.scheduler.domain.autoscale import scale_up_plan
from pylon_services.scheduler.domain.job import Job, JobState
from pylon_services.scheduler.domain.policies import make_policy
from pylon_services.scheduler.domain.scheduling import Decision, Node, PendingJob, QueueQuota
from pylon_services.scheduler.snapshot import build_snapshot
from pylon_services.scheduler.store.ray_exec import RayExecutor, RayNode
from pylon_services.scheduler.store.redis_jobs import JobStore, stop_key
from pylon_services.scheduler.store.redis_sched import SchedState

log = logging.getLogger("pylon.scheduler")
LEASE_KEY = "pylon:scheduler:leader"
ORPHAN_SWEEP_S = 30.0
EVENT_BATCH_S = 0.05
# Renew the lease only if we still hold it (a plain GET + EXPIRE could extend someone else's).
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"


@dataclasses.dataclass
class _LastPass:
    """What an append pass continues from: a whole pass that admitted and preempted nothing,
    and the facts it was made on (any change to them needs a whole pass)."""

    p: Pass
    nodes: list[RayNode]
    queues: dict[str, QueueQuota]
    min_priority: int  # of the jobs waiting in it: an arrival above this one needs a whole pass


class Controller:
    def __init__(self, jobs: JobStore, state: SchedState, executor: RayExecutor, redis: aioredis.Redis,
                 cfg: SchedulerConfig | None = None, replica_pid: int | None = None) -> None:
        self.jobs, self.state, self.executor, self.redis = jobs, state, executor, redis
        self.cfg = cfg or SchedulerConfig()
        self.policy = make_policy(self.cfg.policy)
        # The lease names the replica (its API process), also when this loop runs in a child.
        self.identity = f"{replica_pid or os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.backlog = Backlog(jobs, self.cfg.backlog_resync_s)
        self._scale_request: list[dict[str, float]] | None = None  # last sent to the autoscaler
        self.attempts = Attempts(jobs, state, executor, self.cfg)
        self.leader = False
        self.last_decision = Decision()
        self._task: asyncio.Task[None] | None = None
        self.first_bid = asyncio.Event()  # set once the loop has tried to take the lease
        self._last_sweep = 0.0
        self._last_pass = float("-inf")
        self._last_full = float("-inf")
        self._nodes_checked = 0.0
        self._continue: _LastPass | None = None
        self._last_track = float("-inf")
        self._last_reclaim = 0.0
        self._pass_cost_s = 0.0
        self._launch_s = 0.0  # of the current pass: time spent launching admitted jobs
        self._dirty = True
        self.passes = 0
        self.append_passes = 0
        self._stats = (time.monotonic(), 0, 0.0, 0)  # since, passes, their CPU-seconds, decoded

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self.leader:
            await self.redis.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end "
                                  "return 0", 1, LEASE_KEY, self.identity)

    def wake(self) -> None:
        """Kept for callers: submits already wake the leader through the dispatch stream."""

    async def _hold_lease(self) -> bool:
        ms = int(self.cfg.lease_s * 1000)
        if await self.redis.set(LEASE_KEY, self.identity, nx=True, px=ms):
            return True
        return bool(await self.redis.eval(_RENEW, 1, LEASE_KEY, self.identity, ms))

    async def _loop(self) -> None:
        while True:
            try:
                try:
                    held = await self._hold_lease()
                finally:
                    self.first_bid.set()  # also when Redis is not there yet: do not hold up the API
                if held:
                    if not self.leader:
                        await self._become_leader()
                    await self._turn()
                else:
                    self.leader = False
                    await asyncio.sleep(self.cfg.pass_period_s)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep scheduling through transient errors
                log.exception("scheduling turn failed")
                await asyncio.sleep(self.cfg.pass_period_s)

    async def _become_leader(self) -> None:
        """Take over: claim the dispatch entries a dead leader never acknowledged, then adopt
        (the next turn tracks every active job by its Ray names) and sweep orphans."""
        await self.state.ensure_group()
        self.backlog.invalidate()
        self._continue = None
        self.state.forget_explanations()
        self._scale_request = None  # another leader may have changed it meanwhile: send it again
        claimed = await self.state.reclaim(self.identity, 0)
        claimed += await self.state.pending_of(self.identity)
        self.leader = True
        self._dirty = True
        log.info("became scheduler leader %s; reclaimed %d dispatch entries", self.identity, len(claimed))
        await self._handle(claimed)
        await self._sweep_orphans()

    def _gap(self) -> float:
        """Least time between two passes: a fixed floor, and the duty cycle for costly passes."""
        return max(self.cfg.min_pass_interval_s, self._pass_cost_s / self.cfg.pass_duty_cycle)

    def _idle_gap(self) -> float:
        """Least time between whole passes that run only because time passed."""
        return max(self.cfg.idle_pass_s, self._pass_cost_s / self.cfg.idle_pass_duty_cycle)

    def _full_due(self) -> bool:
        return self._dirty or self.backlog.changed or (self.backlog.arrived and self._continue is None)

    def _wait_ms(self) -> int:
        """How long to block on the dispatch stream: until a wanted pass may start, else idle."""
        idle = self.cfg.pass_period_s
        if self._full_due():
            start = max(self._last_full + self._gap(), self._last_pass + self.cfg.min_pass_interval_s)
            idle = max(0.0, min(idle, start - time.monotonic()))
        elif self.backlog.arrived:
            idle = max(0.0, min(idle, self._last_pass + self.cfg.min_pass_interval_s - time.monotonic()))
        return max(1, int(idle * 1000))

    async def _turn(self) -> None:
        events = await self.state.read_events(self.identity, self._wait_ms())
        await self._handle(events)
        # Submissions alone are arrivals (``_handle_one``): an append pass may take them.
        self._dirty = self._dirty or any(event.get("type") != "submitted" for _, event in events)
        now = time.monotonic()
        if now - self._last_reclaim > self.cfg.reclaim_idle_ms / 2000:
            # Entries stuck with another consumer (a replica that lost the lease mid-turn).
            self._last_reclaim = now
            await self._handle(await self.state.reclaim(self.identity, self.cfg.reclaim_idle_ms))
        if time.time() - self._last_sweep > ORPHAN_SWEEP_S:
            await self._sweep_orphans()
        if now - self._last_track >= self.cfg.min_pass_interval_s:
            self._last_track = now
            await self._track_active()
        if self._continue is not None and now - self._nodes_checked >= 1.0:
            # Nodes join (the autoscaler) or die without an event: a whole pass takes them in.
            self._nodes_checked = now
            if await asyncio.to_thread(self.executor.nodes) != self._continue.nodes:
                self._dirty = True
        due = self._full_due()
        # A whole pass: soon after a change (duty cycle), else when time alone makes it due.
        whole = now - self._last_full >= (self._gap() if due else self._idle_gap())
        if whole and now - self._last_pass >= self.cfg.min_pass_interval_s:
            self._last_pass = self._last_full = now
            self._dirty = False
            cpu = time.process_time()
            self._launch_s = 0.0
            await self.schedule_pass()
            # The time spent waiting for admitted jobs' placement groups does not count: under
            # load it once pushed the next pass (and a new job's first look) more than 30 s out.
            self._pass_cost_s = time.monotonic() - now - self._launch_s
            self.passes += 1
            self._log_stats(time.process_time() - cpu)
        elif not due and self.backlog.arrived and now - self._last_pass >= self.cfg.min_pass_interval_s:
            self._last_pass = now
            decision = None
            try:
                decision = await self.append_pass()
            finally:
                if decision is None:
                    # A whole pass must decide the arrivals (they were read) and whatever else
                    # changed: the next turn runs one.
                    self._continue = None
                    self._dirty = True
            self.append_passes += decision is not None
        if events:
            await asyncio.sleep(EVENT_BATCH_S)  # let a burst of submits arrive as one batch

    def _log_stats(self, pass_cpu_s: float) -> None:
        """Every ``stats_every_s``: how many passes ran, their CPU cost, and the backlog's size."""
        since, n, cpu, decoded = self._stats
        n, cpu = n + 1, cpu + pass_cpu_s
        if time.monotonic() - since < self.cfg.stats_every_s:
            self._stats = (since, n, cpu, decoded)
            return
        log.info("leader: %d passes in %.0fs, %.1f ms CPU each, %d pending, %d jobs decoded, %d append passes so far",
                 n, time.monotonic() - since, 1000 * cpu / n, self.backlog.size, self.backlog.decoded - decoded,
                 self.append_passes)
        self._stats = (time.monotonic(), 0, 0.0, self.backlog.decoded)

    async def _track_active(self) -> None:
        """Move every active job forward; any change it writes makes the next pass due."""
        for job in await self.jobs.active():
            try:
                await self.attempts.track(job)
            except Exception:  # noqa: BLE001 - one job's trouble must not stall the others
                log.exception("tracking %s failed; retried next turn", job.name)
        await self._cleanup_terminal()

    async def _handle(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Idempotent handlers: a result for an attempt already finished is a no-op."""
        done = []
        for eid, event in events:
            try:
                await self._handle_one(event)
            except Exception:  # noqa: BLE001 - left unacknowledged: reclaimed and retried later
                log.exception("handling dispatch entry %s failed", eid)
                continue
            done.append(eid)
        await self.state.ack(done)

    async def _handle_one(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "submitted":
            self.backlog.arrive([event["job"]])  # read before the next pass
            return
        if kind == "changed":
            self.backlog.mark([event["job"]])  # re-read before the next pass
            return
        if kind not in ("result", "progress"):
            return
        tenant, job_id = event["job"].split("/", 1)
        try:
            job = await self.jobs.get(tenant, job_id)
        except NotFound:
            return
        if job.attempt != int(event.get("attempt", -1)):
            return  # an event of an attempt that is already over
        if kind == "result":
            await self.attempts.track(job)
        else:
            await self.attempts.progress(job, event)

    async def _cleanup_terminal(self) -> None:
        """Jobs cancelled through the API stay in the active set until their Ray objects are gone."""
        terminal = [j for j in await self.jobs.get_many(await self.jobs.active_keys()) if j.state.terminal]
        # Concurrently: a release waits up to the launcher's stop grace for tasks still ending.
        outcomes = await asyncio.gather(*(asyncio.to_thread(self.executor.release, j) for j in terminal),
                                        return_exceptions=True)
        for job, outcome in zip(terminal, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("releasing %s failed; retried next turn", job.name, exc_info=outcome)
                continue
            await self.jobs.save_moved(job, pending=False, active=False)

    async def _sweep_orphans(self) -> None:
        """Remove Pylon placement groups no active attempt owns (a leader that died between
        creating one and recording it, or a job finished while nobody led)."""
        self._last_sweep = time.time()
        wanted = {self.executor.attempt_name(j) for j in await self.jobs.active() if not j.state.terminal}
        for name in await asyncio.to_thread(self.executor.orphans, wanted):
            log.warning("removing orphaned placement group %s", name)
            await asyncio.to_thread(self.executor.remove_by_name, name)

    async def schedule_pass(self) -> Decision:
        """One policy pass over the ledger and Ray; applies and returns the decision."""
        pending = await self.backlog.pending()
        self.backlog.take_arrivals()  # this pass sees them all
        self._continue = None
        active = [j for j in await self.jobs.active() if not j.state.terminal]
        held: dict[str, float] = {}
        for j in active:
            held[j.tenant] = held.get(j.tenant, 0.0) + j.workers * float(j.spec.get("resources", {}).get("gpus", 0) or 0)
        usage = await self.state.add_usage(held, self.cfg.usage_half_life_s)
        if not pending:
            await self.state.save_explanations({})
            await self._request_scale([], [])
            return Decision()
        nodes = await asyncio.to_thread(self.executor.nodes)
        queues = await self.state.queues()
        # The backlog converts each pending job once, not on every pass.
        snap = dataclasses.replace(
            build_snapshot(time.time(), nodes, [], active, queues, usage,
                           await self.attempts.table(), self.attempts.progress_times),
            pending=self.backlog.rows())
        done = self.policy.run(snap)
        decision = done.decision
        self.last_decision = decision
        if not decision.admits and not decision.preempts:
            self._continue = _LastPass(done, nodes, queues, min(j.priority for j in snap.pending))
        await self._apply(decision, pending | {j.key: j for j in active}, snap.pending, snap.nodes, append=False)
        return decision

    async def append_pass(self) -> Decision | None:
        """Consider only the jobs submitted since the last whole pass (see the module's doc);
        None when that would not decide what a whole pass decides, and one is needed."""
        last = self._continue
        if last is None:
            return None
        pending = await self.backlog.pending()
        arrivals = self.backlog.take_arrivals()
        if arrivals is None or self.backlog.changed or any(j.priority > last.min_priority for j in arrivals):
            return None
        if not arrivals:
            return Decision()
        if await asyncio.to_thread(self.executor.nodes) != last.nodes or await self.state.queues() != last.queues:
            return None
        decision = self.policy.extend(last.p, arrivals)
        self.last_decision = decision
        by_key = pending
        if decision.admits or decision.preempts:
            # The cluster changes: the next pass is a whole one.
            self._continue = None
            self._dirty = True
            if decision.preempts:
                by_key = pending | {j.key: j for j in await self.jobs.active()}
        await self._apply(decision, by_key, arrivals, last.p.snap.nodes, append=True)
        return decision

    async def _apply(self, decision: Decision, by_key: dict[str, Job], waiting: Sequence[PendingJob],
                     nodes: Sequence[Node], *, append: bool) -> None:
        """Carry out a pass's decision: launch admits, preempt, ask the autoscaler for room for
        the jobs still ``waiting``, store the explanations (an append pass adds to them)."""
        # Whatever the outcome of these writes, re-read the jobs (a lost compare-and-swap leaves
        # the cached object changed in memory but not in Redis).
        self.backlog.mark([a.job_id for a in decision.admits] + [p.job_id for p in decision.preempts])
        # Admitted jobs launch concurrently: each waits up to a second for its placement group.
        started = time.monotonic()
        outcomes = await asyncio.gather(*(self.attempts.admit(by_key[a.job_id], a) for a in decision.admits),
                                        return_exceptions=True)
        self._launch_s += time.monotonic() - started
        for admit, outcome in zip(decision.admits, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("admitting %s failed; retried next turn", admit.job_id, exc_info=outcome)
        for pre in decision.preempts:
            if pre.job_id in by_key:
                await self.attempts.preempt(by_key[pre.job_id], pre)
        admitted = {a.job_id for a in decision.admits}
        asked = await self._request_scale([j for j in waiting if j.id not in admitted], nodes, append=append)
        for job_id, gpu_type in asked.items():
            if (exp := decision.explanations.get(job_id)) is not None:
                decision.explanations[job_id] = dataclasses.replace(exp, blocking=(*exp.blocking, (
                    f"the {gpu_type} pool may grow: its nodes were requested from the autoscaler")))
        await self.state.save_explanations(decision.explanations, merge=append)

    async def _request_scale(self, pending: Sequence[PendingJob], nodes: Sequence[Node], *,
                             append: bool = False) -> dict[str, str]:
        """Tell Ray's autoscaler (KubeRay) what room the still-pending jobs need in the declared
        pools (``domain/autoscale.py``), only when that changed ([] withdraws it); returns the
        pool each job was asked for in. ``append``: ``pending`` queue behind the jobs of the
        request already made, which stays and is added to."""
        pools = self.cfg.declared_pools()
        if not pools and not self._scale_request:
            self._scale_request = []  # no declared pools: never touch the autoscaler
            return {}
        if append:
            before = self._scale_request or []
            more, asked = scale_up_plan(pending, pools, nodes, already=before) if pools else ([], {})
            bundles = before + more
        else:
            bundles, asked = scale_up_plan(pending, pools, nodes) if pools else ([], {})
        if bundles != self._scale_request:
            await asyncio.to_thread(self.executor.request_scale, bundles)
            self._scale_request = bundles
        return asked

    async def cancel(self, job: Job) -> Job:
        """Mark the job CANCELLED (compare-and-swap, so a concurrent finish wins or loses
        cleanly); the leader kills its workers and frees its placement group."""
        for _ in range(20):
            if job.state.terminal:
                raise FailedPrecondition(f"job {job.name} already {job.state.value}; nothing to cancel")
            holding = job.state != JobState.PENDING
            await self.redis.set(stop_key(job.tenant, job.id), "cancel", ex=3600)
            job.transition(JobState.CANCELLED, "cancelled by user")
            if await self.jobs.save_moved(job, pending=False, active=holding, notify=True):
                return job
            job = await self.jobs.get(job.tenant, job.id)
        raise FailedPrecondition(f"job {job.name} kept changing; try again")
