"""The job ledger in Redis (``JobLedger``): job documents, per-tenant indexes, the pending queue,
results, logs, metrics and control flags (keys: ``keys.py``).

Every write that changes a job's state and its index membership goes in one MULTI/EXEC, so a
crash between them never leaves a job both pending and active (or neither). A submit is one Lua
script: request-id claim, job document, indexes and the wake-up event together.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from pylon_services.common.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from pylon_services.scheduler.config import SchedulerConfig
from pylon_services.scheduler.domain.job import Job, JobState, new_job_id
from pylon_services.scheduler.store.keys import (
    ACTIVE,
    EVENTS,
    EVENTS_MAXLEN,
    PENDING,
    job_key,
    log_key,
    metrics_key,
    preempt_key,
    queue_key,
    results_key,
    stop_key,
    tenant_jobs_key,
    tenant_pending_key,
)

ID_TRIES = 5  # draws of a job id before a submit gives up (a repeat needs the same second)
# A filtered ListJobs page reads at most this many jobs; fewer matches than page_size with a
# next_page_token is a normal page (AIP-158), so a rare state never makes one call walk all jobs.
LIST_SCAN_LIMIT = 2000
_OFFSET_TOKEN = re.compile(r"[0-9]{1,12}")
STOP_FLAG_TTL_S = 3600
PREEMPT_FLAG_TTL_S = 86400

# KEYS: request id, queue, job, tenant index, pending queue, events, tenant's pending set.
# ARGV[11]: the most pending jobs a tenant may have (0: no limit). The limit is checked after the
# request-id claim, so a retried submit of a queued job still answers with that job.
_CREATE = """
if ARGV[9] == '1' and redis.call('exists', KEYS[2]) == 0 then return {'noqueue'} end
if ARGV[8] == '1' then
  local existing = redis.call('get', KEYS[1])
  if existing then return {'exists', redis.call('get', ARGV[10] .. existing)} end
