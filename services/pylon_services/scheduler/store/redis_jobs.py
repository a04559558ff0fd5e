"""The job ledger in Redis: job documents, per-tenant indexes, the pending queue, logs, metrics.

Keys: ``pylon:job:{tenant}:{id}`` (JSON), ``pylon:jobs:{tenant}`` (zset by create time),
``pylon:jobreq:{tenant}:{request_id}`` (idempotent submit), ``pylon:pending`` (zset, FIFO by
submit time), ``pylon:joblog:{tenant}:{id}`` (list of JSON lines), ``pylon:jobmetrics:...``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from pylon_services.common.errors import NotFound
from pylon_services.scheduler.domain.job import Job

PENDING = "pylon:pending"


def log_key(tenant: str, job_id: str) -> str:
    return f"pylon:joblog:{tenant}:{job_id}"


def metrics_key(tenant: str, job_id: str) -> str:
    return f"pylon:jobmetrics:{tenant}:{job_id}"


class JobStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis

    async def create(self, job: Job) -> tuple[Job, bool]:
        """Store a new job and queue it; with a request_id, return the existing job instead
        of creating a second one (SET NX makes concurrent duplicates collapse to one)."""
        if job.request_id:
            rk = f"pylon:jobreq:{job.tenant}:{job.request_id}"
            if not await self.r.set(rk, job.id, nx=True):
                existing = (await self.r.get(rk)).decode()
                for _ in range(50):  # the winner may not have written its job yet
                    try:
                        return await self.get(job.tenant, existing), False
                    except NotFound:
                        await _sleep(0.02)
                raise NotFound(f"job for request_id {job.request_id} vanished")
        async with self.r.pipeline(transaction=True) as p:
            p.set(self._key(job.tenant, job.id), json.dumps(job.to_dict()))
            p.zadd(f"pylon:jobs:{job.tenant}", {job.id: job.create_time})
            p.zadd(PENDING, {f"{job.tenant}/{job.id}": time.time()})
            await p.execute()
        return job, True

    @staticmethod
    def new_id() -> str:
        return time.strftime("j%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:6]

    @staticmethod
    def _key(tenant: str, job_id: str) -> str:
        return f"pylon:job:{tenant}:{job_id}"

    async def get(self, tenant: str, job_id: str) -> Job:
        raw = await self.r.get(self._key(tenant, job_id))
        if raw is None:
            raise NotFound(f"tenants/{tenant}/jobs/{job_id} not found")
        return Job.from_dict(json.loads(raw))

    async def save(self, job: Job) -> None:
        await self.r.set(self._key(job.tenant, job.id), json.dumps(job.to_dict()))

    async def list_jobs(self, tenant: str, page_size: int, page_token: str | None) -> tuple[list[Job], str | None]:
        """Newest first; the token is the offset of the next page."""
        start = int(page_token or 0)
        ids = await self.r.zrevrange(f"pylon:jobs:{tenant}", start, start + page_size - 1)
        jobs = [await self.get(tenant, i.decode()) for i in ids]
        return jobs, (str(start + page_size) if len(ids) == page_size else None)

    async def pending(self) -> list[tuple[str, str]]:
        """(tenant, id) of queued jobs, oldest first."""
        return [tuple(m.decode().split("/", 1)) for m in await self.r.zrange(PENDING, 0, -1)]  # type: ignore[misc]

    async def requeue(self, job: Job) -> None:
        await self.r.zadd(PENDING, {f"{job.tenant}/{job.id}": time.time()})

    async def dequeue(self, job: Job) -> None:
        await self.r.zrem(PENDING, f"{job.tenant}/{job.id}")

    async def active(self) -> list[Job]:
        """Jobs not pending and not finished (what a restarted scheduler must reconcile)."""
        out = []
        async for key in self.r.scan_iter(match="pylon:job:*", count=500):
            job = Job.from_dict(json.loads(await self.r.get(key)))
            if not job.state.terminal and job.state.value != "pending":
                out.append(job)
        return out

    async def logs(self, tenant: str, job_id: str, offset: int) -> list[dict[str, Any]]:
        raw = await self.r.lrange(log_key(tenant, job_id), offset, offset + 999)
        return [json.loads(x) for x in raw]

    async def tail(self, tenant: str, job_id: str, n: int) -> list[str]:
        return [json.loads(x)["text"] for x in await self.r.lrange(log_key(tenant, job_id), -n, -1)]

    async def metrics(self, tenant: str, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in await self.r.lrange(metrics_key(tenant, job_id), 0, -1)]


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)
