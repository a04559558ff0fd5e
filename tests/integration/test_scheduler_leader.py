"""The leader's incremental bookkeeping against real Redis (and Ray for passes): concurrent
submit scripts keep per-caller results and survive a flushed script cache; the backlog re-reads
only what changed; explanations are rewritten only where they changed; append passes decide only
new submissions. (The leader's process is tested in test_scheduler_durability.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from pylon_services.common.errors import NotFound
from pylon_services.scheduler.config import SchedulerConfig
from pylon_services.scheduler.domain.cancel import cancel_job
from pylon_services.scheduler.domain.job import Job, JobState
from pylon_services.scheduler.domain.ports import SystemClock
from pylon_services.scheduler.domain.scheduling import Explanation, QueueQuota
from pylon_services.scheduler.domain.spec import JobSpec
from pylon_services.scheduler.orchestration.backlog import Backlog
from pylon_services.scheduler.orchestration.leader import Leader
from pylon_services.scheduler.store.keys import PENDING
from pylon_services.scheduler.store.ray_exec import RayExecutor
from pylon_services.scheduler.store.redis_jobs import JobStore
from pylon_services.scheduler.store.redis_lease import RedisLease
from pylon_services.scheduler.store.redis_sched import EXPLAIN, SchedState
from pylon_services.scheduler.worker.launcher import Launcher

pytestmark = pytest.mark.integration
DB = 11  # a keyspace of its own: the session platform's leader reads db 0


def _run(redis_url: str, body: Any) -> Any:
    async def main() -> Any:
        r = aioredis.from_url(redis_url.rsplit("/", 1)[0] + f"/{DB}")
        await r.flushdb()
        try:
            return await body(r)
        finally:
            await r.flushdb()
            await r.aclose()
    return asyncio.run(main())


def _spec(d: dict[str, Any]) -> JobSpec:
    return JobSpec.from_dict(d)


def _job(i: int, request_id: str = "") -> Job:
    return Job(id=f"j{i:04d}", tenant="acme", spec=_spec({"command": {"argv": ["true"]}}), request_id=request_id)


def test_concurrent_creates_keep_their_own_results(redis_server):
    async def body(r: aioredis.Redis) -> None:
        store = JobStore(r)
        await r.set("pylon:queue:acme:q", "{}")
        calls = [store.create(_job(i)) for i in range(40)]
        calls += [store.create(_job(100 + i, request_id="same")) for i in range(5)]
        calls.append(store.create(_job(200), require_queue="tenants/acme/queues/missing"))
        calls.append(store.create(_job(201), require_queue="tenants/acme/queues/q"))
        out = await asyncio.gather(*calls, return_exceptions=True)
        assert all(created for _, created in out[:40])
        same = out[40:45]
        assert sum(created for _, created in same) == 1  # one job for one request id...
        assert len({job.id for job, _ in same}) == 1  # ...and every caller gets that job
        assert isinstance(out[45], NotFound) and out[46][1]  # an error stays with its own caller
        assert await r.zcard(PENDING) == 42
        await r.script_flush()  # as after a Redis restart without the script cache
        out = await asyncio.gather(*(store.create(_job(300 + i)) for i in range(10)))
        assert all(created for _, created in out) and await r.zcard(PENDING) == 52

    _run(redis_server.url, body)


def test_a_job_id_drawn_twice_never_overwrites_the_first_job(redis_server, monkeypatch):
    """Ids carry 32 random bits per second; a repeat (or a caller's fixed id) must not replace the
    job stored under it: the create script refuses the taken key and a fresh id is drawn."""
    async def body(r: aioredis.Redis) -> None:
        store = JobStore(r)
        first, _ = await store.create(_job(1))
        draws = iter(["j0001", "j0001", "j0002"])  # two more repeats, then a free id
        monkeypatch.setattr(JobStore, "new_id", staticmethod(lambda: next(draws)))
        clash = Job(id="j0001", tenant="acme", spec=_spec({"command": {"argv": ["false"]}}), request_id="r1")
        second, created = await store.create(clash)
        assert created and second.id == "j0002"
        assert (await store.get("acme", "j0001")).spec.workload.argv == ("true",)  # untouched
        assert (await store.get("acme", "j0002")).spec.workload.argv == ("false",)
        assert await r.zcard(PENDING) == 2
        again, created = await store.create(Job(id="j0009", tenant="acme", spec=_job(9).spec, request_id="r1"))
        assert not created and again.id == "j0002"  # the request id names the job finally stored
        monkeypatch.setattr(JobStore, "new_id", staticmethod(lambda: "j0001"))
        from pylon_services.common.errors import Unavailable
        with pytest.raises(Unavailable):
            await store.create(Job(id="j0001", tenant="acme", spec=_job(1).spec))
        assert await r.zcard(PENDING) == 2

    _run(redis_server.url, body)


def test_backlog_rereads_only_jobs_that_changed(redis_server):
    async def body(r: aioredis.Redis) -> None:
        api, leader = JobStore(r), JobStore(r, track_changes=True)
        for i in range(20):
            await api.create(_job(i))
        backlog = Backlog(leader, resync_s=3600, clock=SystemClock())
        assert len(await backlog.pending()) == 20 and backlog.decoded == 20
        # A cancel through the API: the leader hears of it by its event and re-reads that job only.
        cancelled = await api.get("acme", "j0003")
        cancelled.transition(JobState.CANCELLED, "cancelled by user")
        assert await api.save_moved(cancelled, pending=False, active=False, notify=True)
        backlog.mark(["acme/j0003"])
        # The leader's own write (an admission) needs no event: its store recorded it.
        admitted = await leader.get("acme", "j0007")
        admitted.transition(JobState.ADMITTED, "admitted")
        assert await leader.save_moved(admitted, pending=False, active=True)
        assert backlog.changed
        pending = await backlog.pending()
        assert "acme/j0003" not in pending and "acme/j0007" not in pending and len(pending) == 18
        assert backlog.decoded == 20  # both are out of the queue: nothing decoded
        await api.create(_job(50))
        backlog.mark(["acme/j0050"])
        assert len(await backlog.pending()) == 19 and backlog.decoded == 21
        assert [row.id for row in backlog.rows()][-1] == "acme/j0050"  # submit order
        # A write that bypassed both paths is picked up by the periodic full re-read.
        await r.zrem(PENDING, "acme/j0001")
        assert len(await backlog.pending()) == 19
        backlog.invalidate()
        assert len(await backlog.pending()) == 18 and backlog.decoded == 21 + 18

    _run(redis_server.url, body)


def test_explanations_are_rewritten_only_where_they_changed(redis_server):
    async def body(r: aioredis.Redis) -> None:
        state = SchedState(r)
        first = {f"acme/j{i}": Explanation(f"acme/j{i}", "over quota", i + 1) for i in range(5)}
        await state.save_explanations(first)
        await r.hset(EXPLAIN, "acme/j0", "marker")  # would be overwritten if j0 were rewritten
        second = dict(first)
        del second["acme/j4"]
        second["acme/j1"] = Explanation("acme/j1", "waiting for a gang of 2", 2)
        await state.save_explanations(second)
        assert await r.hget(EXPLAIN, "acme/j0") == b"marker"  # unchanged: not written again
        assert (await state.explanation("acme/j1")).reason == "waiting for a gang of 2"
        assert await state.explanation("acme/j4") is None
        state.forget_explanations()  # as a new leader: replace the whole hash
        await state.save_explanations(second)
        assert (await state.explanation("acme/j0")).reason == "over quota"
        assert await r.hlen(EXPLAIN) == 4

    _run(redis_server.url, body)


def _queued_spec(queue: str, gpu_type: str, priority_class: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"queue": queue, "command": {"argv": ["true"]}, "workers": 1, "placement": "pack",
                            "resources": {"gpus": 1, "gpu_types": [gpu_type]}}
    if priority_class:
        spec["priority_class"] = priority_class
    return spec


def test_append_passes_take_new_submissions_without_a_whole_pass(redis_server, ray_cluster):
    """A saturated queue taking a stream of submissions: after one whole pass, new jobs are
    explained (and, where they fit, admitted) by append passes that read and decide only them,
    and what they store is exactly what a whole pass stores. Anything else needs a whole pass."""

    async def body(r: aioredis.Redis) -> None:
        api, state = JobStore(r), SchedState(r)
        executor = RayExecutor(ray_cluster.address, {}, Launcher, "127.0.0.1", "appendtest")
        await asyncio.to_thread(executor.connect)
        ctl = Leader(JobStore(r, track_changes=True), state, executor, RedisLease(r),
                     SchedulerConfig(instance="appendtest", backlog_resync_s=3600.0))
        await state.ensure_group()
        await state.create_queue(QueueQuota("tenants/acme/queues/zero", "acme", {"V100": 0.0}))
        await state.create_queue(QueueQuota("tenants/beta/queues/k80", "beta", {"K80": 1.0}))

        async def submit(n: int, tenant: str = "acme", queue: str = "zero", gpu: str = "V100", prio: str = "",
                         read: bool = True) -> list[Job]:
            out = []
            for _ in range(n):
                job = Job(id=JobStore.new_id(), tenant=tenant, spec=JobSpec.from_dict(_queued_spec(queue, gpu, prio)))
                out.append((await api.create(job, f"tenants/{tenant}/queues/{queue}"))[0])
            if read:  # as the leader's turn would (while its loop runs, it reads them itself)
                await ctl.dispatcher.handle(await state.read_events(ctl.identity, 10, count=1000))
            return out

        first = await submit(30)
        assert ctl.backlog.arrived and not ctl.backlog.changed
        assert await ctl.passes.append() is None  # no whole pass yet: nothing to continue from
        await ctl.passes.whole()
        assert ctl.passes.can_append and ctl.backlog.decoded == 30
        later = await submit(20)
        decision = await ctl.passes.append()
        assert decision is not None and set(decision.explanations) == {j.key for j in later}
        assert ctl.backlog.decoded == 50  # only the new jobs were read
        exp = await state.explanation(later[-1].key)
        assert exp.position == 50 and "nominal quota on V100" in exp.reason
        stored = await r.hgetall(EXPLAIN)
        assert len(stored) == 50
        await ctl.passes.whole()  # a whole pass over all 50 stores the same explanations
        assert await r.hgetall(EXPLAIN) == stored

        # An arrival that fits (beta's K80 quota) is admitted by the append pass.
        fits = (await submit(1, "beta", "k80", "K80"))[0]
        try:
            decision = await ctl.passes.append()
            assert decision is not None and [a.job_id for a in decision.admits] == [fits.key]
            assert (await api.get("beta", fits.id)).state != JobState.PENDING
            assert not ctl.passes.can_append  # the cluster changed: the next pass is whole
        finally:
            admitted = await api.get("beta", fits.id)
            await cancel_job(api, admitted)
            await executor.release(admitted)
        await ctl.passes.whole()
        assert ctl.passes.can_append

        # A job of higher priority than one already waiting needs a whole pass (it goes first).
        await submit(1, prio="high")
        assert await ctl.passes.append() is None
        await ctl.passes.whole()
        # So does a job that left the backlog (a cancel), even with arrivals.
        await submit(2)
        await cancel_job(api, first[0])
        await ctl.dispatcher.handle(await state.read_events(ctl.identity, 10, count=1000))
        assert await ctl.passes.append() is None
        await ctl.passes.whole()
        assert first[0].key not in await r.hgetall(EXPLAIN) and await r.hlen(EXPLAIN) == 52

        # The leader's loop: a stream of submissions is explained by append passes, and one that
        # cannot append (arrivals plus a cancel) is followed by a whole pass at once.
        ctl.pacer.cfg = dataclasses.replace(ctl.pacer.cfg, idle_pass_s=600.0)  # no time-only passes
        before = ctl.passes.whole_passes
        loop = asyncio.create_task(ctl.run())
        try:
            # Taking the lease starts over: a whole pass (the count above already includes the
            # test's own passes), and another may follow before appends can continue. Wait until
            # that is behind.
            settled = lambda: ctl.leading and ctl.passes.whole_passes > before and ctl.passes.can_append  # noqa: E731
            await wait_for_async(settled, 30, "the loop leads and passes")
            await asyncio.sleep(1.0)
            await wait_for_async(settled, 30, "the loop settles")
            whole, moves = ctl.passes.whole_passes, ctl.passes.cluster_changes
            stream = []
            for _ in range(5):
                stream += await submit(20, prio="low", read=False)
                await asyncio.sleep(0.3)
            await wait_for_async(lambda: _all_explained(r, stream), 30, "every streamed job explained")
            # No whole pass for arrivals alone. The session's Ray cluster is shared: another test's
            # worker ending there changes the free resources, and each such move (counted) rightly
            # costs a whole pass.
            extra_whole, moved = ctl.passes.whole_passes - whole, ctl.passes.cluster_changes - moves
            assert ctl.passes.append_passes >= 2 and extra_whole <= moved, (extra_whole, moved)
            extra = await submit(2, prio="low", read=False)
            await cancel_job(api, stream[0])
            await wait_for_async(lambda: _all_explained(r, extra), 30, "arrivals next to a cancel explained")
            assert ctl.passes.whole_passes > whole and await r.hget(EXPLAIN, stream[0].key) is None
            # An arrival of higher priority than a waiting job: a whole pass, with no other news.
            whole = ctl.passes.whole_passes
            urgent = await submit(1, prio="high", read=False)
            await wait_for_async(lambda: _all_explained(r, urgent), 30, "a high-priority arrival explained")
            assert ctl.passes.whole_passes > whole
        finally:
            loop.cancel()
            await ctl.stop()

    _run(redis_server.url, body)


async def _all_explained(r: aioredis.Redis, jobs: list[Job]) -> bool:
    return all(x is not None for x in await r.hmget(EXPLAIN, [j.key for j in jobs]))


async def wait_for_async(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ok = check()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what}")


def test_repeated_specs_are_checked_per_tenant_and_errors_are_not_kept(tenant_clients):
    from pylon.errors import PylonError

    acme, globex = tenant_clients["acme"], tenant_clients["globex"]
    spec = {"command": {"argv": ["true"]}, "labels": {"sweep": "cache"}}
    a, b = acme.jobs.submit(spec), acme.jobs.submit(spec)
    assert a.name != b.name and a.spec == b.spec and a.spec["workers"] == 1
    assert [acme.jobs.wait(n, timeout=120).state for n in (a.name, b.name)] == ["succeeded", "succeeded"]
    # The working-dir key is checked per caller.
    foreign = {"command": {"argv": ["true"], "working_dir_key": "tenants/acme/workdirs/sha256-x.tar.gz"}}
    for _ in range(2):
        with pytest.raises(PylonError) as e:
            globex.jobs.submit(foreign)
        assert "INVALID_ARGUMENT" in str(e.value.code)
    # A rejected spec is rejected again (errors are not kept).
    for _ in range(2):
        with pytest.raises(PylonError) as e:
            acme.jobs.submit({"priority_class": "urgent", "command": {"argv": ["true"]}})
        assert "INVALID_ARGUMENT" in str(e.value.code)


def test_the_state_filter_applies_before_paging(redis_server):
    """ListJobs with states: a page holds the matching jobs among the next ones scanned, so running
    jobs behind many newer pending ones are found on the first page (the filter used to apply
    after paging: the first page of 5 newest jobs, all pending, came back empty)."""
    async def body(r: aioredis.Redis) -> None:
        store = JobStore(r)
        jobs = []
        for i in range(30):
            job = _job(i)
            job.create_time = 1000.0 + i  # j0000 oldest
            jobs.append((await store.create(job))[0])
        for j in jobs[:2]:  # the two oldest run
            j.transition(JobState.ADMITTED, "")
            j.transition(JobState.STARTING, "")
            j.transition(JobState.RUNNING, "")
            assert await store.save_moved(j, pending=False, active=True)
        page, token = await store.list_jobs("acme", 5, "", [JobState.RUNNING])
        assert [j.id for j in page] == ["j0001", "j0000"] and token == ""
        page, token = await store.list_jobs("acme", 5, "", [JobState.PENDING])
        assert [j.id for j in page] == ["j0029", "j0028", "j0027", "j0026", "j0025"] and token == "5"
        rest: list[str] = []
        while token:
            page, token = await store.list_jobs("acme", 5, token, [JobState.PENDING])
            rest += [j.id for j in page]
        assert len(rest) == 23 and "j0001" not in rest
        from pylon_services.common.errors import InvalidArgument
        for bad in ("x", "²", "1" * 20, "-1"):
            with pytest.raises(InvalidArgument, match="page_token"):
                await store.list_jobs("acme", 5, bad)

    _run(redis_server.url, body)