end
local most = tonumber(ARGV[11])
if most > 0 and redis.call('zcard', KEYS[7]) >= most then return {'full'} end
if redis.call('exists', KEYS[3]) == 1 then return {'taken'} end
if ARGV[8] == '1' then redis.call('set', KEYS[1], ARGV[1]) end
redis.call('set', KEYS[3], ARGV[2])
redis.call('zadd', KEYS[4], ARGV[3], ARGV[1])
redis.call('zadd', KEYS[5], ARGV[4], ARGV[5])
redis.call('zadd', KEYS[7], ARGV[4], ARGV[5])
redis.call('xadd', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'e', ARGV[6])
return {'created'}
"""
# A tenant at its pending limit is told to come back after about this long (its backlog drains
# as the leader admits jobs).
PENDING_FULL_RETRY_S = 30.0


def parse_offset_token(token: str) -> int:
    """A page token this ledger issued (a decimal offset); anything else is INVALID_ARGUMENT."""
    if not token:
        return 0
    if not _OFFSET_TOKEN.fullmatch(token):
        raise InvalidArgument.field("page_token", "is not a token this server issued")
    return int(token)


class JobStore:
    def __init__(self, redis: aioredis.Redis, track_changes: bool = False,
                 max_pending_per_tenant: int | None = None) -> None:
        self.r = redis
        # ``PYLON_SCHED_MAX_PENDING_PER_TENANT`` unless given; 0 turns the limit off.
        self.max_pending_per_tenant = (SchedulerConfig().max_pending_per_tenant if max_pending_per_tenant is None
                                       else max_pending_per_tenant)
        # redis-py's Script: EVALSHA, and EVAL again after a restarted Redis lost its script cache.
        self._create_script = redis.register_script(_CREATE)
        # Keys of jobs this process wrote (save_moved): the leader refreshes exactly these in its
        # in-memory backlog instead of re-reading every pending job each pass.
        self._touched: set[str] | None = set() if track_changes else None

    def touched_any(self) -> bool:
        return bool(self._touched)

    def drain_touched(self) -> set[str]:
        """Keys written through this store since the last call (empty unless tracking)."""
        if not self._touched:
            return set()
        out, self._touched = self._touched, set()
        return out

    async def create(self, job: Job, require_queue: str = "") -> tuple[Job, bool]:
        """Store a new job and queue it in one atomic script (one round trip): with a request_id,
        return the job that id already created instead of a second one; with ``require_queue``
        (a queue name), refuse (NotFound) when that queue does not exist; refuse
        (ResourceExhausted) a job that would take its tenant over ``max_pending_per_tenant``."""
        job.queued_at = job.queued_at or job.create_time
        rk = f"pylon:jobreq:{job.tenant}:{job.request_id}" if job.request_id else "pylon:jobreq:-"
        qk = queue_key(require_queue) if require_queue else "pylon:queue:-"
        for _ in range(ID_TRIES):
            event = orjson.dumps({"type": "submitted", "job": job.key})
            out = await self._create_script(
                keys=[rk, qk, job_key(job.tenant, job.id), tenant_jobs_key(job.tenant), PENDING, EVENTS,
                      tenant_pending_key(job.tenant)],
                args=[job.id, orjson.dumps(job.to_dict()), repr(job.create_time), repr(job.queued_at), job.key, event,
                      EVENTS_MAXLEN, "1" if job.request_id else "0", "1" if require_queue else "0",
                      f"pylon:job:{job.tenant}:", self.max_pending_per_tenant])
            if out[0] != b"taken":
                break
            job.id = self.new_id()  # an id drawn twice in the same second: never overwrite a job
        else:
            raise Unavailable(f"could not draw an unused job id in {ID_TRIES} tries; retry")
        verdict = out[0].decode()
        if verdict == "full":
            raise ResourceExhausted(f"tenant {job.tenant} has {self.max_pending_per_tenant} pending jobs, the most "
                                    f"it may queue; retry when some have started", retry_after_s=PENDING_FULL_RETRY_S)
        if verdict == "noqueue":
            raise NotFound(f"queue {require_queue} not found; an admin creates it with CreateQueue")
        if verdict == "exists":
            return Job.from_dict(orjson.loads(out[1])), False
        return job, True

    @staticmethod
    def new_id() -> str:
        return new_job_id()

    async def get(self, tenant: str, job_id: str) -> Job:
        raw = await self.r.get(job_key(tenant, job_id))
        if raw is None:
            raise NotFound(f"tenants/{tenant}/jobs/{job_id} not found")
        return Job.from_dict(orjson.loads(raw))

    async def save_moved(self, job: Job, *, pending: bool, active: bool, notify: bool = False) -> bool:
        key = job_key(job.tenant, job.id)
        async with self.r.pipeline(transaction=True) as p:
            try:
                await p.watch(key)
                raw = await p.get(key)
                if raw is None or int(orjson.loads(raw).get("version", 0)) != job.version:
                    return False
                job.version += 1
                p.multi()
                p.set(key, orjson.dumps(job.to_dict()))
                if pending:
                    queued_at = job.queued_at or time.time()
                    p.zadd(PENDING, {job.key: queued_at})
                    p.zadd(tenant_pending_key(job.tenant), {job.key: queued_at})
                else:
                    p.zrem(PENDING, job.key)
                    p.zrem(tenant_pending_key(job.tenant), job.key)
                if active:
                    p.sadd(ACTIVE, job.key)
                else:
                    p.srem(ACTIVE, job.key)
                if notify:
                    p.xadd(EVENTS, {"e": orjson.dumps({"type": "changed", "job": job.key})}, maxlen=EVENTS_MAXLEN,
                           approximate=True)
                await p.execute()
                if self._touched is not None:
                    self._touched.add(job.key)
                return True
            except aioredis.WatchError:
                job.version -= 1
                return False

    async def get_many(self, keys: Sequence[str]) -> list[Job]:
        if not keys:
            return []
        raws = await self.r.mget([job_key(*k.split("/", 1)) for k in keys])
        return [Job.from_dict(orjson.loads(x)) for x in raws if x is not None]

    async def pending_scored(self) -> list[tuple[str, float]]:
        """(``tenant/id``, queued-at) of queued jobs, oldest first."""
        return [(m.decode(), s) for m, s in await self.r.zrange(PENDING, 0, -1, withscores=True)]

    async def pending_keys(self) -> list[str]:
        """``tenant/id`` of queued jobs, oldest first (no scores: cheaper for a big backlog)."""
        return [m.decode() for m in await self.r.zrange(PENDING, 0, -1)]

    async def queued(self, keys: Sequence[str]) -> list[bool]:
        """Whether each of ``keys`` is in the pending queue now (one ZMSCORE)."""
        if not keys:
            return []
        return [s is not None for s in await self.r.zmscore(PENDING, list(keys))]

    async def active_keys(self) -> list[str]:
        return sorted(m.decode() for m in await self.r.smembers(ACTIVE))

    async def active(self) -> list[Job]:
        return [j for j in await self.get_many(await self.active_keys()) if not j.state.terminal]

    async def attempt_results(self, job: Job) -> dict[int, dict[str, Any]]:
        raw = await self.r.hgetall(results_key(job.tenant, job.id, job.attempt))
        return {int(k): orjson.loads(v) for k, v in raw.items()}

    async def list_jobs(self, tenant: str, page_size: int, page_token: str,
                        states: Iterable[JobState] = (), max_bytes: int = 0) -> tuple[list[Job], str]:
        """Newest first. With ``states``, the filter applies before paging: a page holds up to
        ``page_size`` matching jobs found among the next ``LIST_SCAN_LIMIT``; with ``max_bytes``,
        a page ends early once its jobs' stored documents reach that size (never empty, since a
        spec is bounded). The token is the offset in the tenant's index where the next page starts."""
        wanted = set(states)
        start = parse_offset_token(page_token)
        scan = page_size if not wanted else max(page_size, LIST_SCAN_LIMIT)
        out: list[Job] = []
        pos, size = start, 0
        index = tenant_jobs_key(tenant)
        while len(out) < page_size and pos - start < scan:
            chunk = min(scan - (pos - start), max(page_size, 200) if wanted else page_size - len(out))
            ids = [i.decode() for i in await self.r.zrevrange(index, pos, pos + chunk - 1)]
            if not ids:
                return out, ""
            raws = await self.r.mget([job_key(tenant, i) for i in ids])
            for n, raw in enumerate(raws, start=1):
                if raw is None:
                    continue
                job = Job.from_dict(orjson.loads(raw))
                if wanted and job.state not in wanted:
                    continue
                if out and max_bytes and size + len(raw) > max_bytes:
                    return out, str(pos + n - 1)
                out.append(job)
                size += len(raw)
                if len(out) == page_size:
                    return out, str(pos + n)
            pos += len(ids)
            if len(ids) < chunk:
                return out, ""
        return out, str(pos)

    async def logs(self, tenant: str, job_id: str, offset: int) -> list[dict[str, Any]]:
        raw = await self.r.lrange(log_key(tenant, job_id), offset, offset + 999)
        return [orjson.loads(x) for x in raw]

    async def tail(self, tenant: str, job_id: str, n: int) -> list[str]:
        return [orjson.loads(x)["text"] for x in await self.r.lrange(log_key(tenant, job_id), -n, -1)]

    async def metrics(self, tenant: str, job_id: str) -> list[dict[str, Any]]:
        """Every point a worker reported; one it could not have meant (a non-finite value, which
        Python's json writes as NaN and orjson refuses, or a malformed entry) is skipped."""
        out = []
        for raw in await self.r.lrange(metrics_key(tenant, job_id), 0, -1):
            try:
                point = orjson.loads(raw)
                if not -2**63 <= int(point["step"]) < 2**63:
                    continue
                out.append({"key": str(point["key"]), "step": int(point["step"]), "value": float(point["value"]),
                            "t": float(point["t"])})
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        return out

    async def request_stop(self, job: Job) -> None:
        await self.r.set(stop_key(job.tenant, job.id), "cancel", ex=STOP_FLAG_TTL_S)

    async def request_preempt(self, job: Job, grace_s: float) -> None:
        await self.r.set(preempt_key(job.tenant, job.id), repr(grace_s), ex=PREEMPT_FLAG_TTL_S)

    async def clear_preempt(self, job: Job) -> None:
        await self.r.delete(preempt_key(job.tenant, job.id))
