"""Durability of the scheduler, its API and leader run as real subprocesses against their own
Redis (AOF on) and the session's Ray cluster: SIGKILL both with jobs queued and running and every
job still finishes exactly once (running attempts are adopted, not rerun); SIGKILL Redis right
after submissions were acknowledged and none is lost; two leaders elect one, and the other takes
over when it is killed."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pylon_services.localstack.procs import free_port
from tests.support.scheduler_procs import INSTANCE, SchedulerProc
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

# Appends one line per run to a file named after the job, then works for a few seconds.
WORK = """
import os, sys, time
path = os.path.join(sys.argv[1], os.environ["PYLON_JOB"].rsplit("/", 1)[1])
with open(path, "a") as f:
    f.write("ran\\n")
time.sleep(float(sys.argv[2]))
"""


def lease_holder_pid(r: Any) -> int:
    """The pid in the lease's identity (``{host}-{pid}-{suffix}``)."""
    return int(r.get("pylon:scheduler:leader").decode().rsplit("-", 2)[1])


@pytest.fixture
def sched(tmp_path: Any, ray_cluster: Any) -> Iterator[SchedulerProc]:
    s = SchedulerProc(str(tmp_path), ray_cluster.address)
    s.start()
    yield s
    s.stop()


def _wait_all_done(c: Any, names: list[str], timeout: float) -> list[Any]:
    deadline = time.time() + timeout
    while True:
        jobs = [c.jobs.get(n) for n in names]
        if all(j.done for j in jobs) or time.time() > deadline:
            return jobs
        time.sleep(0.5)


def _our_placement_groups(ray_address: str) -> list[dict[str, Any]]:
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address, namespace="pylon-test", log_to_driver=False)
    return [pg for pg in ray.util.placement_group_table().values()
            if pg.get("name", "").startswith(f"{INSTANCE}-") and pg.get("state") != "REMOVED"]


def test_sigkilled_scheduler_restarts_and_every_job_finishes_exactly_once(sched, tmp_path, ray_cluster):
    marks = tmp_path / "marks"
    marks.mkdir()
    c = sched.client()
    spec = {"resources": {"cpus": 2}, "command": {"argv": [sys.executable, "-c", WORK, str(marks), "6"]}}
    names = [c.jobs.submit(spec).name for _ in range(7)]
    deadline = time.time() + 90
    while sum(c.jobs.get(n).state == "running" for n in names) < 3:
        assert time.time() < deadline, "jobs did not start"
        time.sleep(0.3)
    before = {n: c.jobs.get(n) for n in names}
    sched.kill()
    sched.start()
    c = sched.client()
    jobs = _wait_all_done(c, names, 240)
    assert [j.state for j in jobs] == ["succeeded"] * 7, [(j.name, j.state, j.message) for j in jobs]
    for j in jobs:
        assert (marks / j.name.rsplit("/", 1)[1]).read_text() == "ran\n", j.name  # ran exactly once
        if before[j.name].state == "running":
            assert j.attempt == 1, f"{j.name} was running at the kill and must be adopted, not rerun"
    assert _our_placement_groups(ray_cluster.address) == []  # no orphans


def test_redis_sigkilled_after_acknowledged_submits_loses_none(sched):
    c = sched.client()
    names = [c.jobs.submit({"command": {"argv": ["true"]}}, request_id=f"aof-{i}").name for i in range(20)]
    # Every submit above was acknowledged; Redis wrote it to the AOF before replying.
    os.kill(sched.redis.proc.pid, signal.SIGKILL)
    sched.redis.proc.wait()
    sched.redis.start()
    deadline = time.time() + 30
    while True:
        try:
            found = [c.jobs.get(n).name for n in names]
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    assert found == names
    jobs = _wait_all_done(c, names, 180)
    assert [j.state for j in jobs] == ["succeeded"] * 20, [(j.name, j.state, j.message) for j in jobs]
    # The same request ids still map to the same jobs after the restart.
    assert c.jobs.submit({"command": {"argv": ["true"]}}, request_id="aof-3").name == names[3]


def test_two_leaders_elect_one_and_the_other_takes_over(sched):
    import redis

    second_port = free_port()
    sched.start_api(second_port)
    standby = sched.start_leader()
    a, b = sched.client(), sched.client(second_port)
    # Discovery names the replica that was asked for its own service, not the last to register.
    assert a.endpoints()["scheduler"].endswith(f":{sched.port}") and b.endpoints()["scheduler"].endswith(f":{second_port}")
    r = redis.Redis.from_url(sched.redis.url)
    wait_for(lambda: r.get("pylon:scheduler:leader") is not None, 30, "a leader")
    leaders = {sched.leader.pid: sched.leader, standby.pid: standby}
    holder = lease_holder_pid(r)
    assert holder in leaders
    # Either API replica accepts submits; only the leader runs them.
    jobs = [a.jobs.submit({"command": {"argv": ["true"]}}).name, b.jobs.submit({"command": {"argv": ["true"]}}).name]
    done = [a.jobs.wait(n, timeout=120) for n in jobs]
    assert [j.state for j in done] == ["succeeded", "succeeded"], [(j.name, j.state, j.message) for j in done]
    os.killpg(holder, signal.SIGKILL)
    leaders[holder].wait()
    job = b.jobs.submit({"command": {"argv": ["true"]}})
    assert b.jobs.wait(job.name, timeout=120).state == "succeeded"
    assert lease_holder_pid(r) != holder and lease_holder_pid(r) in leaders


def test_sigtermed_leader_gives_the_lease_back_and_the_api_keeps_serving(sched):
    """A leader stopped cleanly gives the lease back at once (no wait for it to expire); the API
    keeps answering and queues submits until a leader runs them."""
    import redis

    c = sched.client()
    r = redis.Redis.from_url(sched.redis.url)
    wait_for(lambda: r.get("pylon:scheduler:leader") is not None, 30, "a leader")
    os.killpg(sched.leader.pid, signal.SIGTERM)
    assert sched.leader.wait(30) == 0
    assert r.get("pylon:scheduler:leader") is None
    queued = c.jobs.submit({"command": {"argv": ["true"]}})
    time.sleep(2)
    assert c.jobs.get(queued.name).state == "pending"  # nobody leads: it waits
    sched.leader = sched.start_leader()
    assert c.jobs.wait(queued.name, timeout=120).state == "succeeded"
