"""The leader's process layout and its incremental bookkeeping, against real Redis (and Ray for
the process tests): batched submit scripts keep per-caller results and survive a flushed script
cache; the backlog re-reads only what changed; explanations are rewritten only where they
changed; the API process runs the leader in a child it restarts, and stops it on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from pylon_services.common.errors import NotFound
from pylon_services.localstack.procs import free_port
from pylon_services.scheduler.backlog import Backlog
from pylon_services.scheduler.config import SchedulerConfig
from pylon_services.scheduler.controller import Controller
from pylon_services.scheduler.domain.job import Job, JobState
from pylon_services.scheduler.domain.scheduling import Explanation, QueueQuota
from pylon_services.scheduler.store.ray_exec import RayExecutor
from pylon_services.scheduler.store.redis_jobs import PENDING, JobStore
from pylon_services.scheduler.store.redis_sched import EXPLAIN, SchedState, queue_key
from tests.support.platform import ADMIN_KEY
from tests.support.waiting import wait_for

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


def _job(i: int, request_id: str = "") -> Job:
    return Job(id=f"j{i:04d}", tenant="acme", spec={"command": {"argv": ["true"]}}, request_id=request_id)


@pytest.mark.parametrize("pipe", [True, False], ids=["resp-pipe", "redis-py"])  # redis-py: TLS connections
def test_concurrent_creates_share_round_trips_but_keep_their_own_results(redis_server, pipe):
    async def body(r: aioredis.Redis) -> None:
        store = JobStore(r)
        assert store._create_script._pipe is not None  # plain TCP: the lean pipe
        if not pipe:
            store._create_script._pipe = None
        await r.set("pylon:queue:acme:q", "{}")
        calls = [store.create(_job(i)) for i in range(40)]
        calls += [store.create(_job(100 + i, request_id="same")) for i in range(5)]
        calls.append(store.create(_job(200), require_queue_key="pylon:queue:acme:missing"))
        calls.append(store.create(_job(201), require_queue_key="pylon:queue:acme:q"))
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
        clash = Job(id="j0001", tenant="acme", spec={"command": {"argv": ["false"]}}, request_id="r1")
        second, created = await store.create(clash)
        assert created and second.id == "j0002"
        assert (await store.get("acme", "j0001")).spec["command"]["argv"] == ["true"]  # untouched
        assert (await store.get("acme", "j0002")).spec["command"]["argv"] == ["false"]
        assert await r.zcard(PENDING) == 2
        again, created = await store.create(Job(id="j0009", tenant="acme", spec={}, request_id="r1"))
        assert not created and again.id == "j0002"  # the request id names the job finally stored
        monkeypatch.setattr(JobStore, "new_id", staticmethod(lambda: "j0001"))
        from pylon_services.common.errors import Unavailable
        with pytest.raises(Unavailable):
            await store.create(Job(id="j0001", tenant="acme", spec={}))
        assert await r.zcard(PENDING) == 2

    _run(redis_server.url, body)


def test_resp_pipe_pipelines_answers_in_order_and_reconnects(redis_server):
    """The submit path's own Redis connection: concurrent calls get their own replies, an error
    reply raises for its caller only, a killed connection fails what was in flight and the next
    call reconnects (to the right database)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError

    from pylon_services.scheduler.store.resp_pipe import RespPipe

    async def body(r: aioredis.Redis) -> None:
        pipe = RespPipe.for_client(r)
        assert pipe is not None and pipe.db == DB
        out = await asyncio.gather(*(pipe.call(b"INCR", "n") for _ in range(200)),
                                   pipe.call(b"HGET", "n", "x"), return_exceptions=True)
        assert sorted(out[:200]) == list(range(1, 201))  # each call its own reply
        assert isinstance(out[200], ResponseError) and "WRONGTYPE" in str(out[200])
        assert await r.get("n") == b"200"  # the pipe writes where redis-py reads
        assert await pipe.call(b"GET", "missing") is None
        big = os.urandom(300_000)  # a reply spread over many reads
        await pipe.call(b"SET", "big", big)
        assert await pipe.call(b"GET", "big") == big
        me = await pipe.call(b"CLIENT", b"ID")
        blocked = asyncio.ensure_future(pipe.call(b"BLPOP", "never", 30))  # in flight when killed
        await asyncio.sleep(0.2)
        await r.client_kill_filter(_id=me)
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(blocked, 10)
        assert await pipe.call(b"INCR", "n") == 201  # reconnected, same database
        assert await pipe.call(b"CLIENT", b"ID") != me
        pipe.close()

    _run(redis_server.url, body)


