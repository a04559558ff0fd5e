"""The per-tenant pending limit in the ledger, on a real Redis: counted inside the submit script,
kept in step by every transition in and out of PENDING, atomic under concurrent submits."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from pylon_services.common.errors import ResourceExhausted
from pylon_services.scheduler.domain.job import Job, JobState, new_job_id
from pylon_services.scheduler.domain.spec import Command, JobSpec
from pylon_services.scheduler.store.redis_jobs import JobStore

pytestmark = pytest.mark.integration

# A keyspace of its own: the session platform's scheduler leader reads db 0 and would admit
# these jobs under the test's hands (a CI run saw save_moved lose its compare-and-swap to it).
DB = 15


def _redis(redis_server) -> aioredis.Redis:
    return aioredis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{DB}")


def _job(tenant: str, request_id: str = "") -> Job:
    return Job(id=new_job_id(), tenant=tenant, spec=JobSpec(Command(("true",))), request_id=request_id)


def test_the_limit_follows_jobs_in_and_out_of_pending(redis_server):
    async def main() -> None:
        r = _redis(redis_server)
        store = JobStore(r, max_pending_per_tenant=3)
        tenant = "limit-moves"
        jobs = [(await store.create(_job(tenant, f"r{i}")))[0] for i in range(3)]
        with pytest.raises(ResourceExhausted) as e:
            await store.create(_job(tenant))
        assert e.value.retry_after_s and e.value.retry_after_s > 0
        again, created = await store.create(_job(tenant, "r0"))  # a retried submit still answers
        assert (again.id, created) == (jobs[0].id, False)
        await store.create(_job("limit-other"))  # another tenant is not held back
        # Admitted: out of PENDING, so there is room.
        admitted = jobs[0]
        admitted.transition(JobState.ADMITTED, "admitted")
        assert await store.save_moved(admitted, pending=False, active=True)
        extra, _ = await store.create(_job(tenant))
        with pytest.raises(ResourceExhausted):
            await store.create(_job(tenant))
        # Requeued (preempted or its start timed out): it counts again, so the tenant is over by one...
        admitted.transition(JobState.PENDING, "requeued")
        assert await store.save_moved(admitted, pending=True, active=False)
        assert await r.zcard(f"pylon:pending:{tenant}") == 4
        # ...and a cancel of two makes room for one.
        for job in (extra, jobs[1]):
            job.transition(JobState.CANCELLED, "cancelled")
            assert await store.save_moved(job, pending=False, active=False)
        await store.create(_job(tenant))
        with pytest.raises(ResourceExhausted):
            await store.create(_job(tenant))
        await r.aclose()

    asyncio.run(main())


def test_concurrent_submits_never_pass_the_limit(redis_server):
    async def main() -> None:
        r = _redis(redis_server)
        store = JobStore(r, max_pending_per_tenant=5)
        results = await asyncio.gather(*(store.create(_job("limit-race")) for _ in range(40)), return_exceptions=True)
        assert sum(isinstance(x, tuple) for x in results) == 5
        assert sum(isinstance(x, ResourceExhausted) for x in results) == 35
        assert await r.zcard("pylon:pending:limit-race") == 5
        await r.aclose()

    asyncio.run(main())


def test_zero_turns_the_limit_off(redis_server):
    async def main() -> None:
        r = _redis(redis_server)
        store = JobStore(r, max_pending_per_tenant=0)
        for _ in range(5):
            await store.create(_job("limit-off"))
        await r.aclose()

    asyncio.run(main())
