"""One job attempt's life on Ray, driven by the leader: launch, start, finish, retry, preempt,
requeue. Every step reads the ledger, acts idempotently on Ray (names by job and attempt), and
compare-and-swaps the ledger; a step that loses the swap is simply retried next turn. That is
what lets a new leader pick up any job in any state (adoption) without running it twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pylon_services.scheduler.config import SchedulerConfig
from pylon_services.scheduler.domain.job import PREEMPTED_EXIT_CODE, Job, JobState
from pylon_services.scheduler.domain.ports import Clock, ClusterExecutor, JobLedger, ModelRegistrar, SchedulerState
from pylon_services.scheduler.domain.scheduling import Admit, Preempt
from pylon_services.scheduler.domain.spec import Trainer
from pylon_services.scheduler.domain.throughput import ThroughputTable
from pylon_services.workloads import REGISTRY, WorkloadKind

log = logging.getLogger("pylon.scheduler")
LIVENESS_EVERY_S = 2.0
LOST_AFTER_CHECKS = 2
# States in which a job holds (or is about to hold) Ray resources.
HOLDING = (JobState.ADMITTED, JobState.STARTING, JobState.RUNNING, JobState.PREEMPTING)
PREEMPT_KILL_AFTER_S = 15.0
TAIL_LINES = 20  # log lines kept on a failed job
REGISTER_RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)  # a registry that is down is tried 5 times
# A running job this leader has not looked at for this long (it was not leading: a restart, a
# takeover, a lease lost and won back) counts its stall time from now: progress reports went to
# another leader meanwhile, and a leader change must never fail a job.
STALL_WATCH_GAP_S = 30.0


class Attempts:
    def __init__(self, jobs: JobLedger, state: SchedulerState, executor: ClusterExecutor, cfg: SchedulerConfig,
                 clock: Clock, registrar: ModelRegistrar | None = None) -> None:
        self.jobs, self.state, self.executor, self.cfg, self.clock = jobs, state, executor, cfg, clock
        self.registrar = registrar
        self._registering: set[asyncio.Task[None]] = set()
        self.progress_times: dict[str, float] = {}
        self._checked: dict[str, float] = {}
        self._suspect: dict[str, int] = {}  # job key -> failed liveness checks in a row
        self._watched: dict[str, tuple[float, float]] = {}  # job key -> (watched since, last looked)
        self._table: ThroughputTable | None = None

    async def table(self) -> ThroughputTable:
        if self._table is None:
            self._table = await self.state.throughput()
        return self._table

    async def admit(self, job: Job, admit: Admit) -> None:
        job.attempt += 1
        job.gpu_type, job.nodes, job.borrowed = admit.gpu_type, list(admit.nodes), admit.borrowed
        job.worker_gpu_types = list(admit.worker_gpu_types)
        job.admit_time = self.clock.time()
        where = "+".join(dict.fromkeys(admit.worker_gpu_types)) or admit.gpu_type
        job.transition(JobState.ADMITTED, f"admitted on {where} ({job.workers} worker(s))"
                       + (" on quota borrowed from the cohort" if admit.borrowed else ""))
        if await self.jobs.save_moved(job, pending=False, active=True):
            await self.track(job)

    async def preempt(self, job: Job, pre: Preempt) -> None:
        """Raise the flag the job polls; the worker SIGTERMs it after the grace period."""
        if job.state in (JobState.ADMITTED, JobState.STARTING):
            await self.executor.release(job)
            job.transition(JobState.PENDING, f"preempted ({pre.reason}) for {pre.for_job} before it started; requeued")
            job.preemptions += 1
            await self.jobs.save_moved(job, pending=True, active=False)
            return
        if job.state != JobState.RUNNING:
            return
        job.transition(JobState.PREEMPTING, f"preempted ({pre.reason}) for {pre.for_job}; "
                                            f"checkpointing (grace {self.cfg.preempt_grace_s:g}s)")
        job.preempt_deadline = self.clock.time() + self.cfg.preempt_grace_s
        if await self.jobs.save_moved(job, pending=False, active=True):
            await self.jobs.request_preempt(job, self.cfg.preempt_grace_s)

    async def progress(self, job: Job, event: dict[str, Any]) -> None:
        """A worker's progress report: fold its step rate into the throughput table and note the
        job's step and trainer status (stored only when the step moved: at most one ledger write
        per report, as before the status existed)."""
        table = await self.table()
        if event.get("gpu_type") and float(event.get("rate", 0)) > 0:
            table.observe(event.get("job_type", ""), event["gpu_type"], float(event["rate"]))
            await self.state.save_throughput(table)
        now = self.clock.time()
        self.progress_times[job.key] = now
        if job.state in HOLDING and job.note_progress(event, now):
            await self.jobs.save_moved(job, pending=False, active=True)

    async def track(self, job: Job) -> None:
        """Move one active job forward by what Ray and its workers say."""
        if job.state not in HOLDING:
            return  # finished, cancelled, or already requeued: a late event of an old attempt
        if job.state == JobState.ADMITTED:
            await self.executor.launch(job)
            job.transition(JobState.STARTING, f"placement group for {job.workers} worker(s) on {job.gpu_type} requested")
            await self.jobs.save_moved(job, pending=False, active=True)
            return
        results = await self.jobs.attempt_results(job)
        if len(results) >= job.workers or any(r.get("exit_code") for r in results.values()):
            await self.finish(job, results)
        elif job.state == JobState.STARTING:
            await self._check_starting(job)
        else:
            await self._check_running(job)

    async def _check_starting(self, job: Job) -> None:
        nodes = await self.executor.placed_nodes(job)
        if nodes is not None:
            # Idempotent: starts the workers whose bundles were placed after the first launch call.
            await self.executor.launch(job, 0.0)
            job.nodes = nodes
            where = "+".join(dict.fromkeys(job.worker_gpu_types)) or job.gpu_type
            job.transition(JobState.RUNNING, f"running on {where}")
            await self.jobs.save_moved(job, pending=False, active=True)
            return
        if not await self.executor.exists(job):
            await self.executor.launch(job)  # the launch was lost: dispatch again
            return
        if not job.gang:  # each worker starts as soon as its own bundle is placed
            await self.executor.launch(job, 0.0)
        if self.clock.time() - job.admit_time > self.cfg.start_timeout_s:
            await self.executor.release(job)
            job.transition(JobState.PENDING, f"placement group not created in {self.cfg.start_timeout_s:g}s; requeued")
            await self.jobs.save_moved(job, pending=True, active=False)

    async def _check_running(self, job: Job) -> None:
        now = self.clock.time()
        limit = job.spec.max_runtime_s
        if limit and job.admit_time and now - job.admit_time > limit:  # per attempt
            await self.finish(job, {0: {"exit_code": -1, "error": f"exceeded its max runtime of {limit:g}s"}})
            return
        if job.state == JobState.PREEMPTING and now > job.preempt_deadline + PREEMPT_KILL_AFTER_S:
            await self.finish(job, {0: {"exit_code": -9, "error": "did not exit after preemption", "preempted": True}})
            return
        if (idle := self._stalled_for(job, now)) is not None:
            await self.finish(job, {0: {"exit_code": -1, "error": f"no step progress for {idle:.0f}s (stalled)"}})
            return
        if now - self._checked.get(job.key, 0.0) < LIVENESS_EVERY_S:
            return
        self._checked[job.key] = now
        why, crashed = await self.executor.workers_alive(job)
        if not why:
            self._suspect.pop(job.key, None)
            return
        # A crashed worker is final at once. Anything else may be Ray's tables lagging a moment
        # (a placement group not yet listed, a launcher busy while another replica connects):
        # only two failed checks in a row mean the workers are gone.
        self._suspect[job.key] = self._suspect.get(job.key, 0) + 1
        log.warning("job %s attempt %d liveness check %d failed: %s", job.name, job.attempt,
                    self._suspect[job.key], why)
        if not crashed and self._suspect[job.key] < LOST_AFTER_CHECKS:
            return
        results = await self.jobs.attempt_results(job)  # a worker may have reported just before exiting
        lost = {r: {"exit_code": -1, "error": f"worker process lost ({crashed[r]})" if r in crashed
                    else f"worker process lost ({why}; its node died or it was killed)"}
                for r in range(job.workers) if r not in results}
        await self.finish(job, {**results, **lost})

    def _stalled_for(self, job: Job, now: float) -> float | None:
        """Seconds a RUNNING attempt has gone without a progress report, when that is past its
        spec's stall_timeout; else None. Counted from the attempt's admission, the job's last
        report to this leader, or when this leader began watching it, whichever is latest."""
        limit = job.spec.stall_timeout_s
        if not limit or job.state != JobState.RUNNING:
            self._watched.pop(job.key, None)
            return None
        since, looked = self._watched.get(job.key, (now, now))
        if now - looked > STALL_WATCH_GAP_S:
            since = now  # this leader was away: reports went elsewhere
        self._watched[job.key] = (since, now)
        idle = now - max(job.admit_time, self.progress_times.get(job.key, 0.0), since)
        return idle if idle > limit else None

    async def finish(self, job: Job, results: dict[int, dict[str, Any]]) -> None:
        """End the attempt: free Ray, then SUCCEEDED, requeued (preempted or retrying) or FAILED."""
        await self.executor.release(job)
        self._checked.pop(job.key, None)
        self._suspect.pop(job.key, None)
        self._watched.pop(job.key, None)
        ranked = [results[r] for r in sorted(results)]
        bad = next((r for r in ranked if r.get("exit_code")), None)
        result = bad or ranked[0]
        job.exit_code = int(result.get("exit_code", 0))
        job.output_uri = result.get("output_uri", job.output_uri)
        job.step = max(job.step, int(result.get("step", 0) or 0))
        job.latest_metrics = {k: float(v) for k, v in result.get("metrics", {}).items()} or job.latest_metrics
        preempted = job.state == JobState.PREEMPTING or (result.get("preempted") and job.exit_code == PREEMPTED_EXIT_CODE)
        register = self._registration(job) if job.exit_code == 0 else ""
        if job.exit_code == 0:
            job.transition(JobState.SUCCEEDED, f"succeeded; registering its output as models:/{register}" if register
                           else "succeeded")
        elif preempted:
            job.preemptions += 1
            job.transition(JobState.PENDING, f"preempted at step {job.step}; requeued to resume from its checkpoint")
        elif job.retries < job.spec.max_retries and result.get("retryable", True):
            job.retries += 1
            job.last_log_lines = await self.jobs.tail(job.tenant, job.id, TAIL_LINES)
            job.transition(JobState.PENDING, f"attempt {job.attempt} failed ({result.get('error', '')}); "
                                             f"retry {job.retries} of {job.spec.max_retries}")
        else:
            job.last_log_lines = await self.jobs.tail(job.tenant, job.id, TAIL_LINES)
            job.transition(JobState.FAILED, result.get("error") or f"exit code {job.exit_code}")
        requeued = job.state == JobState.PENDING
        if await self.jobs.save_moved(job, pending=requeued, active=False):
            await self.jobs.clear_preempt(job)
            log.info("job %s attempt %d ended: %s (%s)", job.name, job.attempt, job.state.value, job.message)
            if register:
                task = asyncio.create_task(self._register(job, register))
                self._registering.add(task)
                task.add_done_callback(self._registering.discard)

    def _registration(self, job: Job) -> str:
        """``model`` (or ``model@alias``) a succeeded job's output is to be registered as; "" for
        none (not a trainer, no register_model, no registrar, or an output that is no model)."""
        w = job.spec.workload
        if self.registrar is None or not isinstance(w, Trainer) or not w.register_model:
            return ""
        workload = REGISTRY.get(WorkloadKind.TRAINER, w.trainer)
        if workload is None or not workload.output_format:
            return ""
        return w.register_model + (f"@{w.register_alias}" if w.register_alias else "")

    async def _register(self, job: Job, what: str) -> None:
        """Register the output (retrying a registry that is down), then record the version on
        the job; a failure is said in the job's message, the output stays where it is."""
        assert self.registrar is not None
        version, error = "", ""
        for delay in REGISTER_RETRY_DELAYS_S:
            try:
                version = await self.registrar.register(job)
                break
            except Exception as exc:  # noqa: BLE001 - retried, then reported on the job
                error = str(exc)[:300] or type(exc).__name__
                log.warning("registering job %s's output failed: %s", job.name, error)
                await asyncio.sleep(delay)
        for _ in range(5):  # compare-and-swap: re-read on a concurrent change
            fresh = await self.jobs.get(job.tenant, job.id)
            if version:
                fresh.registered_model_version = version
                fresh.message = f"succeeded; registered as {version}"
            else:
                fresh.message = (f"succeeded; registering its output as models:/{what} failed ({error}); the model "
                                 f"files stay at {fresh.output_uri}")
            if await self.jobs.save_moved(fresh, pending=False, active=False):
                return