def test_backlog_rereads_only_jobs_that_changed(redis_server):
    async def body(r: aioredis.Redis) -> None:
        api, leader = JobStore(r), JobStore(r, track_changes=True)
        for i in range(20):
            await api.create(_job(i))
        backlog = Backlog(leader, resync_s=3600)
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


def _spec(queue: str, gpu_type: str, priority_class: str = "") -> dict[str, Any]:
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
        executor = RayExecutor(ray_cluster.address, {}, "127.0.0.1", "appendtest")
        await asyncio.to_thread(executor.connect)
        ctl = Controller(JobStore(r, track_changes=True), state, executor, r, SchedulerConfig(instance="appendtest"))
        await state.ensure_group()
        await state.create_queue(QueueQuota("tenants/acme/queues/zero", "acme", {"V100": 0.0}))
        await state.create_queue(QueueQuota("tenants/beta/queues/k80", "beta", {"K80": 1.0}))

        async def submit(n: int, tenant: str = "acme", queue: str = "zero", gpu: str = "V100", prio: str = "",
                         read: bool = True) -> list[Job]:
            out = []
            for _ in range(n):
                job = Job(id=JobStore.new_id(), tenant=tenant, spec=_spec(queue, gpu, prio))
                out.append((await api.create(job, queue_key(f"tenants/{tenant}/queues/{queue}")))[0])
            if read:  # as the leader's turn would (while its loop runs, it reads them itself)
                await ctl._handle(await state.read_events(ctl.identity, 10, count=1000))
            return out

        first = await submit(30)
        assert ctl.backlog.arrived and not ctl.backlog.changed
        assert await ctl.append_pass() is None  # no whole pass yet: nothing to continue from
        await ctl.schedule_pass()
        assert ctl._continue is not None and ctl.backlog.decoded == 30
        later = await submit(20)
        decision = await ctl.append_pass()
        assert decision is not None and set(decision.explanations) == {j.key for j in later}
        assert ctl.backlog.decoded == 50  # only the new jobs were read
        exp = await state.explanation(later[-1].key)
        assert exp.position == 50 and "nominal quota on V100" in exp.reason
        stored = await r.hgetall(EXPLAIN)
        assert len(stored) == 50
        await ctl.schedule_pass()  # a whole pass over all 50 stores the same explanations
        assert await r.hgetall(EXPLAIN) == stored

        # An arrival that fits (beta's K80 quota) is admitted by the append pass.
        fits = (await submit(1, "beta", "k80", "K80"))[0]
        try:
            decision = await ctl.append_pass()
            assert decision is not None and [a.job_id for a in decision.admits] == [fits.key]
            assert (await api.get("beta", fits.id)).state != JobState.PENDING
            assert ctl._continue is None  # the cluster changed: the next pass is whole
        finally:
            admitted = await api.get("beta", fits.id)
            await ctl.cancel(admitted)
            await asyncio.to_thread(executor.release, admitted)
        await ctl.schedule_pass()
        assert ctl._continue is not None

        # A job of higher priority than one already waiting needs a whole pass (it goes first).
        await submit(1, prio="high")
        assert await ctl.append_pass() is None
        await ctl.schedule_pass()
        # So does a job that left the backlog (a cancel), even with arrivals.
        await submit(2)
        await ctl.cancel(first[0])
        await ctl._handle(await state.read_events(ctl.identity, 10, count=1000))
        assert await ctl.append_pass() is None
        await ctl.schedule_pass()
        assert first[0].key not in await r.hgetall(EXPLAIN) and await r.hlen(EXPLAIN) == 52

        # The leader's loop: a stream of submissions is explained by append passes, and one that
        # cannot append (arrivals plus a cancel) is followed by a whole pass at once.
        ctl.cfg = SchedulerConfig(instance="appendtest", idle_pass_s=600.0)  # no time-only passes
        ctl.start()
        try:
            await wait_for_async(lambda: ctl.leader and ctl.passes >= 1, 30, "the loop leads and passes")
            whole = ctl.passes
            stream = []
            for _ in range(5):
                stream += await submit(20, prio="low", read=False)
                await asyncio.sleep(0.3)
            await wait_for_async(lambda: _all_explained(r, stream), 30, "every streamed job explained")
            assert ctl.append_passes >= 2 and ctl.passes == whole  # no whole pass for arrivals alone
            extra = await submit(2, prio="low", read=False)
            await ctl.cancel(stream[0])
            await wait_for_async(lambda: _all_explained(r, extra), 30, "arrivals next to a cancel explained")
            assert ctl.passes > whole and await r.hget(EXPLAIN, stream[0].key) is None
            # An arrival of higher priority than a waiting job: a whole pass, with no other news.
            whole = ctl.passes
            urgent = await submit(1, prio="high", read=False)
            await wait_for_async(lambda: _all_explained(r, urgent), 30, "a high-priority arrival explained")
            assert ctl.passes > whole
        finally:
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


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _start_replica(tmp_path: Any, ray_cluster: Any) -> tuple[Any, subprocess.Popen[bytes], Any, Any]:
    """A scheduler replica as a real subprocess with its own Redis: (redis server, API process,
    client, redis client), once the API answers."""
    import redis

    import pylon
    from pylon_services.localstack.redis_server import RedisServer

    rs = RedisServer(str(tmp_path / "redis")).start()
    port = free_port()
    env = {**os.environ, "PYLON_REDIS_URL": rs.url, "PYLON_RAY_ADDRESS": ray_cluster.address,
           "PYLON_RAY_NODE_IP_ADDRESS": "127.0.0.1", "PYLON_PORT": str(port), "PYLON_METRICS_PORT": "-1",
           "PYLON_ADMIN_KEY": ADMIN_KEY, "PYLON_OBJECT_STORE_URL": f"file://{tmp_path}/objects",
           "PYLON_SCHED_INSTANCE": "pylonlead", "PYLON_SCHED_LEASE_S": "3", "PYLON_SHUTDOWN_GRACE_S": "1"}
    log = open(tmp_path / "scheduler.log", "wb")
    api = subprocess.Popen([sys.executable, "-m", "pylon_services.scheduler"], env=env, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    c = pylon.Client(f"127.0.0.1:{port}", ADMIN_KEY)
    wait_for(lambda: _try(c.jobs.cluster), 60, "the API")
    return rs, api, c, redis.Redis.from_url(rs.url)


def _stop_replica(rs: Any, api: subprocess.Popen[bytes]) -> None:
    if api.poll() is None:
        os.killpg(api.pid, signal.SIGKILL)
        api.wait()
    rs.stop()


def _live_children(pid: int) -> list[int]:
    return [p for p in _children(pid) if not _zombie(p)]


def test_api_process_runs_restarts_and_stops_its_leader_child(tmp_path, ray_cluster):
    rs, api, c, r = _start_replica(tmp_path, ray_cluster)
    try:
        # The lease names the replica by its API process, as with an inline leader.
        assert int(r.get("pylon:scheduler:leader").decode().split("-")[0]) == api.pid
        [child] = _children(api.pid)
        assert c.jobs.wait(c.jobs.submit({"command": {"argv": ["true"]}}).name, timeout=120).state == "succeeded"
        os.kill(child, signal.SIGKILL)
        [again] = wait_for(lambda: [p for p in _live_children(api.pid) if p != child], 30, "a new leader process")
        assert c.jobs.wait(c.jobs.submit({"command": {"argv": ["true"]}}).name, timeout=120).state == "succeeded"
        os.kill(api.pid, signal.SIGTERM)
        assert api.wait(30) == 0
        assert not os.path.exists(f"/proc/{again}") or _zombie(again)
        assert r.get("pylon:scheduler:leader") is None  # given back, not left to expire
    finally:
        _stop_replica(rs, api)


def test_leader_child_stopped_cleanly_is_not_restarted_and_gives_the_lease_back(tmp_path, ray_cluster):
    rs, api, c, r = _start_replica(tmp_path, ray_cluster)
    try:
        [child] = _children(api.pid)
        os.kill(child, signal.SIGTERM)  # as part of a SIGTERM to the whole process group
        wait_for(lambda: _zombie(child), 30, "the leader process to exit")
        assert r.get("pylon:scheduler:leader") is None
        time.sleep(4)  # longer than the supervisor's poll and restart back-off
        assert _live_children(api.pid) == []
        assert _try(c.jobs.cluster)  # the API keeps serving
    finally:
        _stop_replica(rs, api)


def _try(fn: Any) -> bool:
    try:
        fn()
        return True
    except Exception:  # noqa: BLE001 - not up yet, whatever the client says
        return False


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_repeated_specs_are_validated_once_but_checked_per_tenant_and_never_cache_errors(tenant_clients):
    from pylon.errors import PylonError

    acme, globex = tenant_clients["acme"], tenant_clients["globex"]
    spec = {"command": {"argv": ["true"]}, "labels": {"sweep": "cache"}}
    a, b = acme.jobs.submit(spec), acme.jobs.submit(spec)  # the second reuses the validated spec
    assert a.name != b.name and a.spec == b.spec and a.spec["workers"] == 1
    assert [acme.jobs.wait(n, timeout=120).state for n in (a.name, b.name)] == ["succeeded", "succeeded"]
    # The working-dir key is checked per caller, even for a spec seen before.
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
