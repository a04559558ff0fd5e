"""The scheduling loop: admit pending jobs with the policy, launch them on Ray, track them to
the end, retry or fail them per their spec. Only the holder of a Redis lease makes decisions,
so several scheduler replicas can run."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

import redis.asyncio as aioredis

from pylon_services.common.errors import FailedPrecondition, NotFound
from pylon_services.scheduler.domain.job import Job, JobState
from pylon_services.scheduler.domain.policy import fifo_admit
from pylon_services.scheduler.store.ray_exec import Attempt, RayExecutor
from pylon_services.scheduler.store.redis_jobs import JobStore

log = logging.getLogger("pylon.scheduler")
LEASE_KEY = "pylon:scheduler:leader"
LEASE_S = 10


class Controller:
    def __init__(self, jobs: JobStore, executor: RayExecutor, redis: aioredis.Redis, period_s: float = 0.5) -> None:
        self.jobs = jobs
        self.executor = executor
        self.redis = redis
        self.period_s = period_s
        self.identity = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.running: dict[str, tuple[Attempt, asyncio.Task[None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        await self.redis.delete(LEASE_KEY) if await self._is_leader() else None

    def wake(self) -> None:
        self._wake.set()

    async def _is_leader(self) -> bool:
        cur = await self.redis.get(LEASE_KEY)
        return cur is not None and cur.decode() == self.identity

    async def _acquire_lease(self) -> bool:
        if await self.redis.set(LEASE_KEY, self.identity, nx=True, ex=LEASE_S):
            await self._reconcile()
            return True
        if await self._is_leader():
            await self.redis.expire(LEASE_KEY, LEASE_S)
            return True
        return False

    async def _reconcile(self) -> None:
        """A new leader cannot adopt attempts it did not launch: fail them (or requeue if they
        may retry) so nothing stays RUNNING forever."""
        for job in await self.jobs.active():
            if job.id not in self.running:
                await self._finish(job, {"exit_code": -1, "error": "scheduler restarted while the job ran"})

    async def _loop(self) -> None:
        while True:
            try:
                if await self._acquire_lease():
                    await self._schedule_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep scheduling through transient errors
                log.exception("scheduling pass failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.period_s)
            except TimeoutError:
                pass

    async def _schedule_once(self) -> None:
        pending: list[Job] = []
        for tenant, job_id in await self.jobs.pending():
            try:
                pending.append(await self.jobs.get(tenant, job_id))
            except NotFound:
                continue
        if not pending:
            return
        free = await asyncio.to_thread(self.executor.free)
        for job, pool in fifo_admit(pending, free):
            await self._launch(job, pool)

    async def _launch(self, job: Job, pool: str) -> None:
        await self.jobs.dequeue(job)
        job.attempt += 1
        job.gpu_type = pool
        job.transition(JobState.ADMITTED, f"admitted on pool {pool}")
        await self.jobs.save(job)
        attempt = self.executor.launch(job, pool, job.attempt)
        job.transition(JobState.STARTING, f"placement group for {job.spec.get('workers', 1)} worker(s) requested")
        await self.jobs.save(job)
        self.running[job.id] = (attempt, asyncio.create_task(self._track(job, attempt)))

    async def _track(self, job: Job, attempt: Attempt) -> None:
        if not await self.executor.wait_ready(attempt):
            self.executor.release(attempt)
            self.running.pop(job.id, None)
            job = await self.jobs.get(job.tenant, job.id)
            if job.state == JobState.STARTING:
                job.transition(JobState.PENDING, "placement group not ready in time; requeued")
                await self.jobs.save(job)
                await self.jobs.requeue(job)
            return
        job = await self.jobs.get(job.tenant, job.id)
        if job.state != JobState.STARTING:
            return
        job.transition(JobState.RUNNING, "running")
        await self.jobs.save(job)
        result = await self.executor.wait(attempt)
        self.running.pop(job.id, None)
        await self._finish(await self.jobs.get(job.tenant, job.id), result)

    async def _finish(self, job: Job, result: dict) -> None:
        if job.state.terminal:
            return
        job.exit_code = int(result.get("exit_code", 0))
        job.output_uri = result.get("output_uri", job.output_uri)
        job.latest_metrics = {k: float(v) for k, v in result.get("metrics", {}).items()}
        if "dataset_digests" in result:
            job.spec.setdefault("trainer", {})["dataset_digests"] = result["dataset_digests"]
        if job.exit_code == 0:
            job.transition(JobState.SUCCEEDED, "succeeded")
        elif job.attempt <= int(job.spec.get("max_retries", 0)):
            job.transition(JobState.PENDING, f"attempt {job.attempt} failed ({result.get('error', '')}); retrying")
            await self.jobs.save(job)
            await self.jobs.requeue(job)
            return
        else:
            job.last_log_lines = await self.jobs.tail(job.tenant, job.id, 20)
            job.transition(JobState.FAILED, result.get("error") or f"exit code {job.exit_code}")
        await self.jobs.save(job)

    async def cancel(self, job: Job) -> Job:
        if job.state.terminal:
            raise FailedPrecondition(f"job {job.name} already {job.state.value}; nothing to cancel")
        await self.redis.set(f"pylon:jobstop:{job.tenant}:{job.id}", "cancel", ex=3600)
        job.transition(JobState.CANCELLED, "cancelled by user")
        await self.jobs.save(job)
        await self.jobs.dequeue(job)
        entry = self.running.pop(job.id, None)
        if entry:
            entry[1].cancel()
            await asyncio.to_thread(self.executor.cancel, entry[0])
        return job
