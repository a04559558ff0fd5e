"""The job ledger in Redis: job documents, per-tenant indexes, the pending queue, logs, metrics.

Keys: ``pylon:job:{tenant}:{id}`` (JSON), ``pylon:jobs:{tenant}`` (zset by create time),
``pylon:jobreq:{tenant}:{request_id}`` (idempotent submit), ``pylon:pending`` (zset, FIFO by
submit time), ``pylon:active`` (set of ``tenant/id`` holding resources),
``pylon:joblog:{tenant}:{id}`` (list of JSON lines), ``pylon:jobmetrics:...``,
``pylon:jobresults:{tenant}:{id}:{attempt}`` (hash rank -> result JSON, written by workers),
``pylon:jobstop:...`` / ``pylon:jobpreempt:...`` (flags workers poll).

Every write that changes a job's state and its index membership goes in one MULTI/EXEC, so a
crash between them never leaves a job both pending and active (or neither).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from pylon_services.common.errors import NotFound
from pylon_services.scheduler.domain.job import Job
from pylon_services.scheduler.store.redis_sched import EVENTS, EVENTS_MAXLEN

PENDING = "pylon:pending"
ACTIVE = "pylon:active"


def log_key(tenant: str, job_id: str) -> str:
    return f"pylon:joblog:{tenant}:{job_id}"


def metrics_key(tenant: str, job_id: str) -> str:
    return f"pylon:jobmetrics:{tenant}:{job_id}"


def results_key(tenant: str, job_id: str, attempt: int) -> str:
    return f"pylon:jobresults:{tenant}:{job_id}:{attempt}"


def stop_key(tenant: str, job_id: str) -> str:
    return f"pylon:jobstop:{tenant}:{job_id}"


def preempt_key(tenant: str, job_id: str) -> str:
    return f"pylon:jobpreempt:{tenant}:{job_id}"


# Idempotent create: request-id claim, job document, indexes and the wake-up event together.
_CREATE = """
if ARGV[9] == '1' and redis.call('exists', KEYS[2]) == 0 then return {'noqueue'} end
if ARGV[8] == '1' then
  local existing = redis.call('get', KEYS[1])
  if existing then return {'exists', redis.call('get', ARGV[10] .. existing)} end
  redis.call('set', KEYS[1], ARGV[1])
end
redis.call('set', KEYS[3], ARGV[2])
redis.call('zadd', KEYS[4], ARGV[3], ARGV[1])
redis.call('zadd', KEYS[5], ARGV[4], ARGV[5])
redis.call('xadd', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'e', ARGV[6])
return {'created'}
"""


class JobStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.r = redis
        self._create_script = redis.register_script(_CREATE)

    async def create(self, job: Job, require_queue_key: str = "") -> tuple[Job, bool]:
        """Store a new job and queue it in ONE atomic script (one round trip): with a
        request_id, return the job that id already created instead of a second one; with
        ``require_queue_key``, refuse (NotFound) when that queue does not exist."""
        job.queued_at = job.queued_at or job.create_time
        rk = f"pylon:jobreq:{job.tenant}:{job.request_id}" if job.request_id else "pylon:jobreq:-"
        event = json.dumps({"type": "submitted", "job": job.key})
        out = await self._create_script(
            keys=[rk, require_queue_key or "pylon:queue:-", self._key(job.tenant, job.id), f"pylon:jobs:{job.tenant}",
                  PENDING, EVENTS],
            args=[job.id, json.dumps(job.to_dict()), repr(job.create_time), repr(job.queued_at), job.key, event,
                  EVENTS_MAXLEN, "1" if job.request_id else "0", "1" if require_queue_key else "0",
                  f"pylon:job:{job.tenant}:"])
        verdict = out[0].decode()
        if verdict == "noqueue":
            raise NotFound(f"queue tenants/{require_queue_key.split(':', 2)[2].replace(':', '/queues/')} not found; "
                           "an admin creates it with CreateQueue")
        if verdict == "exists":
            return Job.from_dict(json.loads(out[1])), False
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


    async def save_moved(self, job: Job, *, pending: bool, active: bool) -> bool:
        """Compare-and-swap ``job`` (its ``version`` must still be the stored one) and set its
        membership of the pending queue and the active set in the same transaction. Returns
        False, writing nothing, when someone else changed the job first."""
        key = self._key(job.tenant, job.id)
        async with self.r.pipeline(transaction=True) as p:
            try:
                await p.watch(key)
                raw = await p.get(key)
                if raw is None or int(json.loads(raw).get("version", 0)) != job.version:
                    return False
                job.version += 1
                p.multi()
                p.set(key, json.dumps(job.to_dict()))
                if pending:
                    p.zadd(PENDING, {job.key: job.queued_at or time.time()})
                else:
                    p.zrem(PENDING, job.key)
                if active:
                    p.sadd(ACTIVE, job.key)
                else:
                    p.srem(ACTIVE, job.key)
                await p.execute()
                return True
            except aioredis.WatchError:
                job.version -= 1
                return False

    async def get_many(self, keys: list[str]) -> list[Job]:
        """Jobs by ``tenant/id`` in one round trip; vanished ones are skipped."""
        if not keys:
            return []
        raws = await self.r.mget([self._key(*k.split("/", 1)) for k in keys])
        return [Job.from_dict(json.loads(x)) for x in raws if x is not None]

    async def pending_scored(self) -> list[tuple[str, float]]:
        """(``tenant/id``, queued-at) of queued jobs, oldest first."""
        return [(m.decode(), s) for m, s in await self.r.zrange(PENDING, 0, -1, withscores=True)]

    async def active_keys(self) -> list[str]:
        return sorted(m.decode() for m in await self.r.smembers(ACTIVE))

    async def attempt_results(self, job: Job) -> dict[int, dict[str, Any]]:
        """Results the workers of the job's current attempt have written, by rank."""
        raw = await self.r.hgetall(results_key(job.tenant, job.id, job.attempt))
        return {int(k): json.loads(v) for k, v in raw.items()}

    async def list_jobs(self, tenant: str, page_size: int, page_token: str | None) -> tuple[list[Job], str | None]:
        """Newest first; the token is the offset of the next page."""
        start = int(page_token or 0)
        ids = await self.r.zrevrange(f"pylon:jobs:{tenant}", start, start + page_size - 1)
        jobs = [await self.get(tenant, i.decode()) for i in ids]
        return jobs, (str(start + page_size) if len(ids) == page_size else None)

    async def pending(self) -> list[tuple[str, str]]:
        """(tenant, id) of queued jobs, oldest first."""
        return [tuple(m.decode().split("/", 1)) for m in await self.r.zrange(PENDING, 0, -1)]  # type: ignore[misc]

    async def active(self) -> list[Job]:
        """Jobs holding (or about to hold) resources: what a new leader must reconcile."""
        return [j for j in await self.get_many(await self.active_keys()) if not j.state.terminal]

    async def logs(self, tenant: str, job_id: str, offset: int) -> list[dict[str, Any]]:
        raw = await self.r.lrange(log_key(tenant, job_id), offset, offset + 999)
        return [json.loads(x) for x in raw]

    async def tail(self, tenant: str, job_id: str, n: int) -> list[str]:
        return [json.loads(x)["text"] for x in await self.r.lrange(log_key(tenant, job_id), -n, -1)]

    async def metrics(self, tenant: str, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in await self.r.lrange(metrics_key(tenant, job_id), 0, -1)]
