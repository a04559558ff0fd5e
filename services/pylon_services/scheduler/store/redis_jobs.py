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

import asyncio
import hashlib
import json
import os
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from pylon_services.common.errors import NotFound, Unavailable
from pylon_services.scheduler.domain.job import Job
from pylon_services.scheduler.store.redis_sched import EVENTS, EVENTS_MAXLEN
from pylon_services.scheduler.store.resp_pipe import RespPipe

PENDING = "pylon:pending"
ACTIVE = "pylon:active"
ID_TRIES = 5  # draws of a job id before a submit gives up (a repeat needs the same second)


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
end
if redis.call('exists', KEYS[3]) == 1 then return {'taken'} end
if ARGV[8] == '1' then redis.call('set', KEYS[1], ARGV[1]) end
redis.call('set', KEYS[3], ARGV[2])
redis.call('zadd', KEYS[4], ARGV[3], ARGV[1])
redis.call('zadd', KEYS[5], ARGV[4], ARGV[5])
redis.call('xadd', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'e', ARGV[6])
return {'created'}
"""


class ScriptBatcher:
    """Runs one Lua script for many concurrent callers, pipelined. On plain TCP or Unix-socket
    Redis, every call is written at once to one dedicated connection and its reply resolves it in
    order (``resp_pipe.py``: redis-py's per-call machinery was ~40% of SubmitJob's CPU). Else,
    through redis-py: a call made while no batch is in flight goes out at once; calls made while
    one is in flight wait for it and then go out together as one pipeline. Each script still runs
    on its own (atomic, its own result or error per caller)."""

    def __init__(self, redis: aioredis.Redis, source: str) -> None:
        self.r = redis
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._pipe = RespPipe.for_client(redis)
        self._queue: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._busy = False
        self.batches = self.calls = 0  # for tests and benchmarks

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        if self._pipe is not None:
            try:
                return await self._pipe.call(b"EVALSHA", self.sha, len(keys), *keys, *args)
            except ResponseError as e:
                if not str(e).startswith("NOSCRIPT"):
                    raise
                # A restarted Redis lost its script cache; EVAL runs the script and caches it again.
                return await self._pipe.call(b"EVAL", self.source, len(keys), *keys, *args)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((keys, args, fut))
        if not self._busy:
            self._busy = True
            loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                self.batches, self.calls = self.batches + 1, self.calls + len(batch)
                await self._send(batch)
        finally:
            self._busy = False

    async def _send(self, batch: list[tuple[list[str], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._run([(k, a) for k, a, _ in batch])
        except Exception as e:  # noqa: BLE001 - every caller of the batch gets the error
            results = [e] * len(batch)
        for (_, _, fut), res in zip(batch, results, strict=True):
            if fut.done():
                continue  # the caller gave up (deadline); the script ran or not, as for one call
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    async def _run(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(2):
            if len(todo) == 1:  # a lone call: a plain EVALSHA is cheaper than a pipeline
                keys, args = calls[todo[0]]
                try:
                    results[todo[0]] = await self.r.evalsha(self.sha, len(keys), *keys, *args)
                except aioredis.ResponseError as e:  # NoScriptError included
                    results[todo[0]] = e
            else:
                async with self.r.pipeline(transaction=False) as p:
                    for i in todo:
                        keys, args = calls[i]
                        p.evalsha(self.sha, len(keys), *keys, *args)
                    out = await p.execute(raise_on_error=False)
                for i, res in zip(todo, out, strict=True):
                    results[i] = res
            # NOSCRIPT: that call did not run (a restarted Redis lost its script cache); load the
            # script and run just those again.
            todo = [i for i in todo if isinstance(results[i], NoScriptError)]
            if not todo:
                break
            await self.r.script_load(self.source)
        return results


class JobStore:
    def __init__(self, redis: aioredis.Redis, track_changes: bool = False) -> None:
        self.r = redis
        self._create_script = ScriptBatcher(redis, _CREATE)
        # Keys of jobs this process wrote (save_moved): the leader refreshes exactly these in its
        # in-memory backlog (``backlog.py``) instead of re-reading every pending job each pass.
        self._touched: set[str] | None = set() if track_changes else None

    def touched_any(self) -> bool:
        return bool(self._touched)

    def drain_touched(self) -> set[str]:
        """Keys written through this store since the last call (empty unless tracking)."""
        if not self._touched:
            return set()
        out, self._touched = self._touched, set()
        return out

    async def create(self, job: Job, require_queue_key: str = "") -> tuple[Job, bool]:
        """Store a new job and queue it in ONE atomic script (one round trip): with a
        request_id, return the job that id already created instead of a second one; with
        ``require_queue_key``, refuse (NotFound) when that queue does not exist."""
        job.queued_at = job.queued_at or job.create_time
        rk = f"pylon:jobreq:{job.tenant}:{job.request_id}" if job.request_id else "pylon:jobreq:-"
        for _ in range(ID_TRIES):
            event = orjson.dumps({"type": "submitted", "job": job.key})
            out = await self._create_script(
                [rk, require_queue_key or "pylon:queue:-", self._key(job.tenant, job.id), f"pylon:jobs:{job.tenant}",
                 PENDING, EVENTS],
                [job.id, orjson.dumps(job.to_dict()), repr(job.create_time), repr(job.queued_at), job.key, event,
                 EVENTS_MAXLEN, "1" if job.request_id else "0", "1" if require_queue_key else "0",
                 f"pylon:job:{job.tenant}:"])
            if out[0] != b"taken":
                break
            job.id = self.new_id()  # an id drawn twice in the same second: never overwrite a job
        else:
            raise Unavailable(f"could not draw an unused job id in {ID_TRIES} tries; retry")
        verdict = out[0].decode()
        if verdict == "noqueue":
            raise NotFound(f"queue tenants/{require_queue_key.split(':', 2)[2].replace(':', '/queues/')} not found; "
                           "an admin creates it with CreateQueue")
        if verdict == "exists":
            return Job.from_dict(orjson.loads(out[1])), False
        return job, True

    @staticmethod
    def new_id() -> str:
        """``j<UTC date>-<time>-<8 random hex>``: sortable by submit second; a repeat within one
        second is refused by the create script and drawn again."""
        return time.strftime("j%Y%m%d-%H%M%S-", time.gmtime()) + os.urandom(4).hex()

    @staticmethod
    def _key(tenant: str, job_id: str) -> str:
        return f"pylon:job:{tenant}:{job_id}"

    async def get(self, tenant: str, job_id: str) -> Job:
        raw = await self.r.get(self._key(tenant, job_id))
        if raw is None:
            raise NotFound(f"tenants/{tenant}/jobs/{job_id} not found")
        return Job.from_dict(orjson.loads(raw))


    async def save_moved(self, job: Job, *, pending: bool, active: bool, notify: bool = False) -> bool:
        """Compare-and-swap ``job`` (its ``version`` must still be the stored one) and set its
        membership of the pending queue and the active set in the same transaction. Returns
        False, writing nothing, when someone else changed the job first. ``notify`` appends a
        ``changed`` event to the dispatch stream in the same transaction (writers outside the
        leader, e.g. a cancel, so the leader's backlog sees the change at once)."""
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
                if notify:
                    p.xadd(EVENTS, {"e": json.dumps({"type": "changed", "job": job.key})}, maxlen=EVENTS_MAXLEN,
                           approximate=True)
                await p.execute()
                if self._touched is not None:
                    self._touched.add(job.key)
                return True
            except aioredis.WatchError:
                job.version -= 1
                return False

    async def get_many(self, keys: list[str]) -> list[Job]:
        """Jobs by ``tenant/id`` in one round trip; vanished ones are skipped."""
        if not keys:
            return []
        raws = await self.r.mget([self._key(*k.split("/", 1)) for k in keys])
        return [Job.from_dict(orjson.loads(x)) for x in raws if x is not None]

    async def pending_scored(self) -> list[tuple[str, float]]:
        """(``tenant/id``, queued-at) of queued jobs, oldest first."""
        return [(m.decode(), s) for m, s in await self.r.zrange(PENDING, 0, -1, withscores=True)]

    async def pending_keys(self) -> list[str]:
        """``tenant/id`` of queued jobs, oldest first (no scores: cheaper for a big backlog)."""
        return [m.decode() for m in await self.r.zrange(PENDING, 0, -1)]

    async def queued(self, keys: list[str]) -> list[bool]:
        """Whether each of ``keys`` is in the pending queue now (one ZMSCORE)."""
        if not keys:
            return []
        return [s is not None for s in await self.r.zmscore(PENDING, keys)]

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
